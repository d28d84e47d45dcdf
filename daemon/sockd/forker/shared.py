"""What the forker's servers share (children inherit it): settings, children, counters, limits."""

from __future__ import annotations

import os
import time

from sockd import listeners
from sockd.exits import PEER_GONE_STATUSES, closed_fields
from sockd.forker.access import AccessRules, Admission, Denials, Networks
from sockd.forker.children import Children
from sockd.forker.programs import Program
from sockd.handlers import load_handler

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sockd.exits import RawExit
    from sockd.forker.proxied import Waiting
    from sockd.spec import ServiceSpec


class Service:
    """What a server needs of its service's settings, built from its `ServiceSpec`.

    Plain slots, copied once: a connection reads `service.X`, nothing more.
    """

    __slots__ = (
        "handler",
        "idle_timeout",
        "limits",
        "max_children",
        "max_connections_per_child",
        "max_duration",
        "name",
        "program",
        "proxy_known",
        "proxy_timeout",
        "proxy_trusted",
        "refusal",
        "rules",
        "udp_reflection",
        "wait",
        "workers",
    )

    def __init__(self, spec: ServiceSpec, child_identity: list[Any] | None = None) -> None:
        """Load what `spec` names: handler or program, rules.

        A program without a `user` of its own runs as `child_identity` (see
        `Shared.child_identity`).
        """
        self.name = spec.name
        self.handler = load_handler(spec.handler) if spec.handler else None
        self.program = None
        if spec.program:
            identity = spec.identity or child_identity
            argv, env = list(spec.exec), dict(spec.env)
            self.program = Program(spec.program, argv, env, identity, spec.rlimits)
        self.max_children = spec.max_children
        self.max_duration = spec.max_duration
        self.idle_timeout = spec.idle_timeout
        self.rules = AccessRules(spec.allow, spec.deny)
        self.refusal = spec.refusal.encode()
        self.limits = spec.limits
        self.workers = spec.workers  # pooled: this many workers serve it
        self.max_connections_per_child = spec.max_connections_per_child
        # With the PROXY protocol: who may send headers (None: connections have none).
        self.proxy_trusted = None
        if spec.proxy_protocol:
            self.proxy_trusted = Networks(spec.proxy_trusted)
            import sockd.proxy  # noqa: F401, PLC0415 (loaded by the forker now: see proxied.parser)
        self.proxy_timeout = spec.proxy_timeout
        self.proxy_known: set[str] = set()  # addresses found in proxy_trusted (a cache)
        self.udp_reflection = spec.udp_reflection  # UDP echo and chargen answer
        self.wait = spec.wait  # the program gets the listening socket (see sockd.forker.waits)


class Stats:
    """Counters behind the STATUS= line."""

    __slots__ = ("denied", "errors", "served")

    def __init__(self) -> None:
        self.served = 0
        self.denied = 0
        self.errors = 0

    def as_tuple(self) -> tuple[int, int, int]:
        """Return (served, denied, errors)."""
        return (self.served, self.denied, self.errors)


class ForkBackoff:
    """Exponential back-off while fork(2) or spawning fails for lack of resources.

    Each failure doubles the pause (FIRST to LONGEST seconds) during which
    nothing is forked: the forker stops accepting (the backlog waits) and
    pooled workers are replaced later; a fork that works starts the pause over
    at FIRST, so serving resumes as soon as a slot frees. The log is bounded
    per time, not per failure: a trouble episode lasts until forking has
    worked and QUIET seconds passed without a failure (near a process limit,
    failures and successes alternate up to 10 times a second). In an episode,
    `fork_failed` lines come at intervals doubling from FIRST to LONGEST, a
    success or not (at most 6 + T / LONGEST lines in T seconds), each with the
    failures so far; at its end, one `fork_recovered` gives the totals.
    """

    FIRST = 0.1
    LONGEST = 5.0
    QUIET = 10.0
    __slots__ = ("delay", "failures", "last", "log_due", "log_every", "since", "unlogged", "worked")

    def __init__(self) -> None:
        self.delay = 0.0  # the current pause
        self.failures = 0  # in this episode (0: none open)
        self.unlogged = 0  # of which not in a fork_failed line yet
        self.since = self.last = 0.0  # the episode's first and last failures
        self.log_due = self.log_every = 0.0
        self.worked = False  # a fork worked since the last failure

    def failed(self, now: float) -> tuple[float, bool]:
        """Count a failure; return the pause before the next try, and whether to log it now."""
        if not self.failures:
            self.since = now
        self.failures += 1
        self.unlogged += 1
        self.last = now
        self.worked = False
        self.delay = min(max(self.FIRST, self.delay * 2), self.LONGEST)
        log = now >= self.log_due
        if log:
            self.log_every = min(max(self.FIRST, self.log_every * 2), self.LONGEST)
            self.log_due = now + self.log_every
            self.unlogged = 0
        return self.delay, log

    def succeeded(self) -> None:
        """Note a fork that worked in an episode: the pause starts over, the episode goes on."""
        self.worked = True
        self.delay = 0.0

    def quiet(self, now: float) -> bool:
        """Whether the episode is over: forking worked, and QUIET seconds passed since a failure."""
        return self.worked and now >= self.last + self.QUIET

    def recovered(self) -> dict[str, Any]:
        """End the episode: return the `fork_recovered` fields, and start afresh."""
        fields = {"failures": self.failures, "seconds": round(self.last - self.since, 3)}
        self.delay = self.log_due = self.log_every = 0.0
        self.failures = self.unlogged = 0
        self.worked = False
        return fields


