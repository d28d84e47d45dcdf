"""Tests of sockd.mainloop: what a reload may change, a standby too slow to start."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import pytest

from sockd.config import Config, DaemonConfig, ServiceConfig, parse_listen
from sockd.errors import ConfigError
from sockd.mainloop import RENEW_PAUSE, ForkerProcess, MainLoop, _check_reloadable
from sockd.notify import Notifier

OLD = Config(
    DaemonConfig(user="nobody"),
    (ServiceConfig("echo", "echo", (parse_listen("127.0.0.1:7"),)),),
    "/etc/sockd/sockd.toml",
)


def with_service(**changes: object) -> Config:
    service = dataclasses.replace(OLD.services[0], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(OLD, services=(service,))


class TestCheckReloadable:
    def test_live_settings(self) -> None:
        """Handler, rules, caps and timeouts change live."""
        new = with_service(handler="daytime", max_children=3, deny=(), max_duration=5.0)
        _check_reloadable(
            OLD, dataclasses.replace(new, daemon=DaemonConfig(user="nobody", stop_timeout=1))
        )

    @pytest.mark.parametrize(
        ("new", "problem"),
        [
            (with_service(listen=(parse_listen("127.0.0.1:8"),)), "service 'echo': listen"),
            (with_service(unix_mode=0o600), "service 'echo': unix_mode"),
            (with_service(name="other"), r"adding \['other'\] or removing \['echo'\]"),
            (dataclasses.replace(OLD, daemon=DaemonConfig(user="root")), "daemon.user/group"),
        ],
    )
    def test_restart_only_settings(self, new: Config, problem: str) -> None:
        """Settings that shaped listeners or identity are refused, naming the key."""
        with pytest.raises(ConfigError, match=problem):
            _check_reloadable(OLD, new)


def sleeper() -> ForkerProcess:
    """Start a process to stand in for a forker (in its own process group), with its pipes."""
    control_read, control_write = os.pipe()
    events_read, events_write = os.pipe()
    pid = os.posix_spawn("/bin/sleep", ["sleep", "60"], os.environ, setpgroup=0)
    for fd in (control_read, events_write):
        os.close(fd)
    os.set_blocking(events_read, False)
    return ForkerProcess(pid, control_write, events_read)


class TestStandbyLimit:
    def test_a_standby_not_ready_in_time_is_killed_and_the_renewal_pauses(self) -> None:
        """Past its deadline the standby is dropped and killed; its end will be logged as why."""
        current, standby = sleeper(), sleeper()
        loop = MainLoop(OLD, current, [], Notifier({}, os.getpid()))
        try:
            loop.standby = standby
            standby.ready_by = time.monotonic() + 60
            assert loop._timeout(time.monotonic()) <= 5
            assert loop.standby is standby
            assert os.waitpid(standby.pid, os.WNOHANG) == (0, 0), "not yet: it has time"
            standby.ready_by = time.monotonic()
            loop._timeout(time.monotonic())
            assert loop.standby is None
            assert standby.failed_standby
            assert standby.failure == ("not ready within 30 s", 0)
            assert loop.renew_paused_until > time.monotonic() + RENEW_PAUSE - 5
            _, status = os.waitpid(standby.pid, 0)
            assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL
            assert os.waitpid(current.pid, os.WNOHANG) == (0, 0), "the current one lives on"
        finally:
            os.killpg(current.pid, signal.SIGKILL)
            os.waitpid(current.pid, 0)
            for forker in (current, standby):
                forker.close()
            loop.selector.close()
            os.close(loop._wakeup_read)
            os.close(loop._wakeup_write)
