"""Pooled services: the forker's `Pools`, and the workers it forks, each serving in turn.

A service with `workers = N` trades isolation for speed: N processes forked
at start accept on the service's listeners themselves (an exclusive epoll
wait, so one connection wakes one worker) and serve each connection in
process. A worker serves as the forker does, through its own copy of each
listener's `ServiceServer` (`_PooledServer`): `accept_ready` accepts, drops a
connection reset in the backlog and admits (`verify_request`), then
`process_request` serves in process where the forker forks, through
`serve_connection`, the path a forked child takes too. The worker adds its
own: the connection's number, its slot and batched record, `max_duration`.
A worker that has served `max_connections_per_child` connections exits and
the forker starts another; so does a reload (the old workers finish their
connection and leave) and a worker that dies. The forker's own loop never
accepts on a pooled listener.

A pooled service on datagram sockets (a Python handler on `udp:` or
`unix-dgram:`) is served alike, a datagram for a connection: its workers read
the socket (`sockd.forker.datagrampool`), and each datagram is admitted,
served, numbered and recorded as a connection is.

A worker stops gracefully at its first SIGTERM (at once when idle, after the
current connection when busy) and cuts its connection short at a second one;
the forker's stop phases send the first at once and the second at
stop_timeout. Nothing is raised into the handler: a connection cut short (a
second SIGTERM, or `max_duration` passed) is shut down, so that the handler's
next read sees its end and its next write fails; a handler that does no I/O is
killed later (SIGKILL from the forker's stop, or SIGALRM's default action
KILL_GRACE seconds past `max_duration`). Signal handlers only record, and
shut the connection down.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module behind signal
import contextlib
import marshal
import math
import os
import select
import signal
import socket
import sys
import time

from sockd.errors import exception_fields
from sockd.exits import BATCH_HEADER, client_fields, entry, read_entries
from sockd.forker.access import Admission
from sockd.forker.childlog import MAX_DATAGRAM
from sockd.forker.service import HANDLED_SIGNALS, ServiceServer
from sockd.forker.shared import unix_client
from sockd.listeners import Endpoint
from sockd.privileges import become_ids
from sockd.spec import Limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap
    from collections.abc import Callable
    from types import FrameType
    from typing import Any

    from sockd.exits import Entry

BATCH_DELAY = 0.05  # a worker's connection records wait this long to go out in one write
# ...or until this many wait: each batch the forker relays to the daemon costs it a
# turn of its loop (about 80 us), so a batch carries many connections.
BATCH_SIZE = 64
MAX_BATCH = 4096  # records kept while the forker does not read; older ones are dropped, counted
SLOT_SIZE = 16384  # a worker's slot: what the forker finds there if the worker dies
# The slot's fields: busy flag, records kept past the slot (a count), the length of the
# unsent batch, then the connection in flight (marshalled: marshal reads no further than
# its end) and the batch (its entries, see sockd.exits, appended one a connection).
_BUSY, _KEPT, _BATCH_LENGTH = 0, slice(4, 8), slice(12, 16)
_DATA, _BATCH = 16, 1024
# The entries a batch datagram carries, in bytes (a longer batch goes in several).
_MAX_ENTRIES = MAX_DATAGRAM - BATCH_HEADER
RESPAWN_DELAY = 1.0  # a worker that failed young (or could not be forked) is replaced this late
KILL_GRACE = 5.0  # after max_duration, a handler that does not give up is killed this late


def start_worker(servers: list[ServiceServer], slot: mmap.mmap) -> int:
    """Fork a worker serving the listeners `servers` (one service); return its pid.

    `slot` is a shared page the worker keeps up to date, without a system
    call: the connection it serves (client, start) and the records it could
    not send yet. A worker that dies (SIGKILL) cannot send anything: the
    forker reads the slot instead, and logs the connection the worker was
    serving and counts its unsent records (see `Pools.left_over`).
    """
    _signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        pid = os.fork()
    except BaseException:
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        raise
    if pid:
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        return pid
    status = 1
    try:
        status = _Worker(servers, slot).run()
    except Exception as exc:  # noqa: BLE001 (a bug: report it as data; the forker replaces us)
        fields = {"service": servers[0].service.name, "exception": exception_fields(exc)}
        servers[0].shared.report("critical", "worker_crashed", fields)
    finally:
        os._exit(status)


class _Worker:
    """The loop of one worker process."""

    def __init__(self, servers: list[ServiceServer], slot: mmap.mmap) -> None:
        self.servers = servers
        self.slot = slot
        self.service = servers[0].service
        self.shared = servers[0].shared
        self.pid = os.getpid()  # made in the worker, after the fork
        self.busy = False
        # The connection being served, by descriptor: a handler may wrap its socket
        # (TLS), which leaves the socket object without one.
        self.request_fd = -1
        self.peer: Any = None  # its peer's address, as accept() gave it
        self.cut: str | None = None  # why it was cut short: "stop" or "overtime"
        self.stopping = False
        self.batch: list[bytes] = []  # the entries of connections not sent yet (sockd.exits)
        self.batch_due = 0.0
        self.denied = 0
        self.lost = 0  # connection records dropped while the forker did not read
        self.kept = False  # the slot counts records kept unsent
        self.number = 0  # of the connection served, counted from 1
        self.mirrored = 0  # bytes of the unsent batch copied into the slot

    def run(self) -> int:
        """Serve until told to stop, or until max_connections_per_child; return the status."""
        servers, poller, wakeup = self._set_up()
        limit = self.service.max_connections_per_child
        served = 0  # connections taken from the backlogs: served, refused or dropped
        try:
            while not self.stopping and (limit is None or served < limit):
                # Under load a connection is waiting already: accept first, wait if none.
                accepted = False
                for server in servers:
                    if self.stopping or (limit is not None and served >= limit):
                        break
                    try:  # one at a time: a stop or the limit is seen between two
                        taken = server.accept_ready(1)
                    except OSError as exc:  # the listener's error, not one connection's
                        fields = {"service": self.service.name, "error": exc.strerror}
                        self.shared.report("error", "accept_failed", fields)
                        time.sleep(0.1)
                        continue
                    if taken:
                        accepted = True
                        served += 1
                        self._due(time.monotonic())
                if not accepted:
                    self._wait(poller, wakeup)
        finally:
            for summary in self.shared.denials.due(math.inf):  # the refusals summed so far
                self.shared.report("info", "connections_denied", summary)
            self._flush()
        return 0

    def _set_up(self) -> tuple[list[ServiceServer], select.epoll, int]:
        """Become a worker: signals, descriptors, identity; return its servers, epoll, wake-up."""
        shared = self.shared
        # The forker's descriptors close next: keep our listeners under new numbers.
        fds = [os.dup(server.fileno()) for server in self.servers]
        for signum in HANDLED_SIGNALS:
            _signal.signal(signum, int(signal.SIG_DFL))
        shared.close_in_child()
        # Proxied connections' headers: read here, waiting (no loop polls them for us).
        shared.waiting, shared.waiting_fds = None, {}
        # Our own wake-up pipe: a SIGTERM that comes just before epoll_wait() still wakes it.
        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        if shared.child_identity is not None:
            become_ids(shared.child_identity)
        poller = select.epoll()
        for fd in fds:
            poller.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        poller.register(wakeup_read, select.EPOLLIN)
        servers = [_pooled(self, server, fd) for server, fd in zip(self.servers, fds, strict=True)]
        return servers, poller, wakeup_read

    def _wait(self, poller: select.epoll, wakeup: int) -> None:
        """Wait for a connection or a signal; send what is due meanwhile."""
        due = [self.batch_due] if self.batch else []
        if self.shared.denials.window_end:
            due.append(self.shared.denials.window_end)
        timeout = max(0.0, min(due) - time.monotonic()) if due else -1.0
        ready = poller.poll(timeout)  # a signal's handler runs once it returns
        if any(fd == wakeup for fd, _ in ready):
            with contextlib.suppress(BlockingIOError):
                os.read(wakeup, 512)
        self._due(time.monotonic())

    def serve(self, server: ServiceServer, request: Any, client_address: Any) -> None:
        """Serve a connection admitted by `server`, numbered and recorded (`_PooledServer`)."""
        started = time.monotonic()
        if server.proxy_address is None:
            client = unix_client(request, client_address) if server._unix else client_address  # noqa: SLF001
        else:
            client = server.record_client(request, client_address)
        self.number += 1
        self._in_flight(client, started)
        status = self._handle(server, request, client_address, client)
        # The first field is the connection's number (the forker puts our pid there).
        self._record((self.number, self.service.name, client, status, time.monotonic() - started))

    def _handle(
        self, server: ServiceServer, request: Any, client_address: Any, client: object
    ) -> int:
        """Serve a connection (`serve_connection`) within max_duration; return its status."""
        max_duration = self.service.max_duration
        self.cut = None
        # A datagram's request is (data, listening socket): there is no connection to cut.
        self.request_fd = request.fileno() if type(request) is not tuple else -1
        self.peer = client_address
        self.busy = True
        try:
            if max_duration:
                signal.setitimer(signal.ITIMER_REAL, max_duration)
            status = server.serve_connection(request, client_address)
        except SystemExit as exc:  # the handler ends its process: this worker leaves
            self.stopping = True
            status = exc.code & 0xFF if isinstance(exc.code, int) else 1  # as its exit status
        finally:
            if max_duration:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, self._on_alarm)
            self.busy = False
            self.request_fd = -1
        return status if self.cut is None else self._cut_short(client)

    def _cut_short(self, client: object) -> int:
        """Report a connection cut short (past max_duration: logged); return its status, 1."""
        if self.cut == "overtime":
            self._report(client, "warning", "max_duration_exceeded", action="abort")
        return 1

    def _report(self, client: object, level: str, event: str, **extra: Any) -> None:
        fields = {"service": self.service.name, **client_fields(client), "pid": self.pid, **extra}
        self.shared.report(level, event, fields)

    def _in_flight(self, client: object, started: float) -> None:
        """Note in the slot the connection now served (a plain store: no system call)."""
        data = marshal.dumps((client, started, self.number))  # type: ignore[arg-type]
        if len(data) <= _BATCH - _DATA:  # always, but for a UNIX peer's absurd path
            slot = self.slot
            slot[_DATA : _DATA + len(data)] = data
            slot[_BUSY] = 1

    def _record(self, record: tuple[Any, ...]) -> None:
        """Queue a connection's (number, service, client, status, seconds); sent when due.

        It is encoded once, here, as an entry (sockd.exits; without the
        service: the forker knows it), which the forker passes on unread.
        Meanwhile the unsent batch is mirrored in the slot (plain stores, no
        system call), where the forker finds it if a SIGKILL comes first.
        """
        number, _, client, status, seconds = record
        data = marshal.dumps((number, client, status, seconds))
        if len(data) <= _MAX_ENTRIES - 2:  # always, a client being an address
            if not self.batch:
                self.batch_due = time.monotonic() + BATCH_DELAY
            framed = len(data).to_bytes(2, "little") + data
            self.batch.append(framed)
            if len(self.batch) >= BATCH_SIZE or not self._mirror(framed):
                self._flush()
        else:
            self.lost += 1
        # In the batch (mirrored), sent, or counted in the slot. Killed before this, we are
        # not logged twice: the forker logs each connection's number once.
        self.slot[_BUSY] = 0

    def _mirror(self, framed: bytes) -> bool:
        """Append an entry to the batch in the slot; False if it does not fit (then send it).

        The batch's length is stored last: a worker killed while it copies
        leaves the batch as it was before this entry.
        """
        start = _BATCH + self.mirrored
        end = start + len(framed)
        if end > SLOT_SIZE:
            return False
        slot = self.slot
        slot[start:end] = framed
        self.mirrored = end - _BATCH
        slot[_BATCH_LENGTH] = self.mirrored.to_bytes(4, sys.byteorder)
        return True

    def _unmirror(self) -> None:
        """Empty the batch mirrored in the slot (its records were sent, or are counted)."""
        self.slot[_BATCH_LENGTH] = bytes(4)
        self.mirrored = 0

    def _due(self, now: float) -> None:
        """Send what the forker could not take, when due, and the denial summaries."""
        if self.batch and now >= self.batch_due:
            self._flush()
        if not self.shared.denials.window_end:
            return  # nothing to sum up (the usual case: no call)
        for summary in self.shared.denials.due(now):
            self.shared.report("info", "connections_denied", summary)

    def _flush(self) -> None:
        """Send the batch without waiting; what the forker cannot take now is kept for later.

        The entries go as they are, behind a header (sockd.exits.batch_header),
        in as few datagrams as hold them.
        """
        if not (self.batch or self.denied):
            return
        batch = self.batch
        if len(batch) > MAX_BATCH:
            lost = len(batch) - MAX_BATCH
            del batch[:lost]
            self.lost += lost
        while True:
            count = len(batch)
            entries = b"".join(batch)
            while len(entries) > _MAX_ENTRIES:  # a backlog: halved until a datagram holds it
                count //= 2
                entries = b"".join(batch[:count])
            last = marshal.loads(batch[count - 1][2:])[0] if count else 0  # noqa: S302 (ours)
            if not self.shared.emit(entries, last, self.denied, self.lost):
                self.batch_due = time.monotonic() + BATCH_DELAY
                # Counted, then out of the slot: killed in between, a record is counted
                # and logged, never neither.
                self.slot[_KEPT] = len(batch).to_bytes(4, sys.byteorder)  # counted if we die
                self._unmirror()
                self.kept = True
                return
            del batch[:count]
            self.denied = self.lost = 0
            if not batch:
                break
        # Sent, and only then out of the slot: killed before this, the forker has read
        # what we sent, and logs from the slot only what is numbered past it.
        self._unmirror()
        if self.kept:
            self.slot[_KEPT] = bytes(4)
            self.kept = False

    def _on_term(self, _signum: int, _frame: FrameType | None) -> None:
        if self.busy and self.stopping:  # a second SIGTERM: the connection is cut short
            self._cut("stop")
        self.stopping = True  # idle: the wake-up ends the wait; busy: after this connection

    def _on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        # If the handler does no I/O (or ignores its end), the next alarm kills us.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, KILL_GRACE)
        self._cut("overtime")

    def _cut(self, why: str) -> None:
        """Shut the connection being served down, so that the handler's I/O ends; no raise.

        Through a copy of its descriptor, which works whatever the handler made
        of the socket object (a TLS wrapper took it over, say). The descriptor
        is the connection's still if its peer is: a handler that closed it and
        opened another socket under its number keeps that one.
        """
        if self.cut is None:
            self.cut = why
        if self.request_fd < 0:
            return
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self.request_fd)) as copy:
            if copy.getpeername() == self.peer:
                copy.shutdown(socket.SHUT_RDWR)


def _pooled(worker: _Worker, server: ServiceServer, fd: int) -> ServiceServer:
    """Return the worker's server for `fd`, its copy of `server`'s socket (stream or datagram)."""
    if server.socket_type == socket.SOCK_DGRAM:
        # Imported here: a pool that serves streams only has one module less.
        from sockd.forker.datagrampool import PooledDatagramServer  # noqa: PLC0415

        return PooledDatagramServer(worker, server, fd)
    return _PooledServer(worker, server, fd)


class PooledBase(ServiceServer):
    """A worker's server (stream or datagram): admits as the forker's, serves in process.

    Each subclass sets `worker`, the `_Worker` that serves and counts.
    """

    worker: _Worker

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit as the forker does; count a refusal in the worker's next batch."""
        if super().verify_request(request, client_address):
            return True
        self.worker.denied += 1
        return False

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection (or datagram) in this process (`_Worker.serve`), not in a child."""
        self.worker.serve(self, request, client_address)


class _PooledServer(PooledBase):
    """A worker's server for one listener: the forker's, accepting on the worker's descriptor.

    It accepts, drops a connection reset in the backlog and admits (allow and
    deny: a pooled service has no limits) as the forker's `ServiceServer`
    does, through the same methods; `process_request` then serves in this
    process (`_Worker.serve`, through `serve_connection`) instead of forking.
    A connection cut short (`_Worker._cut`) fails as the cut made it: it is
    neither a handler error nor an idle peer.
    """

    def __init__(self, worker: _Worker, server: ServiceServer, fd: int) -> None:
        """Take over `fd`, the worker's copy of the forker's `server`'s listening socket."""
        at = server.endpoint
        sock = socket.socket(at.family, socket.SOCK_STREAM, 0, fileno=fd)
        endpoint = Endpoint(at.service, at.family, at.sockaddr, at.address, adopted=sock)
        super().__init__(endpoint, server.service, server.shared)
        # The forker's per-source and rate counts are not ours (pooled services have none).
        self.admission = Admission(Limits())
        self.worker = worker

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report a handler's exception, unless its connection was cut short."""
        if self.worker.cut is None:
            super().handle_error(request, client_address)

    def report_idle(self, request: Any, client_address: Any) -> None:
        """Report an idle connection's end, unless it was cut short (the timeout is the cut)."""
        if self.worker.cut is None:
            super().report_idle(request, client_address)


