"""Count what one echo connection costs sockd's forker and its child: page faults and CPU.

For each start-up it runs `sockd run --handler echo` (fork per connection) pinned
to one CPU, serves a warm-up, then `--connections` connections one after another
from this process (pinned to another CPU), waits until every child is reaped,
and reads /proc/PID/stat before and after: the forker's own minor faults and
CPU (minflt, utime+stime), its reaped children's (cminflt, cutime+cstime),
and the daemon's CPU (it logs each connection). Page faults do not depend on
the machine's load: they are the measure to compare versions by; CPU times
move with the load.

With `--haproxy plain` or `--haproxy proxy`, the connections go through HAProxy (on
this process's CPU) to that variant of bench/proxy.py's echo service: `proxy` with
`proxy_protocol = true` and `send-proxy-v2`, `plain` with neither.

A copy-on-write fault is a page of the forker's the child wrote: what the
forker's tricks (sockd.forker.forkhooks, sockd.forker.typecache) save. The
layout of memory depends on the path of the checkout (a figure moves by a
few faults with it): compare checkouts whose paths have the same length.

    python bench/faults.py [--python PATH] [--checkout DIR] [--repeat 5] [--haproxy VARIANT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench import proxy
from bench.common import (
    CLK_TCK,
    DEFAULT_BUILD_DIR,
    HOST,
    PAYLOAD,
    SOCKD_LOG,
    BenchError,
    Sockd,
    add_python_option,
    servers_python,
    use_python,
)

WARMUP = 50  # connections before counting
SETTLE_LIMIT = 10.0  # seconds to wait for the last children to be reaped


def stat(pid: int) -> dict[str, float]:
    """Return the faults and CPU seconds of `pid` and of its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the ")": state is [0], minflt [7], cminflt [8], utime [11] ... cstime [14].
    return {
        "faults": int(fields[7]),
        "child_faults": int(fields[8]),
        "cpu": (int(fields[11]) + int(fields[12])) / CLK_TCK,
        "child_cpu": (int(fields[13]) + int(fields[14])) / CLK_TCK,
    }


def connect(port: int) -> None:
    """One connection: send the line, read it back, close."""
    with socket.create_connection((HOST, port), timeout=10) as client:
        client.sendall(PAYLOAD)
        received = b""
        while not received.endswith(b"\n"):
            data = client.recv(4096)
            if not data:
                raise BenchError(f"sockd closed after {received!r}")
            received += data


def settle(forker: int) -> None:
    """Wait until the forker has reaped every child (their counts are then in its cminflt)."""
    children = Path(f"/proc/{forker}/task/{forker}/children")
    deadline = time.monotonic() + SETTLE_LIMIT
    while children.read_text().strip():
        if time.monotonic() > deadline:
            raise BenchError("the forker did not reap its children in time")
        time.sleep(0.05)
    time.sleep(0.2)  # the last exit's accounting


def measure_once(
    connections: int, checkout: Path | None, variant: str | None = None
) -> dict[str, float]:
    """Start sockd, serve the warm-up and `connections`; return the figures per connection.

    With `variant`, sockd serves bench/proxy.py's `variant`, behind HAProxy.
    """
    if checkout is not None:
        os.environ["PYTHONPATH"] = str(checkout / "daemon")
    allowed = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (allowed[0], allowed[1]) if len(allowed) > 1 else (None, None)
    with (
        tempfile.TemporaryDirectory(prefix="sockd-faults-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        if variant is None:
            options = ["--handler", "echo", "--listen", f"{HOST}:0"]
            sockd = Sockd.start(Path(tmp) / SOCKD_LOG, server_cpu, options)
            stack.callback(sockd.stop)
            port = sockd.port
        else:
            sockd = proxy.start_backend(variant, Path(tmp), server_cpu)
            stack.callback(sockd.stop)
            haproxy, port = proxy.start_haproxy(
                "haproxy", variant, sockd.port, Path(tmp), client_cpu
            )
            stack.callback(proxy.stop_haproxy, haproxy)
        stack.callback(os.sched_setaffinity, 0, allowed)
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        for _ in range(WARMUP):
            connect(port)
        settle(sockd.forker)
        before, daemon_before = stat(sockd.forker), stat(sockd.process.pid)
        for _ in range(connections):
            connect(port)
        settle(sockd.forker)
        time.sleep(0.2)  # the daemon logs the last exits (they come in batches)
        after, daemon_after = stat(sockd.forker), stat(sockd.process.pid)
    per = {key: (after[key] - before[key]) / connections for key in before}
    return {
        "child_faults": per["child_faults"],
        "forker_faults": per["faults"],
        "child_cpu_us": per["child_cpu"] * 1e6,
        "forker_cpu_us": per["cpu"] * 1e6,
        "daemon_cpu_us": (daemon_after["cpu"] - daemon_before["cpu"]) / connections * 1e6,
    }


def measure(
    repeat: int, connections: int, checkout: Path | None, variant: str | None = None
) -> dict[str, Any]:
    """Run `repeat` start-ups; return every run and the medians."""
    runs = [measure_once(connections, checkout, variant) for _ in range(repeat)]
    medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    return {"runs": runs, "median": medians}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the medians and the runs; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=5, help="start-ups (medians reported)")
    parser.add_argument("--connections", type=int, default=2000, help="counted per start-up")
    parser.add_argument(
        "--checkout", type=Path, help="run sockd from this checkout's daemon/ (default: this one)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results here")
    parser.add_argument(
        "--haproxy",
        choices=sorted(proxy.VARIANTS),
        help="serve bench/proxy.py's variant of the echo service, behind HAProxy",
    )
    add_python_option(parser)
    args = parser.parse_args(argv)
    try:
        use_python(args.python, DEFAULT_BUILD_DIR)
        result = measure(args.repeat, args.connections, args.checkout, args.haproxy)
    except BenchError as exc:
        print(f"faults.py: {exc}", file=sys.stderr)
        return 1
    where = args.checkout or Path(__file__).resolve().parents[1]
    behind = f", bench/proxy.py's {args.haproxy} behind HAProxy" if args.haproxy else ""
    print(f"interpreter: {servers_python().describe()}; sockd from {where}{behind}")
    print(f"per connection, medians of {args.repeat} start-ups x {args.connections}:")
    for key, value in result["median"].items():
        runs = ", ".join(f"{run[key]:.1f}" for run in result["runs"])
        print(f"  {key:<14}{value:8.1f}   runs {runs}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
