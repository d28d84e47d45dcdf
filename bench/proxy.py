"""Benchmark sockd behind HAProxy with the PROXY protocol (send-proxy-v2) against without it."""

# How a cell is measured is described in bench/common.py. Here both servers are the same
# sockd echo service (a fork per connection, as in bench/echo.py) behind an HAProxy of
# its own, in tcp mode with one backend server: "proxy" has `proxy_protocol = true` and
# its HAProxy sends a PROXY v2 header first (`send-proxy-v2`), "plain" has neither. The
# load generator connects to HAProxy. So the ratio proxy/plain is what receiving the
# header costs sockd (issue 14: under 5% of connections/s).
#
# Where HAProxy runs: on the load generator's CPU, one thread (`nbthread 1`), so that
# sockd keeps the servers' CPU to itself, as it would with HAProxy on another machine;
# the server figures (CPU, busy) are sockd's alone. If that CPU ran out, both servers
# would be held to the same rate and the ratio would move towards 1: sockd's busy (near
# 100%: sockd was the limit) and the generator's say which it was.

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import (
    HOST,
    PAYLOAD,
    SOCKD_LOG,
    STARTUP_TIMEOUT,
    STOP_TIMEOUT,
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
from bench.exec import debian_package
from bench.pool import sockd_rejects

if TYPE_CHECKING:
    from collections.abc import Iterator

# The sockd service of each variant, beside name and listen.
VARIANTS: dict[str, dict[str, str | bool]] = {
    "proxy": {"handler": "echo", "proxy_protocol": True},
    "plain": {"handler": "echo"},
}
REFERENCE = "plain"
# What HAProxy's backend server line adds, per variant.
SEND_PROXY = {"proxy": " send-proxy-v2", "plain": ""}
MAXCONN = 4096  # HAProxy's: far above the 64 connections in flight of the widest cell
INSTALL_HINT = "run scripts/setup --tests, or install the Debian package: apt-get install haproxy"

HAPROXY_CONFIG = """\
global
    nbthread 1
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend bench
    bind fd@{fd}  # a socket the benchmark bound on port 0 (the kernel's choice) and passed
    default_backend sockd

backend sockd
    server sockd {host}:{port}{send_proxy}
"""


def sockd_config(variant: str) -> str:
    """Return the TOML config of `variant`: one echo service on a free loopback port."""
    service = {"name": "echo", **VARIANTS[variant], "listen": [f"{HOST}:0"]}
    # A JSON string, boolean or list of strings is a TOML one too.
    lines = ["[[service]]", *(f"{key} = {json.dumps(value)}" for key, value in service.items())]
    return "\n".join(lines) + "\n"


def haproxy_config(variant: str, fd: int | str, port: int | str) -> str:
    """Return HAProxy's config of `variant`: listening on inherited `fd`, sockd on `port`."""
    return HAPROXY_CONFIG.format(
        maxconn=MAXCONN, fd=fd, host=HOST, port=port, send_proxy=SEND_PROXY[variant]
    )


class BehindHaproxy(Server):
    """A backend server and the HAProxy in front of it: HAProxy's port, the rest the backend's.

    Its CPU time, children and liveness are the backend's (HAProxy runs on the load
    generator's CPU: see the top of this file); a dead HAProxy fails the cell too. Whoever
    started the two stops them.
    """

    def __init__(
        self, name: str, backend: Server, haproxy: subprocess.Popen[bytes], port: int
    ) -> None:
        """Take over a ready `backend` and the ready `haproxy` in front of it, on `port`."""
        super().__init__(backend.process, port)
        self.name = name
        self.backend = backend
        self.haproxy = haproxy

    def forking_pid(self) -> int:
        """Return the pid of the backend's process that forks per connection."""
        return self.backend.forking_pid()

    def check_alive(self) -> None:
        """Raise BenchError if the backend or HAProxy has exited."""
        self.backend.check_alive()
        code = self.haproxy.poll()
        if code is not None:
            raise BenchError(f"{self.name}: haproxy exited with status {code}")


def stop_haproxy(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM HAProxy (it stops at once), SIGKILL if it has not exited in time; wait."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_haproxy(
    haproxy: str, variant: str, backend_port: int, workdir: Path, cpu: int | None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `haproxy -db` in front of `backend_port`, pinned to `cpu`; return it and its port.

    Ready once a line has gone through it to the backend and back.

    Raises:
        BenchError: it exited, or no line went through in time.

    """
    config = workdir / f"{variant}.haproxy.cfg"
    err_path = workdir / f"{variant}.haproxy.stderr"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind((HOST, 0))
        listener.listen(socket.SOMAXCONN)
        port: int = listener.getsockname()[1]
        config.write_text(haproxy_config(variant, listener.fileno(), backend_port))
        with err_path.open("wb") as err:
            process = subprocess.Popen(
                [haproxy, "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=(listener.fileno(),),
            )
    # Only HAProxy holds the listener now: if it dies, connecting is refused.
    try:
        _wait_through(process, port, err_path)
        for task in Path(f"/proc/{process.pid}/task").iterdir():
            pin(int(task.name), cpu)  # every thread it has by now (nbthread 1: one)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, port


def _wait_through(process: subprocess.Popen[bytes], port: int, err_path: Path) -> None:
    """Wait until a line sent to HAProxy's `port` comes back from the backend."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=1.0) as sock:
                sock.sendall(PAYLOAD)
                if sock.recv(len(PAYLOAD)) == PAYLOAD:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    tail = err_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"no line went through haproxy (status {process.poll()}):\n{tail}")


def start_backend(variant: str, workdir: Path, cpu: int | None) -> Sockd:
    """Write the sockd config of `variant` into `workdir`, start sockd, wait until ready.

    The proxy variant (the one measured) logs where common.measure summarizes the log.
    """
    config = workdir / f"{variant}.sockd.toml"
    config.write_text(sockd_config(variant))
    log = workdir / (SOCKD_LOG if variant == "proxy" else f"{variant}.{SOCKD_LOG}")
    return Sockd.start(log, cpu, ["--config", str(config)])


@contextlib.contextmanager
def running_servers(
    haproxy: str, variants: list[str], workdir: Path, pinning: Pinning
) -> Iterator[list[Server]]:
    """Start each variant's sockd and its HAProxy; stop them all however the run ends."""
    with contextlib.ExitStack() as stack:
        servers: list[Server] = []
        for variant in variants:
            backend = start_backend(variant, workdir, pinning.server_cpu)
            stack.callback(backend.stop)
            process, port = start_haproxy(
                haproxy, variant, backend.port, workdir, pinning.generator_cpu
            )
            stack.callback(stop_haproxy, process)
            backend.settle()  # the child that served the line through has exited
            servers.append(BehindHaproxy(variant, backend, process, port))
        yield servers


def haproxy_version(haproxy: str) -> str:
    """Return the first line of `haproxy -v`."""
    result = subprocess.run([haproxy, "-v"], capture_output=True, text=True, check=False)
    return (result.stdout.splitlines() or ["haproxy -v: no output"])[0]


def make_bench(haproxy_name: str | None = None) -> Bench:
    """Return the PROXY benchmark with the haproxy named (default: the one on PATH).

    When sockd rejects the proxy variant's config (no `proxy_protocol` yet), the plain
    variant alone, the other in the Bench's not_run with the reason.

    Raises:
        BenchError: there is no such haproxy.

    """
    haproxy = shutil.which(haproxy_name or "haproxy")
    if haproxy is None:
        raise BenchError(f"{haproxy_name or 'haproxy'} not found: {INSTALL_HINT}")
    reason = sockd_rejects(sockd_config("proxy"))
    variants = [variant for variant in VARIANTS if not (reason and variant == "proxy")]
    lines = []
    for variant, service in VARIANTS.items():
        settings = ", ".join(f"{key} = {json.dumps(value)}" for key, value in service.items())
        server = f"server sockd {HOST}:PORT{SEND_PROXY[variant]}"
        line = f"{variant}: sockd [[service]] {settings}, behind HAProxy `{server}`"
        lines.append(line + (f" (not run: {reason})" if reason and variant == "proxy" else ""))
    path = str(Path(haproxy).resolve())
    lines.append(
        f"haproxy: {haproxy} ({debian_package(path)}; {haproxy_version(haproxy)}), one per"
        " variant: tcp mode, nbthread 1, on the load generator's CPU (not in the server"
        " figures, which are sockd's)"
    )
    meta = {
        "sockd_services": VARIANTS,
        "sockd_configs": {variant: sockd_config(variant) for variant in VARIANTS},
        "haproxy": haproxy,
        "haproxy_version": haproxy_version(haproxy),
        "haproxy_configs": {variant: haproxy_config(variant, "FD", "PORT") for variant in VARIANTS},
    }
    return Bench(
        "proxy.py",
        REFERENCE,
        lambda workdir, pinning: running_servers(haproxy, variants, workdir, pinning),
        header=tuple(lines),
        meta=meta,
        not_run={"proxy": reason} if reason else {},
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON if asked; return the exit status."""
    parser = build_parser(__doc__, "bench/proxy.py")
    parser.add_argument(
        "--haproxy", metavar="PATH", help="the HAProxy to run (default: haproxy on PATH)"
    )
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    try:
        bench = make_bench(args.haproxy)
    except BenchError as exc:
        print(f"proxy.py: {exc}", file=sys.stderr)
        return 1
    return run(bench, args, settings)


if __name__ == "__main__":
    sys.exit(main())
