"""Fixtures shared by every test: a real sockd process, and systemd's notify socket."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from harness import Notifications, Sockd

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add `--soak`, the long form of the chaos suite (here, so `pytest --soak` knows it too)."""
    parser.addoption(
        "--soak", action="store_true", help="tests/chaos: churn for 60 s instead of 10 s"
    )


@pytest.fixture
def notifications(tmp_path: Path) -> Iterator[Notifications]:
    """Bind a NOTIFY_SOCKET that records what sockd tells systemd."""
    with Notifications(tmp_path / "notify.sock") as notify:
        yield notify


@pytest.fixture
def sockd(tmp_path: Path) -> Iterator[Callable[..., Sockd]]:
    """Start sockd processes; every one is killed at teardown."""
    started: list[Sockd] = []

    def start(*args: str, wait: bool = True, **kwargs: object) -> Sockd:
        process = Sockd(list(args), tmp_path, **kwargs)  # type: ignore[arg-type,unused-ignore]
        started.append(process)
        if wait:
            process.wait_event("ready")
        return process

    yield start
    for process in started:
        process.kill()
