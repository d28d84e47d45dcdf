"""Fixtures of the daemon's loop tests: processes standing in for forkers, with their channels."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, NamedTuple

import pytest

from sockd import ipc
from sockd.supervisor.loop import ForkerProcess, MainLoop
from sockd.supervisor.notify import Notifier

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sockd.supervisor.config import Config


class StandIn(NamedTuple):
    """A process standing in for a forker (`sleep 60`, in its own group), and its ends."""

    forker: ForkerProcess  # the daemon's handle
    control: int  # the forker's end of its commands (to read)
    events: int  # the forker's end of its events (to write)


@pytest.fixture
def stand_in() -> Iterator[Callable[[], StandIn]]:
    """Start stand-in forkers that never answer; each is killed and closed at teardown."""
    started: list[StandIn] = []

    def start() -> StandIn:
        control_write, control_read = (sock.detach() for sock in ipc.channel())
        events_read, events_write = (sock.detach() for sock in ipc.channel())
        pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ, setpgroup=0)
        started.append(
            StandIn(ForkerProcess(pid, control_write, events_read), control_read, events_write)
        )
        return started[-1]

    yield start
    for forker, control, events in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(forker.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(forker.pid, 0)
        if not forker.closed:
            forker.close()
        os.close(control)
        os.close(events)


@pytest.fixture
def main_loop(
    stand_in: Callable[[], StandIn],
) -> Iterator[Callable[..., tuple[MainLoop, StandIn]]]:
    """Make ready main loops, each over a stand-in forker; give the loop and the stand-in."""
    made: list[MainLoop] = []

    def make(
        config: Config, renew: Callable[[Config], ForkerProcess] | None = None
    ) -> tuple[MainLoop, StandIn]:
        current = stand_in()
        main = MainLoop(config, current.forker, [], Notifier({}, os.getpid()), renew)
        made.append(main)
        main.ready = True
        main.watch(current.forker)
        return main, current

    yield make
    for main in made:
        main.selector.close()
        os.close(main._wakeup_read)
        os.close(main._wakeup_write)