def _ignore(level: str, event: str, fields: dict[str, Any]) -> None:
    """Drop an event (until the forker connects its reporter)."""


def _close_stderr(fd: int, pid: int, service: str, client: object) -> None:  # noqa: ARG001
    """Close a program's stderr pipe (until the forker connects its reader)."""
    os.close(fd)


class Shared:
    """State all servers of one forker share: children, counters, limits, where events go.

    `report(level, event, fields)` delivers an event to the daemon's log, and
    `closed(raw_exit)` a reaped child (the forker sends it raw, for the daemon
    to decode); a child closes the descriptors `child_fds` first;
    `watch_stderr(fd, pid, service, client)` takes a program's stderr pipe, and
    `drain_stderr(pid)` reads what is left in it when the program is reaped.
    """

    def __init__(self) -> None:
        self.children = Children()
        self.stats = Stats()
        self.reaped = 0  # children reaped so far (a reap outside the loop's turn shows in it)
        self.admissions: dict[str, Admission] = {}  # by service name: kept across reloads
        self.sources: dict[int, tuple[Admission, Any, Any]] = {}  # pid: admission, key, client
        self.denials = Denials()
        # The port of every UDP socket served, the path of every UNIX datagram one: no
        # datagram from one is answered (the loop check, see sockd.forker.datagrams).
        self.datagram_sources: set[int | str | bytes] = set()
        self.fork_backoff = ForkBackoff()
        self.report: Callable[[str, str, dict[str, Any]], None] = _ignore
        self.closed: Callable[[RawExit], None] = self._report_closed
        self.child_fds: tuple[int, ...] = ()  # the forker's own: listeners, pipes, epoll
        # Connections waiting for their PROXY header, by descriptor (`proxied.Waiting`'s):
        # a child closes them too.
        self.waiting_fds: dict[int, Any] = {}
        self.waiting: Waiting | None = None  # None: no loop polls them (read them waiting)
        self.watch_stderr: Callable[[int, int, str, object], None] = _close_stderr
        self.drain_stderr: Callable[[int], None] = lambda _pid: None
        # Reads what the children just reaped sent before they exited (it comes before their
        # exits): `Inbox.reaped`.
        self.after_reap: Callable[[list[RawExit]], None] = lambda _exits: None
        # A pooled worker's batch for the forker: `Inbox.served_send`'s (entries, last number,
        # denied, lost); False: not sent now.
        self.emit: Callable[[bytes, int, int, int], bool] = lambda *_batch: True
        # Pooled workers among the children: their exits go to `worker_exited`.
        self.workers: dict[int, Any] = {}
        self.worker_exited: Callable[[RawExit], None] = lambda _raw: None
        # [uid, gid, groups] a child takes when the forker stays root for programs'
        # `user`/`group` (see `sockd.privileges.become_ids`); None: children stay as we are.
        self.child_identity: list[Any] | None = None

    def close_in_child(self) -> None:
        """Close the forker's descriptors (`child_fds`): call it first in a child."""
        for fd in self.child_fds:
            os.close(fd)
        for fd in self.waiting_fds:
            os.close(fd)

    def fork_failed(self, service: str, error: str | None) -> float:
        """Count a fork that failed for lack of resources; return how long to pause forking.

        Logged as `fork_failed` at intervals that double (see `ForkBackoff`).
        """
        delay, log = self.fork_backoff.failed(time.monotonic())
        if log:
            failures = self.fork_backoff.failures
            fields = {"service": service, "error": error, "failures": failures, "retry_in": delay}
            self.report("error", "fork_failed", fields)
        return delay

    def fork_worked(self) -> None:
        """Note a fork that worked after failures (call it only while `fork_backoff.failures`).

        `fork_recovered` comes later, once no fork failed for a while (see `fork_summary`).
        """
        self.fork_backoff.succeeded()

    def fork_summary(self, now: float) -> None:
        """Log `fork_recovered` if a fork-failure episode is over at `now` (math.inf: ending)."""
        if self.fork_backoff.quiet(now):
            self.report("info", "fork_recovered", self.fork_backoff.recovered())

    def _report_closed(self, raw: RawExit) -> None:
        self.report("info", "connection_closed", closed_fields(raw))

    def admission(self, service: Service) -> Admission:
        """Return the service's admission state, with the service's current limits.

        Changed limits recount the service's connections open, each in its
        source group under the new prefixes (or not at all, without limits).
        """
        limits = service.limits
        admission = self.admissions.get(service.name)
        if admission is None:
            admission = self.admissions[service.name] = Admission(limits)
        elif admission.limits != limits:
            admission.apply(limits)
            admission.open.clear()
            for pid in [pid for pid, source in self.sources.items() if source[0] is admission]:
                del self.sources[pid]
            if admission.limited:
                for pid, client in self.children.clients(service.name):
                    key = admission.key(client)
                    if key is not None and pid not in self.workers:
                        self.sources[pid] = (admission, key, client)
                        admission.opened(key)
        return admission

    def reap(self) -> int:
        """Reap exited children without blocking, reporting `connection_closed` for each."""
        exits = self.children.reap()
        if not exits:
            return 0
        self.after_reap(exits)
        self.reaped += len(exits)
        for raw in exits:
            pid = raw[0]
            if pid in self.workers:
                self.worker_exited(raw)
                continue
            source = self.sources.pop(pid, None)
            if source is not None:
                source[0].closed(source[1])
            self.drain_stderr(pid)
            status = raw[3]
            self.stats.errors += status != 0 and status not in PEER_GONE_STATUSES
            self.closed(raw)
        return len(exits)


