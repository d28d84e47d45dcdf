"""Pooled services: pre-forked workers, each serving connections one after another.

A service with `workers = N` trades isolation for speed: N processes forked
at start accept on the service's listener themselves (an exclusive epoll
wait, so one connection wakes one worker) and serve each connection in
process. A worker that has served `max_connections_per_child` connections
exits and the forker starts another; so does a reload (the old workers finish
their connection and leave) and a worker that dies. The forker's own loop
never accepts on a pooled listener.

A worker stops gracefully at its first SIGTERM (at once when idle, after the
current connection when busy) and aborts its connection at a second one; the
forker's stop phases send the first at once and the second at stop_timeout.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module behind signal
import contextlib
import errno
import os
import select
import signal
import socket
import time

from sockd.programs import become
from sockd.server import HANDLED_SIGNALS, ServiceServer
from sockd.shared import client_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

BATCH_DELAY = 0.05  # a worker's connection records wait this long to go out in one write
BATCH_SIZE = 16  # records per write: each encodes to well under PIPE_BUF / 16
RESPAWN_DELAY = 1.0  # a worker that failed within this long of its start is replaced this late
_TRANSIENT_ACCEPT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}


class _Stop(BaseException):
    """SIGTERM reached an idle worker, or a busy one a second time."""


class _Overtime(BaseException):
    """The connection outlived max_duration (SIGALRM)."""


def start_worker(server: ServiceServer) -> int:
    """Fork a worker for `server`; return its pid. The worker ends in `os._exit`."""
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
        status = _Worker(server).run()
    except _Stop:  # before it served anything
        status = 0
    finally:
        os._exit(status)


class _Worker:
    """The loop of one worker process."""

    def __init__(self, server: ServiceServer) -> None:
        self.server = server
        self.service = server.service
        self.shared = server.shared
        self.busy = False
        self.stopping = False
        self.batch: list[tuple[Any, ...]] = []
        self.batch_due = 0.0
        self.denied = 0
        self.listener = -1

    def run(self) -> int:
        shared = self.shared
        listener = os.dup(self.server.fileno())  # the forker's descriptors close next
        for signum in HANDLED_SIGNALS:
            _signal.signal(signum, int(signal.SIG_DFL))
        shared.close_in_child()  # the forker's wake-up pipe among them
        # Our own: a SIGTERM that comes just before epoll_wait() still wakes it.
        wakeup_read, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGALRM, self._on_alarm)
        _signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        if shared.child_identity is not None:
            become(shared.child_identity)
        self.listener = listener
        sock = socket.socket(self.server.socket.family, socket.SOCK_STREAM, 0, fileno=listener)
        poller = select.epoll()
        poller.register(listener, select.EPOLLIN | select.EPOLLEXCLUSIVE)
        poller.register(wakeup_read, select.EPOLLIN)
        limit = self.service.record["max_connections_per_child"]
        served = 0
        try:
            while not self.stopping and (limit is None or served < limit):
                # Under load a connection is waiting already: accept first, wait if none.
                try:
                    fd, client_address = sock._accept()  # type: ignore[attr-defined]  # noqa: SLF001
                except BlockingIOError:
                    self._wait(poller)
                    continue
                except OSError as exc:
                    if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                        fields = {"service": self.service.name, "error": exc.strerror}
                        shared.report("error", "accept_failed", fields)
                        time.sleep(0.1)
                    continue
                served += 1
                request = socket.socket(sock.family, socket.SOCK_STREAM, 0, fileno=fd)
                self._serve(request, client_address)
        except _Stop:
            pass
        self._flush()
        return 0

    def _wait(self, poller: select.epoll) -> None:
        """Wait for a connection, or a signal; send the batch when it is due."""
        timeout = -1.0 if not self.batch else max(0.0, self.batch_due - time.monotonic())
        ready = poller.poll(timeout)  # a signal's handler runs once it returns
        if not ready:
            self._flush()
        for fd, _ in ready:
            if fd != self.listener:  # the wake-up pipe
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 512)

    def _serve(self, request: socket.socket, client_address: Any) -> None:
        server, service = self.server, self.service
        started = time.monotonic()
        status = 0
        self.busy = True
        try:
            reason = service.rules.refusal(client_address)
            if reason is not None:
                self._refuse(request, client_address, reason, started)
                return
            if service.idle_timeout:
                request.settimeout(service.idle_timeout)
            if service.max_duration:
                signal.setitimer(signal.ITIMER_REAL, service.max_duration)
            server.finish_request(request, client_address)
        except TimeoutError:
            status = self._timed_out(request, client_address)
        except _Overtime:
            self._report(request, client_address, "warning", "max_duration_exceeded")
            status = 1
        except _Stop:
            self.stopping = True  # a second SIGTERM: this connection is cut short
            status = 1
        except Exception:  # noqa: BLE001 (reported by handle_error; the worker goes on)
            server.handle_error(request, client_address)
            status = 1
        finally:
            if service.max_duration:
                signal.setitimer(signal.ITIMER_REAL, 0)
            self.busy = False
            with contextlib.suppress(OSError):
                server.shutdown_request(request)
        client = client_address or client_text(request, client_address)
        self._record((os.getpid(), service.name, client, status, time.monotonic() - started))

    def _refuse(self, request: Any, client_address: Any, reason: str, now: float) -> None:
        self.denied += 1
        self.server._refuse(request, client_address, reason, now)  # noqa: SLF001
        self._record(None)

    def _timed_out(self, request: Any, client_address: Any) -> int:
        if not self.service.idle_timeout:
            self.server.handle_error(request, client_address)
            return 1
        self._report(request, client_address, "info", "idle_timeout")
        return 0

    def _report(self, request: Any, client_address: Any, level: str, event: str) -> None:
        fields: dict[str, Any] = {
            "service": self.service.name,
            "client": client_text(request, client_address),
            "pid": os.getpid(),
        }
        if event == "idle_timeout":
            fields["seconds"] = self.service.idle_timeout
        else:
            fields["action"] = "abort"
        self.shared.report(level, event, fields)

    def _record(self, record: tuple[Any, ...] | None) -> None:
        if record is not None:
            if not self.batch:
                self.batch_due = time.monotonic() + BATCH_DELAY
            self.batch.append(record)
        if len(self.batch) >= BATCH_SIZE or (self.batch and time.monotonic() >= self.batch_due):
            self._flush()

    def _flush(self) -> None:
        if self.batch or self.denied:
            self.shared.emit(("served", self.batch, self.denied))
            self.batch = []
            self.denied = 0

    def _on_term(self, _signum: int, _frame: FrameType | None) -> None:
        if self.busy and not self.stopping:
            self.stopping = True  # finish this connection first
            return
        raise _Stop

    def _on_alarm(self, _signum: int, _frame: FrameType | None) -> None:
        raise _Overtime


class Pools:
    """The forker's side: keeps every pooled service at its number of workers."""

    def __init__(self) -> None:
        self.workers: dict[int, tuple[ServiceServer, float]] = {}  # pid -> server, start time
        self.retired: set[int] = set()  # workers told to leave (reload, stop)
        self.due: list[tuple[float, ServiceServer]] = []  # replacements that wait

    def fill(self, server: ServiceServer) -> None:
        """Start workers until the service has its number of them."""
        wanted = server.service.record["workers"] or 0
        current = sum(
            1
            for pid, (owner, _) in self.workers.items()
            if owner is server and pid not in self.retired
        )
        for _ in range(wanted - current):
            pid = start_worker(server)
            self.workers[pid] = (server, time.monotonic())
            server.shared.children.add(pid, server.service.name, "worker")

    def retire(self, server: ServiceServer | None = None) -> None:
        """Tell the workers (of `server`, or all) to finish their connection and leave."""
        for pid, (owner, _) in self.workers.items():
            if (server is None or owner is server) and pid not in self.retired:
                self.retired.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def exited(self, pid: int, failed: bool, *, replace: bool) -> dict[str, Any]:
        """Forget an exited worker, replacing it (later, if it failed young); return log fields."""
        server, started = self.workers.pop(pid)
        retired = pid in self.retired
        self.retired.discard(pid)
        if replace and not retired:
            young = time.monotonic() - started < RESPAWN_DELAY
            self.due.append((time.monotonic() + (RESPAWN_DELAY if failed and young else 0), server))
        return {"service": server.service.name, "retired": retired}

    def replace_due(self, now: float) -> None:
        """Start the replacements whose time has come."""
        waiting, self.due = self.due, []
        for when, server in waiting:
            if when <= now:
                self.fill(server)
            else:
                self.due.append((when, server))

    def next_due(self) -> float | None:
        """Return when the next replacement is due, if one waits."""
        return min((when for when, _ in self.due), default=None)
