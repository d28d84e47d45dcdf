"""Smoke test of the C load generator, bench/loadgen.c, against bench/prefork_ref.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmark's code is the package bench, at the root

from bench.common import ERROR_KINDS, build_loadgen  # noqa: E402 (needs the root on sys.path)
from bench.pool import sockd_rejects  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

PREFORK_REF = ROOT / "bench" / "prefork_ref.py"
KEYS = {
    "clients", "window_s", "elapsed_s", "completed", "completed_in_window", "conn_per_s",
    "p50_ms", "p99_ms", "max_ms", "errors", "in_flight_at_end", "cpu_s", "busy",
}  # fmt: skip


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the C client with the machine's gcc, as the benchmark does."""
    assert shutil.which("gcc"), "gcc is missing: the benchmark builds its C client with it"
    binary, version = build_loadgen(tmp_path_factory.mktemp("build"))
    assert binary.is_file()
    assert version
    return binary


@pytest.fixture(scope="module")
def reference_port() -> Iterator[int]:
    """Run the pre-forked reference server; yield its port."""
    with subprocess.Popen(
        [sys.executable, str(PREFORK_REF), "--workers", "4"],
        stdout=subprocess.PIPE,
        process_group=0,
    ) as process:
        try:
            assert process.stdout is not None
            yield int(process.stdout.readline())
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                assert process.wait(10) == 0  # it stopped its workers and exited cleanly
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def run_loadgen(loadgen: Path, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [str(loadgen), *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert set(report) == KEYS, report
    assert set(ERROR_KINDS) <= set(report["errors"]), report
    return report


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow
class TestLoadgen:
    """The C client builds, drives the reference without errors, and counts errors by kind."""

    @pytest.mark.timeout(60)
    def test_one_second_against_the_reference(self, loadgen: Path, reference_port: int) -> None:
        """8 clients for 1 s: connections served, none failed, sane figures."""
        report = run_loadgen(
            loadgen, "--port", str(reference_port), "--clients", "8", "--duration", "1"
        )
        assert report["completed"] > 0, report
        assert 0 < report["completed_in_window"] <= report["completed"], report
        assert report["conn_per_s"] == pytest.approx(report["completed_in_window"], rel=0.01)
        assert not any(report["errors"].values()), report
        assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"] < 5000, report
        assert 0 <= report["in_flight_at_end"] <= 8, report
        assert report["elapsed_s"] >= 1.0, report
        assert 0 < report["busy"] <= 1.5, report

    @pytest.mark.timeout(30)
    def test_until_eof_with_half_close(self, loadgen: Path, reference_port: int) -> None:
        """Sending, half-closing and reading to EOF works too (the reference closes)."""
        report = run_loadgen(
            loadgen,
            *("--port", str(reference_port), "--duration", "0.3"),
            *("--shut-wr", "--until-eof"),
        )
        assert report["completed"] > 0, report
        assert not any(report["errors"].values()), report

    @pytest.mark.timeout(30)
    def test_refused_connections_are_counted(self, loadgen: Path) -> None:
        """A port nobody listens on: nothing completes, every failure is a refusal."""
        report = run_loadgen(loadgen, "--port", str(free_port()), "--duration", "0.2")
        assert report["completed"] == 0, report
        assert report["errors"]["refused"] > 0, report
        assert report["errors"]["reset"] == report["errors"]["timeout"] == 0, report

    @pytest.mark.timeout(30)
    def test_bad_usage(self, loadgen: Path) -> None:
        """No port: exit status 2 and the usage on stderr."""
        result = subprocess.run(
            [str(loadgen), "--clients", "3"], capture_output=True, text=True, check=False
        )
        assert result.returncode == 2
        assert "usage: loadgen" in result.stderr


class TestPoolConfigCheck:
    """bench/pool.py asks `sockd check` whether the config it is about to run is accepted."""

    def test_rejected_config_gives_the_reason(self) -> None:
        """An unknown key: the reason names sockd check's exit status and message."""
        config = '[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:0"]\n'
        assert sockd_rejects(config) is None
        reason = sockd_rejects(config + "no_such_key = 1\n")
        assert reason is not None
        assert "exit 78" in reason, reason
        assert "no_such_key" in reason, reason
