"""Tests of sockd.supervisor.renewal: standby, hand-over, limits (stand-in forkers, `now` given)."""

from __future__ import annotations

import errno
import os
import signal
from typing import TYPE_CHECKING

import pytest
import structlog
from harness import wait_until

from sockd import ipc
from sockd.supervisor.config import Config, DaemonConfig, ServiceConfig, parse_listen
from sockd.supervisor.renewal import MAX_FORKERS, RENEW_PAUSE, STANDBY_LIMIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from sockd.supervisor.loop import ForkerProcess, MainLoop
    from unit.supervisor.conftest import StandIn

CONFIG = Config(DaemonConfig(), (ServiceConfig("echo", "echo", (parse_listen("127.0.0.1:7"),)),))
NOW = 1000.0  # any monotonic time: renewal takes it as a parameter

Renewing = tuple["MainLoop", "StandIn", list["StandIn"]]


@pytest.fixture
def renewing(
    main_loop: Callable[..., tuple[MainLoop, StandIn]], stand_in: Callable[[], StandIn]
) -> Renewing:
    """Make a ready main loop whose renewals start stand-ins; give it, its forker, fresh ones."""
    fresh: list[StandIn] = []

    def start(config: Config) -> ForkerProcess:
        assert config is CONFIG, "a fresh forker gets the config in force"
        fresh.append(stand_in())
        return fresh[-1].forker

    main, current = main_loop(CONFIG, start)
    return main, current, fresh


def commands(end: int) -> list[ipc.Record]:
    """Read the commands the daemon sent to a stand-in, from its end of the channel."""
    return ipc.Reader(end).read()


def exited(main: MainLoop, forker: ForkerProcess) -> None:
    """Kill a stand-in and have the loop reap it, as on its pidfd's readiness."""
    os.killpg(forker.pid, signal.SIGKILL)

    def reaped() -> bool:
        main._reap(forker)
        return forker.status is not None

    wait_until(reaped, what="reaped")


class TestCrowded:
    def test_a_crowded_forker_gets_a_standby(self, renewing: Renewing) -> None:
        """`crowded`: a fresh forker starts on standby, watched, with STANDBY_LIMIT to be ready."""
        main, current, fresh = renewing
        with structlog.testing.capture_logs() as logs:
            main.renewal.crowded(4, NOW)
        (standby,) = fresh
        assert logs == [
            {
                "event": "forker_renewing",
                "log_level": "info",
                "forker": current.forker.pid,
                "long_lived": 4,
                "new": standby.forker.pid,
            }
        ]
        assert main.renewal.standby is standby.forker
        assert main.forkers == [current.forker, standby.forker]
        assert main.forker is current.forker, "the crowded one accepts until the standby is ready"
        assert main.timers.get("standby_limit") == NOW + STANDBY_LIMIT

    def test_one_renewal_at_a_time(self, renewing: Renewing) -> None:
        """No second standby while one starts, nor while the new forker waits for the old count."""
        main, _, fresh = renewing
        main.renewal.crowded(4, NOW)
        main.renewal.crowded(4, NOW + 1)
        assert len(fresh) == 1
        main._on_event(fresh[0].forker, ("ready",))
        assert main.forker.waits_for is not None
        main.renewal.crowded(4, NOW + 2)
        assert len(fresh) == 1

    @pytest.mark.parametrize("state", ["stopping", "reload_pending", "not_ready", "max_forkers"])
    def test_no_renewal_while(
        self, renewing: Renewing, stand_in: Callable[[], StandIn], state: str
    ) -> None:
        """Stopping, reloading, not yet ready, or MAX_FORKERS alive: no fresh forker."""
        main, _, fresh = renewing
        if state == "not_ready":
            main.ready = False
        elif state == "max_forkers":
            main.forkers += [stand_in().forker for _ in range(MAX_FORKERS - 1)]
        else:
            setattr(main, state, True)
        main.renewal.crowded(4, NOW)
        assert fresh == []
        assert main.renewal.standby is None

    def test_a_failed_start_pauses_renewal(
        self, main_loop: Callable[..., tuple[MainLoop, StandIn]]
    ) -> None:
        """A fresh forker that cannot start: forker_renewal_failed; none tried for RENEW_PAUSE."""
        tries: list[float] = []

        def start(_config: Config) -> ForkerProcess:
            tries.append(0)
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

        main, _ = main_loop(CONFIG, start)
        with structlog.testing.capture_logs() as logs:
            main.renewal.crowded(4, NOW)
        assert logs == [
            {
                "event": "forker_renewal_failed",
                "log_level": "error",
                "error": os.strerror(errno.EAGAIN),
                "retry_in": RENEW_PAUSE,
            }
        ]
        main.timers.run(NOW + RENEW_PAUSE - 0.1)
        main.renewal.crowded(4, NOW + RENEW_PAUSE - 0.1)
        assert len(tries) == 1
        main.timers.run(NOW + RENEW_PAUSE)
        with structlog.testing.capture_logs():
            main.renewal.crowded(4, NOW + RENEW_PAUSE)
        assert len(tries) == 2


