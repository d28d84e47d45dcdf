"""Hostile clients of a `proxy_protocol` service: untrusted, never finished, garbage headers."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING

from harness import connect, exchange, recv_all, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from harness import Sockd

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def echo(sockd: Callable[..., Sockd], tmp_path: Path, extra: str = "") -> Sockd:
    """Start sockd with an echo service that requires a PROXY header."""
    config = write_config(
        tmp_path / "sockd.toml",
        f'[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:0"]\n'
        f"proxy_protocol = true\n{extra}\n",
    )
    return sockd("run", "--config", config)


def v1(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """Return a PROXY v1 header for a TCP4 connection from `client` to `server`."""
    return f"PROXY TCP4 {client[0]} {server[0]} {client[1]} {server[1]}\r\n".encode()


def v2(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """Return a PROXY v2 header (PROXY command, TCP over IPv4, no TLV)."""
    addresses = socket.inet_aton(client[0]) + socket.inet_aton(server[0])
    body = addresses + struct.pack("!HH", client[1], server[1])
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def closed(sock: socket.socket) -> bool:
    """Read until the server closes (a reset counts); return True."""
    with contextlib.suppress(ConnectionResetError):
        recv_all(sock)
    return True


def served(address: str, header: bytes, data: bytes = b"ping\n") -> bytes:
    """Send `header` and `data` in one segment, half-close; return the answer."""
    return exchange(address, header + data)


class TestUntrusted:
    def test_a_proxy_not_trusted_is_refused_before_anything_is_read(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """proxy_trusted = [127.0.0.9/32]: 127.0.0.1 is refused without sending a byte."""
        # A long proxy_timeout: the close cannot be the timeout's.
        daemon = echo(sockd, tmp_path, 'proxy_trusted = ["127.0.0.9/32"]\nproxy_timeout = 60')
        with connect(daemon.address(), source="127.0.0.1") as sock:
            port = sock.getsockname()[1]
            assert closed(sock)
        (denied,) = daemon.wait_event("connection_denied")
        assert denied["reason"] == "proxy_untrusted"
        assert denied["client"] == f"127.0.0.1:{port}"
        assert daemon.events("connection_closed") == []  # nothing forked
        # The trusted proxy is served.
        header = v1(("192.0.2.7", 4000), ("127.0.0.1", daemon.port()))
        with connect(daemon.address(), source="127.0.0.9") as sock:
            sock.sendall(header + b"ping\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"ping\n"


class TestHeaders:
    def test_a_header_never_finished_is_dropped_after_proxy_timeout_and_others_are_served(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """proxy_timeout = 0.5: 20 clients stuck after b"PROXY" do not stop others being served."""
        daemon = echo(sockd, tmp_path, "proxy_timeout = 0.5")
        address = daemon.address()
        server = ("127.0.0.1", daemon.port())
        stuck: list[socket.socket] = []
        try:
            for _ in range(20):
                stuck.append(connect(address, source="127.0.0.3"))
                with contextlib.suppress(OSError):  # dropped already: a loaded machine
                    stuck[-1].sendall(b"PROXY")
            for n in range(5):
                header = v2(("192.0.2.7", 4000 + n), server)
                assert served(address, header, b"meanwhile %d\n" % n) == b"meanwhile %d\n" % n
            for sock in stuck:
                assert closed(sock)
        finally:
            for sock in stuck:
                sock.close()
        (denied, *_) = daemon.wait_event("connection_denied")
        assert denied["reason"] == "proxy_timeout"
        assert str(denied["client"]).startswith("127.0.0.3:")
        assert len(daemon.events("connection_closed")) == 5  # no fork for the stuck ones

    def test_garbage_instead_of_a_header_is_dropped(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """An HTTP request where the header must be: dropped, logged as proxy_header."""
        daemon = echo(sockd, tmp_path)
        assert exchange(daemon.address(), b"GET / HTTP/1.0\r\n\r\n") == b""
        (denied,) = daemon.wait_event("connection_denied")
        assert denied["reason"] == "proxy_header"
        assert daemon.events("connection_closed") == []

    def test_payload_in_the_header_s_segment_reaches_the_handler_untouched(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """v1 and v2 headers with data behind them in one send: echo answers the data exactly."""
        daemon = echo(sockd, tmp_path)
        address = daemon.address()
        server = ("127.0.0.1", daemon.port())
        # Bytes a sloppy reader would eat: a CRLF, a header-like line, the v2 signature.
        payload = b"\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n" + V2_SIGNATURE + b"\x00end\n"
        assert served(address, v1(("192.0.2.7", 4001), server), payload) == payload
        assert served(address, v2(("192.0.2.8", 4002), server), payload) == payload
        closed_events = daemon.wait_event("connection_closed", count=2)
        assert sorted(event["client"] for event in closed_events) == [
            "192.0.2.7:4001",
            "192.0.2.8:4002",
        ]
        for event in closed_events:
            assert str(event["via"]).startswith("127.0.0.1:")

    def test_a_header_sent_one_byte_at_a_time_is_served(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A v2 header in 28 one-byte segments, then data: served as the header's client."""
        daemon = echo(sockd, tmp_path)
        header = v2(("192.0.2.9", 4003), ("127.0.0.1", daemon.port()))
        with connect(daemon.address()) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in header:
                sock.sendall(bytes([byte]))
                time.sleep(0.005)
            sock.sendall(b"slow\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"slow\n"
        wait_until(lambda: daemon.events("connection_closed", client="192.0.2.9:4003"))