class Pools:
    """The forker's side: keeps every pooled service at its number of workers."""

    def __init__(
        self, servers: list[ServiceServer], report: Callable[[str, str, dict[str, Any]], None]
    ) -> None:
        self.services: dict[str, list[ServiceServer]] = {}  # pooled service -> its listeners
        for server in servers:
            if server.service.workers:
                self.services.setdefault(server.service.name, []).append(server)
        self.report = report
        self.workers: dict[int, tuple[str, float]] = {}  # pid -> service, start time
        self.slots: dict[int, mmap.mmap] = {}  # pid -> its slot (see start_worker)
        self.retired: set[int] = set()  # workers told to leave (reload, stop)
        self.due: list[tuple[float, str]] = []  # replacements that wait

    def fill(self, name: str | None = None) -> None:
        """Start workers until the service (or each) has its number of them."""
        for service, servers in self.services.items():
            if name is not None and service != name:
                continue
            wanted = servers[0].service.workers or 0  # (only pooled services are here)
            current = sum(
                1
                for pid, (owner, _) in self.workers.items()
                if owner == service and pid not in self.retired
            )
            shared = servers[0].shared
            for _ in range(wanted - current):
                # Imported here: a forker without a pool (each fork) has one module less.
                import mmap  # noqa: PLC0415

                slot = mmap.mmap(-1, SLOT_SIZE)  # shared with the worker
                try:
                    pid = start_worker(servers, slot)
                except OSError as exc:  # EAGAIN, ENOMEM: try again later (logged with back-off)
                    slot.close()
                    delay = shared.fork_failed(service, exc.strerror)
                    self.due.append((time.monotonic() + max(delay, RESPAWN_DELAY), service))
                    return
                if shared.fork_backoff.failures:
                    shared.fork_worked()
                # No later child inherits it: no other process can write what we log.
                slot.madvise(mmap.MADV_DONTFORK)
                self.slots[pid] = slot
                self.workers[pid] = (service, time.monotonic())
                shared.children.add(pid, service, "worker")

    def retire(self, name: str | None = None) -> None:
        """Tell the workers (of service `name`, or all) to finish their connection and leave."""
        for pid, (owner, _) in self.workers.items():
            if (name is None or owner == name) and pid not in self.retired:
                self.retired.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def exited(self, pid: int, failed: bool, *, replace: bool) -> dict[str, Any]:
        """Forget an exited worker, replacing it (later, if it failed young); return log fields."""
        service, started = self.workers.pop(pid)
        retired = pid in self.retired
        self.retired.discard(pid)
        if replace and not retired:
            young = time.monotonic() - started < RESPAWN_DELAY
            self.due.append(
                (time.monotonic() + (RESPAWN_DELAY if failed and young else 0), service)
            )
        return {"service": service, "retired": retired}

    def left_over(self, pid: int, status: int, received: int) -> tuple[bytes, int]:
        """Read an exited worker's slot: its unsent batch, the connection it died serving.

        Return the entries (sockd.exits) of connections numbered past
        `received` (the last the worker sent): those of its batch, then the
        one it was serving if any; and how many records it could not send.

        The connection's entry has the worker's exit code, or the signal that
        ended it as a negative number (`exits.served_fields`).
        """
        slot = self.slots.pop(pid)
        kept = int.from_bytes(slot[_KEPT], sys.byteorder)
        batch, torn = mirrored_batch(slot)
        kept += torn
        entries = []
        for number, client, code, seconds in batch:
            if number > received:
                entries.append(entry(number, client, code, seconds))
                received = number
        if slot[_BUSY]:
            code = os.waitstatus_to_exitcode(status)
            try:
                client, started, number = marshal.loads(slot[_DATA:_BATCH])  # noqa: S302 (plain values)
                if type(number) is not int or type(started) is not float:
                    raise TypeError  # noqa: TRY301 (handled as one with the rest)
                dying = entry(number, client, code, max(0.0, time.monotonic() - started))
            except (EOFError, ValueError, TypeError):  # written by the worker's handler, say
                number = received + 1
                dying = entry(number, None, code, 0.0)
            if number > received:  # not sent, nor in its batch: it died serving it
                entries.append(dying)
        slot.close()
        return b"".join(entries), kept

    def replace_due(self, now: float) -> None:
        """Start the replacements whose time has come."""
        waiting, self.due = self.due, []
        for when, service in waiting:
            if when <= now:
                self.fill(service)
            else:
                self.due.append((when, service))

    def next_due(self) -> float | None:
        """Return when the next replacement is due, if one waits."""
        return min((when for when, _ in self.due), default=None)


def mirrored_batch(slot: mmap.mmap) -> tuple[list[Entry], int]:
    """Read the unsent batch a worker mirrored in its slot; return it, and how many were unreadable.

    The slot is the worker's memory, which its handler could have written:
    its entries are read as the daemon reads a batch (`exits.read_entries`).
    """
    length = min(int.from_bytes(slot[_BATCH_LENGTH], sys.byteorder), SLOT_SIZE - _BATCH)
    return read_entries(slot[_BATCH : _BATCH + length])
