"""Smoke test of bench/headers.py: where PROXY headers are read, measured (briefly)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_run_measures_both_sides(tmp_path: Path) -> None:
    """Stalled headers fork nothing; both services serve; the figures are written as JSON."""
    output = tmp_path / "headers.json"
    command = [sys.executable, str(ROOT / "bench" / "headers.py"), "--stalled", "40"]
    command += ["--connections", "20", "--repeat", "1", "--json", str(output)]
    subprocess.run(command, check=True, timeout=120, capture_output=True)
    results = json.loads(output.read_text())
    assert results["stalled"]["connections"] == 40
    assert results["stalled"]["processes_forked"] == 0
    assert results["proxied_cpu_us_per_connection"] > 0
    assert results["plain_cpu_us_per_connection"] > 0
