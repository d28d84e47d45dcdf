"""What the smoke tests of bench/echo.py and bench/exec.py share: one quick run, checked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = (1, 8)  # what --quick measures


def quick_run(
    script: str, tmp_path: Path, options: tuple[str, ...] = ()
) -> tuple[str, dict[str, Any]]:
    """Run `bench/SCRIPT --quick OPTIONS`; return what it printed and the JSON report it wrote."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, ROOT / "bench" / script, "--quick", "--json", report, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(report.read_text())


def assert_served(data: dict[str, Any], servers: tuple[str, ...]) -> dict[Any, Any]:
    """Check that every server completed connections per client count; return the cells."""
    cells = {(cell["server"], cell["clients"]): cell for cell in data["cells"]}
    for server in servers:
        for clients in CLIENTS:
            cell = cells[server, clients]
            assert cell["completed"] > 0, cell
            assert cell["conn_per_s"] > 0, cell
    return cells


def assert_ratio_lines(stdout: str, reference: str) -> None:
    """Check that the run printed sockd's ratio to `reference` at each client count."""
    for clients in CLIENTS:
        line = rf"^ratio sockd/{reference} conn/s at +{clients} clients: \d"
        assert re.search(line, stdout, re.MULTILINE), stdout
