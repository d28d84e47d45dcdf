"""What the fault-injection scenarios share: the summary row, /proc samples, clients, configs."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import math
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from harness import children_of, connect, recv_all

if TYPE_CHECKING:
    from collections.abc import Iterator

    from harness import Sockd

HANDLERS = Path(__file__).parent / "chaos"  # chaos_handlers.py, on the configs' pythonpath
# A well-behaved client must be answered within this (the requirement).
ANSWER_WITHIN = 1.0
SAMPLE_EVERY = 0.1
UNREAPED = 0.5  # a child dead this long unreaped is a zombie
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass
class Row:
    """One line of the summary table: what a scenario attempted, and what became of it."""

    scenario: str
    attempted: int = 0
    served: int = 0
    lost: int = 0
    zombies: int | None = None  # None: not sampled
    fd_drift: float | None = None
    rss_drift: float | None = None
    log_lines: int = 0
    verdict: str = "not run"
    note: str = ""

    def cells(self) -> list[str]:
        """Return the row as the table's cells."""

        def drift(value: float | None) -> str:
            return "-" if value is None else f"{value:+.1%}"

        return [
            self.scenario,
            str(self.attempted),
            str(self.served),
            str(self.lost),
            "-" if self.zombies is None else str(self.zombies),
            f"{drift(self.fd_drift)} / {drift(self.rss_drift)}",
            str(self.log_lines),
            self.verdict + (f" ({self.note})" if self.note else ""),
        ]


HEADER = ["scenario", "attempted", "served", "lost", "zombies", "fd / RSS drift", "log lines"]


def table(rows: list[Row]) -> list[str]:
    """Render rows as a Markdown table (the form docs/reliability.md keeps)."""
    lines = [[*HEADER, "verdict"], *(row.cells() for row in rows)]
    widths = [max(len(line[column]) for line in lines) for column in range(len(lines[0]))]
    out = [
        "| "
        + " | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        + " |"
        for line in lines
    ]
    out.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return out


