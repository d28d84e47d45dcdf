"""Measure that sockd's cost stays flat as connections pile up, and that a burst is served.

Two measurements of fork-per-connection sockd (`echo`, max_children 1,500):

1. Flat cost: the rate of new short connections (8 clients, each connect,
   send a line, read it back, close) with no other connection open, then with
   1,000 idle connections held open (each a child of sockd, waiting in recv),
   in alternation, several times. The goal: the rate with 1,000 held stays
   within 10% of the rate with none (median ratio >= 0.9). The rate is
   measured from RENEWED seconds after the 1,000 are open: by then sockd has
   handed new connections to a fresh forker (`renew_forker_after`), as it
   does about 1-2 s after a forker's children became long-lived.
2. Burst: 200 clients connect at once and stay silent for 5 s; meanwhile a
   newcomer connects and is answered (its latency is reported: "at once"
   means a few milliseconds); then the 200 send a line each and every one must
   be answered.

sockd runs pinned to CPU 0 and the clients to CPU 1 when there are two.
Loopback only; everything is stopped at the end.

    python bench/scale.py [--repeat 3] [--duration 3] [--json PATH] [--python PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import (
    DEFAULT_BUILD_DIR,
    BenchError,
    add_python_option,
    servers_python,
    use_python,
)

HOST = "127.0.0.1"
IDLE = 1000
BURST = 200
HOLD = 5.0
CLIENTS = 8
NEWCOMER_GOAL_MS = 100.0
FLAT_GOAL = 0.9
SETTLE = 2.0
# A forker is renewed 1-2 s after its children became long-lived (see
# sockd.forker.loop: LONG_LIVED, CROWD_CHECK), plus its start-up: measure after that.
RENEWED = 3.5


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def start_sockd(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """Start sockd's echo on `port` with room for the idle connections; wait until it answers."""
    config = workdir / "scale.toml"
    config.write_text(
        f'[daemon]\nmax_children = 1500\n[[service]]\nname = "echo"\nhandler = "echo"\n'
        f'listen = ["{HOST}:{port}"]\n'
    )
    python = servers_python().executable
    process = subprocess.Popen(
        [python, "-m", "sockd", "run", "--config", str(config), "--log-format", "json"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "sockd.log").open("wb"),
    )
    if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        os.sched_setaffinity(process.pid, {0})
        os.sched_setaffinity(0, {1})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if exchange(port, b"up\n") == b"up\n":
                return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"sockd did not answer on port {port}: see {workdir / 'sockd.log'}")


def exchange(port: int, line: bytes) -> bytes:
    """One short connection: send `line`, half-close, read to the end."""
    with socket.create_connection((HOST, port), timeout=10) as client:
        client.sendall(line)
        client.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := client.recv(4096):
            chunks.append(chunk)
        return b"".join(chunks)


def rate(port: int, duration: float) -> float:
    """Return short connections per second over `duration`, from CLIENTS threads."""
    done = [0] * CLIENTS
    stop = time.monotonic() + duration

    def client(index: int) -> None:
        while time.monotonic() < stop:
            if exchange(port, b"ping\n") == b"ping\n":
                done[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - started)


def hold(port: int, count: int) -> list[socket.socket]:
    """Open `count` connections and keep them silent."""
    held = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=30)
        held.append(sock)
    return held


