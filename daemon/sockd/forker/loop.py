"""The forker's loop: accept below the caps, fork or spawn, reap, report, obey the daemon.

Started by `sockd.forker`, which also describes the records it exchanges with
the daemon.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import math
import os
import select
import signal
import socket
import time

from sockd import ipc
from sockd.exits import client_fields, exit_fields
from sockd.forker import forkhooks, typecache
from sockd.forker.caps import Caps
from sockd.forker.childlog import Inbox
from sockd.forker.pool import Pools
from sockd.forker.programs import StderrWatch
from sockd.forker.proxied import Waiting
from sockd.forker.service import HANDLED_SIGNALS, ForkPaused, ServiceServer
from sockd.forker.shared import Service, Shared
from sockd.forker.waits import Waits
from sockd.spec import WireError, services_from_wire
from sockd.timers import Timers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from types import FrameType
    from typing import Any

    from sockd.exits import RawExit

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL (at stop, and past max_duration)
MAX_ACCEPT_BURST = 16  # connections accepted per listener per turn, at most
MAX_ANSWER_BURST = 64  # datagrams a built-in answers per listener per turn, at most
ACCEPT_PAUSE = 0.1  # seconds without accepting after accept(2) fails (EMFILE, ENOBUFS)
IDLE_WAKEUP = 5.0  # the longest poll() waits with nothing due (the heartbeat comes first)
REAP_POLL = 0.1  # the longest an exit waits to be reaped, when nothing waits for it
REAP_INTERVAL = 0.01  # under load, exits are reaped at most this often (unless a cap waits)
STATUS_INTERVAL = 0.5  # counters go to the daemon at most this often (STATUS= is 1/s)
EVENTS_DELAY = 0.05  # exit records wait this long to go to the daemon in one write
INBOX_DELAY = 0.02  # children's reports wait this long in the kernel after a read (no wake-up)
EXITS_PER_RECORD = 16  # a batch this long goes at once (then split by size: see ipc.split)
# Events wait in a queue while the daemon does not read them (it stalls on its
# log); past these bounds they are dropped, and counted (`events_dropped`).
QUEUE_BYTES = 4 << 20
QUEUE_RECORDS = 20000
DROPPABLE = frozenset(("log", "closed", "served", "alive", "status", "crowded"))
DRAIN_TIMEOUT = 1.0  # seconds an exiting forker waits for its queued events to go out
HEARTBEAT = 2.0  # the daemon hears from us at least this often (its watchdog needs it)
PRUNE_INTERVAL = 10.0  # refilled per-source rate buckets are dropped this often
LONG_LIVED = 1.0  # seconds: a connection open this long counts toward renew_forker_after
CROWD_CHECK = 1.0  # how often the long-lived connections are counted (past the threshold)


class StopPhase(enum.Enum):
    """How far the forker is in stopping (see `Forker.stop`)."""

    SERVING = "serving"  # not stopping
    WAIT = "wait"  # accepts no more; its children may finish until the stop's deadline
    TERM = "term"  # past it: they got SIGTERM, and get SIGKILL KILL_GRACE later
    KILL = "kill"  # they got SIGKILL (`quit`, or past the grace)


# By their names here too: an Enum's class attribute costs about 100 ns more a
# lookup (CPython 3.11), and the loop looks at least once a turn.
SERVING, WAIT, TERM, KILL = StopPhase


class Forker:
    """The forker's loop: accept below the caps, fork, reap, report; obey the daemon."""

    def __init__(  # noqa: PLR0917 (built in one place, from the set-up record)
        self,
        servers: list[ServiceServer],
        shared: Shared,
        control: ipc.Reader,
        events: int,
        max_children: int,
        stop_timeout: float,
        renew_after: int = 0,
        *,
        standby: bool = False,
    ) -> None:
        """Serve `servers`; obey commands from `control`, write events to `events`.

        A forker on `standby` accepts nothing until the daemon's `take_over`.
        """
        self.servers = servers
        self.shared = shared
        self.control = control
        self.events = ipc.Sender(
            events, max_bytes=QUEUE_BYTES, max_records=QUEUE_RECORDS, droppable=DROPPABLE
        )
        self.events.watch = self._watch_events
        self.malformed = ipc.Tally()
        control.malformed = self._malformed
        self.pid = os.getpid()
        self.stop_timeout = stop_timeout  # for a SIGTERM sent to the forker itself
        self.renew_after = renew_after  # long-lived children that make us "crowded"; 0: never
        self.standby = standby
        self.retired = False  # accepts no more; reports its children until the last ends
        self.reported_children: tuple[int, dict[str, int]] = (0, {})
        services = [server.service for server in servers]
        self.caps = Caps(shared.children, max_children, services, self.report)
        self.poller = select.epoll()
        # Connections whose PROXY header is not complete yet: polled here too.
        self.waiting = shared.waiting = Waiting(self.poller)
        shared.waiting_fds = self.waiting.connections
        self.caps.waiting = self.waiting.counts
        self.pending: list[int] = []
        self.listening: dict[int, ServiceServer] = {}
        self.answering: dict[int, ServiceServer] = {}  # `inline` servers polled (no cap)
        # Wait services' sockets, polled apart: readable, they start a program (see waits).
        self.waits = Waits(shared, self.report)
        self.wait_listening: dict[int, ServiceServer] = {}
        self.accepting_servers = sum(1 for server in servers if not server.service.wait)
        self.bursts: dict[ServiceServer, int] = {}
        self.watching_exits = False
        self.stop_phase = SERVING
        self.last_status: tuple[int | tuple[str, ...], ...] = ()
        self.batch: list[RawExit] = []  # exits not yet sent
        # Under load, exits are reaped no sooner than this: a bound on a rate, not a
        # timer (nothing is due then; REAP_POLL bounds how long an exit waits).
        self.reap_due = 0.0
        self.own_fds: tuple[int, ...] = ()  # what a child closes, besides stderr pipes
        self.stderr = StderrWatch(self.poller, self._stderr_line, self._update_child_fds)
        self.pools = Pools(servers, self.report)
        dropped = self.events.count_dropped
        # Handlers' stderr lines share programs' budget.
        self.inbox = Inbox(
            shared.children, self.pools.workers, self._send, dropped, self.stderr.budget
        )
        self.inbox.become_stderr()
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        shared.report = self.report
        shared.closed = self.closed
        shared.watch_stderr = self.stderr.watch
        shared.drain_stderr = self._drain_stderr
        shared.after_reap = self.inbox.reaped
        shared.emit = self._emit
        shared.workers = self.pools.workers
        shared.worker_exited = self._worker_exited
        self.timers = self._timers()

    def _timers(self) -> Timers:
        """Return what the loop does at given times, in the order it does what is due at once.

        One line a timer (see sockd.timers); a followed one's due time is kept elsewhere.
        """
        timers = Timers()
        timers.add("stop", self._advance_stop)  # the stop's deadline, then the grace
        timers.follow("max_duration", self._overdue_at, self._enforce_deadlines)
        timers.follow("summaries", self._summaries_at, self._summaries)  # the bounded logs'
        timers.follow("respawn", self._respawn_at, self._respawn)  # pooled workers'
        timers.follow("headers", self.waiting.next_deadline, self._headers_due)  # proxy_timeout
        timers.follow("wait_pause", self.waits.resumes_at, self._wait_resume)  # looping programs
        timers.add("crowd_check", self._check_crowded)  # set while renew_after children are open
        timers.add("prune", self._prune, 0.0)  # every PRUNE_INTERVAL
        timers.add("pause", self._resume)  # accept(2) or fork(2) failed: accepting waits
        timers.add("status", self._send_status)  # the counts changed: they go STATUS_INTERVAL on
        timers.add("batch", self._flush_batch)  # the first exit of a batch waits EVENTS_DELAY
        timers.add("inbox", self._poll_inbox)  # children's reports wait INBOX_DELAY
        timers.add("heartbeat", self._heartbeat, 0.0)  # every HEARTBEAT, for the watchdog
        return timers

    def report(self, level: str, event: str, fields: dict[str, Any]) -> None:
        """Send a log event to the daemon (from the forker), or to the forker (from a child)."""
        if os.getpid() != self.pid:
            self.inbox.child_send(("log", level, event, fields))
            return
        self._flush()  # keep events in order
        self._send(("log", level, event, fields))

    def _send(self, record: ipc.Record, data: bytes | None = None) -> bool:
        """Send a record to the daemon without waiting: queued, or dropped and counted."""
        try:
            return self.events.send(record, data)
        except ipc.TooLarge:
            self.events.count_dropped(*ipc.dropped_kind(record))
            return False

    def _watch_events(self, wanted: bool) -> None:
        """Poll the events socket for writing exactly while records wait in its queue."""
        if wanted:
            self.poller.register(self.events.fd, select.EPOLLOUT)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.poller.unregister(self.events.fd)

    def _malformed(self, error: str) -> None:
        fields = self.malformed.add(error)
        if fields is not None:
            self.report("error", "command_malformed", fields)

    def _drain_stderr(self, pid: int) -> None:
        self.stderr.drain(pid)
        self.inbox.drain(pid)

    def closed(self, raw: RawExit) -> None:
        """Queue a reaped child's exit for the daemon, which decodes and logs it.

        Exits go in batches, encoded and sent once per batch (split by size,
        see `ipc.split`): less memory touched per connection, and the daemon
        wakes up once per batch.
        """
        if not self.batch:
            self.timers.set("batch", time.monotonic() + EVENTS_DELAY)
        self.batch.append(raw)
        if len(self.batch) >= EXITS_PER_RECORD:
            self._flush()

    def _flush(self) -> None:
        if self.batch:
            for record, data in ipc.split("closed", self.batch):
                self._send(record, data)
            self.batch = []
            self.timers.clear("batch")

    def _flush_batch(self, _now: float) -> None:
        self._flush()

    def _emit(self, entries: bytes, last: int, denied: int, lost: int) -> bool:
        """Send a pooled worker's batch to the forker (from the worker); False if not sent."""
        return self.inbox.served_send(entries, last, denied, lost)

    def _worker_exited(self, raw: RawExit) -> None:
        pid, service, _, status, duration = raw[:5]
        # What it sent just before it exited may have come after the last read: read it now,
        # while its pid is still known to be a worker's.
        self.inbox.read()
        self.inbox.drain(pid)
        entries, kept = self.pools.left_over(pid, status, self.inbox.received.pop(pid, 0))
        if entries:  # its unsent batch, and the connection it died serving
            self._send(("served", [(pid, service, entries)], 0))
        if kept:
            self.events.count_dropped("connection_closed", kept)
        failed = status != 0
        fields = self.pools.exited(pid, failed, replace=self.stop_phase is SERVING)
        fields |= {"pid": pid, **exit_fields(status), "duration": round(duration, 3)}
        self.report("warning" if failed else "info", "worker_exited", fields)

    def _stderr_line(self, fields: dict[str, Any], line: str) -> None:
        client = client_fields(fields["client"])
        self.report("info", "program_stderr", {**fields, **client, "line": line})

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a child forked per connection, which inherits handlers
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # the default action: end, or ignore SIGCHLD
            return
        self.pending.append(signum)  # NO LOGGING: the loop acts on it

    def run(self) -> None:
        """Serve until told to stop and every child has ended."""
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            if signum != signal.SIGCHLD:  # see _watch_exits
                signal.signal(signum, self._record_signal)
        self.poller.register(self._wakeup_read, select.EPOLLIN)
        self.poller.register(self.control.fd, select.EPOLLIN)
        self.poller.register(self.inbox.poller.fileno(), select.EPOLLIN)
        # Not the wake-up pipe's write end: a signal that reaches a child writes
        # to it before the inherited handler runs (a closed descriptor's number
        # could be the handler's own file by then).
        # Nor the socket of children's reports (or fd 2): they send on it.
        own = [server.fileno() for server in self.servers]
        channel = (self.control.fd, self.events.fd, *self.inbox.fds())
        self.own_fds = (*own, self.poller.fileno(), self._wakeup_read, *channel)
        self._update_child_fds()
        self._update_accepting()
        self._obey()  # commands that came with the set-up record (an early stop)
        self._warm_type_cache()
        # Everything loaded so far lives as long as the forker: keep the
        # collector's hands off it, so no child copies those pages to scan them.
        gc.freeze()
        if self.stop_phase is SERVING and not self.standby:  # not stopped before it began
            self.pools.fill()
        self._send(("ready",))
        while self.stop_phase is SERVING or len(self.shared.children) or self.waiting.connections:
            self._turn()
        self.inbox.read()
        self._summaries(math.inf)  # what the bounded logs still hold: we are ending
        backoff = self.shared.fork_backoff
        if backoff.unlogged:  # fork failures since the last line (and not recovered)
            fields = {"failures": backoff.failures, "unlogged": backoff.unlogged}
            self.report("error", "fork_failed", fields)
        self._flush()
        self._send(("status", 0, *self.shared.stats.as_tuple(), ()))  # the final counts
        self._close()
        self.events.drain(DRAIN_TIMEOUT)

    # The loop is written for the fewest memory pages touched per connection:
    # between two forks, every page the forker writes (a reference count is
    # enough) is copied for it while a child still shares it. Hence raw epoll,
    # no exceptions on the common path, and no SIGCHLD wake-up per child
    # unless a cap or a stop is waiting for exits (see _watch_exits).
    def _turn(self) -> None:
        # Exits of workers wake us (SIGCHLD is watched while a pool runs); other exits
        # are reaped on the next turn, at the latest after REAP_POLL.
        per_connection = len(self.shared.children) - len(self.pools.workers)
        longest = REAP_POLL if per_connection else IDLE_WAKEUP
        timeout = min(self.timers.next_due() - time.monotonic(), longest)
        ready = self.poller.poll(max(0.0, timeout))
        for fd, _ in ready:
            self._dispatch(fd)
        while self.pending:
            if self.pending.pop() == signal.SIGTERM:
                self.stop(self.stop_timeout)
        children = len(self.shared.children)
        now = time.monotonic()
        # wait4(-1) looks at every child in the kernel (10 us each call with 1,000 of
        # them): under load, reap the exits of several connections at a time.
        if children and (self.watching_exits or not ready or now >= self.reap_due):
            self.reap_due = now + REAP_INTERVAL
            # Every server's hook reaps the children of all (one registry): call one.
            self.servers[0].service_actions()
            if len(self.shared.children) != children:
                self._update_accepting()
                if self.retired:
                    self._report_children()
        self._watch_counts(now)
        self.timers.run(now)

    def _status(self) -> tuple[int, int, int, int, tuple[str, ...]]:
        """Return what a `status` record tells: active, served, denied, errors, at_cap."""
        active = len(self.shared.children) - len(self.pools.workers)
        return (active, *self.shared.stats.as_tuple(), self.caps.at_cap)

    def _watch_counts(self, now: float) -> None:
        """Set the timers the counts call for: a status to send, a crowd to check."""
        status = self._status()
        active = status[0]
        timers = self.timers
        if status == self.last_status:
            timers.clear("status")
        elif not timers.is_set("status"):
            timers.set("status", now + STATUS_INTERVAL)
        if self.renew_after and active >= self.renew_after and not timers.is_set("crowd_check"):
            timers.set("crowd_check", now + CROWD_CHECK)

    def _send_status(self, _now: float) -> None:
        status = self._status()
        if status != self.last_status:
            self._flush()
            if self._send(("status", *status)):
                self.last_status = status

    def _heartbeat(self, now: float) -> None:
        self.timers.set("heartbeat", now + HEARTBEAT)
        self._send(("alive",))
        self.events.report_dropped()  # what children sent that we refused, say

    def _prune(self, now: float) -> None:
        """Drop the per-source buckets of sources gone quiet (refilled)."""
        self.timers.set("prune", now + PRUNE_INTERVAL)
        for admission in self.shared.admissions.values():
            admission.forget_full(now)

    def _resume(self, _now: float) -> None:
        self._update_accepting()  # the pause is over

    def _poll_inbox(self, _now: float) -> None:
        self.poller.modify(self.inbox.poller.fileno(), select.EPOLLIN)

    def _overdue_at(self) -> float:
        deadline = self.shared.children.next_deadline()
        return math.inf if deadline is None else deadline

    def _enforce_deadlines(self, now: float) -> None:
        for pid, service, client, action in self.shared.children.enforce_deadlines(now, KILL_GRACE):
            fields = {"service": service, **client_fields(client), "pid": pid, "action": action}
            self.report("warning", "max_duration_exceeded", fields)

    def _wait_resume(self, now: float) -> None:
        self.waits.resume(now)
        self._update_accepting()

    def _respawn_at(self) -> float:
        # (No respawn while stopping: no deadline for it.)
        if not self.pools.due or self.stop_phase is not SERVING:
            return math.inf
        return min(when for when, _ in self.pools.due)

    def _respawn(self, now: float) -> None:
        if self.stop_phase is SERVING:  # (a stop may have come in this turn)
            self.pools.replace_due(now)

    def _summaries_at(self) -> float:
        """Return when a bounded log's summary is due, or the end of a fork-failure episode."""
        backoff = self.shared.fork_backoff
        return min(
            self.shared.denials.window_end or math.inf,
            self.caps.log.window_end or math.inf,
            self.stderr.budget.window_end or math.inf,
            backoff.last + backoff.QUIET if backoff.worked else math.inf,
        )

    def _summaries(self, now: float) -> None:
        """Log the bounded logs' summaries due at `now` (math.inf: all, as the forker ends)."""
        for summary in self.shared.denials.due(now):
            self.report("info", "connections_denied", summary)
        for summary in self.caps.log.due(now):
            fields = {"service": summary["service"], "cap": summary["reason"]}
            fields |= {"times": summary["count"], "seconds": summary["seconds"]}
            self.report("warning", "caps_reached", fields)
        if self.stderr.budget.window_end:
            for summary in self.stderr.budget.due(now):
                self.report("warning", "program_stderr_dropped", summary)
        if self.shared.fork_backoff.failures:
            self.shared.fork_summary(now)

    def _dispatch(self, fd: int) -> None:
        server = self.listening.get(fd)
        if server is not None:
            self._accept(server)
        elif fd == self._wakeup_read:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wakeup_read, 4096)
        elif fd == self.control.fd:
            self._obey()
        elif fd == self.events.fd:
            self.events.flush()
        elif fd == self.inbox.poller.fileno():
            # A pooled worker sends a record per connection: read them INBOX_DELAY apart.
            self.inbox.read()
            self.poller.modify(fd, 0)
            self.timers.set("inbox", time.monotonic() + INBOX_DELAY)
        elif fd in self.stderr.pipes:
            self.stderr.read(fd)
        elif fd in self.waiting.connections:
            self._header(fd)
        elif fd in self.answering:
            self._answer(self.answering[fd])
        elif fd in self.wait_listening:
            self._start_waiting(self.wait_listening[fd])

    def _answer(self, server: ServiceServer) -> None:
        """Answer a burst of datagrams in the forker (a built-in over UDP: nothing forked)."""
        try:
            server.accept_ready(MAX_ANSWER_BURST)
        except OSError as exc:
            fields = {"service": server.service.name, "error": exc.strerror}
            self.report("error", "accept_failed", fields)
            self.timers.set("pause", time.monotonic() + ACCEPT_PAUSE)
            self._update_accepting()

    def _start_waiting(self, server: ServiceServer) -> None:
        """Start a wait service's program on its socket, which is not polled until it exits."""
        try:
            self.waits.start(server)
        except ForkPaused as paused:
            self.timers.set("pause", time.monotonic() + paused.delay)
        self._update_accepting()

    def _header(self, fd: int) -> None:
        """Read more of a PROXY header; serve its connection once it is complete."""
        try:
            self.waiting.ready(fd)
        except ForkPaused as paused:
            self.timers.set("pause", time.monotonic() + paused.delay)
        if fd not in self.waiting.connections:
            self._waited()

    def _headers_due(self, now: float) -> None:
        self.waiting.expire(now)
        self._waited()

    def _waited(self) -> None:
        """Look at the listeners again if a capped service may have room (a header wait ended)."""
        if self.caps.at_cap or self.timers.is_set("pause"):
            self._update_accepting()

    def _obey(self) -> None:
        for record in self.control.read():
            command = record[0]
            problem = ipc.problem(record, ipc.COMMANDS)
            if problem is not None or command == "setup":
                self._malformed(problem or "a second 'setup' record")
            elif command == "reload":
                self._reload(*record[1:])  # type: ignore[arg-type]
            elif command == "stop":
                self.stop(float(record[1]))  # type: ignore[arg-type]
            elif command == "quit":
                self.quit()
            elif command == "retire":
                self.retire()
            elif command in ("take_over", "elsewhere"):
                self.caps.elsewhere = (int(record[1]), dict(record[2]))  # type: ignore[call-overload]
                if command == "take_over" and self.standby and self.stop_phase is SERVING:
                    self.standby = False
                    self.pools.fill()
                self._update_accepting()
        if self.control.eof:
            self.poller.unregister(self.control.fd)
            self.quit()  # the daemon is gone: nobody would log or supervise us

    def _reload(
        self,
        seq: int,
        records: list[object],  # ServiceSpec.to_wire() each
        max_children: int,
        stop_timeout: float,
        renew_after: int,
    ) -> None:
        try:
            specs = services_from_wire(records)  # decoded once, here
        except WireError as exc:
            self._malformed(f"'reload' record of the wrong shape: {exc}")
            return
        try:
            identity = self.shared.child_identity
            services = {spec.name: Service(spec, identity) for spec in specs}
            for server in self.servers:  # a datagram socket from systemd: what check could not see
                problem = server.cannot_serve(services[server.service.name])
                if problem is not None:
                    raise ValueError(problem)  # noqa: TRY301 (reported as any other failure)
            forkhooks.note_threads()
        except Exception as exc:  # noqa: BLE001 (a handler that no longer imports)
            self._send(("reload_failed", seq, f"{type(exc).__name__}: {exc}"))
            return
        for server in self.servers:
            server.apply(services[server.service.name])
        self._warm_type_cache()
        gc.freeze()  # what the reload loaded (handlers, the PROXY parser), as at the start
        for name in self.pools.services:  # new workers take over; the old ones finish and leave
            self.pools.retire(name)
            if not self.standby and self.stop_phase is SERVING:
                self.pools.fill(name)
        self.caps.set(max_children, services.values())
        self._unpoll_switched()
        self.stop_timeout = stop_timeout
        self.renew_after = renew_after
        self._update_accepting()
        self._send(("reloaded", seq))

    def _accept(self, server: ServiceServer) -> None:
        # Accept one per turn while connections come one at a time (trying a
        # second would end in BlockingIOError, an exception per connection);
        # while several are served at once and the backlog keeps up, double the
        # batch, so a burst costs fewer turns.
        burst = self.bursts.get(server, 1)
        room = self.caps.room(server.service)
        budget = min(burst, room)
        if not budget:  # another service took the last free place meanwhile
            self._update_accepting()
            return
        reaped = self.shared.reaped
        try:
            taken = server.accept_ready(budget)
        except ForkPaused as paused:  # the backlog waits until forking may work again
            self.timers.set("pause", time.monotonic() + paused.delay)
            self._update_accepting()
            return
        except OSError as exc:
            self.report(
                "error", "accept_failed", {"service": server.service.name, "error": exc.strerror}
            )
            self.timers.set("pause", time.monotonic() + ACCEPT_PAUSE)
            self._update_accepting()  # level-triggered: stop polling, or it fires at once
            return
        busy = taken == budget and len(self.shared.children) > 1
        self.bursts[server] = min(burst * 2, MAX_ACCEPT_BURST) if busy else 1
        # Each connection taken lowers the room by one at most (refused ones not at all);
        # children reaped meanwhile (see verify_request) may give a capped listener room.
        if taken >= room or self.shared.reaped != reaped:
            self._update_accepting()

    def _update_accepting(self) -> None:
        """Poll exactly the listeners that may accept now (below every cap)."""
        accepting = self.stop_phase is SERVING and not self.standby
        paused = self.timers.is_set("pause")
        at_cap: list[Service] = []
        unused = self.caps.unused()  # once, not once per listener
        for server in self.servers:
            if server.service.workers:
                continue  # its workers accept
            if server.inline:
                self._poll(server, self.answering, accepting and not paused)
                continue
            if server.service.wait:  # polled while no program of its runs; never `at_cap`
                wanted = accepting and not paused and self.waits.idle(server)
                has_room = self.caps.room(server.service, unused) > 0
                self._poll(server, self.wait_listening, wanted and has_room)
                continue
            has_room = accepting and self.caps.room(server.service, unused) > 0
            if accepting and not has_room:
                at_cap.append(server.service)
            wanted = has_room and not paused
            fd = server.socket.fileno()
            if wanted and fd not in self.listening:
                self.poller.register(fd, select.EPOLLIN)
                self.listening[fd] = server
            elif not wanted and fd in self.listening:
                self.poller.unregister(fd)
                del self.listening[fd]
        stopping = self.stop_phase is not SERVING
        # (Not for a wait service's program: its exit is reaped within REAP_POLL.)
        polled = len(self.listening) + len(self.answering)
        self._watch_exits(stopping or polled < self.accepting_servers)
        self.caps.note(at_cap)

    def _unpoll_switched(self) -> None:
        """Stop polling a datagram socket whose service a reload turned from built-in to forked.

        Or the other way: `_update_accepting` then polls it where it now belongs.
        """
        for polled, inline in ((self.answering, False), (self.listening, True)):
            for fd, server in list(polled.items()):
                if server.inline is inline:
                    self.poller.unregister(fd)
                    del polled[fd]

    def _poll(self, server: ServiceServer, polled: dict[int, ServiceServer], wanted: bool) -> None:
        fd = server.socket.fileno()
        if wanted and fd not in polled:
            self.poller.register(fd, select.EPOLLIN)
            polled[fd] = server
        elif not wanted and fd in polled:
            self.poller.unregister(fd)
            del polled[fd]

    def _watch_exits(self, watch: bool) -> None:
        """Be woken by SIGCHLD only while a cap or a stop waits for children to exit.

        Otherwise exits are reaped on the next turn: at the latest after
        REAP_POLL, sooner when a connection arrives.
        """
        if watch != self.watching_exits:
            self.watching_exits = watch
            signal.signal(signal.SIGCHLD, self._record_signal if watch else signal.SIG_DFL)

    def stop(self, stop_timeout: float) -> None:
        """Stop accepting; wait up to `stop_timeout` for children, then SIGTERM, then SIGKILL.

        A second stop may shorten the wait (a retired forker's is endless), never lengthen it.
        """
        deadline = time.monotonic() + stop_timeout
        if self.stop_phase is WAIT:
            self.timers.set("stop", min(self.timers.get("stop"), deadline))
        if self.stop_phase is not SERVING:
            return
        self.stop_phase = WAIT
        self.timers.set("stop", deadline)
        if not self.standby:
            self._accept_queued()
        self._stop_accepting()
        self.pools.retire()  # each finishes its connection, then exits

    def retire(self) -> None:
        """Hand new connections to a fresh forker: accept no more, serve what is open, then exit.

        Our children keep counting toward the caps: the daemon passes on what
        we report, to the forker that took over.
        """
        self.retired = True
        self.stop(math.inf)
        self._report_children(always=True)  # the forker taking over waits for it

    def _report_children(self, *, always: bool = False) -> None:
        children = self.shared.children
        counts = (len(children), children.per_service())
        if always or counts != self.reported_children:
            self.reported_children = counts
            self._flush()
            self._send(("children", *counts))

    def _check_crowded(self, now: float) -> None:
        """Ask the daemon for a fresh forker when long-lived children make each fork dearer."""
        if self.stop_phase is SERVING:
            count = crowd(self.shared, self.pools.workers, self.renew_after, now)
            if count:
                self._send(("crowded", count))

    def quit(self) -> None:
        """Stop now: kill every child."""
        if self.stop_phase is SERVING:
            self._stop_accepting()
        self.stop_phase = KILL
        self.timers.clear("stop")
        self.waiting.close()
        self.shared.children.signal_all(signal.SIGKILL)

    def _accept_queued(self) -> None:
        """Take what the kernel queued on our listeners before a graceful stop (within the caps).

        Closing a listener resets the connections in its backlog: clients
        that connected, and may have sent their request, before the stop.
        """
        for server in self.servers:
            if server.service.workers or server.service.wait:
                continue  # its workers' to take, and they are leaving; or its program's
            budget = MAX_ANSWER_BURST if server.inline else self.caps.room(server.service)
            with contextlib.suppress(OSError, ForkPaused):
                server.accept_ready(budget)

    def _stop_accepting(self) -> None:
        self._update_accepting()
        closed = {server.fileno() for server in self.servers}
        for server in self.servers:
            server.server_close()
        # A child forked from now on (a header that was waiting) must not close their
        # numbers: its own connection may have one of them.
        self.own_fds = tuple(fd for fd in self.own_fds if fd not in closed)
        self._update_child_fds()

    def _advance_stop(self, now: float) -> None:
        """Past the stop's deadline, SIGTERM the children left; past the grace, SIGKILL."""
        term = self.stop_phase is WAIT
        action = "SIGTERM" if term else "SIGKILL"
        self.report(
            "warning", "stop_timeout", {"children": len(self.shared.children), "action": action}
        )
        if term:
            self.waiting.close()  # headers not complete by the stop's deadline
            self.shared.children.signal_all(signal.SIGTERM)
            self.stop_phase = TERM
            self.timers.set("stop", now + KILL_GRACE)
        else:
            self.shared.children.signal_all(signal.SIGKILL)
            self.stop_phase = KILL

    def _warm_type_cache(self) -> None:
        # What a child looks up (see sockd.forker.typecache): its server, the state
        # they share, its service, the handler and the request's socket; then what
        # it runs, specialized for those types as they are now (ServiceServer.rehearse).
        classes: set[type] = {socket.socket, type(self.shared)}
        for server in self.servers:
            classes |= {type(server), type(server.service)}
            if server.service.handler is not None:
                classes.add(server.service.handler)
        typecache.warm(classes)
        for server in self.servers:
            server.rehearse()

    def _update_child_fds(self) -> None:
        # One tuple, built when it changes: a child closes it without touching
        # the forker's other objects (each page touched is a page copied).
        self.shared.child_fds = self.own_fds + tuple(self.stderr.pipes)

    def _close(self) -> None:
        signal.set_wakeup_fd(-1)
        for server in self.servers:
            server.server_close()
        self.poller.close()
        self.events.watch = lambda _wanted: None
        self.inbox.close()


def crowd(shared: Shared, workers: Collection[int], renew_after: int, now: float) -> int:
    """Return how many long-lived children make the forker crowded at `now`; 0: it is not.

    Each fork costs more with every child alive (the kernel links each of
    the forker's memory areas to theirs), so past `renew_after` long-lived
    ones (0: never) a fresh forker takes the new connections, while this one
    serves the old. Not with per-source or rate limits: their counts live in
    this process. Pooled `workers` do not count.
    """
    if not renew_after or len(shared.children) - len(workers) < renew_after:
        return 0
    if any(admission.limited for admission in shared.admissions.values()):
        return 0
    long_lived = shared.children.started_before(now - LONG_LIVED, workers)
    return long_lived if long_lived >= renew_after else 0
