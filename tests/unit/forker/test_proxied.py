"""Tests of sockd.forker.proxied: headers waited for, their deadlines, a proxied client's record."""

from __future__ import annotations

import select
import socket
import time
from typing import Any

import pytest
from proxylib import ALPN, AUTHORITY, UNIQUE_ID, ssl_tlv, tlv, v1, v2

from sockd import proxy
from sockd.exits import client_fields
from sockd.forker.proxied import Waiting, header_problem, proxied_client, proxy_environment
from sockd.forker.shared import Service
from sockd.spec import ServiceSpec

CLIENT, SERVER = ("192.0.2.1", 5000), ("198.51.100.1", 80)


class Server:
    """What `Waiting` calls back: a service, and what was served or refused."""

    def __init__(self, timeout: float = 60.0) -> None:
        spec = ServiceSpec("svc", "echo", proxy_protocol=True, proxy_timeout=timeout)
        self.service = Service(spec)
        self.served: list[tuple[Any, proxy.Header]] = []
        self.refused: list[tuple[str, str | None]] = []
        self.recorded = 0  # calls of record_started

    def record_started(self) -> None:
        self.recorded += 1

    def serve_proxied(self, request: socket.socket, header: proxy.Header, _proxy: Any) -> None:
        assert request.getblocking(), "served blocking, as a handler or program expects"
        self.served.append((header.source, header))
        request.close()

    def refuse_proxied(
        self, request: socket.socket, _proxy: Any, reason: str, error: str | None = None
    ) -> None:
        self.refused.append((reason, error))
        request.close()


@pytest.fixture
def waiting() -> Any:
    """Make a Waiting on an epoll of its own."""
    poller = select.epoll()
    made = Waiting(poller)
    yield made
    made.close()
    poller.close()


def pair() -> tuple[socket.socket, socket.socket]:
    """Return (our end, the proxy's end) of a connection."""
    ours, theirs = socket.socketpair()
    return ours, theirs


class TestWaiting:
    def test_a_header_already_there_is_served_at_once(self, waiting: Waiting) -> None:
        """Nothing waits: the connection is served, the payload left in the socket."""
        server = Server()
        ours, theirs = pair()
        with theirs:
            theirs.sendall(v1(CLIENT, SERVER) + b"payload")
            waiting.take(server, ours, "unix")  # type: ignore[arg-type]
        assert [source for source, _ in server.served] == [CLIENT]
        assert waiting.connections == {}
        assert waiting.counts == {}

    def test_a_header_in_pieces_waits_counted_then_is_served(self, waiting: Waiting) -> None:
        """Incomplete: polled and counted for its service until the rest comes."""
        server = Server()
        ours, theirs = pair()
        header = v2(CLIENT, SERVER, tlv(AUTHORITY, b"example.org"))
        with theirs:
            theirs.sendall(header[:10])
            fd = ours.fileno()
            waiting.take(server, ours, "unix")  # type: ignore[arg-type]
            assert list(waiting.connections) == [fd]
            assert waiting.counts == {"svc": 1}
            theirs.sendall(header[10:])
            assert waiting.poller.poll(1) == [(fd, select.EPOLLIN)]
            waiting.ready(fd)
        ((source, served),) = server.served
        assert (source, served.authority) == (CLIENT, "example.org")
        assert server.recorded == 1, "its child recorded at once: no burst records it"
        assert waiting.counts == {}
        assert waiting.next_deadline() == float("inf")

    def test_a_bad_header_and_an_early_end_are_refused(self, waiting: Waiting) -> None:
        """Garbage at once; a peer gone before its header ended, once read."""
        server = Server()
        ours, theirs = pair()
        with theirs:
            theirs.sendall(b"GET / HTTP/1.0\r\n")
            waiting.take(server, ours, "unix")  # type: ignore[arg-type]
        ours, theirs = pair()
        theirs.sendall(b"PROXY TCP4 ")
        waiting.take(server, ours, "unix")  # type: ignore[arg-type]
        fd = ours.fileno()
        theirs.close()
        waiting.ready(fd)
        assert [reason for reason, _ in server.refused] == ["proxy_header", "proxy_header"]
        assert server.refused[1][1] == "the connection ended before its header did"
        assert waiting.counts == {}

    def test_deadlines_drop_only_what_still_waits(self, waiting: Waiting) -> None:
        """A stale deadline (its wait ended) drops nothing, not even what its fd serves now."""
        server, slow = Server(timeout=0.05), Server(timeout=60.0)
        first, first_peer = pair()
        first_peer.sendall(b"PROXY")
        fd = first.fileno()
        waiting.take(server, first, "unix")  # type: ignore[arg-type]
        first_peer.sendall(b" TCP4 192.0.2.1 198.51.100.1 5000 80\r\n")
        waiting.ready(fd)  # served: its deadline is stale now
        second, second_peer = pair()
        second_peer.sendall(b"PROXY")
        waiting.take(slow, second, "unix")  # type: ignore[arg-type]
        time.sleep(0.06)
        waiting.expire(time.monotonic())
        assert server.refused == []
        assert slow.refused == []
        assert len(waiting.connections) == 1
        waiting.expire(time.monotonic() + 61)
        assert slow.refused == [("proxy_timeout", None)]
        assert waiting.connections == {}
        for peer in (first_peer, second_peer):
            peer.close()


