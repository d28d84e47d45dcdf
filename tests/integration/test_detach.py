"""`sockd run --daemon`: detaching with python-daemon when there is no systemd."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import alive, exchange, run_once, wait_until

if TYPE_CHECKING:
    import subprocess


def read_pid(pidfile: Path) -> str:
    try:
        return pidfile.read_text().strip()
    except FileNotFoundError:
        return ""


def without_notify_socket() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}


def start(tmp_path: Path, pidfile: Path, name: str = "echo") -> subprocess.CompletedProcess[str]:
    return run_once(
        "run",
        "--handler",
        "echo",
        "--listen",
        f"unix:{tmp_path}/{name}.sock",
        "--daemon",
        "--pidfile",
        str(pidfile),
        "--log-file",
        str(tmp_path / "sockd.log"),
        env=without_notify_socket(),
    )


class TestDetach:
    def test_detaches_serves_logs_and_stops(self, tmp_path: Path) -> None:
        """The command returns; the daemon writes its pid file, serves, logs to the file."""
        pidfile = tmp_path / "sockd.pid"
        result = start(tmp_path, pidfile)
        assert result.returncode == 0, result.stderr
        pid = int(wait_until(lambda: read_pid(pidfile)))
        try:
            assert exchange(f"unix:{tmp_path}/echo.sock", b"detached") == b"detached"
            assert os.getsid(pid) != os.getsid(0), "detached from our session"
            assert os.getppid() != pid
            assert os.readlink(f"/proc/{pid}/cwd") == "/"
            status = Path(f"/proc/{pid}/status").read_text()
            assert "Umask:\t0027" in status
            events = wait_until(
                lambda: (
                    [
                        json.loads(line)["event"]
                        for line in (tmp_path / "sockd.log").read_text().splitlines()
                    ]
                    if "connection_closed" in (tmp_path / "sockd.log").read_text()
                    else None
                )
            )
            assert events[:2] == ["starting", "ready"]
            second = start(tmp_path, pidfile, "other")
            assert second.returncode == 71
            assert f"sockd is already running as pid {pid}" in second.stderr
        finally:
            os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), what="daemon exit")
        assert not pidfile.exists()
        assert "stopped" in (tmp_path / "sockd.log").read_text()

    def test_stale_pidfile_is_replaced(self, tmp_path: Path) -> None:
        """A pid file left by a dead process does not keep sockd from starting."""
        pidfile = tmp_path / "sockd.pid"
        pidfile.write_text("999999999\n")
        assert start(tmp_path, pidfile).returncode == 0
        pid = int(wait_until(lambda: read_pid(pidfile).replace("999999999", "")))
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), what="daemon exit")

    @pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
    def test_detached_with_user_stops_without_traceback(self, tmp_path: Path) -> None:
        """Detached and then unprivileged, sockd still stops cleanly: no traceback in its log."""
        config = tmp_path / "sockd.toml"
        config.write_text(
            '[daemon]\nuser = "nobody"\n[[service]]\nname = "echo"\nhandler = "echo"\n'
            f'listen = ["unix:{tmp_path}/echo.sock"]\n'
        )
        pidfile, log = tmp_path / "sockd.pid", tmp_path / "sockd.log"
        result = run_once(
            "run",
            "--config",
            str(config),
            "--daemon",
            "--pidfile",
            str(pidfile),
            "--log-file",
            str(log),
            env=without_notify_socket(),
        )
        assert result.returncode == 0, result.stderr
        pid = int(wait_until(lambda: read_pid(pidfile)))
        wait_until(lambda: "ready" in log.read_text(), what="ready")
        assert exchange(f"unix:{tmp_path}/echo.sock", b"x") == b"x"
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not alive(pid), what="daemon exit")
        text = log.read_text()
        assert '"event": "stopped"' in text
        assert "Traceback" not in text

    def test_log_file_symlink_is_refused(self, tmp_path: Path) -> None:
        """A --log-file that is a symlink is not followed (as root: to any file): exit 71."""
        victim = tmp_path / "victim"
        victim.write_text("untouched\n")
        victim.chmod(0o600)
        (tmp_path / "sockd.log").symlink_to(victim)
        pidfile = tmp_path / "sockd.pid"
        result = start(tmp_path, pidfile)
        if result.returncode == 0:  # detached, writing to the victim: stop it
            os.kill(int(wait_until(lambda: read_pid(pidfile))), signal.SIGTERM)
        assert result.returncode == 71
        (line,) = result.stderr.splitlines()
        assert json.loads(line)["error"] == (
            f"--log-file {tmp_path}/sockd.log: cannot open: is a symbolic link (not followed)"
        )
        assert victim.read_text() == "untouched\n"
        assert not pidfile.exists()
