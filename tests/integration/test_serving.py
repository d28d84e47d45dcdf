"""Serving connections: own binding, children and their exits, caps, handler errors."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, Notifications, Sockd, connect, exchange, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def serve_test_handler(sockd: Callable[..., Sockd], name: str) -> Sockd:
    """Run one service with a handler of tests/support_handlers.py, on a kernel-chosen port."""
    spec = f"support_handlers:{name}"
    return sockd(
        "run", "--handler", spec, "--listen", "127.0.0.1:0", env={"PYTHONPATH": str(TESTS)}
    )


def config_file(tmp_path: Path, services: str, daemon: str = "") -> str:
    return write_config(
        tmp_path / "sockd.toml", f'[daemon]\npythonpath = ["{TESTS}"]\n{daemon}\n{services}'
    )


class TestOwnBinding:
    def test_ipv4_ipv6_and_unix(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """One service listens on IPv4, IPv6 and a UNIX socket, and answers on each."""
        listen = ['"127.0.0.1:0"', f'"unix:{tmp_path}/echo.sock"']
        if has_ipv6_loopback():
            listen.append('"[::1]:0"')
        config = config_file(
            tmp_path,
            f"""
            [[service]]
            name = "echo"
            handler = "echo"
            listen = [{", ".join(listen)}]
            unix_mode = 0o600
            """,
        )
        daemon = sockd("run", "--config", config)
        listeners = daemon.events("starting")[0]["listeners"]
        assert len(listeners) == len(listen)
        assert all(item["origin"] == "bound" for item in listeners)
        for index in range(len(listen)):
            assert exchange(daemon.address(index), b"hi %d" % index) == b"hi %d" % index
        assert (tmp_path / "echo.sock").stat().st_mode & 0o777 == 0o600
        assert daemon.stop() == 0
        assert not (tmp_path / "echo.sock").exists(), "sockd removes the socket files it made"

    def test_port_in_use(self, sockd: Callable[..., Sockd]) -> None:
        """A port already taken is a one-line startup failure with exit 71."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            daemon = sockd("run", "--handler", "echo", "--listen", f"127.0.0.1:{port}", wait=False)
            assert daemon.wait() == 71
        (failure,) = daemon.events("startup_failed")
        assert failure["error"] == (
            f"service 'echo': listen 127.0.0.1:{port}: cannot bind: Address already in use"
        )


