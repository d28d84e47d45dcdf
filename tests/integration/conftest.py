"""Fixtures of the integration tests that run a real HAProxy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from haproxylib import HAProxy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., HAProxy]]:
    """Start HAProxy processes (see `HAProxy`); every one is stopped at teardown."""
    started: list[HAProxy] = []

    def start(*args: object, **kwargs: object) -> HAProxy:
        process = HAProxy(tmp_path, *args, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
