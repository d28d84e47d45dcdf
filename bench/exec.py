"""Benchmark a program exec'd per connection: sockd against tcpserver (ucspi-tcp) on loopback."""

# How a cell is measured is described in bench/common.py. Here both servers run the same
# program per connection, /usr/bin/head -n1: each client connects, sends a line,
# half-closes, and reads until EOF (head prints the line and exits, which closes the
# connection). tcpserver is the C reference; sockd runs under this interpreter
# (sys.executable); the header names both, and the load generator.

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import (
    HOST,
    SOCKD_LOG,
    STARTUP_TIMEOUT,
    Bench,
    BenchError,
    Pinning,
    Server,
    Sockd,
    build_parser,
    pin,
    run,
    settings_from,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

PROGRAM = ("/usr/bin/head", "-n1")
MAX_CHILDREN = 256  # sockd's [daemon] max_children, tcpserver's -c
BACKLOG = 1024  # tcpserver's -b; sockd listens with SOMAXCONN
# The sockd service under test, beside name and listen. {"handler": "echo"} serves the
# same exchange with sockd's built-in, without exec.
SOCKD_SERVICE: dict[str, str | list[str]] = {"exec": list(PROGRAM)}
INSTALL_HINT = "run scripts/setup, or install the Debian package: apt-get install ucspi-tcp"


class SockdExec(Sockd):
    """sockd running SOCKD_SERVICE, from a generated config file."""

    until_eof = True

    @classmethod
    def start_service(cls, workdir: Path, cpu: int | None) -> Sockd:
        """Write the config into `workdir`, start sockd on it, and wait until it is ready."""
        config = workdir / "sockd.toml"
        config.write_text(sockd_config())
        return cls.start(workdir / SOCKD_LOG, cpu, ["--config", str(config)])


def sockd_config() -> str:
    """Return the TOML config: one service, SOCKD_SERVICE on a free loopback port."""
    service = {"name": "head", **SOCKD_SERVICE, "listen": [f"{HOST}:0"]}
    lines = ["[daemon]", f"max_children = {MAX_CHILDREN}", "", "[[service]]"]
    # A JSON string or list of strings is a TOML one too.
    lines += [f"{key} = {json.dumps(value)}" for key, value in service.items()]
    return "\n".join(lines) + "\n"


def tcpserver_command(tcpserver: str, port: int | str) -> list[str]:
    """Return tcpserver's command line: no ident (-R), no DNS (-H, -l0), PROGRAM per connection."""
    limits = ["-c", str(MAX_CHILDREN), "-b", str(BACKLOG)]
    return [tcpserver, *limits, "-R", "-H", "-l0", HOST, str(port), *PROGRAM]


class Tcpserver(Server):
    """tcpserver from ucspi-tcp, forking and exec'ing PROGRAM per connection."""

    name = "tcpserver"
    until_eof = True

    @classmethod
    def start(cls, tcpserver: str, err_path: Path, cpu: int | None) -> Tcpserver:
        """Start tcpserver on a free port, pin it, and wait until it accepts connections.

        Raises:
            BenchError: it exited or did not accept in time.

        """
        port = _free_port()
        with err_path.open("wb") as err:
            process = subprocess.Popen(
                tcpserver_command(tcpserver, port),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            pin(process.pid, cpu)
            _wait_accepting(process, port, err_path)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return cls(process, port)


def _free_port() -> int:
    """Return a loopback port that was free a moment ago (tcpserver takes no port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def _wait_accepting(process: subprocess.Popen[bytes], port: int, err_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            # The program gets EOF at once and exits: nothing is left behind.
            socket.create_connection((HOST, port), timeout=1.0).close()
        except OSError:
            time.sleep(0.02)
        else:
            return
    tail = err_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"tcpserver did not accept on port {port} (status {process.poll()}):\n{tail}")


@contextlib.contextmanager
def running_servers(tcpserver: str, workdir: Path, pinning: Pinning) -> Iterator[list[Server]]:
    """Start sockd and tcpserver; stop both however the run ends."""
    with contextlib.ExitStack() as stack:
        sockd = SockdExec.start_service(workdir, pinning.server_cpu)
        stack.callback(sockd.stop)
        reference = Tcpserver.start(tcpserver, workdir / "tcpserver.stderr", pinning.server_cpu)
        stack.callback(reference.stop)
        yield [sockd, reference]


def debian_package(path: str) -> str:
    """Return `PACKAGE VERSION` of the Debian package that installed `path`, if any."""
    try:
        owner = subprocess.run(
            ["dpkg-query", "--search", path], capture_output=True, text=True, check=True
        ).stdout
        package = owner.partition(":")[0]
        version = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${Version}", package],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "not from a Debian package"
    return f"{package} {version}"


def somaxconn() -> str:
    """Return the kernel's cap on listen backlogs, net.core.somaxconn."""
    try:
        return Path("/proc/sys/net/core/somaxconn").read_text().strip()
    except OSError:
        return "?"


def make_bench(tcpserver_name: str | None = None) -> Bench:
    """Return the exec benchmark against the tcpserver named (default: the one on PATH).

    Raises:
        BenchError: there is no such tcpserver.

    """
    tcpserver = shutil.which(tcpserver_name or "tcpserver")
    if tcpserver is None:
        raise BenchError(f"{tcpserver_name or 'tcpserver'} not found: {INSTALL_HINT}")
    tcpserver_path = str(Path(tcpserver).resolve())
    package = debian_package(tcpserver_path)
    service = ", ".join(f"{key} = {json.dumps(value)}" for key, value in SOCKD_SERVICE.items())
    reference_line = (
        f"tcpserver: {tcpserver} -> {tcpserver_path} ({package}):"
        f" {' '.join(tcpserver_command('tcpserver', 'PORT'))}"
    )
    sockd_line = (
        f"sockd: [[service]] {service}, max_children = {MAX_CHILDREN}, backlog SOMAXCONN;"
        f" net.core.somaxconn = {somaxconn()}"
    )
    meta = {
        "program": list(PROGRAM),
        "sockd_service": SOCKD_SERVICE,
        "sockd_config": sockd_config(),
        "tcpserver": tcpserver,
        "tcpserver_realpath": tcpserver_path,
        "tcpserver_package": package,
        "tcpserver_command": tcpserver_command(tcpserver, "PORT"),
        "max_children": MAX_CHILDREN,
        "tcpserver_backlog": BACKLOG,
    }
    return Bench(
        "exec.py",
        "tcpserver",
        partial(running_servers, tcpserver),
        header=(reference_line, sockd_line),
        meta=meta,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON if asked; return the exit status."""
    parser = build_parser(__doc__, "bench/exec.py")
    parser.add_argument(
        "--tcpserver", metavar="PATH", help="the tcpserver to compare with (default: on PATH)"
    )
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    try:
        bench = make_bench(args.tcpserver)
    except BenchError as exc:
        print(f"exec.py: {exc}", file=sys.stderr)
        return 1
    return run(bench, args, settings)


if __name__ == "__main__":
    sys.exit(main())
