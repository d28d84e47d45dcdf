"""Bookkeeping of forked children: who serves what, reaping, and exit records.

Like everything the forker imports, it avoids heavy modules (dataclasses,
typing): the forker's size is the cost of every fork.
"""

from __future__ import annotations

import contextlib
import os
import resource  # noqa: F401 (os.wait4 imports it on first use: maybe after dropping root)
import signal
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


class Child:
    """A running child: the service and client it serves, and when it started."""

    __slots__ = ("client", "service", "started")

    def __init__(self, service: str, client: str, started: float) -> None:
        """Record what the child serves."""
        self.service = service
        self.client = client
        self.started = started


class Exit:
    """How a reaped child ended and what it cost."""

    __slots__ = ("child", "cpu_system", "cpu_user", "duration", "exit_code", "max_rss_kib", "pid", "signal")

    def __init__(self, pid: int, child: Child, status: int, usage: resource.struct_rusage) -> None:
        """Decode a wait4(2) result."""
        code = os.waitstatus_to_exitcode(status)
        self.pid = pid
        self.child = child
        self.exit_code: int | None = code if code >= 0 else None
        self.signal: str | None = signal.Signals(-code).name if code < 0 else None
        self.duration = time.monotonic() - child.started
        self.cpu_user = usage.ru_utime
        self.cpu_system = usage.ru_stime
        self.max_rss_kib = usage.ru_maxrss

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
        self._per_service: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._running))

    def count(self, service: str) -> int:
        """Return how many children serve `service` now."""
        return self._per_service.get(service, 0)

    def add(self, pid: int, service: str, client: str) -> None:
        """Record a child just forked."""
        self._running[pid] = Child(service, client, time.monotonic())
        self._per_service[service] = self._per_service.get(service, 0) + 1

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
            exits.append(Exit(pid, child, status, usage))
        return exits

    def signal_all(self, signum: int) -> None:
        """Send `signum` to every running child."""
        for pid in self._running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
