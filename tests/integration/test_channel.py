"""The channel between daemon, forker and children: big records, stalls, forgeries, stderr."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

from harness import TESTS, Notifications, Sockd, connect, exchange, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

SERVICES = """
[daemon]
pythonpath = ["{tests}"]
max_children = 64
stop_timeout = 2
[[service]]
name = "raise"
handler = "ipc_handlers:Raise"
listen = ["127.0.0.1:0"]
[[service]]
name = "echo"
handler = "echo"
listen = ["127.0.0.1:0"]
[[service]]
name = "slow"
handler = "support_handlers:Sleep"
listen = ["127.0.0.1:0"]
max_duration = 1
[[service]]
name = "pool"
handler = "echo"
listen = ["127.0.0.1:0"]
workers = 2
"""
NAMES = ("raise", "echo", "slow", "pool")


def config(tmp_path: Path, extra: str = "") -> str:
    return write_config(tmp_path / "sockd.toml", SERVICES.format(tests=TESTS) + extra)


def address(daemon: Sockd, service: str) -> str:
    (starting,) = daemon.events("starting")
    (found,) = [item for item in starting["listeners"] if item["service"] == service]
    return str(found["address"])


class TestStalledDaemon:
    def test_serving_goes_on_while_the_daemon_is_stopped(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGSTOP on the daemon for 5 s under load: serving, reaping, max_duration go on.

        Pooled workers serve too; afterwards every event is logged or counted as dropped.
        """
        daemon = sockd("run", "--config", config(tmp_path))
        failing, echo, slow, pool = (address(daemon, name) for name in NAMES)
        daemon.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # 300 handler_error events of about 3 KB: far more than a pipe held.
            for _ in range(300):
                assert exchange(failing, b"", timeout=5) == b""
            for number in range(40):
                data = b"%d" % number
                assert exchange(echo, data, timeout=5) == data
                assert exchange(pool, data, timeout=5) == data
            with connect(slow, timeout=5) as client:
                assert client.recv(100) == b"sleeping\n"
                assert client.recv(100) == b"", "ended by max_duration while the daemon stopped"
            time.sleep(max(0.0, 5 - (time.monotonic() - stopped)))
        finally:
            daemon.signal(signal.SIGCONT)
        daemon.wait_event("connection_closed", count=300, service="raise", timeout=30)

        def accounted() -> bool:
            dropped: int = sum(
                event["counts"].get("handler_error", 0) for event in daemon.events("events_dropped")
            )
            return len(daemon.events("handler_error", service="raise")) + dropped == 300

        wait_until(accounted, what="every handler_error logged or counted as dropped")
        assert daemon.stop() == 0


