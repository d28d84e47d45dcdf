"""Tests of sockd.supervisor.cli: commands, usage errors and exit codes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from typing import TYPE_CHECKING

import pytest
from harness import run_once

from sockd import __version__
from sockd.supervisor import cli

if TYPE_CHECKING:
    from pathlib import Path

EXAMPLES = __import__("pathlib").Path(__file__).parents[3] / "examples"


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    return int(caught.value.code or 0)


class TestUsage:
    def test_version(self, capsys: pytest.CaptureFixture[str]) -> None:
        """--version prints the version and exits 0."""
        assert run_main(["--version"]) == 0
        assert capsys.readouterr().out == f"sockd {__version__}\n"

    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["serve"],
            ["run", "--bogus"],
            ["run", "--log-format", "xml"],
        ],
    )
    def test_usage_errors_exit_64(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Argument errors exit 64 (EX_USAGE) with a usage line."""
        assert run_main(argv) == 64
        assert "usage: sockd" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("argv", "problem"),
        [
            (["run", "--daemon"], "--daemon needs --pidfile PATH and --log-file PATH"),
            (["run", "--pidfile", "sockd.pid"], "--pidfile and --log-file only go with --daemon"),
            (["run", "--listen", "127.0.0.1:1"], "--listen and --name only go with --handler"),
            (["run", "--handler", "echo", "--config", "x"], "either --config or --handler"),
        ],
    )
    def test_option_conflicts_exit_64(
        self, argv: list[str], problem: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Options that do not go together are usage errors too, named in one line."""
        assert run_main([*argv, "--log-format", "json"]) == 64
        err = capsys.readouterr().err
        assert problem in err
        assert len(err.strip().splitlines()) == 1


class TestCheck:
    def test_valid_config_prints_effective_toml(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`sockd check` on the example prints TOML with every default filled in, exit 0."""
        assert run_main(["check", "--config", str(EXAMPLES / "sockd.toml")]) == 0
        effective = tomllib.loads(capsys.readouterr().out)
        assert effective["daemon"]["stop_timeout"] == 30.0
        names = [service["name"] for service in effective["service"]]
        assert "echo" in names
        assert "upper" in names

    def test_invalid_config_exits_78(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config error is one line on stderr naming file and key, exit 78."""
        path = tmp_path / "bad.toml"
        path.write_text("[[service]]\nname = 'x'\nhandler = 'echo'\nlisten = ['nowhere']\n")
        assert run_main(["check", "--config", str(path)]) == 78
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"sockd: {path}: service 'x': listen[0]: bad address 'nowhere':"
            " expected HOST:PORT, [IPV6]:PORT or unix:/path\n"
        )

    def test_quiet_prints_nothing_when_valid(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`sockd check --quiet` (ExecStartPre=, ExecReload=) says nothing on success."""
        assert run_main(["check", "--quiet", "--config", str(EXAMPLES / "sockd.toml")]) == 0
        assert capsys.readouterr() == ("", "")

    def test_error_to_the_journal_carries_priority_err(self, tmp_path: Path) -> None:
        """With stderr the journal stream (JOURNAL_STREAM), the line starts with <3>."""
        path = tmp_path / "bad.toml"
        path.write_text("[daemon\n")
        stderr = tmp_path / "stderr"
        with stderr.open("w") as file:
            info = os.fstat(file.fileno())
            journal = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}", "PATH": "/usr/bin:/bin"}
            result = run_once("check", "--quiet", "--config", str(path), env=journal, stderr=file)
        assert result.returncode == 78
        assert stderr.read_text().startswith(f"<3>sockd: {path}: invalid TOML")


class TestRunErrors:
    def test_config_error_exits_78_without_traceback(self, tmp_path: Path) -> None:
        """`sockd run` with a broken config logs one error event and exits 78."""
        path = tmp_path / "bad.toml"
        path.write_text("[daemon]\nstop_timeout = -1\n[[service]]\nname='x'\nhandler='echo'\n")
        result = run_once("run", "--config", str(path), "--log-format", "json")
        assert result.returncode == 78
        (line,) = result.stderr.splitlines()
        assert '"event": "startup_failed"' in line
        assert "daemon.stop_timeout: must be at least 0" in line

    def test_daemon_refused_under_systemd(self, tmp_path: Path) -> None:
        """--daemon with NOTIFY_SOCKET set is refused: systemd would lose the process."""
        result = run_once(
            "run",
            "--handler",
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--daemon",
            "--pidfile",
            str(tmp_path / "p"),
            "--log-file",
            str(tmp_path / "l"),
            "--log-format",
            "json",
            env={"NOTIFY_SOCKET": str(tmp_path / "n"), "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 64
        assert "NOTIFY_SOCKET is set" in result.stderr


class TestEntryPoint:
    def test_early_signals_are_the_main_loops(self) -> None:
        """`sockd run` blocks from its first line exactly the signals the main loop unblocks."""
        from sockd.__main__ import EARLY_SIGNALS  # noqa: PLC0415 (the module is the entry point)
        from sockd.supervisor.loop import DAEMON_SIGNALS  # noqa: PLC0415

        assert set(EARLY_SIGNALS) == set(DAEMON_SIGNALS)

    def test_check_keeps_default_signal_actions(self, tmp_path: Path) -> None:
        """`sockd check` blocks nothing: a SIGTERM ends it as it would any command."""
        config = tmp_path / "sockd.toml"
        config.write_text('[[service]]\nname = "e"\nhandler = "echo"\nlisten = ["127.0.0.1:0"]\n')
        # The program stops itself with SIGTERM once the config is loaded.
        code = (
            "import os, signal, sys; from sockd.supervisor import config\n"
            "load = config.load\n"
            "config.load = lambda path: (os.kill(os.getpid(), signal.SIGTERM), load(path))[1]\n"
            "sys.argv = ['sockd', 'check', '--config', sys.argv[1]]\n"
            "from sockd.__main__ import main; main()\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(config)], capture_output=True, check=False, timeout=30
        )
        assert result.returncode == -signal.SIGTERM
