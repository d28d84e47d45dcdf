"""Benchmark sockd's pooled mode (`workers = 4`) against a minimal pre-forked server."""

# How a cell is measured is described in bench/common.py. Here sockd serves its echo
# built-in from a service with `workers = 4`: four pre-forked processes, each serving
# connections one after another. The reference is bench/prefork_ref.py: four pre-forked
# processes blocking in accept() on one socket, each reading a line, sending it back and
# closing, with nothing else (no logging, no limits): the least a Python server does per
# connection. Both run under one interpreter (common.servers_python); the clients send a line
# and close once it is back (sockd's echo then reads EOF and closes; the reference has
# closed already). Such servers reach tens of thousands of connections/s: the C client
# (bench/loadgen.c) is the one to use, and run.py shows how far it drives the reference.

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import (
    HOST,
    SOCKD_LOG,
    STOP_TIMEOUT,
    Bench,
    Pinning,
    Server,
    Sockd,
    build_parser,
    can_steer_loopback,
    loopback_received_on,
    run,
    servers_python,
    settings_from,
    start_reference,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

WORKERS = 4
PREFORK_REF = Path(__file__).resolve().with_name("prefork_ref.py")
# The sockd service under test, beside name and listen, per --sockd mode: pooled (the
# benchmark proper) or fork per connection (to compare meanwhile, while pooled is missing).
# Both run bench/line_echo.py, the reference's own work per connection (see there why).
SOCKD_SERVICES: dict[str, dict[str, str | int]] = {
    "workers": {"handler": "line_echo:LineEcho", "workers": WORKERS},
    "fork": {"handler": "line_echo:LineEcho"},
}
BENCH_DIR = Path(__file__).resolve().parent


def sockd_config(mode: str) -> str:
    """Return the TOML config: one echo service, SOCKD_SERVICES[mode], on a free port."""
    service = {"name": "echo", **SOCKD_SERVICES[mode], "listen": [f"{HOST}:0"]}
    # A JSON string, integer or list of strings is a TOML one too.
    lines = ["[daemon]", f"pythonpath = {json.dumps([str(BENCH_DIR)])}", "[[service]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in service.items()]
    return "\n".join(lines) + "\n"


def sockd_rejects(config: str) -> str | None:
    """Return why `sockd check` rejects `config`, or None when it accepts it."""
    with tempfile.TemporaryDirectory(prefix="sockd-bench-check-") as tmp:
        path = Path(tmp) / "sockd.toml"
        path.write_text(config)
        result = subprocess.run(
            [servers_python().executable, "-m", "sockd", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode == 0:
        return None
    message = (result.stderr.strip() or result.stdout.strip()).splitlines()
    said = message[-1].replace(str(path), "CONFIG") if message else "no message"
    return f"`sockd check` rejects the config (exit {result.returncode}: {said})"


class SockdPooled(Sockd):
    """sockd serving a pooled service: its workers stay, nothing to reap between cells."""

    pooled = True


def start_sockd(mode: str, workdir: Path, cpu: int | None) -> Sockd:
    """Write the config of `mode` into `workdir`, start sockd on it, wait until it is ready."""
    config = workdir / "sockd.toml"
    config.write_text(sockd_config(mode))
    kind = SockdPooled if mode == "workers" else Sockd
    return kind.start(workdir / SOCKD_LOG, cpu, ["--config", str(config)])


class PreforkRef(Server):
    """bench/prefork_ref.py: WORKERS processes accepting on one socket, one line each."""

    name = "prefork"
    pooled = True

    @classmethod
    def start(cls, err_path: Path, cpu: int | None) -> PreforkRef:
        """Start the reference in its own process group, pin it all, and read its port.

        Raises:
            BenchError: it exited or did not print its port in time.

        """
        python = servers_python().executable
        argv = [python, str(PREFORK_REF), "--host", HOST, "--workers", str(WORKERS)]
        return cls(*start_reference(argv, "the prefork reference", err_path, cpu))

    def stop(self) -> None:
        """SIGTERM the group (the workers too, even if the parent died), then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.close_pipes()


@contextlib.contextmanager
def running_servers(mode: str | None, workdir: Path, pinning: Pinning) -> Iterator[list[Server]]:
    """Start sockd (unless `mode` is None) and the reference; stop both however it ends.

    Meanwhile loopback's receiving side runs on the servers' CPU (see
    common.loopback_received_on): otherwise the C client, not the servers, is the limit.
    """
    with contextlib.ExitStack() as stack:
        stack.enter_context(loopback_received_on(pinning.server_cpu))
        servers: list[Server] = []
        if mode is not None:
            sockd = start_sockd(mode, workdir, pinning.server_cpu)
            stack.callback(sockd.stop)
            servers.append(sockd)
        reference = PreforkRef.start(workdir / "prefork.stderr", pinning.server_cpu)
        stack.callback(reference.stop)
        servers.append(reference)
        yield servers


def make_bench(mode: str = "workers") -> Bench:
    """Return the pooled benchmark; when sockd rejects the config, the reference alone.

    The sockd it leaves out is in the Bench's not_run, with the reason.
    """
    reason = sockd_rejects(sockd_config(mode))
    settings = SOCKD_SERVICES[mode]
    service = ", ".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    sockd_line = f"sockd: [[service]] {service}" + (f" (not run: {reason})" if reason else "")
    reference_line = (
        f"prefork: bench/prefork_ref.py --workers {WORKERS}: {WORKERS} pre-forked processes"
        " in blocking accept() on one socket, each connection: read a line, send it, close"
    )
    steering = (
        "loopback: its receiving side processed on the servers' CPU (RPS), so that the"
        " load generator is not the limit"
        if can_steer_loopback()
        else "loopback: receiving side on the sender's CPU (steering it needs root)"
    )
    meta = {
        "sockd_mode": mode,
        "sockd_service": SOCKD_SERVICES[mode],
        "sockd_config": sockd_config(mode),
        "reference_workers": WORKERS,
    }
    return Bench(
        "pool.py",
        "prefork",
        lambda workdir, pinning: running_servers(None if reason else mode, workdir, pinning),
        header=(sockd_line, reference_line, steering),
        meta=meta,
        not_run={"sockd": reason} if reason else {},
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON if asked; return the exit status."""
    parser = build_parser(__doc__, "bench/pool.py")
    parser.add_argument(
        "--sockd",
        choices=sorted(SOCKD_SERVICES),
        default="workers",
        help=f"sockd's mode: pooled (workers = {WORKERS}, the benchmark), or fork per"
        " connection (to compare with the reference while the pooled mode is missing)",
    )
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    bench = make_bench(args.sockd)
    if bench.not_run:
        print(
            f"pool.py: {bench.not_run['sockd']}.\n"
            "Nothing to compare: the pooled mode is missing. `--sockd fork` compares the"
            " reference with sockd's fork-per-connection echo meanwhile; bench/run.py"
            " measures the reference alone.",
            file=sys.stderr,
        )
        return 1
    return run(bench, args, settings)


if __name__ == "__main__":
    sys.exit(main())