class TestNotifySocket:
    def test_a_stalled_notify_reader_does_not_wedge_the_daemon(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """NOTIFY_SOCKET full and never read: the daemon serves on and SIGTERM stops it."""
        daemon = sockd("run", "--config", config(tmp_path), notify=notifications)
        notifications.wait_for("READY=1")
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.setblocking(False)
        try:
            while True:
                filler.sendto(b"FILL=1", str(notifications.path))
        except BlockingIOError:
            pass
        finally:
            filler.close()
        daemon.signal(signal.SIGHUP)  # RELOADING=1, then READY=1: neither can be sent
        daemon.wait_event("reloaded")
        for number in range(5):
            data = b"%d" % number
            assert exchange(address(daemon, "echo"), data) == data
        time.sleep(2.5)  # STATUS= is due, and cannot be sent either
        assert exchange(address(daemon, "echo"), b"x") == b"x"
        assert daemon.stop() == 0
        assert 1 <= len(daemon.events("notify_failed")) <= 2


class TestReload:
    def test_a_large_reload_goes_through(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A reload to an 80,000-entry deny list (a record of about 2 MB) is applied."""
        daemon = sockd("run", "--config", config(tmp_path))
        deny = ", ".join(f'"10.{i >> 16}.{i >> 8 & 255}.{i & 255}"' for i in range(80000))
        text = (tmp_path / "sockd.toml").read_text()
        (tmp_path / "sockd.toml").write_text(
            text.replace('name = "echo"', f'name = "echo"\ndeny = [{deny}, "127.0.0.1"]')
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded", timeout=60)
        assert exchange(address(daemon, "echo"), b"x") == b"", "127.0.0.1 is denied now"
        assert exchange(address(daemon, "echo"), b"x", source="127.0.0.2") == b"x"
        assert daemon.stop() == 0

    def test_a_sighup_while_a_reload_is_pending_is_done_after_it(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Two SIGHUPs while the forker is stopped: two reloads, once it goes on."""
        daemon = sockd("run", "--config", config(tmp_path))
        forker = daemon.forker()
        os.kill(forker, signal.SIGSTOP)
        try:
            daemon.signal(signal.SIGHUP)
            time.sleep(0.5)
            daemon.signal(signal.SIGHUP)
            time.sleep(0.5)
        finally:
            os.kill(forker, signal.SIGCONT)
        daemon.wait_event("reloaded", count=2)
        assert daemon.stop() == 0

    def test_a_refused_reload_imports_nothing_in_the_daemon(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A reload refused (pythonpath changed) ran no module of the new path in the daemon."""
        daemon = sockd("run", "--config", config(tmp_path))
        planted = tmp_path / "planted"
        planted.mkdir()
        marker = tmp_path / "imported"
        (planted / "sockd_planted.py").write_text(
            f"open({str(marker)!r}, 'w').close()\n"
            "import socketserver\nclass H(socketserver.BaseRequestHandler):\n    pass\n"
        )
        text = (tmp_path / "sockd.toml").read_text()
        text = text.replace('pythonpath = ["', f'pythonpath = ["{planted}", "')
        (tmp_path / "sockd.toml").write_text(
            text.replace('"echo"\nlisten', '"sockd_planted:H"\nlisten')
        )
        daemon.signal(signal.SIGHUP)
        (failed,) = daemon.wait_event("reload_failed")
        assert "daemon.pythonpath: changing it needs a restart" in failed["error"]
        assert not marker.exists()
        assert daemon.stop() == 0


class TestChildren:
    def test_a_child_cannot_forge_records(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A handler holds no end of the daemon's channel; what it reports is about itself."""
        extra = (
            '[[service]]\nname = "forge"\nhandler = "ipc_handlers:Forge"\n'
            'listen = ["127.0.0.1:0"]\n'
        )
        daemon = sockd("run", "--config", config(tmp_path, extra))
        with connect(address(daemon, "forge")) as client:
            kinds = json.loads(client.makefile().readline())
        assert socket.SOCK_SEQPACKET not in kinds.values(), kinds
        (closed,) = daemon.wait_event("connection_closed", service="forge")
        (error,) = daemon.wait_event("handler_error")
        assert (error["service"], error["pid"]) == ("forge", closed["pid"])
        assert error["client"] == closed["client"]
        assert len(daemon.events("connection_closed")) == 1
        assert not daemon.events("reloaded")
        assert not [event for event in daemon.events() if "evil" in json.dumps(event)]
        # connection_closed, reloaded and served are not a child's to send: refused, counted.
        (dropped,) = daemon.wait_event("events_dropped", timeout=5)
        assert dropped["counts"] == {"child_report": 3}
        assert daemon.stop() == 0

    def test_handler_stderr_becomes_events(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A handler's stderr lines are `handler_stderr` events: the log stays JSON lines."""
        extra = (
            '[[service]]\nname = "noisy"\nhandler = "ipc_handlers:Stderr"\n'
            'listen = ["127.0.0.1:0"]\n'
        )
        daemon = sockd("run", "--config", config(tmp_path, extra))
        assert exchange(address(daemon, "noisy"), b"") == b"ok\n"
        (closed,) = daemon.wait_event("connection_closed", service="noisy")
        lines = daemon.wait_event("handler_stderr", count=4)
        assert {(line["service"], line["pid"]) for line in lines} == {("noisy", closed["pid"])}
        assert lines[0]["line"] == '127.0.0.1 - - "GET / HTTP/1.0" 200 -'
        assert lines[0]["client"] == closed["client"]
        assert [len(line["line"]) for line in lines[1:]] == [2000, 2000, 1000]
        assert daemon.stop() == 0
        for text in daemon.lines():
            json.loads(text)
