"""Smoke test of bench/echo.py: a quick run finishes and reports both servers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "echo.py"


@pytest.mark.slow
class TestEchoBench:
    """`bench/echo.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    def test_quick_run_reports_both_servers(self, tmp_path: Path) -> None:
        """A quick run exits 0, serves both servers at 1 and 8 clients, and prints ratios."""
        report = tmp_path / "echo.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(report)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        cells = {
            (cell["server"], cell["clients"]): cell
            for cell in json.loads(report.read_text())["cells"]
        }
        for server in ("sockd", "stdlib"):
            for clients in (1, 8):
                cell = cells[server, clients]
                assert cell["completed"] > 0, cell
                assert cell["conn_per_s"] > 0, cell
        for clients in (1, 8):
            line = rf"^ratio sockd/stdlib conn/s at +{clients} clients: \d"
            assert re.search(line, result.stdout, re.MULTILINE), result.stdout
