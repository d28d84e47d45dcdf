"""Smoke test of bench/echo.py: a quick run finishes and reports both servers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from quick_run import assert_ratio_lines, assert_served, quick_run

# What the interpreter says it is: its version, and the binary behind it.
ABOUT = (
    "import os, platform, sys; print(platform.python_version(), os.path.realpath(sys.executable))"
)


def about(python: str) -> tuple[str, str] | None:
    """Return the version of `python` and the real path of its binary; None if it fails."""
    result = subprocess.run(
        [python, "-c", ABOUT], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0:  # say, a pyenv shim of a version not selected here
        return None
    version, realpath = result.stdout.split()
    return version, realpath


def other_python() -> str:
    """Return an interpreter other than this one, with venv and pip (3.13 first), or skip."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        shutil.which("python3.13"),
        *map(str, sorted(pyenv.glob("versions/3.13*/bin/python3.13"))),
        shutil.which("python3.12"),
        "/usr/bin/python3",  # Debian's, when this one is not
    ]
    mine = os.path.realpath(sys.executable)
    for python in filter(None, candidates):
        found = about(python)
        if found is not None and found[1] != mine:
            return python
    pytest.skip("no other Python interpreter on this machine")


@pytest.mark.slow
class TestEchoBench:
    """`bench/echo.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    def test_quick_run_reports_both_servers(self, tmp_path: Path) -> None:
        """A quick run exits 0, serves both servers at 1 and 8 clients, and prints ratios."""
        stdout, data = quick_run("echo.py", tmp_path)
        assert_served(data, ("sockd", "stdlib"))
        assert_ratio_lines(stdout, "stdlib")

    @pytest.mark.timeout(300)  # the first run makes its virtualenv (pip, about 20 s)
    def test_python_option_runs_both_servers_under_it(self, tmp_path: Path) -> None:
        """--python: sockd and the stdlib reference run under that interpreter, as recorded."""
        python = other_python()
        found = about(python)
        assert found is not None
        version, realpath = found
        _, data = quick_run("echo.py", tmp_path, ("--python", python))
        assert_served(data, ("sockd", "stdlib"))
        assert data["meta"]["python"] == f"CPython {version}", data["meta"]
        assert data["meta"]["interpreter_realpath"] == realpath, data["meta"]
        # What the servers' processes ran, read from /proc while they served.
        assert data["executables"] == {"sockd": [realpath], "stdlib": [realpath]}
