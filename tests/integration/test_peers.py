"""Hostile peers: a UNIX peer naming itself, clients that reset their connections."""

from __future__ import annotations

import os
import socket
import struct
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, Sockd, connect, recv_all, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def config_file(tmp_path: Path, services: str) -> str:
    return write_config(tmp_path / "sockd.toml", f'[daemon]\npythonpath = ["{TESTS}"]\n{services}')


def bound_peer(tmp_path: Path, name: bytes, address: str) -> socket.socket:
    """Connect to `address` from a UNIX socket bound to `name` (relative to tmp_path)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        sock.bind(name)  # relative: the peer's address is exactly `name`
    finally:
        os.chdir(here)
    sock.settimeout(10)
    sock.connect(address.removeprefix("unix:"))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class TestUnixPeerIdentity:
    @pytest.mark.parametrize("workers", ["", "workers = 2"])
    def test_bound_path_never_names_the_client(
        self, sockd: Callable[..., Sockd], tmp_path: Path, workers: str
    ) -> None:
        """A peer bound to `unix:uid=0,pid=1` is logged by SO_PEERCRED; its path, escaped, apart."""
        config = config_file(
            tmp_path,
            f"""
            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["unix:{tmp_path}/echo.sock"]
            {workers}
            """,
        )
        daemon = sockd("run", "--config", config)
        real = f"unix:uid={os.getuid()},pid={os.getpid()}"
        for name in (b"unix:uid=0,pid=1", b"bad\xff\x1b[31m\\name"):
            with bound_peer(tmp_path, name, daemon.address()) as sock:
                sock.sendall(b"hi")
                assert sock.recv(10) == b"hi"
        closed = daemon.wait_event("connection_closed", 2)
        assert [event["client"] for event in closed] == [real, real]
        # Two pooled workers send their records each on their own: in either order.
        assert sorted(event["peer_path"] for event in closed) == [
            "bad\\xff\\x1b[31m\\\\name",
            "unix:uid=0,pid=1",
        ]
        with connect(daemon.address()) as sock:  # an unbound peer: no peer_path at all
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
        (last,) = daemon.wait_event("connection_closed", 3)[2:]
        assert last["client"] == real
        assert "peer_path" not in last
        assert daemon.stop() == 0

    def test_handler_error_names_the_real_peer(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """handler_error of a bound peer: its credentials as `client`, its path as `peer_path`."""
        config = config_file(
            tmp_path,
            f"""
            [[service]]
            name = "boom"
            handler = "support_handlers:Boom"
            listen = ["unix:{tmp_path}/boom.sock"]
            """,
        )
        daemon = sockd("run", "--config", config)
        with bound_peer(tmp_path, b"unix:uid=0,pid=1", daemon.address()) as sock:
            sock.recv(10)
        (error,) = daemon.wait_event("handler_error")
        assert error["client"] == f"unix:uid={os.getuid()},pid={os.getpid()}"
        assert error["peer_path"] == "unix:uid=0,pid=1"
        assert daemon.stop() == 0


class TestPeerResets:
    @pytest.mark.parametrize("workers", ["", "workers = 2"])
    def test_resets_are_normal_ends_not_errors(
        self, sockd: Callable[..., Sockd], tmp_path: Path, workers: str
    ) -> None:
        """500 resets against echo and daytime: no handler_error, info-level closes, 0 errors."""
        config = config_file(
            tmp_path,
            f"""
            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            {workers}

            [[service]]
            name = "daytime"
            handler = "daytime"
            listen = ["127.0.0.1:0"]
            {workers}
            """,
        )
        daemon = sockd("run", "--config", config)
        for _ in range(250):
            for index in (0, 1):
                sock = connect(daemon.address(index))
                if index == 0:
                    sock.sendall(b"x" * 100_000)  # the echo is still writing when the RST comes
                reset(sock)
        # One well-behaved client each, last: once it is answered, every connection before
        # it has left the backlog (accepted in order), and so is accounted for at the stop.
        with connect(daemon.address(0)) as last:
            last.sendall(b"last\n")
            last.shutdown(socket.SHUT_WR)
            assert recv_all(last) == b"last\n"
        with connect(daemon.address(1)) as last:
            assert recv_all(last), "daytime answers at once"
        assert daemon.stop() == 0
        closed = daemon.events("connection_closed")
        # A connection reset before it was accepted is dropped unserved, only counted.
        dropped = daemon.events("connections_denied", reason="peer_reset")
        assert len(closed) + sum(event["count"] for event in dropped) == 502
        assert not daemon.events("handler_error")
        assert {event["level"] for event in closed} == {"info"}
        resets = [event for event in closed if event.get("peer_reset")]
        assert resets, "some children met the reset"
        assert {event["exit_code"] for event in resets} == {141}
        assert {event["exit_code"] for event in closed} <= {0, 141}

    @pytest.mark.parametrize("workers", ["max_children = 1", "workers = 1"])
    def test_a_connection_reset_while_waiting_is_dropped_unserved(
        self, sockd: Callable[..., Sockd], tmp_path: Path, workers: str
    ) -> None:
        """A reset connection waiting in the backlog is dropped, counted; a half-closed one is."""
        config = config_file(
            tmp_path,
            f"""
            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            {workers}
            """,
        )
        daemon = sockd("run", "--config", config)
        busy = connect(daemon.address())
        busy.sendall(b"busy\n")
        assert busy.recv(10) == b"busy\n"  # the only child, or worker, is taken
        reset(connect(daemon.address()))  # waits in the backlog, then resets
        half = connect(daemon.address())  # waits too, sent and half-closed as exchange() does
        half.sendall(b"half\n")
        half.shutdown(socket.SHUT_WR)
        busy.close()
        assert recv_all(half) == b"half\n"
        half.close()
        assert daemon.stop() == 0
        assert len(daemon.events("connection_closed")) == 2
        (dropped,) = daemon.events("connections_denied", reason="peer_reset")
        assert dropped["count"] == 1