class TestChildren:
    def test_no_zombies_after_500_connections(self, sockd: Callable[..., Sockd]) -> None:
        """500 connections through a handler that exits at once leave no zombie."""
        daemon = serve_test_handler(sockd, "Quick")
        address = daemon.address()
        for _ in range(500):
            assert exchange(address, b"") == b"."
        closed = daemon.wait_event("connection_closed", count=500)
        assert all(event["exit_code"] == 0 for event in closed)
        wait_until(lambda: not daemon.children(), what="no children left")
        assert daemon.stop() == 0

    def test_child_killed_by_signal_is_logged(self, sockd: Callable[..., Sockd]) -> None:
        """A child killed with SIGKILL is reaped and logged with its signal and costs."""
        daemon = serve_test_handler(sockd, "Sleep")
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"
            ((pid, _state),) = daemon.children()
            os.kill(pid, signal.SIGKILL)
            (closed,) = daemon.wait_event("connection_closed")
        assert closed["pid"] == pid
        assert closed["signal"] == "SIGKILL"
        assert closed["exit_code"] is None
        assert closed["service"] == "Sleep"
        for key in ("duration", "cpu_user", "cpu_system", "max_rss_kib"):
            assert isinstance(closed[key], int | float)
        assert daemon.children() == []
        assert daemon.stop() == 0

    def test_real_time_signal_is_named(self, sockd: Callable[..., Sockd]) -> None:
        """A child ended by a real-time signal is logged with its name; serving goes on."""
        daemon = serve_test_handler(sockd, "RealTimeSignal")
        exchange(daemon.address(), b"")
        (closed,) = daemon.wait_event("connection_closed")
        assert closed["signal"] == "SIGRTMIN+6"
        exchange(daemon.address(), b"")
        daemon.wait_event("connection_closed", count=2)
        assert daemon.stop() == 0

    def test_forker_death_is_noticed(self, sockd: Callable[..., Sockd]) -> None:
        """If the forker dies, its children are killed and the daemon exits 70."""
        daemon = serve_test_handler(sockd, "Sleep")
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"
            forker = daemon.forker()
            ((child, _),) = daemon.children()
            os.kill(forker, signal.SIGKILL)
            assert daemon.wait() == 70
            assert client.recv(100) == b"", "the orphaned child was killed"
        wait_until(lambda: not Path(f"/proc/{child}").exists(), what="child gone")
        (died,) = daemon.events("forker_died")
        assert died["exit_status"] == -signal.SIGKILL

    def test_max_children_waits_without_blocking_signals(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """At max_children the third client waits; signals still act; it is served on a close."""
        config = config_file(
            tmp_path,
            '[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:0"]\n',
            daemon="max_children = 2",
        )
        daemon = sockd("run", "--config", config, notify=notifications)
        address = daemon.address()
        first, second = connect(address), connect(address)
        for client in (first, second):
            client.sendall(b"held\n")
            assert client.recv(100) == b"held\n"
        third = connect(address, timeout=0.5)  # completes in the kernel backlog
        third.sendall(b"third\n")
        with pytest.raises(TimeoutError):
            third.recv(100)
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        first.close()
        third.settimeout(10)
        assert third.recv(100) == b"third\n"
        daemon.signal(signal.SIGTERM)
        daemon.wait_event("stopping")
        second.sendall(b"still\n")
        assert second.recv(100) == b"still\n"
        second.close()
        third.close()
        assert daemon.wait() == 0


class TestHandlerErrors:
    def test_one_json_line_and_serving_goes_on(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A raising handler gives exactly one error line with the exception as data."""
        config = config_file(
            tmp_path,
            """
            [[service]]
            name = "boom"
            handler = "support_handlers:Boom"
            listen = ["127.0.0.1:0"]
            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd("run", "--config", config)
        assert exchange(daemon.address(0), b"") == b""
        (closed,) = daemon.wait_event("connection_closed", service="boom")
        assert closed["exit_code"] == 1
        error_lines = [line for line in daemon.lines() if '"level": "error"' in line]
        assert len(error_lines) == 1
        error = json.loads(error_lines[0])
        assert error["event"] == "handler_error"
        assert error["service"] == "boom"
        assert error["pid"] == closed["pid"]
        assert error["client"].startswith("127.0.0.1:")
        assert error["exception"]["type"] == "ValueError"
        assert error["exception"]["message"] == "boom 42"
        assert error["exception"]["frames"][-1]["function"] == "explode"
        assert "local-secret" not in error_lines[0]
        assert exchange(daemon.address(1), b"next") == b"next"
        assert exchange(daemon.address(0), b"") == b""
        daemon.wait_event("connection_closed", count=2, service="boom")
        assert daemon.stop() == 0

    def test_console_log_format_survives_handler_errors(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """With --log-format console, a handler's exception (data) is printed; sockd serves on."""
        path = tmp_path / "boom.sock"
        daemon = sockd(
            "run",
            "--handler",
            "support_handlers:Boom",
            "--listen",
            f"unix:{path}",
            "--log-format",
            "console",
            env={"PYTHONPATH": str(TESTS)},
            notify=notifications,
            wait=False,
        )
        notifications.wait_for("READY=1")

        for _ in range(2):
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))
                assert client.recv(10) == b""
        wait_until(lambda: sum("handler_error" in line for line in daemon.lines()) == 2)
        assert "ValueError" in "\n".join(daemon.lines())
        assert daemon.stop() == 0

    def test_child_environment_and_denied_clients(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """Children see no NOTIFY_SOCKET or WATCHDOG_*; a denied client is closed and logged."""
        config = config_file(
            tmp_path,
            """
            [[service]]
            name = "report"
            handler = "support_handlers:Report"
            listen = ["127.0.0.1:0"]
            deny = ["127.0.0.3"]
            """,
        )
        daemon = sockd(
            "run", "--config", config, notify=notifications, env={"WATCHDOG_USEC": "10000000"}
        )
        report = json.loads(exchange(daemon.address(), b""))
        assert not [name for name in report["environ"] if name.startswith(("NOTIFY", "WATCHDOG"))]
        assert exchange(daemon.address(), b"", source="127.0.0.3") == b""
        (denied,) = daemon.wait_event("connection_denied")
        assert denied["reason"] == "deny 127.0.0.3/32"
        assert denied["client"].startswith("127.0.0.3:")
        assert denied["service"] == "report"
        assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
class TestPrivileges:
    def test_children_never_run_as_root(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """Started as root with user/group: binds first, then every child runs as that user."""
        config = config_file(
            tmp_path,
            f"""
            [[service]]
            name = "report"
            handler = "support_handlers:Report"
            listen = ["127.0.0.1:0", "unix:{tmp_path}/report.sock"]
            """,
            daemon='user = "nobody"\ngroup = "nogroup"',
        )
        daemon = sockd("run", "--config", config)
        report = json.loads(exchange(daemon.address(), b""))
        assert (report["uid"], report["gid"]) == (65534, 65534)
        assert os.stat(tmp_path / "report.sock").st_uid == 65534
        proc_status = Path(f"/proc/{daemon.pid}/status").read_text().splitlines()
        uids = next(line for line in proc_status if line.startswith("Uid:"))
        assert uids.split()[1:] == ["65534"] * 4
        assert daemon.stop() == 0


class TestAcceptFailures:
    def test_emfile_pauses_accepting_and_recovers(self, sockd: Callable[..., Sockd]) -> None:
        """Out of descriptors: accept_failed is logged a bounded number of times; it recovers."""
        daemon = sockd("run", "--handler", "echo", "--listen", "127.0.0.1:0")
        forker = daemon.forker()
        open_fds = len(list(Path(f"/proc/{forker}/fd").iterdir()))
        soft, hard = resource.prlimit(forker, resource.RLIMIT_NOFILE)
        resource.prlimit(forker, resource.RLIMIT_NOFILE, (open_fds, hard))
        waiting = connect(daemon.address())
        daemon.wait_event("accept_failed")
        time.sleep(1.0)
        failures = daemon.events("accept_failed")
        assert failures[0]["error"] == "Too many open files"
        assert len(failures) <= 15, "accepting pauses 0.1 s after a failure"
        resource.prlimit(forker, resource.RLIMIT_NOFILE, (soft, hard))
        waiting.sendall(b"late")
        assert waiting.recv(10) == b"late"
        waiting.close()
        assert daemon.stop() == 0
