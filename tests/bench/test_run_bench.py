"""Smoke test of bench/run.py: a quick run of every mode writes its JSON, chart and page."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "run.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
class TestRunBench:
    """`bench/run.py --quick`, its outputs in a temporary directory; no timing is asserted."""

    @pytest.mark.timeout(240)
    def test_quick_run_writes_json_chart_and_page(self, tmp_path: Path) -> None:
        """Every mode runs both servers without errors; the three outputs are written."""
        assert shutil.which("tcpserver"), "tcpserver is missing: run scripts/setup"
        assert shutil.which("haproxy"), "haproxy is missing: run scripts/setup --tests"
        assert importlib.util.find_spec("matplotlib"), "matplotlib is missing: run scripts/setup"
        report, chart, page = tmp_path / "latest.json", tmp_path / "perf.png", tmp_path / "perf.md"
        result = subprocess.run(
            [
                sys.executable, str(BENCH), "--quick", "--build-dir", str(tmp_path / "build"),
                "--json", str(report), "--png", str(chart), "--markdown", str(page),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=230,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr

        data = json.loads(report.read_text())
        assert data["meta"]["client"].startswith("C "), data["meta"]["client"]
        servers = {
            "echo": ("sockd", "stdlib"),
            "exec": ("sockd", "tcpserver"),
            "pool": ("sockd", "prefork"),
            "proxy": ("proxy", "plain"),
            "udp": ("sockd", "udpserver", "inetd"),
        }
        for mode, names in servers.items():
            outcome = data["modes"][mode]
            assert outcome["failure"] is None, outcome["failure"]
            assert outcome["not_run"] == {}, outcome["not_run"]
            rows = {(row["server"], row["clients"]): row for row in outcome["rows"]}
            for server in names:
                for clients in (1, 8):
                    row = rows[server, clients]
                    assert row["conn_per_s"] > 0, row
                    assert not any(row["errors"].values()), row
        check = data["client_check"]
        assert check["failure"] is None, check
        assert [row["clients"] for row in check["python_rows"]] == [1, 8]

        assert chart.read_bytes().startswith(PNG_SIGNATURE)
        assert chart.stat().st_size > 20_000  # two panels of bars and labels, not a blank

        text = page.read_text()
        assert "![" in text
        assert "](perf.png)" in text  # the chart, by its path relative to the page
        assert re.search(r"^\| pool \| sockd \| 8 \| \d+ ", text, re.MULTILINE), text
        for heading in ("## Results", "## How to reproduce", "## The load generator"):
            assert heading in text

        assert re.search(r"^mode +server +clients +conn/s", result.stdout, re.MULTILINE)
        assert "load generator check" in result.stdout
