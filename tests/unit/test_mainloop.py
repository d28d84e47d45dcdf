"""Tests of sockd.mainloop: what a reload may change without a restart."""

from __future__ import annotations

import dataclasses

import pytest

from sockd.config import Config, DaemonConfig, ServiceConfig, parse_listen
from sockd.errors import ConfigError
from sockd.mainloop import _check_reloadable

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
