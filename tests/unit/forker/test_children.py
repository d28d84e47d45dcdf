"""Tests of sockd.forker.children: bookkeeping and non-blocking reaping of real forked children."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from harness import wait_until

from sockd.exits import PEER_GONE, PEER_GONE_STATUSES, closed_fields
from sockd.forker.children import Children, peak_rss_kib

if TYPE_CHECKING:
    from sockd.exits import RawExit


def fork(action: str) -> int:
    """Fork a child that does `action`; return once it is set up (SIGTERM ignored, say)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            if action == "ignore-term":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write_end, b".")
            if action in ("sleep", "ignore-term"):
                time.sleep(60)
            os._exit({"three": 3, "peer-gone": PEER_GONE}.get(action, 0))
        finally:
            os._exit(99)
    os.close(write_end)
    os.read(read_end, 1)
    os.close(read_end)
    return pid


class TestChildren:
    def test_reap_records_exit_codes_and_signals(self) -> None:
        """Exits are reaped with their code or signal name, duration and resource use."""
        children = Children()
        quick, three, killed = fork("zero"), fork("three"), fork("sleep")
        children.add(quick, "echo", ("127.0.0.1", 1))
        children.add(three, "echo", ("::1", 2, 0, 0))
        children.add(killed, "time", "unix:uid=0,pid=1")
        assert (len(children), children.count("echo"), children.count("time")) == (3, 2, 1)
        os.kill(killed, signal.SIGKILL)
        exits: dict[int, RawExit] = {}
        wait_until(lambda: exits.update({e[0]: e for e in children.reap()}) or len(exits) == 3)
        fields = {pid: closed_fields(raw) for pid, raw in exits.items()}
        assert (fields[quick]["exit_code"], fields[quick]["signal"]) == (0, None)
        assert fields[quick]["client"] == "127.0.0.1:1"
        assert fields[three]["exit_code"] == 3
        assert fields[three]["client"] == "[::1]:2"
        assert (fields[killed]["exit_code"], fields[killed]["signal"]) == (None, "SIGKILL")
        assert fields[killed]["client"] == "unix:uid=0,pid=1"
        assert fields[three]["service"] == "echo"
        assert fields[three]["pid"] == three
        max_rss = fields[three]["max_rss_kib"]
        assert isinstance(max_rss, int)
        assert max_rss > 0
        assert isinstance(fields[three]["duration"], float)
        assert len(children) == 0
        assert children.count("echo") == 0

    def test_reap_never_blocks(self) -> None:
        """With a child still running, reap returns at once with nothing."""
        children = Children()
        pid = fork("sleep")
        children.add(pid, "echo", "x")
        started = time.monotonic()
        assert children.reap() == []
        assert time.monotonic() - started < 1.0
        children.signal_all(signal.SIGTERM)
        wait_until(children.reap)
        assert len(children) == 0

    def test_counts_by_service_and_by_age(self) -> None:
        """Children are counted per service, and by start time with some left out."""
        children = Children()
        pids = [fork("sleep") for _ in range(3)]
        try:
            children.add(pids[0], "echo", "x")
            children.add(pids[1], "echo", "x")
            between = time.monotonic()
            children.add(pids[2], "time", "x")
            assert children.per_service() == {"echo": 2, "time": 1}
            assert children.started_before(between) == 2
            assert children.started_before(between, exclude={pids[0]}) == 1
            assert children.started_before(time.monotonic()) == 3
        finally:
            children.signal_all(signal.SIGKILL)
            wait_until(lambda: not children.reap() and len(children) == 0)
        assert children.per_service() == {}

    def test_reap_with_no_children(self) -> None:
        """ECHILD is tolerated."""
        assert Children().reap() == []


class TestDeadlines:
    def test_sigterm_at_max_duration_then_sigkill_after_the_grace(self) -> None:
        """A child that ignores SIGTERM gets SIGKILL `grace` seconds later; both are returned."""
        children = Children()
        stubborn = fork("ignore-term")
        children.add(stubborn, "svc", ("127.0.0.1", 1), max_duration=0.2)
        started = time.monotonic()
        deadline = children.next_deadline()
        assert deadline is not None
        assert started - 0.1 < deadline - 0.2 <= started
        assert children.enforce_deadlines(deadline - 0.001, grace=0.2) == []
        (term,) = children.enforce_deadlines(deadline, grace=0.2)
        assert term == (stubborn, "svc", ("127.0.0.1", 1), "SIGTERM")
        assert children.next_deadline() == deadline + 0.2
        assert children.enforce_deadlines(deadline + 0.199, grace=0.2) == []
        (kill,) = children.enforce_deadlines(deadline + 0.2, grace=0.2)
        assert kill[3] == "SIGKILL"
        (exit_record,) = wait_until(children.reap)
        assert os.waitstatus_to_exitcode(exit_record[3]) == -signal.SIGKILL

    def test_children_that_end_in_time_are_left_alone(self) -> None:
        """No signal goes to a child reaped before its deadline."""
        children = Children()
        children.add(fork("zero"), "svc", None, max_duration=0.1)
        deadline = children.next_deadline()
        assert deadline is not None
        wait_until(children.reap)
        assert children.enforce_deadlines(deadline + 0.05, grace=1.0) == []
        assert children.next_deadline() is None


class TestPeerGoneAndMemory:
    def test_peer_gone_exit_is_a_reset_not_an_error(self) -> None:
        """Exit 141 (and death by SIGPIPE) read as peer_reset; other exits carry no such field."""
        children = Children()
        gone, normal = fork("peer-gone"), fork("zero")
        children.add(gone, "echo", ("127.0.0.1", 1))
        children.add(normal, "echo", ("127.0.0.1", 2))
        exits: dict[int, RawExit] = {}
        wait_until(lambda: exits.update({e[0]: e for e in children.reap()}) or len(exits) == 2)
        assert exits[gone][3] in PEER_GONE_STATUSES
        assert closed_fields(exits[gone])["peer_reset"] is True
        assert closed_fields(exits[gone])["exit_code"] == PEER_GONE
        assert "peer_reset" not in closed_fields(exits[normal])
        assert int(signal.SIGPIPE) in PEER_GONE_STATUSES

    def test_program_peak_at_or_below_the_floor_is_unknown(self) -> None:
        """A program's max RSS at or below the forker's peak is None; above it, it is kept."""
        children = Children()
        low, high = fork("zero"), fork("zero")
        children.add(low, "prog", ("127.0.0.1", 1), program=10**9)
        children.add(high, "prog", ("127.0.0.1", 2), program=1)
        exits: dict[int, RawExit] = {}
        wait_until(lambda: exits.update({e[0]: e for e in children.reap()}) or len(exits) == 2)
        assert exits[low][7] is None
        high_rss = exits[high][7]
        assert isinstance(high_rss, int)
        assert high_rss > 1
        assert peak_rss_kib() > 1000  # this process's VmHWM, in KiB
