"""Wait services (inetd's `wait`), in the forker: their program gets the listening socket itself.

sockd neither accepts nor reads for such a service. When one of its
listening sockets polls readable, the forker starts the program with that
socket as stdin and stdout (its stderr a pipe whose lines are logged, as for
any program) and stops polling the socket until the program exits: the
program accepts (TCP) or receives (UDP) what came, and more if it likes
(in.tftpd waits a while for further requests), then exits, and the forker
polls the socket again. One program runs per listening socket at a time: a
service's IPv4 and IPv6 sockets each have their own. Its exit is reaped and
logged as any child's (`connection_closed`, with no `client`: the program
took its clients itself); `max_duration` and a graceful stop reach it as
they reach other children.

A program that exits without taking what made the socket readable would be
started again at once, for ever (inetd's "looping"). So each start takes a
token from the service's `rate`/`burst` bucket (its `Admission`'s, kept
across reloads); a start that finds none pauses the service until the bucket
is full again, with one `wait_looping` warning, then `wait_resumed`.
"""

from __future__ import annotations

import math
import time

from sockd.forker.children import peak_rss_kib
from sockd.forker.service import FORK_RESOURCE_ERRORS, ForkPaused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sockd.forker.access import Admission
    from sockd.forker.service import ServiceServer
    from sockd.forker.shared import Shared


class Waits:
    """The forker's wait services: whose program runs on which socket, which service pauses."""

    def __init__(self, shared: Shared, report: Callable[[str, str, dict[str, Any]], None]) -> None:
        self.shared = shared
        self.report = report
        self.running: dict[ServiceServer, int] = {}  # a listener's server: its program's pid
        self.paused: dict[str, float] = {}  # a service: when it resumes (monotonic)

    def idle(self, server: ServiceServer) -> bool:
        """Tell whether `server`'s socket may be polled: no program on it, its service unpaused."""
        pid = self.running.get(server)
        if pid is not None:
            entry = self.shared.children.get(pid)
            if entry is not None and entry[0] == server.service.name:
                return False
            del self.running[server]  # reaped
        return server.service.name not in self.paused

    def start(self, server: ServiceServer) -> None:
        """Start the program of `server`'s service on its listening socket, if its bucket allows.

        Without a token, the service pauses instead (see the module's docstring).

        Raises:
            ForkPaused: spawning failed for lack of resources.
        """
        service, shared = server.service, self.shared
        now = time.monotonic()
        if server.admission.refusal(None, now) is not None:
            self._pause(service.name, server.admission, now)
            return
        program = service.program
        assert program is not None  # noqa: S101 (a wait service has one: see the config)
        try:
            pid, stderr = program.start_on_listener(server.socket, shared.close_in_child)
        except OSError as exc:
            shared.stats.errors += 1
            if exc.errno in FORK_RESOURCE_ERRORS:
                raise ForkPaused(shared.fork_failed(service.name, exc.strerror)) from None
            self.report("error", "fork_failed", {"service": service.name, "error": exc.strerror})
            return
        if shared.fork_backoff.failures:
            shared.fork_worked()
        shared.watch_stderr(stderr, pid, service.name, None)
        shared.children.add(pid, service.name, None, service.max_duration, program=peak_rss_kib())
        shared.stats.served += 1
        self.running[server] = pid

    def _pause(self, name: str, admission: Admission, now: float) -> None:
        limits, bucket = admission.limits, admission.bucket
        rate = limits.rate or 1.0  # (a wait service always has one: see the config)
        burst = limits.burst or max(1.0, rate)
        tokens = 0.0 if bucket is None else bucket.tokens
        seconds = (burst - tokens) / rate
        self.paused[name] = now + seconds
        fields = {"service": name, "rate": rate, "burst": burst, "seconds": round(seconds, 3)}
        self.report("warning", "wait_looping", fields)

    def resumes_at(self) -> float:
        """Return when the next paused service resumes (inf: none is paused)."""
        return min(self.paused.values(), default=math.inf)

    def resume(self, now: float) -> None:
        """End the pauses due by `now` (the caller polls their sockets again)."""
        for name, until in list(self.paused.items()):
            if until <= now:
                del self.paused[name]
                self.report("info", "wait_resumed", {"service": name})
