"""Smoke test of bench/proxy.py: a quick run serves both variants through HAProxy."""

from __future__ import annotations

import json
import re
import shutil
from typing import TYPE_CHECKING

import pytest
from quick_run import CLIENTS, quick_run

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.slow
class TestProxyBench:
    """`bench/proxy.py --quick` as the suite runs it; no timing is asserted (noisy machines)."""

    @pytest.mark.timeout(180)
    def test_quick_run_serves_both_variants_through_haproxy(self, tmp_path: Path) -> None:
        """Both variants serve at 1 and 8 clients without errors; proxy/plain ratios printed."""
        assert shutil.which("haproxy"), (
            "haproxy is missing: run scripts/setup --tests (it installs the Debian package)"
        )
        log = tmp_path / "sockd.jsonl"
        stdout, data = quick_run("proxy.py", tmp_path, ("--sockd-log", str(log)))
        assert data["not_run"] == {}, data["not_run"]
        # Served, within the window or after it: a loaded machine may stall a 0.5 s window.
        cells = {(cell["server"], cell["clients"]): cell for cell in data["cells"]}
        assert sorted(cells) == sorted((s, c) for s in ("proxy", "plain") for c in CLIENTS)
        for cell in cells.values():
            assert cell["completed"] > 0, cell
            assert not any(cell["errors"].values()), cell
        summary = {(row["server"], row["clients"]): row for row in data["summary"]}
        for clients in CLIENTS:
            assert summary["plain", clients]["ratio"] == 1.0, summary["plain", clients]
            # None only if plain completed nothing inside its window (see above).
            assert isinstance(summary["proxy", clients]["ratio"], float | None), summary
            line = rf"^ratio proxy/plain conn/s at +{clients} clients: (\d|n/a)"
            assert re.search(line, stdout, re.MULTILINE), stdout
        assert re.search(r"^sockd log: .*; 0 connections failed$", stdout, re.MULTILINE), stdout
        # The proxy variant's sockd read HAProxy's headers: its events name HAProxy in `via`.
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert any("via" in event for event in events), events[-5:]
        assert data["meta"]["haproxy_configs"]["proxy"].count("send-proxy-v2") == 1
        assert "send-proxy" not in data["meta"]["haproxy_configs"]["plain"]
