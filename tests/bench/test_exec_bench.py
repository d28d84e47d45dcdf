"""Smoke test of bench/exec.py: a quick run finishes and reports sockd and tcpserver."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import pytest
from quick_run import CLIENTS, assert_ratio_lines, assert_served, quick_run

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.slow
class TestExecBench:
    """`bench/exec.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    def test_quick_run_reports_both_servers(self, tmp_path: Path) -> None:
        """A quick run exits 0, serves both at 1 and 8 clients without errors, has ratios."""
        assert shutil.which("tcpserver"), (
            "tcpserver is missing: run scripts/setup (it installs the Debian package ucspi-tcp)"
        )
        stdout, data = quick_run("exec.py", tmp_path)
        cells = assert_served(data, ("sockd", "tcpserver"))
        assert not any(any(cell["errors"].values()) for cell in cells.values()), cells
        summary = {(row["server"], row["clients"]): row for row in data["summary"]}
        for clients in CLIENTS:
            ratio = summary["sockd", clients]["ratio"]
            assert isinstance(ratio, float), summary["sockd", clients]
            assert ratio > 0, summary["sockd", clients]
        assert_ratio_lines(stdout, "tcpserver")
