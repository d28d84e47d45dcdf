"""What the log accounts for: a program's own memory, refusals summed up to the last one."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pytest
from harness import exchange, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from harness import Sockd


class TestProgramMemory:
    def test_max_rss_is_the_programs_own_or_null(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """/bin/true: null, not the forker's 11 MB; a program using 150 MB: about that much."""
        allocate = "b = b'x' * (150 << 20)"
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [[service]]
            name = "true"
            exec = ["/bin/true"]
            listen = ["127.0.0.1:0"]

            [[service]]
            name = "big"
            exec = ["{sys.executable}", "-S", "-c", "{allocate}"]
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd("run", "--config", config)
        exchange(daemon.address(0), b"")
        exchange(daemon.address(1), b"")
        (small,) = daemon.wait_event("connection_closed", service="true")
        (big,) = daemon.wait_event("connection_closed", service="big")
        assert small["exit_code"] == big["exit_code"] == 0
        assert small["max_rss_kib"] is None
        assert 150 << 10 <= big["max_rss_kib"] < 300 << 10
        assert daemon.stop() == 0


class TestSummariesAtStop:
    @pytest.mark.parametrize("workers", ["", "workers = 1"])
    def test_refusals_summed_so_far_are_logged_at_stop(
        self, sockd: Callable[..., Sockd], tmp_path: Path, workers: str
    ) -> None:
        """A stop within the 10 s window still logs connections_denied with the count."""
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            deny = ["127.0.0.2"]
            {workers}
            """,
        )
        daemon = sockd("run", "--config", config)
        for _ in range(5):
            assert exchange(daemon.address(), b"x", source="127.0.0.2") == b""
        daemon.wait_event("connection_denied")
        assert daemon.stop() == 0
        (summary,) = daemon.events("connections_denied")
        assert (summary["source"], summary["count"]) == ("127.0.0.2", 4)
