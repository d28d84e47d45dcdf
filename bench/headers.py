"""Measure where sockd reads PROXY headers: what a waiting header costs, and a header served.

sockd reads a connection's PROXY header in the forker, without waiting,
before anything is forked (sockd.forker.proxied). This measures that choice
against the other one, a child forked per connection reading its header:

- stalled: `--stalled` connections send the start of a v1 header and nothing
  more. Measured: the forker's CPU time for them, the processes forked
  meanwhile, and the forker's RSS growth: what a proxy that never finishes
  its headers costs. Reading in a child, each would cost a fork and a
  process (the `served` rows give the price of one);
- served: `--connections` sequential connections, each a complete header and
  a line, to the echo built-in with `proxy_protocol = true`, and the same
  without a header to a plain echo service, in the same run. Measured: the
  forker's and the children's CPU time per connection (from /proc), so the
  header's own cost is the difference between the two rows.

Loopback only; sockd is started once, stopped at the end.

    python bench/headers.py [--stalled 500] [--connections 500] [--json PATH]
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

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[daemon]
max_children = 4096

[[service]]
name = "proxied"
handler = "echo"
listen = ["127.0.0.1:0"]
proxy_protocol = true
proxy_timeout = 60
max_children = 2048

[[service]]
name = "plain"
handler = "echo"
listen = ["127.0.0.1:0"]
"""
HEADER = b"PROXY TCP4 192.0.2.1 198.51.100.1 5000 80\r\n"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """Return a process's user + system CPU time, and its reaped children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(value) for value in fields[11:15]) / TICK  # utime stime cutime cstime


def rss_kib(pid: int) -> int:
    """Return a process's VmRSS in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def forker_of(daemon: int) -> int:
    """Return the daemon's forker: its one child."""
    children = Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split()
    return int(children[0])


def addresses(log: Path) -> dict[str, tuple[str, int]]:
    """Return each service's address from the `starting` event."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "ready":
                starting = next(
                    json.loads(item)
                    for item in log.read_text().splitlines()
                    if '"starting"' in item
                )
                found = {}
                for listener in starting["listeners"]:
                    host, _, port = listener["address"].rpartition(":")
                    found[listener["service"]] = (host, int(port))
                return found
        time.sleep(0.05)
    raise SystemExit(f"headers: sockd did not start: {log.read_text()[-2000:]}")


def children(pid: int) -> int:
    """Return how many children `pid` has now."""
    return len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def stalled(address: tuple[str, int], forker: int, count: int) -> dict[str, Any]:
    """Open `count` connections that send a header's start and nothing more."""
    cpu, rss, most = cpu_seconds(forker), rss_kib(forker), 0
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address)
            sock.sendall(b"PROXY TCP4 192.0.2.")
            sockets.append(sock)
            most = max(most, children(forker))
        time.sleep(0.5)  # each read by now
        most = max(most, children(forker))
        return {
            "connections": count,
            "forker_cpu_us_per_connection": round((cpu_seconds(forker) - cpu) / count * 1e6, 1),
            "forker_rss_kib_growth": rss_kib(forker) - rss,
            "processes_forked": most,
        }
    finally:
        for sock in sockets:
            sock.close()


def served(address: tuple[str, int], forker: int, count: int, header: bytes) -> float:
    """Serve `count` connections one after another; return CPU us per connection (all processes)."""
    before = cpu_seconds(forker)
    for number in range(count):
        line = b"%d\n" % number
        with socket.create_connection(address) as sock:
            sock.sendall(header + line)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        if answer != line:
            raise SystemExit(f"headers: wrong answer {answer!r}")
    time.sleep(0.5)  # the last children reaped
    return (cpu_seconds(forker) - before) / count * 1e6


def main() -> None:
    """Run the measurements; print them, and write them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "sockd.toml"
        config.write_text(CONFIG)
        log = Path(scratch) / "sockd.log"
        with log.open("wb") as out:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "sockd", "run", "--config", str(config)],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
            )
        try:
            found = addresses(log)
            forker = forker_of(daemon.pid)
            results: dict[str, Any] = {"stalled": stalled(found["proxied"], forker, args.stalled)}
            rows: dict[str, list[float]] = {"proxied": [], "plain": []}
            for _ in range(args.repeat):  # interleaved: the machine's noise hits both alike
                rows["proxied"].append(served(found["proxied"], forker, args.connections, HEADER))
                rows["plain"].append(served(found["plain"], forker, args.connections, b""))
            for name, values in rows.items():
                results[f"{name}_cpu_us_per_connection"] = round(statistics.median(values), 1)
            results["header_cpu_us"] = round(
                results["proxied_cpu_us_per_connection"] - results["plain_cpu_us_per_connection"], 1
            )
        finally:
            daemon.terminate()
            daemon.wait(30)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
