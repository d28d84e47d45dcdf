"""Smoke test of bench/exec.py: a quick run finishes and reports sockd and tcpserver."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "exec.py"


@pytest.mark.slow
class TestExecBench:
    """`bench/exec.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    def test_quick_run_reports_both_servers(self, tmp_path: Path) -> None:
        """A quick run exits 0, serves both at 1 and 8 clients without errors, has ratios."""
        assert shutil.which("tcpserver"), (
            "tcpserver is missing: run scripts/setup (it installs the Debian package ucspi-tcp)"
        )
        report = tmp_path / "exec.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(report)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        data = json.loads(report.read_text())
        cells = {(cell["server"], cell["clients"]): cell for cell in data["cells"]}
        summary = {(row["server"], row["clients"]): row for row in data["summary"]}
        for server in ("sockd", "tcpserver"):
            for clients in (1, 8):
                cell = cells[server, clients]
                assert cell["completed"] > 0, cell
                assert cell["conn_per_s"] > 0, cell
                assert not any(cell["errors"].values()), cell
        for clients in (1, 8):
            ratio = summary["sockd", clients]["ratio"]
            assert isinstance(ratio, float), summary["sockd", clients]
            assert ratio > 0, summary["sockd", clients]
            line = rf"^ratio sockd/tcpserver conn/s at +{clients} clients: \d"
            assert re.search(line, result.stdout, re.MULTILINE), result.stdout
