"""sockd as a library: the README's examples run stand-alone and socket-activated by systemd."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, Notifications, connect, exchange, wait_until

import sockd

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLE = TESTS.parent / "examples" / "library_echo.py"
UDP_EXAMPLE = TESTS.parent / "examples" / "library_udp_echo.py"
ACTIVATE = shutil.which("systemd-socket-activate")
SOURCE = str(Path(sockd.__file__).parent.parent)  # the sockd under test


@contextlib.contextmanager
def running(
    command: list[str], log: Path, env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` in its own session, output to `log`; kill its whole session at the end."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=environ | env,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def serving_on(log: Path) -> tuple[str, int] | None:
    """Return where the example says it serves, once it has said so."""
    for line in log.read_text().splitlines():
        if line.startswith("serving on "):
            host, port = line.split()[2:4]
            return host, int(port)
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int, data: bytes) -> bytes:
    """Send `data` to the UDP port `port` of 127.0.0.1 and return the answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(data, ("127.0.0.1", port))
        return client.recv(65536)


class TestLibraryExample:
    def test_stand_alone(self, notifications: Notifications, tmp_path: Path) -> None:
        """Run by hand, the example binds its address, says READY=1 and echoes."""
        log = tmp_path / "example.log"
        env = {"PYTHONPATH": SOURCE, "NOTIFY_SOCKET": str(notifications.path)}
        with running([sys.executable, str(EXAMPLE), "0"], log, env):
            host, port = wait_until(lambda: serving_on(log), what="the example to serve")
            notifications.wait_for("READY=1")
            assert exchange(f"{host}:{port}", b"hello\nworld\n") == b"hello\nworld\n"
            assert exchange(f"{host}:{port}", b"again\n") == b"again\n"

    @pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")
    def test_socket_activated(self, notifications: Notifications, tmp_path: Path) -> None:
        """Under systemd-socket-activate, the example adopts the socket it is given and serves."""
        port = free_port()
        log = tmp_path / "example.log"
        command = [str(ACTIVATE), "-l", f"127.0.0.1:{port}"]
        command += ["-E", f"PYTHONPATH={SOURCE}", "-E", f"NOTIFY_SOCKET={notifications.path}"]
        # No port argument: were the socket not adopted, the example would bind 8007.
        with running([*command, sys.executable, str(EXAMPLE)], log, {}):
            first = wait_until(lambda: _try_connect(f"127.0.0.1:{port}"), what="the listener")
            with first:
                first.sendall(b"first\n")
                assert first.recv(100) == b"first\n"
            notifications.wait_for("READY=1")
            assert serving_on(log) == ("127.0.0.1", port)
            assert exchange(f"127.0.0.1:{port}", b"hello\n") == b"hello\n"

    def test_udp_stand_alone(self, notifications: Notifications, tmp_path: Path) -> None:
        """Run by hand, the UDP example binds its address, says READY=1 and echoes datagrams."""
        log = tmp_path / "example.log"
        env = {"PYTHONPATH": SOURCE, "NOTIFY_SOCKET": str(notifications.path)}
        with running([sys.executable, str(UDP_EXAMPLE), "0"], log, env):
            _, port = wait_until(lambda: serving_on(log), what="the example to serve")
            notifications.wait_for("READY=1")
            assert ask(port, b"hello") == b"hello"
            assert ask(port, b"again\n") == b"again\n"

    @pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")
    def test_udp_socket_activated(self, notifications: Notifications, tmp_path: Path) -> None:
        """Under systemd-socket-activate --datagram, the UDP example adopts the socket given."""
        port = free_port(socket.SOCK_DGRAM)
        log = tmp_path / "example.log"
        command = [str(ACTIVATE), "--datagram", "-l", f"127.0.0.1:{port}"]
        command += ["-E", f"PYTHONPATH={SOURCE}", "-E", f"NOTIFY_SOCKET={notifications.path}"]
        # No port argument: were the socket not adopted, the example would bind 8007.
        with running([*command, sys.executable, str(UDP_EXAMPLE)], log, {}):
            # The first datagram starts the example, which reads it from the adopted socket.
            wait_until(lambda: "Listening on" in log.read_text(), what="the activator")
            assert ask(port, b"first") == b"first"
            notifications.wait_for("READY=1")
            assert serving_on(log) == ("127.0.0.1", port)
            assert ask(port, b"hello") == b"hello"


def _try_connect(address: str) -> socket.socket | None:
    try:
        return connect(address)
    except ConnectionRefusedError:
        return None
