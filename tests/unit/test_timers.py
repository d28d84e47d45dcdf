"""Tests of sockd.timers: the loops' table of named due times, with `now` passed in."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sockd.timers import Timers

if TYPE_CHECKING:
    from collections.abc import Callable


class Recorder:
    """Actions that note which timer ran, and when."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, float]] = []

    def action(self, name: str) -> Callable[[float], None]:
        return lambda now: self.ran.append((name, now))


class TestTimers:
    def test_nothing_set_is_due_never(self) -> None:
        """A table whose timers are not set is due at math.inf and runs nothing."""
        timers, recorder = Timers(), Recorder()
        timers.add("a", recorder.action("a"))
        assert timers.next_due() == math.inf
        assert not timers.is_set("a")
        timers.run(1e9)
        assert recorder.ran == []

    def test_the_earliest_is_next_and_only_what_is_due_runs(self) -> None:
        """next_due() is the earliest due time; run(now) runs exactly the timers due by `now`."""
        timers, recorder = Timers(), Recorder()
        for name in ("a", "b", "c"):
            timers.add(name, recorder.action(name))
        timers.set("a", 30.0)
        timers.set("b", 10.0)
        timers.set("c", 20.0)
        assert timers.next_due() == 10.0
        timers.run(9.9)
        assert recorder.ran == []
        timers.run(20.0)
        assert recorder.ran == [("b", 20.0), ("c", 20.0)]
        assert not timers.is_set("b")
        assert timers.next_due() == 30.0

    def test_a_timer_runs_once_unless_set_again(self) -> None:
        """A due timer is cleared before its action, which may set it again (a periodic one)."""
        timers, ran = Timers(), []

        def every_ten(now: float) -> None:
            ran.append(now)
            timers.set("tick", now + 10.0)

        timers.add("tick", every_ten, 0.0)
        timers.run(5.0)
        timers.run(5.0)
        assert ran == [5.0]
        assert timers.get("tick") == 15.0
        timers.run(15.0)
        assert ran == [5.0, 15.0]

    def test_clear_and_set_infinity_unset(self) -> None:
        """clear() and set(math.inf) both unset a timer: it no longer wakes the loop."""
        timers = Timers()
        timers.add("a")
        timers.add("b")
        timers.set("a", 1.0)
        timers.set("b", 2.0)
        timers.clear("a")
        timers.set("b", math.inf)
        assert (timers.is_set("a"), timers.is_set("b")) == (False, False)
        assert timers.next_due() == math.inf

    def test_due_timers_run_in_the_order_added(self) -> None:
        """Several due at once run in the table's order, whatever their due times."""
        timers, recorder = Timers(), Recorder()
        for name in ("first", "second", "third"):
            timers.add(name, recorder.action(name))
        timers.set("third", 1.0)
        timers.set("second", 3.0)
        timers.set("first", 2.0)
        timers.run(3.0)
        assert [name for name, _ in recorder.ran] == ["first", "second", "third"]

    def test_a_followed_timer_asks_its_owner(self) -> None:
        """A followed timer's due time is read from its owner at each next_due()."""
        timers, recorder = Timers(), Recorder()
        owner = {"deadline": math.inf}
        timers.follow("window", lambda: owner["deadline"], recorder.action("window"))
        assert timers.next_due() == math.inf
        owner["deadline"] = 7.0
        assert timers.next_due() == 7.0
        timers.run(7.0)
        assert recorder.ran == [("window", 7.0)]
        assert timers.next_due() == 7.0, "still due: its owner says so, until it moves on"
        owner["deadline"] = math.inf
        assert timers.next_due() == math.inf

    def test_a_timer_without_action_marks_a_time(self) -> None:
        """A timer added without an action wakes the loop and is cleared when due, nothing else."""
        timers = Timers()
        timers.add("pause")
        timers.set("pause", 60.0)
        assert timers.is_set("pause")
        assert timers.next_due() == 60.0
        timers.run(60.0)
        assert not timers.is_set("pause")