# --- /proc -------------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    """Return how many descriptors `pid` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    """Return the resident set size of `pid` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """Return every process below `pid`, from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for child, _ in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def session_members(sid: int) -> list[int]:
    """Return the live (not zombie) processes of session `sid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[4]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


class Watch:
    """Sample a running sockd from /proc every 0.1 s: fds, RSS, zombies.

    A zombie is counted when a child of the daemon or of its forker is still
    unreaped 0.5 s after it was first seen dead: an exit is reaped within about
    0.15 s, so such a zombie is one sockd forgot, not one caught between its
    exit and its reaping.
    """

    def __init__(self, sockd: Sockd) -> None:
        self.sockd = sockd
        self.samples: list[tuple[float, dict[str, tuple[int, int]]]] = []
        self.zombies: set[int] = set()
        self._dead_since: dict[int, float] = {}
        self.detail: list[str] = []  # what drift() compared
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.sample()
            self._stop.wait(SAMPLE_EVERY)

    def sample(self) -> None:
        """Take one sample."""
        now = time.monotonic()
        daemon = self.sockd.pid
        forkers = [pid for pid, _ in children_of(daemon)]
        processes = {"daemon": daemon}
        if forkers:
            processes["forker"] = max(forkers, key=_start_time)
        sample = {name: (fd_count(pid), rss_kib(pid)) for name, pid in processes.items()}
        self.samples.append((now, sample))
        dead = {
            pid
            for parent in (daemon, *forkers)
            for pid, letter in children_of(parent)
            if letter == "Z"
        }
        self._dead_since = {pid: self._dead_since.get(pid, now) for pid in dead}
        self.zombies |= {pid for pid, since in self._dead_since.items() if now - since >= UNREAPED}

    def drift(self) -> tuple[float, float]:
        """Return the worst fd and RSS drift of daemon and forker, first 10% to last 10%.

        Descriptors: the least open in each window (connections in flight come and
        go; a leak raises the floor). Memory: the median of each window.
        """
        assert len(self.samples) >= 10, f"too few samples: {len(self.samples)}"
        tenth = max(1, len(self.samples) // 10)
        first, last = self.samples[:tenth], self.samples[-tenth:]
        worst = [0.0, 0.0]
        self.detail = []
        for name in ("daemon", "forker"):
            for index, pick in ((0, min), (1, statistics.median)):
                before = pick(s[name][index] for _, s in first if name in s)
                after = pick(s[name][index] for _, s in last if name in s)
                change = (after - before) / before
                self.detail.append(f"{name} {('fds', 'RSS KiB')[index]} {before} -> {after}")
                if abs(change) > abs(worst[index]):
                    worst[index] = change
        return worst[0], worst[1]


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except OSError:
        return 0


# --- configs and ports -------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Return `count` TCP ports the kernel gives out now (a config must name them for reloads)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def config(*services: str, daemon: str = "") -> str:
    """Return a config with `[daemon]` settings and the given `[[service]]` bodies."""
    head = f'[daemon]\npythonpath = ["{HANDLERS}"]\nrenew_forker_after = 0\n{daemon}\n'
    return head + "".join(f"\n[[service]]\n{body}\n" for body in services)


# --- clients -----------------------------------------------------------------------------


def timed_exchange(
    address: str, data: bytes, *, source: str | None = None, timeout: float = 10.0
) -> tuple[bytes, float]:
    """Send `data`, half-close, read to the end; return the answer and the seconds it took."""
    started = time.monotonic()
    with connect(address, source=source, timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
    return answer, time.monotonic() - started


def well_behaved(
    address: str, data: bytes, expected: bytes, *, source: str | None = None, timeout: float = 10.0
) -> float:
    """Return how long a polite client waited for `expected`; fail if it got something else."""
    answer, seconds = timed_exchange(address, data, source=source, timeout=timeout)
    assert answer == expected, f"{address}: {answer[:80]!r} instead of {expected[:80]!r}"
    return seconds


def answered(row: Row, seconds: dict[str, float] | list[float]) -> None:
    """Count well-behaved clients in `row` (inf: never answered); assert each took 1 s at most."""
    if isinstance(seconds, list):
        seconds = {f"probe {n}": took for n, took in enumerate(seconds)}
    row.attempted += len(seconds)
    row.served += sum(took < math.inf for took in seconds.values())
    slowest = max(seconds.values())
    said = "a client never answered" if slowest == math.inf else f"slowest answer {slowest:.3f} s"
    row.note = f"{row.note}, {said}" if row.note else said
    slow = {name: round(took, 3) for name, took in seconds.items() if took > ANSWER_WITHIN}
    assert slow == {}, f"answered later than {ANSWER_WITHIN} s: {slow}"


def events_in(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    """Return the JSON events in a log file, optionally only `event`."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if isinstance(record, dict) and (event is None or record.get("event") == event):
                found.append(record)
    return found


# --- network namespaces ------------------------------------------------------------------


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the calling thread inside network namespace `name` (sockets made here stay in it)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    theirs = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(theirs)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(theirs)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


class Background:
    """Client threads exchanging a line with echo-like services, one connection after another."""

    def __init__(self, addresses: list[str], threads: int = 2, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.attempted = 0
        self.served = 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(address,), daemon=True)
            for address in addresses
            for _ in range(threads)
        ]

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _run(self, address: str) -> None:
        while not self.stopping.is_set():
            self.attempted += 1
            try:
                with connect(address, timeout=self.timeout) as sock:
                    sock.sendall(b"load\n")
                    sock.shutdown(socket.SHUT_WR)
                    answer = recv_all(sock)
            except OSError as exc:
                self.failures.append(f"{address}: {exc!r}")
                self.stopping.wait(0.05)
                continue
            if answer == b"load\n":
                self.served += 1
            else:
                self.failures.append(f"{address}: {answer[:40]!r}")