client_text = listeners.client_text  # as the library's servers describe their clients


def unix_client(request: Any, path: str | bytes) -> str | list[str]:
    """Return how a UNIX peer is recorded: its credentials' text, with its bound path if any.

    The kernel's SO_PEERCRED names the peer; the path it bound its own socket
    to is its choice (`unix:uid=0,pid=1`, say), so it goes only in the
    separate, escaped `peer_path` field (see `sockd.exits.client_fields`).
    """
    text = client_text(request, "")
    return [text, peer_path(path)] if path else text


def client_record(request: Any, client_address: Any) -> object:
    """Return how a client is recorded: a TCP client's address, or `unix_client`'s."""
    if isinstance(client_address, tuple):
        return client_address
    return unix_client(request, client_address)


MAX_PEER_PATH = 256  # characters of an escaped peer path (sun_path holds 108 bytes)
_escapes: dict[int, str] = {}  # made for the first bound peer: the forker stays small


def peer_path(path: str | bytes) -> str:
    r"""Write a UNIX peer's bound path for the log: printable, and at most MAX_PEER_PATH long.

    Valid UTF-8 stays as it is; other bytes, control characters and the
    backslash are escaped (`\xNN`, `\\`). An abstract address starts with `@`.
    """
    if not _escapes:
        # Backslash, C0 and C1 controls and DEL, undecodable bytes (surrogate escapes).
        _escapes.update({code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))})
        _escapes.update({0xDC80 + byte: f"\\x{0x80 + byte:02x}" for byte in range(0x80)})
        _escapes[ord("\\")] = "\\\\"
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    prefix = ""
    if raw[:1] == b"\0":
        prefix, raw = "@", raw[1:]
    text = prefix + raw.decode("utf-8", "surrogateescape").translate(_escapes)
    return text if len(text) <= MAX_PEER_PATH else text[:MAX_PEER_PATH] + "..."
