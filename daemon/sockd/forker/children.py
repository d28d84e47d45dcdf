"""Bookkeeping of forked children: who serves what, reaping, and exit records.

The forker runs this between forks, while children share its memory: every
page it writes then is copied. So the hot path keeps to plain tuples and
dicts, and the decoding for the log (`sockd.exits`) is left to the daemon.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import resource  # noqa: F401 (os.wait4 imports it on first use: maybe after dropping root)
import signal
import sys
import time

from sockd.exits import signal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Container, Iterator

    from sockd.exits import RawExit


class Children:
    """All children of every service, reaped without ever blocking."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[str, object, float]] = {}
        self._per_service: dict[str, int] = {}
        # Children that lead a process group of their own (programs), each with
        # the forker's peak RSS when it started (see `add`).
        self._groups: dict[int, int] = {}
        # when, pid, the child's start time (pids are reused), signal: a heap
        self._deadlines: list[tuple[float, int, float, int]] = []

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._running))

    def count(self, service: str) -> int:
        """Return how many children serve `service` now."""
        return self._per_service.get(service, 0)

    def per_service(self) -> dict[str, int]:
        """Return how many children serve each service now."""
        return {service: count for service, count in self._per_service.items() if count}

    def started_before(self, when: float, exclude: Container[int] = ()) -> int:
        """Return how many children, not counting `exclude`, started before `when` (monotonic)."""
        return sum(
            1 for pid, entry in self._running.items() if entry[2] < when and pid not in exclude
        )

    def get(self, pid: int) -> tuple[str, object] | None:
        """Return (service, client) of child `pid`, or None if it is not one."""
        entry = self._running.get(pid)
        return None if entry is None else (entry[0], entry[1])

    def clients(self, service: str) -> list[tuple[int, object]]:
        """Return (pid, client) of every child serving `service` now."""
        return [(pid, entry[1]) for pid, entry in self._running.items() if entry[0] == service]

    def add(
        self,
        pid: int,
        service: str,
        client: object,
        max_duration: float | None = None,
        *,
        program: int | None = None,
    ) -> None:
        """Record a child just started; `client` is its address, or a text for UNIX peers.

        A `program` leads its own process group: signals go to the whole group,
        so that what it started ends with it. `program` is then the forker's
        peak RSS (KiB) once it started: Linux counts the peak of the process
        that execs (the forker, through vfork) in the program's ru_maxrss, so
        only a peak above it is the program's own; at or below it, the
        program's `max_rss_kib` is unknown (None).
        """
        now = time.monotonic()
        if program is not None:
            self._groups[pid] = program
        self._running[pid] = (service, client, now)
        self._per_service[service] = self._per_service.get(service, 0) + 1
        if max_duration:
            deadlines = self._deadlines
            heapq.heappush(deadlines, (now + max_duration, pid, now, signal.SIGTERM))
            if len(deadlines) > 2 * len(self._running) + 64:  # most are of children gone
                deadlines[:] = [entry for entry in deadlines if entry[1] in self._running]
                heapq.heapify(deadlines)

    def next_deadline(self) -> float | None:
        """Return when the next child outlives its `max_duration` (or its grace), if any."""
        return self._deadlines[0][0] if self._deadlines else None

    def enforce_deadlines(self, now: float, grace: float) -> list[tuple[int, str, object, str]]:
        """Send SIGTERM to children past `max_duration`, SIGKILL `grace` seconds later.

        Returns:
            (pid, service, client, signal name) of each child signalled.
        """
        signalled = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, pid, started, signum = heapq.heappop(self._deadlines)
            entry = self._running.get(pid)
            if entry is None or entry[2] != started:
                continue  # it ended in time (and its pid may serve another child now)
            self._signal(pid, signum)
            if signum == signal.SIGTERM:
                heapq.heappush(self._deadlines, (now + grace, pid, started, signal.SIGKILL))
            signalled.append((pid, entry[0], entry[1], signal_name(signum)))
        return signalled

    def reap(self) -> list[RawExit]:
        """Collect every child that has exited, without blocking."""
        exits = []
        while self._running:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            entry = self._running.pop(pid, None)
            if entry is None:
                continue  # not one of ours (a grandchild reparented to us, say)
            rss_floor = self._groups.pop(pid, None)
            max_rss: int | None = usage.ru_maxrss
            if rss_floor is not None and usage.ru_maxrss <= rss_floor:
                max_rss = None  # the forker's peak, not the program's (see `add`)
            service, client, started = entry
            self._per_service[service] -= 1
            duration = time.monotonic() - started
            exits.append(
                (
                    pid,
                    service,
                    client,
                    status,
                    duration,
                    usage.ru_utime,
                    usage.ru_stime,
                    max_rss,
                )
            )
        return exits

    def signal_all(self, signum: int) -> None:
        """Send `signum` to every running child (to the group of one that leads one)."""
        for pid in self._running:
            self._signal(pid, signum)

    def _signal(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if pid in self._groups:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)


def peak_rss_kib() -> int:
    """Return this process's peak RSS in KiB (VmHWM), as exec counts it; a huge number if unknown.

    Not getrusage(): its ru_maxrss lags behind the peak that exec folds into
    the new program's (the current RSS may be above it).
    """
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            status = os.read(fd, 8192)
        finally:
            os.close(fd)
        start = status.index(b"VmHWM:") + 6
        return int(status[start : status.index(b"kB", start)])
    except (OSError, ValueError):
        return sys.maxsize