class TestRecords:
    def test_a_proxied_client_is_the_headers_via_the_proxy(self) -> None:
        """The header's client, `via` the proxy: addresses as they are, written by the daemon."""
        record = proxied_client(None, ("2001:db8::7", 4242), ("127.0.0.1", 40000))
        assert record == {"client": ("2001:db8::7", 4242), "via": ("127.0.0.1", 40000)}
        assert client_fields(record) == {"client": "[2001:db8::7]:4242", "via": "127.0.0.1:40000"}
        unix = proxied_client(None, "/run/client.sock", ("127.0.0.1", 40000))
        assert client_fields(unix)["client"] == "unix:/run/client.sock"

    def test_the_environment_has_the_proxy_and_the_tlvs_without_nul(self) -> None:
        """PROXY* from our side of the proxy's connection; a TLV holding a NUL is left out."""
        tlvs = tlv(ALPN, b"h\x002") + tlv(UNIQUE_ID, b"\x00\x01") + tlv(AUTHORITY, b"example.org")
        tlvs += ssl_tlv("TLSv1.3", "alice", "TLS_AES_128_GCM_SHA256")
        header = proxy.parse(v2(CLIENT, SERVER, tlvs))
        assert isinstance(header, proxy.Header)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            client = socket.create_connection(listener.getsockname())
            ours, peer = listener.accept()
            with client, ours:
                environ: dict[bytes, bytes] = {}
                proxy_environment(environ, header, ours, peer)
        assert environ == {
            b"PROXYREMOTEIP": b"127.0.0.1",
            b"PROXYREMOTEPORT": b"%d" % peer[1],
            b"PROXYLOCALIP": b"127.0.0.1",
            b"PROXYLOCALPORT": b"%d" % port,
            b"PROXY_AUTHORITY": b"example.org",
            b"PROXY_UNIQUE_ID": b"0001",
            b"SSL_PROTOCOL": b"TLSv1.3",
            b"SSL_CIPHER": b"TLS_AES_128_GCM_SHA256",
            b"SSL_PEER_CERT_CN": b"alice",
        }

    def test_problems_are_one_bounded_line(self) -> None:
        """The parser's message, an early end, an OS error: each one short line."""
        assert header_problem(proxy.ProxyError("v1: bad " + "x" * 500)).startswith("v1: bad")
        assert len(header_problem(proxy.ProxyError("x" * 500))) == 200
        assert header_problem(ConnectionResetError(104, "Connection reset by peer")) == (
            "reading the header: Connection reset by peer"
        )
        assert header_problem(IndexError("out of range")) == "IndexError: out of range"
