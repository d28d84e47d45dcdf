"""Tests of bench/common.py's loopback steering: set while inside, put back after."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the benchmark's code is the package bench, at the root

from bench.common import (  # noqa: E402 (needs the root on sys.path)
    LOOPBACK_RPS,
    can_steer_loopback,
    loopback_received_on,
)


def test_steering_is_set_inside_and_put_back() -> None:
    """With root, the servers' CPU does loopback's receiving inside; the old mask comes back.

    Without root nothing changes (the benchmark says so in its header).
    """
    before = LOOPBACK_RPS.read_text()
    with loopback_received_on(1):
        inside = LOOPBACK_RPS.read_text()
    assert LOOPBACK_RPS.read_text() == before
    assert int(inside, 16) == (2 if can_steer_loopback() else int(before, 16))


def test_put_back_when_the_run_fails() -> None:
    """A benchmark that fails inside leaves the machine's setting as it was."""
    before = LOOPBACK_RPS.read_text()
    with pytest.raises(RuntimeError), loopback_received_on(0):
        raise RuntimeError
    assert LOOPBACK_RPS.read_text() == before


def test_unpinned_runs_leave_it_alone() -> None:
    """Without pinning (no server CPU) there is nothing to steer to."""
    before = LOOPBACK_RPS.read_text()
    with loopback_received_on(None):
        assert LOOPBACK_RPS.read_text() == before
