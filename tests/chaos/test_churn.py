"""Churn: load on three kinds of service while children, workers and the config keep changing.

For 10 s (60 s with `--soak`), Python clients load a fork-per-connection
service, a program (`exec`) service and a pooled service at once; a chaos
driver SIGKILLs a random connection's process and a pooled worker every
100 ms, and sends SIGHUP every 200 ms, alternating between two valid
configs; one request in ten makes the handler raise (the program exit 3).
Every connection the driver did not kill must get its full answer, and
appear in the log exactly once; no zombie may linger; the daemon's and the
forker's descriptors and memory stay flat from the first tenth of the
run to its last. The run starts and ends quiet (after a warm-up of load
alone): descriptors of connections in flight are not a leak, and what is
still open once all is quiet again was kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import random
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from chaoslib import Watch, config, free_ports
from harness import children_of, connect, recv_all

if TYPE_CHECKING:
    from collections.abc import Callable

    from chaoslib import Row
    from harness import Sockd

CLIENTS_PER_SERVICE = 3
KILL_EVERY = 0.1
RELOAD_EVERY = 0.2
RAISE_ONE_IN = 10
PROGRAM_FAILS = 3  # the program's exit status when asked to fail
PROGRAM = (
    'read line; case "$line" in raise*) exit 3;; esac; sleep 0.02; '
    'printf "%s\\n%s" "$line" "$FILL"; echo "pid=$$"'
)
ANSWER = re.compile(rb"pid=(\d+)\n\Z")
FLAT = 0.10
FILLER = b"." * 2048  # what chaos_handlers.Answer sends after the request line


def services(ports: list[int], variant: int) -> str:
    """Return the config, in one of two valid variants (they differ in limits and refusal)."""
    limits = f'max_duration = {300 + variant}\nrefusal = "busy {variant}\\r\\n"'
    return config(
        f'name = "fork"\nhandler = "chaos_handlers:Answer"\nlisten = ["127.0.0.1:{ports[0]}"]\n'
        + limits,
        f'name = "exec"\nexec = ["/bin/sh", "-c", {PROGRAM!r}]\n'
        f'env = {{ FILL = "{FILLER.decode()}" }}\nlisten = ["127.0.0.1:{ports[1]}"]\n' + limits,
        f'name = "pool"\nhandler = "chaos_handlers:Answer"\nlisten = ["127.0.0.1:{ports[2]}"]\n'
        f"workers = 4\n" + limits,
        daemon=f"max_children = 128\nstop_timeout = {10 + variant}",
    )


@dataclasses.dataclass
class Connection:
    """One client connection: its unique source address, what it asked, what came back."""

    service: str
    source: str
    fails: bool
    started: float
    ended: float = 0.0
    answer: bytes | None = None
    error: str = ""

    def __str__(self) -> str:
        answer = None if self.answer is None else self.answer[:24] + b"..." + self.answer[-12:]
        took = self.ended - self.started
        return (
            f"{self.service} {self.source} fails={self.fails} {took:.3f}s {answer!r} {self.error}"
        )


class Load:
    """Client threads, each making one connection after another from a fresh source address."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.connections: list[Connection] = []
        self.sources = itertools.count(1)
        self.stopping = threading.Event()
        self.running = threading.Event()
        self.threads = [
            threading.Thread(target=self._client, args=(name,), daemon=True)
            for name in ports
            for _ in range(CLIENTS_PER_SERVICE)
        ]

    def _source(self) -> str:
        # One address per connection: a connection is found in the log by its address alone.
        n = next(self.sources)
        return f"127.{1 + n // 64516}.{1 + n // 254 % 254}.{1 + n % 254}"

    def _client(self, service: str) -> None:
        rng = random.Random()  # noqa: S311 (not cryptography)
        while self.running.wait() and not self.stopping.is_set():
            fails = rng.randrange(RAISE_ONE_IN) == 0
            conn = Connection(service, self._source(), fails, time.monotonic())
            self.connections.append(conn)
            line = b"raise\n" if fails else b"hello %s\n" % conn.source.encode()
            try:
                with connect(f"127.0.0.1:{self.ports[service]}", source=conn.source) as sock:
                    sock.sendall(line)
                    sock.shutdown(socket.SHUT_WR)
                    conn.answer = recv_all(sock)
            except OSError as exc:
                conn.error = f"{type(exc).__name__}: {exc}"
            conn.ended = time.monotonic()

    def expected(self, conn: Connection) -> bool:
        """Tell whether a connection got its full answer."""
        if conn.answer is None:
            return False
        if conn.fails:
            return conn.answer == b""
        line = b"hello %s\n" % conn.source.encode()
        return conn.answer.startswith(line + FILLER) and bool(ANSWER.search(conn.answer))


def listening_socket(port: int) -> str:
    """Return the inode of the socket listening on 127.0.0.1:`port`, as /proc/PID/fd shows it."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return f"socket:[{fields[9]}]"
    msg = f"nothing listens on 127.0.0.1:{port}"
    raise AssertionError(msg)


def open_sockets(pid: int) -> set[str]:
    """Return what the descriptors of `pid` point to (a pooled worker holds its listener)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                found.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