def children_of(pid: int) -> list[int]:
    """Return the pids of the children of `pid` (none if it has exited)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found += (int(pid) for pid in (task / "children").read_text().split())
    return found


def served(daemon: int) -> int:
    """Return how many connections sockd serves now: the children of its forkers.

    A retired forker (see `renew_forker_after`) still serves its own.
    """
    return sum(len(children_of(forker)) for forker in children_of(daemon))


def wait_children(daemon: int, count: int, timeout: float = 60.0) -> None:
    """Wait until sockd serves `count` connections at once."""
    deadline = time.monotonic() + timeout
    while served(daemon) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {served(daemon)} of {count} connections are served")
        time.sleep(0.05)


def flat_cost(port: int, daemon: int, repeat: int, duration: float) -> dict[str, Any]:
    """Alternate runs with 0 and IDLE idle connections; return the rates and their ratio."""
    empty, loaded = [], []
    for _ in range(repeat):
        empty.append(rate(port, duration))
        held = hold(port, IDLE)
        try:
            wait_children(daemon, IDLE)
            time.sleep(RENEWED)
            loaded.append(rate(port, duration))
        finally:
            for sock in held:
                sock.close()
        wait_children_below(daemon, 1)
        time.sleep(SETTLE)  # the daemon logs the 1,000 exits before the next run
    ratio = statistics.median(loaded) / statistics.median(empty)
    return {"rate_idle_0": empty, f"rate_idle_{IDLE}": loaded, "ratio": ratio}


def wait_children_below(daemon: int, count: int, timeout: float = 60.0) -> None:
    """Wait until fewer than `count` connections are being served."""
    deadline = time.monotonic() + timeout
    while served(daemon) >= count and time.monotonic() < deadline:
        time.sleep(0.05)


def burst(port: int, daemon: int) -> dict[str, Any]:
    """BURST silent clients at once for HOLD seconds, a newcomer meanwhile, then all send."""
    held = hold(port, BURST)
    try:
        wait_children(daemon, BURST)
        time.sleep(HOLD / 2)
        started = time.perf_counter()
        newcomer_ok = exchange(port, b"newcomer\n") == b"newcomer\n"
        newcomer_ms = (time.perf_counter() - started) * 1000
        time.sleep(HOLD / 2)
        for index, sock in enumerate(held):
            sock.sendall(b"%d\n" % index)
            sock.shutdown(socket.SHUT_WR)
        answered = 0
        for index, sock in enumerate(held):
            answered += sock.recv(64) == b"%d\n" % index
    finally:
        for sock in held:
            sock.close()
    return {"answered": answered, "newcomer_ok": newcomer_ok, "newcomer_ms": newcomer_ms}


def measure(repeat: int, duration: float) -> tuple[dict[str, Any], list[str]]:
    """Run both measurements; return the results and the report's lines."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * IDLE)), hard))
    affinity = os.sched_getaffinity(0)
    port = free_port()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            daemon = start_sockd(Path(workdir), port)
            try:
                flat = flat_cost(port, daemon.pid, repeat, duration)
                wait_children_below(daemon.pid, 1)
                surge = burst(port, daemon.pid)
            finally:
                daemon.terminate()
                daemon.wait(30)
    finally:
        os.sched_setaffinity(0, affinity)
    empty, loaded = flat["rate_idle_0"], flat[f"rate_idle_{IDLE}"]
    lines = [
        f"interpreter: {servers_python().describe()}; sockd echo, a fork each",
        f"short connections/s, {CLIENTS} clients, {repeat} x {duration:g} s each:",
        f"  no idle connection:    median {statistics.median(empty):6.0f}  runs {fmt(empty)}",
        f"  {IDLE} idle connections: median {statistics.median(loaded):6.0f}  runs {fmt(loaded)}",
        f"  ratio {flat['ratio']:.2f} (goal >= {FLAT_GOAL}): {met(flat['ratio'] >= FLAT_GOAL)}",
        (
            f"burst: {surge['answered']} of {BURST} answered after {HOLD:g} s silent:"
            f" {met(surge['answered'] == BURST and surge['newcomer_ok'])}"
        ),
        (
            f"  a newcomer during the hold answered in {surge['newcomer_ms']:.1f} ms"
            f" (goal < {NEWCOMER_GOAL_MS:g}): {met(surge['newcomer_ms'] < NEWCOMER_GOAL_MS)}"
        ),
    ]
    return {"flat": flat, "burst": surge}, lines


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print them against the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="alternations (medians reported)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per rate measure")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    add_python_option(parser)
    args = parser.parse_args(argv)
    try:
        use_python(args.python, DEFAULT_BUILD_DIR)
    except BenchError as exc:
        print(f"{Path(__file__).name}: {exc}", file=sys.stderr)
        return 1
    result, lines = measure(args.repeat, args.duration)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def fmt(values: list[float]) -> str:
    """Render rates for the report."""
    return ", ".join(f"{value:.0f}" for value in values)


def met(condition: object) -> str:
    """Say whether a goal is met."""
    return "yes" if condition else "NO"


if __name__ == "__main__":
    sys.exit(main())