class TestHandOver:
    def test_the_standby_takes_over_once_it_knows_the_retired_count(
        self, renewing: Renewing
    ) -> None:
        """Ready: it is current, the old one retires; the old one's children go to take_over."""
        main, old, fresh = renewing
        main.renewal.crowded(4, NOW)
        (new,) = fresh
        main._on_event(new.forker, ("ready",))
        assert main.forker is new.forker
        assert main.renewal.standby is None
        assert not main.timers.is_set("standby_limit")
        assert commands(old.control) == [("retire",)]
        assert commands(new.control) == [], "nothing before the retired one's count"
        with structlog.testing.capture_logs() as logs:
            main._on_event(old.forker, ("children", 4, {"echo": 4}))
        assert commands(new.control) == [("take_over", 4, {"echo": 4})]
        assert logs == [
            {
                "event": "forker_renewed",
                "log_level": "info",
                "forker": new.forker.pid,
                "retired": old.forker.pid,
            }
        ]
        main._on_event(old.forker, ("children", 3, {"echo": 3}))  # one of its children ended
        assert commands(new.control) == [("elsewhere", 3, {"echo": 3})]

    def test_the_new_one_waits_for_the_count_of_the_one_it_replaces(
        self, renewing: Renewing, stand_in: Callable[[], StandIn]
    ) -> None:
        """Counts of forkers retired earlier do not free it (it would under-count); all add up."""
        main, old, fresh = renewing
        earlier = stand_in()  # retired by an earlier renewal, still serving two connections
        main.watch(earlier.forker)
        main.renewal.crowded(4, NOW)
        (new,) = fresh
        main._on_event(new.forker, ("ready",))
        main._on_event(earlier.forker, ("children", 2, {"echo": 2}))
        assert commands(new.control) == [], "still waiting for the one it replaces"
        with structlog.testing.capture_logs():
            main._on_event(old.forker, ("children", 4, {"echo": 4}))
        assert commands(new.control) == [("take_over", 6, {"echo": 6})]

    def test_a_retired_forker_gone_early_frees_the_new_one(self, renewing: Renewing) -> None:
        """The old forker exits before it reports: forker_retired, and take_over with none left."""
        main, old, fresh = renewing
        main.renewal.crowded(4, NOW)
        (new,) = fresh
        main._on_event(new.forker, ("ready",))
        with structlog.testing.capture_logs() as logs:
            exited(main, old.forker)
        assert [entry["event"] for entry in logs] == ["forker_retired", "forker_renewed"]
        assert logs[0]["exit_status"] == -signal.SIGKILL
        assert commands(new.control) == [("take_over", 0, {})]


class TestStandbyFailures:
    def test_a_standby_not_ready_in_time_is_killed_and_the_renewal_pauses(
        self, renewing: Renewing
    ) -> None:
        """Past STANDBY_LIMIT the standby is dropped and killed; its end will be logged as why."""
        main, current, fresh = renewing
        main.renewal.crowded(4, NOW)
        standby = fresh[0].forker
        assert main._timeout(NOW + STANDBY_LIMIT - 1) == pytest.approx(1), "it wakes up in time"
        assert main.renewal.standby is standby
        assert os.waitpid(standby.pid, os.WNOHANG) == (0, 0), "not yet: it has time"
        main.timers.run(NOW + STANDBY_LIMIT)
        assert main.renewal.standby is None
        assert standby.failed_standby
        assert standby.failure == ("not ready within 30 s", 0)
        assert main.timers.get("renew_pause") == NOW + STANDBY_LIMIT + RENEW_PAUSE
        _, status = os.waitpid(standby.pid, 0)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
        assert os.waitpid(current.forker.pid, os.WNOHANG) == (0, 0), "the current one lives on"
        main._on_event(standby, ("ready",))  # too late: no hand-over
        assert main.forker is current.forker

    def test_a_standby_that_exits_is_a_failed_renewal(self, renewing: Renewing) -> None:
        """A standby that exits unready is logged, with its fatal error, once its events are in."""
        main, current, fresh = renewing
        main.renewal.crowded(4, NOW)
        standby = fresh[0].forker
        main._on_event(standby, ("fatal", "ModuleNotFoundError: vanished", 78))
        with structlog.testing.capture_logs() as logs:
            exited(main, standby)
        assert logs == []
        assert main.renewal.standby is None
        assert not main.timers.is_set("standby_limit")
        with structlog.testing.capture_logs() as logs:
            main.renewal.forgotten(standby, NOW + 5)
        assert logs == [
            {
                "event": "forker_renewal_failed",
                "log_level": "error",
                "error": "ModuleNotFoundError: vanished",
                "retry_in": RENEW_PAUSE,
                "exit_status": -signal.SIGKILL,
            }
        ]
        assert main.timers.get("renew_pause") == NOW + 5 + RENEW_PAUSE
        assert main.forker is current.forker