class Driver:
    """Every 100 ms SIGKILL a connection's process and a pooled worker; every 200 ms reload."""

    def __init__(self, sockd: Sockd, config_path: Path, ports: list[int], load: Load) -> None:
        self.sockd = sockd
        self.config_path = config_path
        self.ports = ports
        self.load = load
        self.pool_listener = listening_socket(ports[2])
        self.worker_kills: list[float] = []
        self.kills = 0
        self.reloads = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random()  # noqa: S311
        tick = 0
        while not self.stopping.wait(KILL_EVERY):
            tick += 1
            with contextlib.suppress(ValueError, OSError):
                self._kill(rng)
            if tick % round(RELOAD_EVERY / KILL_EVERY) == 0:
                self._reload(tick)

    def _kill(self, rng: random.Random) -> None:
        forker = max(pid for pid, _ in children_of(self.sockd.pid))
        children = {pid for pid, letter in children_of(forker) if letter != "Z"}
        workers = sorted(pid for pid in children if self.pool_listener in open_sockets(pid))
        others = sorted(children.difference(workers))
        if others:
            victim = rng.choice(others)
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(victim) == victim:  # a program leads its group: end all of it
                    os.killpg(victim, signal.SIGKILL)
                else:
                    os.kill(victim, signal.SIGKILL)
                self.kills += 1
        if workers:
            with contextlib.suppress(ProcessLookupError):
                self.worker_kills.append(time.monotonic())
                os.kill(rng.choice(workers), signal.SIGKILL)
                self.kills += 1

    def _reload(self, tick: int) -> None:
        variant = tick // 2 % 2
        staged = self.config_path.with_suffix(".new")
        staged.write_text(services(self.ports, variant))
        staged.replace(self.config_path)  # the daemon never reads half a file
        self.sockd.signal(signal.SIGHUP)
        self.reloads += 1

    def killed_worker_during(self, conn: Connection) -> bool:
        """Tell whether a pooled worker was killed while `conn` was open."""
        return any(conn.started - KILL_EVERY <= at <= conn.ended for at in self.worker_kills)


def account(sockd: Sockd, load: Load, driver: Driver, rows: dict[str, Row]) -> list[str]:
    """Count each connection in its row (served, lost); return what went wrong, lost first."""
    closed: dict[str, list[dict[str, Any]]] = {}
    for event in sockd.events("connection_closed"):
        closed.setdefault(str(event["client"]).rpartition(":")[0], []).append(event)
    problems: list[str] = []
    for conn in load.connections:
        row = rows[conn.service]
        row.attempted += 1
        records = closed.get(conn.source, [])
        # Which worker had a pooled connection that got no answer is not known: a worker
        # killed while it was open excuses it.
        killed = any(r.get("signal") == "SIGKILL" for r in records) or (
            conn.service == "pool" and not load.expected(conn) and driver.killed_worker_during(conn)
        )
        # A request that fails gets nothing back: if the log holds it, it says it failed.
        if load.expected(conn) and not (conn.fails and any(r.get("signal") for r in records)):
            row.served += 1
        elif not killed:
            row.lost += 1
            problems.append(f"lost: {conn} {records}")
        if len(records) != 1 and not (killed and not records):
            problems.append(f"logged {len(records)} times: {conn}")
        found = ANSWER.search(conn.answer or b"")
        if found and records and int(found[1]) != records[0]["pid"]:
            problems.append(f"logged under pid {records[0]['pid']}: {conn}")
    problems.sort(key=lambda problem: not problem.startswith("lost"))
    return problems


@pytest.mark.timeout(300)
def test_churn_loses_no_connection_leaks_nothing_and_logs_each_once(
    start: Callable[..., Sockd],
    scenario: Callable[[str], Row],
    churn_seconds: float,
    tmp_path: Path,
) -> None:
    """Under kills and reloads: 0 lost, 0 zombies, fds and RSS flat, each connection logged once."""
    ports = free_ports(3)
    rows = {
        name: scenario(f"churn {name} ({churn_seconds:.0f} s)") for name in ("fork", "exec", "pool")
    }
    sockd = start(services(ports, 0))
    config_path = tmp_path / "sockd-0.toml"
    load = Load(dict(zip(rows, ports, strict=True)))
    driver = Driver(sockd, config_path, ports, load)
    quiet = churn_seconds / 8  # a tenth of the run, and some
    for thread in load.threads:
        thread.start()
    load.running.set()
    time.sleep(quiet)  # warm-up: every kind of connection served, every pooled worker used
    load.running.clear()
    with Watch(sockd) as watch:
        time.sleep(quiet)
        load.running.set()
        driver.thread.start()
        time.sleep(churn_seconds)
        driver.stopping.set()
        driver.thread.join()
        load.stopping.set()
        for thread in load.threads:
            thread.join(30)
        time.sleep(quiet)
    fd_drift, rss_drift = watch.drift()
    assert sockd.stop(timeout=30) == 0  # a stop also flushes what pooled workers batched

    problems = account(sockd, load, driver, rows)
    for name, row in rows.items():
        row.zombies = len(watch.zombies)
        row.fd_drift, row.rss_drift = fd_drift, rss_drift
        row.log_lines = len(sockd.events(service=name))
        row.note = f"{driver.kills} kills, {driver.reloads} reloads" if name == "fork" else ""
    assert driver.kills > churn_seconds, "the driver killed next to nothing"
    assert all(row.served for row in rows.values()), rows
    assert problems == [], "\n".join([f"{len(problems)} problems:", *problems[:20]])
    assert watch.zombies == set()
    assert abs(fd_drift) <= FLAT, f"descriptors drifted {fd_drift:+.1%}: {watch.detail}"
    assert abs(rss_drift) <= FLAT, f"memory drifted {rss_drift:+.1%}: {watch.detail}"
