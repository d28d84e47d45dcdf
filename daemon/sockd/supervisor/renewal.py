"""Renewal of the forker, run by the daemon's loop: a fresh forker takes over from a crowded one.

Once the forker reports itself `crowded` (many long-lived children, which make
each fork dearer), the daemon starts a fresh forker on standby. When it is
ready, the old one retires: it accepts no more and exits after its last child.
The new one takes over once it knows how many children the retired ones still
have (they count toward the caps).
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import TYPE_CHECKING, Any

import structlog

from sockd.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sockd.supervisor.config import Config
    from sockd.supervisor.loop import ForkerProcess, MainLoop

log = structlog.get_logger()

RENEW_PAUSE = 60.0  # seconds without renewing the forker after a renewal failed
MAX_FORKERS = 8  # no renewal while this many forkers (retired ones too) are alive
STANDBY_LIMIT = 30.0  # seconds a fresh forker may take to be ready; then it is killed


class Renewal:
    """The daemon's renewals of its forker: the standby, the hand-over, the retired ones' counts."""

    def __init__(self, loop: MainLoop, start: Callable[[Config], ForkerProcess] | None) -> None:
        """Renew the forkers of `loop`; `start` starts a fresh forker on standby (None: never)."""
        self.loop = loop
        self.start = start
        self.standby: ForkerProcess | None = None  # starting, to take over from the current one
        self.timers = loop.timers
        self.timers.add("standby_limit", self._too_slow)  # a standby not ready by then is killed
        self.timers.add("renew_pause")  # no renewal while it is set (a renewal failed)

    def crowded(self, long_lived: int, now: float) -> None:
        """Start a fresh forker on standby, to take new connections from the crowded one."""
        loop = self.loop
        busy = self.standby is not None or loop.forker.waits_for is not None
        if self.start is None or busy or loop.stopping or loop.reload_pending or not loop.ready:
            return
        if self.timers.is_set("renew_pause") or len(loop.forkers) >= MAX_FORKERS:
            return
        try:
            standby = self.start(loop.config)
        except OSError as exc:
            self.failed(exc.strerror, now)
            return
        except ConfigError as exc:  # its set-up record is over ipc.MAX_RECORD
            self.failed(str(exc), now)
            return
        log.info("forker_renewing", forker=loop.forker.pid, long_lived=long_lived, new=standby.pid)
        self.timers.set("standby_limit", now + STANDBY_LIMIT)
        self.standby = standby
        loop.watch(standby)

    def hand_over(self, new: ForkerProcess) -> None:
        """Make the ready standby current; retire the old one, whose count the new one awaits."""
        loop = self.loop
        old = loop.forker
        loop.forker, self.standby = new, None
        self.timers.clear("standby_limit")
        new.waits_for = old
        old.send(("retire",))
        loop.reload_if_requested()

    def tell_elsewhere(self, reporter: ForkerProcess) -> None:
        """Tell the current forker how many children the retired ones have (they count toward caps).

        A forker still waiting for the count of the one it replaces hears
        nothing before that count (it would under-count), then `take_over`.
        """
        loop = self.loop
        current = loop.forker
        if current.status is not None:
            return
        if current.waits_for is not None and current.waits_for is not reporter:
            return
        total, per_service = 0, dict[str, int]()
        for forker in loop.forkers:
            if forker not in (current, self.standby) and forker.status is None:
                total += forker.children[0]
                for service, count in forker.children[1].items():
                    per_service[service] = per_service.get(service, 0) + count
        if current.waits_for is None:
            current.send(("elsewhere", total, per_service))
            return
        current.waits_for = None
        current.send(("take_over", total, per_service))
        # The retired one accepts no more (it reported after it stopped, or it exited).
        log.info("forker_renewed", forker=current.pid, retired=reporter.pid)

    def exited(self, forker: ForkerProcess) -> None:
        """Act on the exit of a forker that is not the current one: a standby, or a retired one."""
        if forker is self.standby:
            self.standby = None
            self.timers.clear("standby_limit")
            # Logged as the renewal's failure once its last events are read (see `forgotten`).
            forker.failed_standby = not self.loop.stopping and not self.loop.failed
        elif not forker.failed_standby:
            level = "info" if forker.status == 0 else "error"
            getattr(log, level)("forker_retired", forker=forker.pid, exit_status=forker.status)
            self.tell_elsewhere(forker)  # a forker waiting for its count waits no more

    def forgotten(self, forker: ForkerProcess, now: float) -> None:
        """Log a standby that failed, now that its last events (its "fatal" record) are read."""
        if forker.failed_standby:
            error = forker.failure[0] if forker.failure else None
            self.failed(error, now, exit_status=forker.status)

    def failed(self, error: str | None, now: float, **fields: Any) -> None:
        """Log a renewal that failed; pause renewals for RENEW_PAUSE."""
        self.timers.set("renew_pause", now + RENEW_PAUSE)
        log.error("forker_renewal_failed", error=error, retry_in=RENEW_PAUSE, **fields)
        self.loop.reload_if_requested()

    def _too_slow(self, now: float) -> None:
        """Kill a standby not ready within STANDBY_LIMIT; its exit is logged as the failure."""
        standby = self.standby
        if standby is None:
            return
        self.standby = None  # no hand-over to it from now on
        self.timers.set("renew_pause", now + RENEW_PAUSE)
        standby.failed_standby = True
        standby.failure = (f"not ready within {STANDBY_LIMIT:g} s", 0)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(standby.pid, signal.SIGKILL)
