"""Measure sockd's start-up time and memory: exec to READY=1, RSS, and a child's USS.

For each repetition it starts `sockd run --config examples/sockd.toml` under
this interpreter (or --python's) with a NOTIFY_SOCKET of its own, and measures:

- start-up: from just before exec to the READY=1 datagram;
- the daemon's and the forker's RSS (VmRSS), once ready;
- the private memory (USS: Private_Clean + Private_Dirty of
  /proc/PID/smaps_rollup) of the child serving one echo connection, which is
  what a connection adds.

Medians over repetitions are compared with the goals of the performance issue:
start-up under 250 ms, daemon RSS under 30 MiB, a child's USS under 2 MiB.
Loopback only; each repetition stops sockd before the next.

    python bench/footprint.py [--repeat 7] [--json PATH] [--python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
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

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "sockd.toml"
ECHO = ("127.0.0.1", 7007)
GOALS = {"startup_ms": 250.0, "daemon_rss_mib": 30.0, "child_uss_mib": 2.0}
READY_TIMEOUT = 10.0


def kib(path: Path, field: str) -> int:
    """Return a `Field:   N kB` value of a /proc status or smaps_rollup file, in KiB."""
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in {path}")


def uss_kib(pid: int) -> int:
    """Return the process's private memory (what it does not share), in KiB."""
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    return kib(rollup, "Private_Clean") + kib(rollup, "Private_Dirty")


def children(pid: int) -> list[int]:
    """Return the pids of the children of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def measure_once(workdir: Path) -> dict[str, float]:
    """Start sockd, measure start-up and memory, stop it."""
    notify_path = workdir / "notify.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(READY_TIMEOUT)
        environ = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        python = servers_python().executable
        started = time.perf_counter()
        process = subprocess.Popen(
            [python, "-m", "sockd", "run", "--config", str(CONFIG), "--log-format", "json"],
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        try:
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
            startup = time.perf_counter() - started
            (forker,) = children(process.pid)
            result = {
                "startup_ms": startup * 1000,
                "daemon_rss_mib": kib(Path(f"/proc/{process.pid}/status"), "VmRSS") / 1024,
                "forker_rss_mib": kib(Path(f"/proc/{forker}/status"), "VmRSS") / 1024,
            }
            with socket.create_connection(ECHO, timeout=5) as client:
                client.sendall(b"hello\n")
                if client.recv(16) != b"hello\n":
                    raise RuntimeError("echo on 127.0.0.1:7007 did not answer")
                (child,) = children(forker)
                result["child_uss_mib"] = uss_kib(child) / 1024
            return result
        finally:
            process.terminate()
            process.wait(10)


def measure(repeat: int) -> tuple[dict[str, Any], list[str]]:
    """Run `repeat` start-ups; return the medians and spreads, and the report's lines."""
    with tempfile.TemporaryDirectory() as workdir:
        runs = [measure_once(Path(workdir)) for _ in range(repeat)]
    lines = [
        f"interpreter: {servers_python().describe()}; config: {CONFIG.name}",
        f"{'measure':<16}{'median':>10}{'min-max':>18}{'goal':>10}  met",
    ]
    summary: dict[str, Any] = {}
    for key in runs[0]:
        values = [run[key] for run in runs]
        median = statistics.median(values)
        goal = GOALS.get(key)
        met = "" if goal is None else ("yes" if median < goal else "NO")
        spread = f"{min(values):.1f}-{max(values):.1f}"
        goal_text = "" if goal is None else f"< {goal:g}"
        lines.append(f"{key:<16}{median:>10.1f}{spread:>18}{goal_text:>10}  {met}")
        summary[key] = {"median": median, "min": min(values), "max": max(values), "goal": goal}
    return {"runs": runs, "summary": summary}, lines


def main(argv: list[str] | None = None) -> int:
    """Run the repetitions and print medians against the goals."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=7, help="repetitions (medians reported)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    add_python_option(parser)
    args = parser.parse_args(argv)
    try:
        use_python(args.python, DEFAULT_BUILD_DIR)
    except BenchError as exc:
        print(f"{Path(__file__).name}: {exc}", file=sys.stderr)
        return 1
    result, lines = measure(args.repeat)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
