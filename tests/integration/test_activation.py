"""Socket activation through the real systemd-socket-activate, with a test NOTIFY_SOCKET."""

from __future__ import annotations

import shutil
import socket
from typing import TYPE_CHECKING

import pytest
from harness import (
    TESTS,
    Notifications,
    Sockd,
    as_listener,
    connect,
    exchange,
    wait_until,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

ACTIVATE = shutil.which("systemd-socket-activate")
pytestmark = pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def activate(*listen: str, names: tuple[str, ...] = (), notify: Notifications) -> list[str]:
    """Return the systemd-socket-activate prefix: it passes only PATH and -E variables.

    Like a socket unit, it starts sockd at the first connection to any socket.
    """
    command = [str(ACTIVATE)]
    for address in listen:
        command += ["-l", address]
    command += [f"--fdname={name}" for name in names]
    return [*command, "-E", f"NOTIFY_SOCKET={notify.path}"]


def connect_when_listening(address: str) -> socket.socket:
    """Connect once systemd-socket-activate listens (which starts sockd)."""
    return wait_until(lambda: _try_connect(address), what=f"listener {address}")  # type: ignore[no-any-return]


def _try_connect(address: str) -> socket.socket | None:
    try:
        return connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


class TestSocketActivation:
    def test_adopts_named_sockets_and_is_ready_after_listening(
        self,
        sockd: Callable[..., Sockd],
        notifications: Notifications,
        tmp_path: Path,
    ) -> None:
        """Each inherited socket goes to the service its name says; READY=1 means serving."""
        echo_path, upper_path = tmp_path / "echo.sock", tmp_path / "report.sock"
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [daemon]
            pythonpath = ["{TESTS}"]
            [[service]]
            name = "echo"
            handler = "echo"
            [[service]]
            name = "report"
            handler = "support_handlers:Report"
            """,
        )
        daemon = sockd(
            "run",
            "--config",
            config,
            prefix=activate(
                str(echo_path), str(upper_path), names=("echo:report",), notify=notifications
            ),
            wait=False,
        )
        first = connect_when_listening(f"unix:{echo_path}")
        notifications.wait_for("READY=1")
        # READY=1 was sent: both listeners must answer now, with no retry.
        first.sendall(b"first\n")
        assert first.recv(100) == b"first\n"
        first.close()
        assert exchange(f"unix:{echo_path}", b"ping\n") == b"ping\n"
        report = exchange(f"unix:{upper_path}", b"")
        assert b'"environ"' in report
        for forbidden in (b"NOTIFY_SOCKET", b"LISTEN_FDS", b"LISTEN_PID", b"LISTEN_FDNAMES"):
            assert forbidden not in report
        (starting,) = daemon.events("starting")
        assert {
            (item["service"], item["origin"], item["fd_name"]) for item in starting["listeners"]
        } == {
            ("echo", "adopted", "echo"),
            ("report", "adopted", "report"),
        }
        assert daemon.stop() == 0
        # The socket files belong to systemd-socket-activate: sockd must not remove them.
        assert echo_path.exists()

    def test_single_service_on_tcp_without_names(
        self, sockd: Callable[..., Sockd], notifications: Notifications
    ) -> None:
        """`sockd run --handler` with no --listen adopts the inherited TCP socket."""
        port = free_port()
        daemon = sockd(
            "run",
            "--handler",
            "echo",
            prefix=activate(f"127.0.0.1:{port}", notify=notifications),
            wait=False,
        )
        connect_when_listening(f"127.0.0.1:{port}").close()
        daemon.wait_event("ready")
        notifications.wait_for("READY=1")
        assert exchange(f"127.0.0.1:{port}", b"hello\n") == b"hello\n"
        listener = daemon.events("starting")[0]["listeners"][0]
        assert listener["origin"] == "adopted"
        assert listener["address"] == f"127.0.0.1:{port}"
        assert daemon.stop() == 0

    def test_address_match_and_own_binding_side_by_side(
        self, sockd: Callable[..., Sockd], notifications: Notifications, tmp_path: Path
    ) -> None:
        """An unnamed socket matches its service by address; another service binds its own."""
        port = free_port()
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:{port}"]
            [[service]]
            name = "daytime"
            handler = "daytime"
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd(
            "run",
            "--config",
            config,
            prefix=activate(f"127.0.0.1:{port}", notify=notifications),
            wait=False,
        )
        connect_when_listening(f"127.0.0.1:{port}").close()
        daemon.wait_event("ready")
        origins = {
            item["service"]: item["origin"] for item in daemon.events("starting")[0]["listeners"]
        }
        assert origins == {"echo": "adopted", "daytime": "bound"}
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        assert exchange(daemon.address(1), b"").endswith(b"\r\n")
        assert daemon.stop() == 0

    def test_unmatched_socket_fails_before_ready(
        self, sockd: Callable[..., Sockd], notifications: Notifications, tmp_path: Path
    ) -> None:
        """A socket that matches no service is exit 78, and READY=1 never goes out."""
        config = write_config(
            tmp_path / "sockd.toml",
            """
            [[service]]
            name = "a"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            [[service]]
            name = "b"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd(
            "run",
            "--config",
            config,
            prefix=activate(str(tmp_path / "x.sock"), names=("stray",), notify=notifications),
            wait=False,
        )
        connect_when_listening(f"unix:{tmp_path / 'x.sock'}").close()
        assert daemon.wait() == 78
        (failure,) = daemon.events("startup_failed")
        assert "name 'stray'" in failure["error"]
        assert "matches no service" in failure["error"]
        assert not any("READY=1" in message for message in notifications.poll())


class TestBadEnvironment:
    def test_non_ascii_listen_pid(self, sockd: Callable[..., Sockd]) -> None:
        """LISTEN_PID=² (a digit to str.isdigit(), not to int()) is exit 78, not a crash (70)."""
        env = {"LISTEN_PID": "\u00b2", "LISTEN_FDS": "1"}
        daemon = sockd("run", "--handler", "echo", env=env, wait=False)
        assert daemon.wait() == 78
        (failure,) = daemon.events("startup_failed")
        assert failure["error"] == "environment: LISTEN_PID='\u00b2' is not a process id"
        assert len(daemon.lines()) == 1

    def test_huge_listen_fds(self, sockd: Callable[..., Sockd]) -> None:
        """LISTEN_FDS=300000000 for this process is exit 78 at once (it was a MemoryError)."""
        env = {"LISTEN_PID": "$PID", "LISTEN_FDS": "300000000"}
        daemon = sockd("run", "--handler", "echo", env=env, prefix=as_listener(), wait=False)
        assert daemon.wait() == 78
        (failure,) = daemon.events("startup_failed")
        assert failure["error"].startswith("environment: LISTEN_FDS=300000000 is more than the")
        assert len(daemon.lines()) == 1

    def test_vsock_is_refused(self, sockd: Callable[..., Sockd]) -> None:
        """A listening AF_VSOCK socket passed as fd 3 is refused, naming fd and family."""
        try:
            socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
        except OSError as exc:
            pytest.skip(f"no AF_VSOCK here: {exc.strerror}")
        env = {"LISTEN_PID": "$PID", "LISTEN_FDS": "1"}
        daemon = sockd("run", "--handler", "echo", env=env, prefix=as_listener("vsock"), wait=False)
        assert daemon.wait() == 78
        (failure,) = daemon.events("startup_failed")
        assert failure["error"] == (
            "socket from systemd (fd 3, name None): address family AF_VSOCK"
            " is not supported (AF_INET, AF_INET6, AF_UNIX)"
        )
        assert len(daemon.lines()) == 1
