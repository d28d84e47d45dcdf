"""Bookkeeping of forked children: who serves what, reaping, and exit records."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import resource
    from collections.abc import Iterator


@dataclass(frozen=True)
class Child:
    """A running child: the service and client it serves, and when it started."""

    service: str
    client: str
    started: float


@dataclass(frozen=True)
class Exit:
    """How a reaped child ended and what it cost."""

    pid: int
    child: Child
    exit_code: int | None
    signal: str | None
    duration: float
    cpu_user: float
    cpu_system: float
    max_rss_kib: int

    @property
    def failed(self) -> bool:
        """A non-zero exit or death by a signal."""
        return self.exit_code != 0

    def fields(self) -> dict[str, object]:
        """Return the fields of the `connection_closed` log event."""
        return {
            "service": self.child.service,
            "client": self.child.client,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration": round(self.duration, 6),
            "cpu_user": round(self.cpu_user, 6),
            "cpu_system": round(self.cpu_system, 6),
            "max_rss_kib": self.max_rss_kib,
        }


class Children:
    """All children of every service, reaped without ever blocking."""

    def __init__(self) -> None:
        self._running: dict[int, Child] = {}
        self._per_service: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._running))

    def count(self, service: str) -> int:
        """Return how many children serve `service` now."""
        return self._per_service[service]

    def add(self, pid: int, service: str, client: str) -> None:
        """Record a child just forked."""
        self._running[pid] = Child(service, client, time.monotonic())
        self._per_service[service] += 1

    def reap(self) -> list[Exit]:
        """Collect every child that has exited, without blocking."""
        exits = []
        while self._running:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self._running.pop(pid, None)
            if child is None:
                continue  # not one of ours (a grandchild reparented to us, say)
            self._per_service[child.service] -= 1
            exits.append(_exit_record(pid, child, status, usage))
        return exits

    def signal_all(self, signum: int) -> None:
        """Send `signum` to every running child."""
        for pid in self._running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)


def _exit_record(pid: int, child: Child, status: int, usage: resource.struct_rusage) -> Exit:
    code = os.waitstatus_to_exitcode(status)
    return Exit(
        pid=pid,
        child=child,
        exit_code=code if code >= 0 else None,
        signal=signal.Signals(-code).name if code < 0 else None,
        duration=time.monotonic() - child.started,
        cpu_user=usage.ru_utime,
        cpu_system=usage.ru_stime,
        max_rss_kib=usage.ru_maxrss,
    )
