"""Tests of sockd.forker.loop: when the forker is crowded; how it obeys the daemon's commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import sockd
from sockd import ipc
from sockd.forker.loop import LONG_LIVED, crowd
from sockd.forker.shared import Service, Shared
from sockd.spec import Limits, ServiceSpec


def service(name: str, **changes: Any) -> Service:
    return Service(ServiceSpec(name, "echo", **changes))


def with_children(count: int) -> Shared:
    """Return the forker's shared state with `count` children just started (pids 1, 2...)."""
    shared = Shared()
    for pid in range(1, count + 1):
        shared.children.add(pid, "echo", ("127.0.0.1", 40000 + pid))
    return shared


def events_until(reader: ipc.Reader, kind: str) -> list[ipc.Record]:
    """Return the forker's events up to the first of `kind` (bounded in time)."""
    seen: list[ipc.Record] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        record = reader.read_blocking()
        assert record is not None, f"the forker ended before {kind!r}: {seen}"
        seen.append(record)
        if record[0] == kind:
            return seen
    raise AssertionError(f"no {kind!r} in {seen}")


class TestCrowd:
    def test_renew_after_long_lived_children_make_a_crowd(self) -> None:
        """`renew_after` children open over LONG_LIVED s: crowded (their count); fewer: not."""
        shared, now = with_children(3), time.monotonic()
        assert crowd(shared, {}, 3, now) == 0, "none is long-lived yet"
        later = now + LONG_LIVED + 0.1
        assert crowd(shared, {}, 3, later) == 3
        assert crowd(shared, {}, 2, later) == 3
        assert crowd(shared, {}, 4, later) == 0

    def test_never_when_off(self) -> None:
        """renew_forker_after = 0: never crowded, however many children and however old."""
        assert crowd(with_children(5), {}, 0, time.monotonic() + 3600) == 0

    def test_pooled_workers_do_not_count(self) -> None:
        """Pooled workers are not connections: they neither count nor are long-lived ones."""
        shared, later = with_children(3), time.monotonic() + LONG_LIVED + 0.1
        assert crowd(shared, {3: ("echo", 0.0)}, 3, later) == 0
        assert crowd(shared, {3: ("echo", 0.0)}, 2, later) == 2

    def test_never_under_per_source_or_rate_limits(self) -> None:
        """A service with admission limits keeps its counts in this forker: no renewal."""
        shared, later = with_children(3), time.monotonic() + LONG_LIVED + 0.1
        shared.admission(Service(ServiceSpec("echo", "echo", limits=Limits(per_source=10))))
        assert crowd(shared, {}, 3, later) == 0


class TestCommands:
    """A real forker process, driven over its control channel as the daemon drives it."""

    SETUP: dict[str, object] = {  # noqa: RUF012 (read only)
        "sys_path": [],
        "identity": None,
        "listeners": [],
        "max_children": 8,
        "stop_timeout": 1.0,
        "renew_forker_after": 0,
        "standby": False,
    }

    def test_a_reload_with_a_malformed_service_is_skipped_and_logged(self) -> None:
        """Specs are decoded once, in the forker: command_malformed names the field; it goes on."""
        control, control_end = ipc.channel()
        events, events_end = ipc.channel()
        env = {**os.environ, "PYTHONPATH": str(Path(sockd.__file__).parents[1])}
        command = [sys.executable, "-P", "-S", "-m", "sockd.forker"]
        fds = [str(control_end.fileno()), str(events_end.fileno())]
        keep = (control_end.fileno(), events_end.fileno())
        forker = subprocess.Popen([*command, *fds], env=env, pass_fds=keep)
        control_end.close()
        events_end.close()
        try:
            good = ServiceSpec("echo", "echo").to_wire()
            bad = ServiceSpec("echo", "echo").to_wire()[:14]
            ipc.send(control.fileno(), ("setup", self.SETUP, [good]))
            reader = ipc.Reader(events.fileno())
            events_until(reader, "ready")
            ipc.send(control.fileno(), ("reload", 1, [good, bad], 8, 1.0, 0))
            ipc.send(control.fileno(), ("reload", 2, [good], 8, 1.0, 0))
            seen = events_until(reader, "reloaded")
            logged = [record for record in seen if record[0] == "log"]
            assert logged == [
                (
                    "log",
                    "error",
                    "command_malformed",
                    {
                        "error": "'reload' record of the wrong shape: service 1:"
                        f" expected {len(ServiceSpec.FIELDS)} values, got tuple of 14",
                        "count": 1,
                    },
                )
            ]
            assert seen[-1] == ("reloaded", 2), "the first reload was skipped, the second done"
            ipc.send(control.fileno(), ("quit",))
            assert forker.wait(10) == 0
        finally:
            forker.kill()
            forker.wait()
            control.close()
            events.close()
