"""Smoke test of bench/echo.py: a quick run finishes and reports both servers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from quick_run import assert_ratio_lines, assert_served, quick_run

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.slow
class TestEchoBench:
    """`bench/echo.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    def test_quick_run_reports_both_servers(self, tmp_path: Path) -> None:
        """A quick run exits 0, serves both servers at 1 and 8 clients, and prints ratios."""
        stdout, data = quick_run("echo.py", tmp_path)
        assert_served(data, ("sockd", "stdlib"))
        assert_ratio_lines(stdout, "stdlib")
