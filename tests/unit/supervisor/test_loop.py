"""Tests of sockd.supervisor.loop: what a reload may change, events, reloads that time out."""

from __future__ import annotations

import dataclasses
import marshal
import os
import pwd
import signal
import socket
import sys
from typing import TYPE_CHECKING

import pytest
import structlog

from sockd import ipc
from sockd.errors import ConfigError
from sockd.exits import entry
from sockd.supervisor import loop as mainloop
from sockd.supervisor.config import (
    Config,
    DaemonConfig,
    ServiceConfig,
    load,
    parse_listen,
    service_spec,
)
from sockd.supervisor.loop import ForkerProcess, MainLoop, _check_reloadable

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from unit.supervisor.conftest import StandIn

OLD = Config(
    DaemonConfig(user="nobody"),
    (ServiceConfig("echo", "echo", (parse_listen("127.0.0.1:7"),)),),
    "/etc/sockd/sockd.toml",
)


def framed(value: object) -> bytes:
    """Frame any marshalled value as an entry (what a hostile worker may send)."""
    data = marshal.dumps(value)  # type: ignore[arg-type]
    return len(data).to_bytes(2, "little") + data


def with_service(**changes: object) -> Config:
    service = dataclasses.replace(OLD.services[0], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(OLD, services=(service,))


class TestCheckReloadable:
    @pytest.mark.parametrize(
        ("new", "problem"),
        [
            (with_service(listen=(parse_listen("127.0.0.1:8"),)), "service 'echo': listen"),
            (with_service(unix_mode=0o600), "service 'echo': unix_mode"),
            (with_service(wait=True), "service 'echo': wait: changing it needs a restart"),
            (with_service(name="other"), r"adding \['other'\] or removing \['echo'\]"),
            (dataclasses.replace(OLD, daemon=DaemonConfig(user="root")), "daemon.user/group"),
        ],
    )
    def test_restart_only_settings(self, new: Config, problem: str) -> None:
        """Settings that shaped listeners or identity are refused, naming the key."""
        with pytest.raises(ConfigError, match=problem):
            _check_reloadable(OLD, new)


@pytest.fixture
def loop(
    tmp_path: Path, main_loop: Callable[..., tuple[MainLoop, StandIn]]
) -> tuple[MainLoop, list[int]]:
    """Make a main loop over a stand-in forker that never answers; give the forker's ends."""
    path = tmp_path / "sockd.toml"
    path.write_text('[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7"]\n')
    main, current = main_loop(load(str(path)))
    return main, [current.control, current.events]


class TestEvents:
    def test_malformed_records_are_logged_once_and_skipped(
        self, loop: tuple[MainLoop, list[int]]
    ) -> None:
        """Undecodable and wrong-shape records are skipped (no exit 70); those around count."""
        main, (_, events) = loop
        ipc.send(events, ("status", 1, 2, 3, 4, ()))
        os.write(events, b"\x00not marshal")
        ipc.send(events, ("status", "1", 2, 3, 4, ()))
        ipc.send(events, ("log", "exit", "handler_error", {}))
        ipc.send(events, ("log", "info", "x", {"event": "forged"}))
        ipc.send(events, ("closed", [(1, "echo")]))
        ipc.send(events, ("reloaded", 99))
        ipc.send(events, ("children", 1, {"echo": "many"}))
        ipc.send(events, ("status", 5, 6, 7, 8, ()))
        with structlog.testing.capture_logs() as logs:
            main._read_events(main.forker)
        assert main.forker.counts == (5, 6, 7, 8)
        malformed = [entry for entry in logs if entry["event"] == "event_malformed"]
        assert len(malformed) == 1
        assert malformed[0]["count"] == 1
        assert main.malformed.unlogged == 6  # counted, logged with the next one

    def test_a_workers_bad_entries_are_skipped_never_fatal(
        self, loop: tuple[MainLoop, list[int]]
    ) -> None:
        """Entries torn, of the wrong shape, or whose client no line can name: skipped, counted."""
        main, (_, events) = loop
        good = entry(1, ("127.0.0.1", 4000), 0, 0.5)
        wrong = [(2, (), 0, 0.5), (3, ["unix"], 0, 0.5), (4, "x", "0", 0.5), (5, "x", 0, 5)]
        entries = b"".join(
            [good, *map(framed, wrong), entry(6, "unix:uid=0,pid=1", 1, 0.25), good[:5]]
        )
        ipc.send(events, ("served", [(42, "pool", entries), (43, "pool", b"\xff\xff")], 3))
        ipc.send(events, ("served", [(44, "pool", "not bytes")], 0))
        with structlog.testing.capture_logs() as logs:
            main._read_events(main.forker)
        closed = [line for line in logs if line["event"] == "connection_closed"]
        assert [(line["pid"], line["client"], line["exit_code"]) for line in closed] == [
            (42, "127.0.0.1:4000", 0),
            (42, "unix:uid=0,pid=1", 1),
        ]
        assert closed[0]["worker"] is True
        assert main.pooled == [2, 3, 1]  # served, denied, errors
        malformed = [entry for entry in logs if entry["event"] == "event_malformed"]
        assert [line["count"] for line in malformed] == [5]  # batch 42's, then at most 1/min
        assert main.malformed.unlogged == 2  # batch 43 (torn), batch 44 (not bytes)


class TestReload:
    def test_a_reload_never_answered_fails_in_time(
        self, loop: tuple[MainLoop, list[int]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A forker that never answers: reload_failed after RELOAD_LIMIT, not pending for ever."""
        main, _ = loop
        monkeypatch.setattr(mainloop, "RELOAD_LIMIT", 0.2)
        main.reload()
        assert main.reload_pending
        limit = main.timers.get("reload_limit")
        assert main._timeout(limit - 0.1) == pytest.approx(0.1), "it wakes up in time"
        main._timeout(limit - 0.01)
        assert main.reload_pending, "not yet: it has time"
        with structlog.testing.capture_logs() as logs:
            main._timeout(limit)
        assert not main.reload_pending
        (failed,) = [entry for entry in logs if entry["event"] == "reload_failed"]
        assert "did not answer within 0.2 s" in failed["error"]
        with structlog.testing.capture_logs() as logs:  # it was applied after all
            main._on_event(main.forker, ("reloaded", 1))
        assert logs[0]["event"] == "reloaded"
        assert logs[0]["late"] is True

    def test_live_settings_are_handed_to_the_forker_then_in_force(
        self, loop: tuple[MainLoop, list[int]]
    ) -> None:
        """Handler, rules, caps and timeouts change live: sent to the forker, in force once done."""
        main, (control, _) = loop
        assert main.config.path is not None
        with open(main.config.path, "w") as file:
            file.write(
                "[daemon]\nstop_timeout = 1\nmax_children = 50\nrenew_forker_after = 0\n"
                '[[service]]\nname = "echo"\nhandler = "daytime"\nlisten = ["127.0.0.1:7"]\n'
                'max_children = 3\nmax_duration = 5.0\nidle_timeout = 2.0\nrefusal = "busy"\n'
                'deny = ["10.0.0.0/8"]\nallow = ["127.0.0.0/8"]\nper_source = 2\nrate = 10\n'
            )
        new = load(main.config.path, import_handlers=False)
        assert new != main.config
        with structlog.testing.capture_logs() as logs:
            main.reload()
        assert logs == []
        assert main.reload_pending
        (command,) = ipc.Reader(control).read()
        records = [service_spec(service).to_wire() for service in new.services]
        assert command == ("reload", 1, records, 50, 1.0, 0)
        with structlog.testing.capture_logs() as logs:
            main._on_event(main.forker, ("reloaded", 1))
        assert [entry["event"] for entry in logs] == ["reloaded"]
        assert main.config == new

    def test_a_second_request_while_pending_is_done_after_it(
        self, loop: tuple[MainLoop, list[int]]
    ) -> None:
        """A SIGHUP during a pending reload is queued, then done (it used to be dropped)."""
        main, (control, _) = loop
        main.reload()
        main.reload()
        assert main.reload_seq == 1
        with structlog.testing.capture_logs():
            main._on_event(main.forker, ("reloaded", 1))
        assert main.reload_pending
        assert main.reload_seq == 2
        commands = ipc.Reader(control).read()
        assert [command[:2] for command in commands] == [("reload", 1), ("reload", 2)]

    def test_a_record_over_the_maximum_is_a_failed_reload(
        self, loop: tuple[MainLoop, list[int]], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A reload too large for the channel is refused with reload_failed (not exit 70)."""
        main, _ = loop
        monkeypatch.setattr(ipc, "MAX_RECORD", 64)
        monkeypatch.setattr(ipc, "MESSAGE", 32)
        with structlog.testing.capture_logs() as logs:
            main.reload()
        assert not main.reload_pending
        (failed,) = [entry for entry in logs if entry["event"] == "reload_failed"]
        assert "exceeds the limit of 64 bytes" in failed["error"]

    def test_validation_has_no_side_effects(
        self, loop: tuple[MainLoop, list[int]], tmp_path: Path
    ) -> None:
        """A refused reload neither changes sys.path nor imports a handler in the daemon."""
        main, _ = loop
        planted = tmp_path / "planted"
        planted.mkdir()
        marker = tmp_path / "imported"
        (planted / "sockd_planted.py").write_text(
            f"open({str(marker)!r}, 'w').close()\n"
            "import socketserver\nclass H(socketserver.BaseRequestHandler):\n    pass\n"
        )
        assert main.config.path is not None
        with open(main.config.path, "w") as file:
            file.write(
                f'[daemon]\npythonpath = ["{planted}"]\n[[service]]\nname = "echo"\n'
                'handler = "sockd_planted:H"\nlisten = ["127.0.0.1:7"]\n'
            )
        path_before = list(sys.path)
        with structlog.testing.capture_logs() as logs:
            main.reload()
        (failed,) = [entry for entry in logs if entry["event"] == "reload_failed"]
        assert "pythonpath" in failed["error"]
        assert sys.path == path_before
        assert "sockd_planted" not in sys.modules
        assert not marker.exists()


class TestRelisten:
    """A reload that changes inetd_conf's services: a fresh forker with the new listeners."""

    @pytest.fixture
    def relisten(
        self,
        tmp_path: Path,
        main_loop: Callable[..., tuple[MainLoop, StandIn]],
        stand_in: Callable[[], StandIn],
        monkeypatch: pytest.MonkeyPatch,
    ) -> tuple[MainLoop, StandIn, int]:
        """Load a config of an empty inetd.conf, add a line, reload: the loop, standby, port."""
        inetd_conf = tmp_path / "inetd.conf"
        path = tmp_path / "sockd.toml"
        path.write_text(f'[daemon]\ninetd_conf = "{inetd_conf}"\n')
        main, _ = main_loop(load(str(path)), renew=lambda _config: None)
        standby = stand_in()
        spawned: list[object] = []

        def spawn(servers: list[object], *_args: object, **_kwargs: object) -> ForkerProcess:
            spawned.append(servers)
            return standby.forker

        monkeypatch.setattr(main.relisten, "spawn", spawn)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        user = pwd.getpwuid(os.geteuid()).pw_name
        inetd_conf.write_text(f"127.0.0.1:{port} stream tcp nowait {user} /bin/cat cat\n")
        main.reload()
        assert main.reload_pending
        assert main.renewal.standby is standby.forker
        assert [server.endpoint.service for server in spawned[0]] == [f"inetd.{port}"]  # type: ignore[attr-defined]
        return main, standby, port

    def test_the_fresh_forker_ready_takes_over_with_the_new_listeners(
        self, relisten: tuple[MainLoop, StandIn, int]
    ) -> None:
        """Ready, it is current, the old one retires, and `reloaded` lists what was added."""
        main, standby, port = relisten
        with structlog.testing.capture_logs() as logs:
            main._on_event(standby.forker, ("ready",))
        assert main.forker is standby.forker
        assert main.reload_pending is False
        assert [server.endpoint.service for server in main.servers] == [f"inetd.{port}"]
        (reloaded,) = [entry for entry in logs if entry["event"] == "reloaded"]
        assert (reloaded["added"], reloaded["removed"]) == ([f"inetd.{port}"], [])
        for server in main.servers:
            server.close()

    def test_a_fresh_forker_that_exits_fails_the_reload_and_closes_its_listeners(
        self, relisten: tuple[MainLoop, StandIn, int]
    ) -> None:
        """Exited before it was ready: reload_failed, the old config serves, the port is free."""
        main, standby, port = relisten
        config = main.config
        os.killpg(standby.forker.pid, signal.SIGKILL)
        os.waitid(os.P_PID, standby.forker.pid, os.WEXITED | os.WNOWAIT)
        with structlog.testing.capture_logs() as logs:
            main._reap(standby.forker)
            main._forget(standby.forker)
        (failed,) = [entry for entry in logs if entry["event"] == "reload_failed"]
        assert failed["error"] == "the new forker exited with status -9"
        assert main.config is config
        assert main.relisten.forker is None
        assert main.renewal.standby is None
        assert not main.reload_pending
        with socket.socket() as again:  # nothing of ours holds it any more
            again.bind(("127.0.0.1", port))
