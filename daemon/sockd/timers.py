"""A loop's timers in one table: named due times, the next wake-up, what runs (both loops).

Each timer has a name, a due time (`math.inf` while it is not set) and an
action, called with the time `now` once it is due (after the timer is cleared,
so an action may set it again). A *followed* timer's due time is kept by
another object (a deadline heap, a log's window): the table asks for it at
each `next_due()`.

Cheap on purpose, since the forker's loop asks once per turn, and a turn runs
once per connection under load: the due times are one list of floats, whose
minimum is one C call, and no list or dict is built unless a timer is due.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Action = Callable[[float], object]


def _nothing(_now: float) -> None:
    """Do nothing: the timer only wakes the loop up, or only marks a time."""


class Timers:
    """Named due times (monotonic seconds), each with what runs when it is due."""

    __slots__ = ("_actions", "_follows", "_index", "times")

    def __init__(self) -> None:
        """Make an empty table."""
        self.times: list[float] = []  # by timer number: when it is due (math.inf: not set)
        self._actions: list[Action] = []
        self._index: dict[str, int] = {}
        self._follows: list[tuple[int, Callable[[], float]]] = []

    def add(self, name: str, action: Action | None = None, when: float = math.inf) -> None:
        """Add timer `name`, due at `when` (not set by default); `action` runs when it is due.

        Without an action, the timer only wakes the loop up, or only marks a
        time (see `is_set`).
        """
        self._index[name] = len(self.times)
        self.times.append(when)
        self._actions.append(action or _nothing)

    def follow(
        self, name: str, deadline: Callable[[], float], action: Action | None = None
    ) -> None:
        """Add timer `name`, due when `deadline()` says (math.inf: not), asked by `next_due`."""
        self.add(name, action)
        self._follows.append((self._index[name], deadline))

    def set(self, name: str, when: float) -> None:
        """Make timer `name` due at `when` (math.inf: clear it)."""
        self.times[self._index[name]] = when

    def clear(self, name: str) -> None:
        """Clear timer `name`: it runs only if set again."""
        self.times[self._index[name]] = math.inf

    def get(self, name: str) -> float:
        """Return when timer `name` is due (math.inf: it is not set)."""
        return self.times[self._index[name]]

    def is_set(self, name: str) -> bool:
        """Tell whether timer `name` is set (due, or to be)."""
        return self.times[self._index[name]] != math.inf

    def next_due(self) -> float:
        """Return when the next timer is due (math.inf: none is set); asks the followed ones."""
        times = self.times
        for index, deadline in self._follows:
            times[index] = deadline()
        return min(times)

    def run(self, now: float) -> None:
        """Clear each timer due at `now` and run its action, in the order they were added.

        A followed timer's due time is the one read at the last `next_due()`.
        """
        times = self.times
        if min(times) > now:
            return
        for index, when in enumerate(times):
            if when <= now:
                times[index] = math.inf
                self._actions[index](now)
