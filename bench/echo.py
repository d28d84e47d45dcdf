"""Benchmark sockd's echo built-in against socketserver.ForkingTCPServer on loopback."""

# How a cell is measured is described in bench/common.py. Here, both servers run under
# one interpreter (common.servers_python): a fork server's cost is mostly the kernel's (fork,
# copy-on-write faults, exit teardown), which grows with the forking process's resident
# memory, so a fair comparison needs the same interpreter for both; the header says which.

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import (
    HOST,
    SOCKD_LOG,
    Bench,
    Pinning,
    Server,
    Sockd,
    build_parser,
    run,
    servers_python,
    settings_from,
    start_reference,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

# The reference: CPython's stock ForkingTCPServer, stock settings (request_queue_size 5,
# max_children 40), with the StreamRequestHandler equivalent of sockd's echo for one line.
STDLIB_SERVER = """\
import socketserver

class EchoLine(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())

server = socketserver.ForkingTCPServer(("127.0.0.1", 0), EchoLine)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Stdlib(Server):
    """CPython's socketserver.ForkingTCPServer with stock settings."""

    name = "stdlib"

    @classmethod
    def start(cls, err_path: Path, cpu: int | None) -> Stdlib:
        """Start the reference server, pin it, and read its port.

        Raises:
            BenchError: it exited or did not print its port in time.

        """
        argv = [servers_python().executable, "-c", STDLIB_SERVER]
        return cls(*start_reference(argv, "the stdlib server", err_path, cpu))


@contextlib.contextmanager
def running_servers(workdir: Path, pinning: Pinning) -> Iterator[list[Server]]:
    """Start sockd and the stdlib reference; stop both however the run ends."""
    with contextlib.ExitStack() as stack:
        options = ["--handler", "echo", "--listen", f"{HOST}:0"]
        sockd = Sockd.start(workdir / SOCKD_LOG, pinning.server_cpu, options)
        stack.callback(sockd.stop)
        stdlib = Stdlib.start(workdir / "stdlib.stderr", pinning.server_cpu)
        stack.callback(stdlib.stop)
        yield [sockd, stdlib]


def make_bench() -> Bench:
    """Return the echo benchmark: sockd's built-in echo against ForkingTCPServer."""
    stdlib = (
        "stdlib: socketserver.ForkingTCPServer, stock settings (request_queue_size 5,"
        " max_children 40), a StreamRequestHandler echoing one line"
    )
    header = ("sockd: --handler echo, fork per connection", stdlib)
    return Bench("echo.py", "stdlib", running_servers, header=header)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON if asked; return the exit status."""
    parser = build_parser(__doc__, "bench/echo.py")
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    return run(make_bench(), args, settings)


if __name__ == "__main__":
    sys.exit(main())
