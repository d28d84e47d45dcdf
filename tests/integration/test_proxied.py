"""The PROXY protocol sent by hand: real clients, headers as a proxy writes them (proxylib)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from harness import TESTS, connect, exchange, recv_all, wait_until, write_config
from proxylib import (
    ALPN,
    AUTHORITY,
    LOCAL,
    UNIQUE_ID,
    UNIX_STREAM,
    ssl_tlv,
    tlv,
    unix_block,
    v1,
    v2,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness import Sockd

SERVICES = """
[daemon]
pythonpath = ["{tests}"]

[[service]]
name = "echo"
handler = "echo"
listen = ["127.0.0.1:0"]
proxy_protocol = true
proxy_timeout = 0.5

[[service]]
name = "report"
handler = "support_handlers:ProxyReport"
listen = ["127.0.0.1:0"]
proxy_protocol = true

[[service]]
name = "env"
exec = ["env"]
listen = ["127.0.0.1:0"]
proxy_protocol = true

[[service]]
name = "pooled"
handler = "support_handlers:ProxyReport"
workers = 1
listen = ["127.0.0.1:0"]
proxy_protocol = true
proxy_timeout = 0.5

[[service]]
name = "limited"
handler = "echo"
listen = ["127.0.0.1:0"]
proxy_protocol = true
proxy_timeout = 0.5
deny = ["192.0.2.66"]
per_source = 1
max_children = 2

[[service]]
name = "peers"
handler = "support_handlers:PeerFds"
listen = ["127.0.0.1:0"]
proxy_protocol = true

[[service]]
name = "unix"
handler = "echo"
listen = ["unix:{tmp}/proxied.sock"]
proxy_protocol = true
proxy_timeout = 2

[[service]]
name = "elsewhere"
handler = "echo"
listen = ["127.0.0.1:0"]
proxy_protocol = true
proxy_trusted = ["192.0.2.0/24"]
"""
CLIENT = ("192.0.2.1", 5000)
SERVER = ("198.51.100.1", 80)


def start(sockd: Callable[..., Sockd], tmp_path: Path) -> Sockd:
    """Start sockd with SERVICES."""
    text = SERVICES.format(tests=TESTS, tmp=tmp_path)
    return sockd("run", "--config", write_config(tmp_path / "sockd.toml", text))


def cpu_seconds(pid: int) -> float:
    """Return the CPU time `pid` used so far (user and system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def address(daemon: Sockd, service: str) -> str:
    (starting,) = daemon.events("starting")
    (found,) = [item for item in starting["listeners"] if item["service"] == service]
    return str(found["address"])


def report(daemon: Sockd, service: str, data: bytes) -> dict[str, object]:
    """Send `data` to a ProxyReport service; return its report."""
    answer: dict[str, object] = json.loads(exchange(address(daemon, service), data))
    return answer


class TestHeaders:
    def test_the_bytes_after_a_v1_header_reach_the_handler(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The header and the payload in one segment: the payload is echoed, untouched."""
        daemon = start(sockd, tmp_path)
        assert exchange(address(daemon, "echo"), v1(CLIENT, SERVER) + b"hello\r\n") == b"hello\r\n"
        (closed,) = daemon.wait_event("connection_closed", service="echo")
        assert closed["client"] == "192.0.2.1:5000"
        assert closed["via"].startswith("127.0.0.1:")
        assert daemon.stop() == 0

    def test_a_handler_gets_the_client_and_the_header(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """client_address is the header's; server.proxy_header and proxy_address are set."""
        daemon = start(sockd, tmp_path)
        tlvs = tlv(AUTHORITY, b"example.org") + ssl_tlv(
            "TLSv1.3", "alice", "TLS_AES_128_GCM_SHA256"
        )
        header = v2(("2001:db8::7", 4242), ("2001:db8::1", 443), tlvs, crc=True)
        answer = report(daemon, "report", header + b"payload")
        assert answer["client"] == ["2001:db8::7", 4242]
        assert answer["proxy"][0] == "127.0.0.1"  # type: ignore[index]
        assert (answer["version"], answer["local"]) == (2, False)
        assert (answer["authority"], answer["cn"]) == ("example.org", "alice")
        assert answer["payload"] == "payload"
        (closed,) = daemon.wait_event("connection_closed", service="report")
        assert closed["client"] == "[2001:db8::7]:4242"
        assert daemon.stop() == 0

    def test_haproxys_own_headers_are_read_as_the_parser_reads_them(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """v2 TCP4 and TCP6 without TLVs (taken the quick way, once the proxy is known) and v1.

        Each with its payload in the same segment, from one proxy, several times.
        """
        daemon = start(sockd, tmp_path)
        cases = [
            (v2(CLIENT, SERVER), CLIENT, SERVER, 2),
            (v2(("2001:db8::7", 4242), ("2001:db8::1", 443)), ("2001:db8::7", 4242), None, 2),
            (v1(CLIENT, SERVER), CLIENT, SERVER, 1),
        ]
        for header, client, destination, version in cases * 3:
            answer = report(daemon, "report", header + b"payload")
            assert answer["client"] == list(client)
            assert (answer["version"], answer["local"]) == (version, False)
            assert answer["destination"] == list(destination or ("2001:db8::1", 443))
            assert answer["payload"] == "payload"
        closed = daemon.wait_event("connection_closed", count=9, service="report")
        clients = sorted(event["client"] for event in closed)
        assert clients == ["192.0.2.1:5000"] * 6 + ["[2001:db8::7]:4242"] * 3
        assert all(event["via"].startswith("127.0.0.1:") for event in closed)
        with connect(address(daemon, "env")) as conn:  # a program's, made from its bytes
            conn.sendall(v2(CLIENT, SERVER))
            conn.shutdown(socket.SHUT_WR)
            environ = dict(line.split("=", 1) for line in recv_all(conn).decode().splitlines())
        assert (environ["TCPREMOTEIP"], environ["TCPREMOTEPORT"]) == ("192.0.2.1", "5000")
        assert (environ["TCPLOCALIP"], environ["TCPLOCALPORT"]) == ("198.51.100.1", "80")
        assert daemon.stop() == 0

    def test_a_program_gets_the_header_in_its_environment(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """UCSPI's variables name the real client; PROXY*, the proxy; the TLVs their own."""
        daemon = start(sockd, tmp_path)
        tlvs = tlv(ALPN, b"h2") + tlv(AUTHORITY, b"example.org") + tlv(UNIQUE_ID, b"\x01\xff")
        tlvs += ssl_tlv("TLSv1.3", "alice", "TLS_AES_128_GCM_SHA256")
        with connect(address(daemon, "env")) as client:
            client.sendall(v2(CLIENT, SERVER, tlvs))
            client.shutdown(socket.SHUT_WR)
            proxy_port = client.getsockname()[1]
            lines = recv_all(client).decode().splitlines()
        environ = dict(line.split("=", 1) for line in lines)
        assert environ["TCPREMOTEIP"] == environ["REMOTE_ADDR"] == "192.0.2.1"
        assert environ["TCPREMOTEPORT"] == environ["REMOTE_PORT"] == "5000"
        assert (environ["TCPLOCALIP"], environ["TCPLOCALPORT"]) == ("198.51.100.1", "80")
        assert environ["PROXYREMOTEIP"] == "127.0.0.1"
        assert environ["PROXYREMOTEPORT"] == str(proxy_port)
        assert environ["PROXYLOCALIP"] == "127.0.0.1"
        assert environ["PROXYLOCALPORT"] == address(daemon, "env").rpartition(":")[2]
        assert environ["PROXY_ALPN"] == "h2"
        assert environ["PROXY_AUTHORITY"] == "example.org"
        assert environ["PROXY_UNIQUE_ID"] == "01ff"
        assert environ["SSL_PROTOCOL"] == "TLSv1.3"
        assert environ["SSL_CIPHER"] == "TLS_AES_128_GCM_SHA256"
        assert environ["SSL_PEER_CERT_CN"] == "alice"
        assert daemon.stop() == 0

    def test_a_unix_client_leaves_a_program_the_connections_own_variables(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """v2's AF_UNIX on a TCP listener: TCP variables of the real connection, no made-up ones."""
        daemon = start(sockd, tmp_path)
        header = v2(family=UNIX_STREAM, block=unix_block(b"/run/client.sock", b"/run/haproxy"))
        with connect(address(daemon, "env")) as client:
            client.sendall(header)
            client.shutdown(socket.SHUT_WR)
            port = client.getsockname()[1]
            lines = recv_all(client).decode().splitlines()
        environ = dict(line.split("=", 1) for line in lines)
        assert (environ["PROTO"], environ["TCPREMOTEIP"]) == ("TCP", "127.0.0.1")
        assert environ["TCPREMOTEPORT"] == environ["PROXYREMOTEPORT"] == str(port)
        (closed,) = daemon.wait_event("connection_closed", service="env")
        assert closed["client"] == "unix:/run/client.sock"
        assert closed["via"] == f"127.0.0.1:{port}"
        assert daemon.stop() == 0

    def test_a_local_header_is_served_with_the_connections_own_addresses(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A proxy's health check (LOCAL): served, the proxy its client, no `via`."""
        daemon = start(sockd, tmp_path)
        answer = report(daemon, "report", v2(command=LOCAL))
        assert answer["client"][0] == "127.0.0.1"  # type: ignore[index]
        assert answer["local"] is True
        (closed,) = daemon.wait_event("connection_closed", service="report")
        assert closed["client"].startswith("127.0.0.1:")
        assert "via" not in closed
        assert daemon.stop() == 0

    def test_a_header_sent_a_byte_at_a_time(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Each byte a read of its own: the header is put together, the payload follows it."""
        daemon = start(sockd, tmp_path)
        header = v2(CLIENT, SERVER, tlv(AUTHORITY, b"example.org"), crc=True)
        with connect(address(daemon, "report")) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in header:
                client.sendall(bytes((byte,)))
                time.sleep(0.002)
            client.sendall(b"after")
            client.shutdown(socket.SHUT_WR)
            answer = json.loads(recv_all(client))
        assert (answer["client"], answer["authority"], answer["payload"]) == (
            list(CLIENT),
            "example.org",
            "after",
        )
        assert daemon.stop() == 0


class TestAdmission:
    def test_rules_and_limits_apply_to_the_client_in_the_header(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The deny list and per_source see the header's client, all from one proxy address."""
        daemon = start(sockd, tmp_path)
        limited = address(daemon, "limited")
        assert exchange(limited, v1(("192.0.2.66", 1), SERVER) + b"x") == b""
        assert exchange(limited, v1(("192.0.2.67", 1), SERVER) + b"x") == b"x"
        (denied,) = daemon.wait_event("connection_denied", service="limited")
        assert denied["client"] == "192.0.2.66:1"
        assert denied["reason"] == "deny 192.0.2.66/32"
        assert denied["via"].startswith("127.0.0.1:")
        with connect(limited) as held:
            held.sendall(v1(("192.0.2.70", 1), SERVER) + b"held")
            assert held.recv(4) == b"held"
            assert exchange(limited, v1(("192.0.2.70", 2), SERVER) + b"x") == b""
            assert exchange(limited, v1(("192.0.2.71", 2), SERVER) + b"x") == b"x"
        daemon.wait_event("connection_denied", service="limited", reason="per_source")
        assert daemon.stop() == 0

    def test_an_untrusted_proxy_is_refused_before_anything_is_read(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """127.0.0.1 is not in proxy_trusted: refused, its valid header unread."""
        daemon = start(sockd, tmp_path)
        assert exchange(address(daemon, "elsewhere"), v1(CLIENT, SERVER) + b"x") == b""
        (denied,) = daemon.wait_event("connection_denied", service="elsewhere")
        assert denied["reason"] == "proxy_untrusted"
        assert denied["client"].startswith("127.0.0.1:")
        assert daemon.events("connection_closed", service="elsewhere") == []
        assert daemon.stop() == 0


class TestWaiting:
    def test_no_child_is_forked_before_the_header_is_complete(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Headers that never end cost no fork, are dropped after proxy_timeout, bounded in log."""
        daemon = start(sockd, tmp_path)
        echo = address(daemon, "echo")
        worker = wait_until(daemon.children, what="the pooled service's worker")
        stalled = [connect(echo) for _ in range(20)]
        try:
            for client in stalled:
                client.sendall(b"PROXY TCP4 192.0.2.1")
            time.sleep(0.2)
            assert daemon.children() == worker, "no child but the pooled worker"
            assert exchange(echo, v1(CLIENT, SERVER) + b"served") == b"served"
            for client in stalled:  # dropped at proxy_timeout
                client.settimeout(5)
                assert recv_all(client) == b""
        finally:
            for client in stalled:
                client.close()
        (denied,) = daemon.wait_event("connection_denied", service="echo", reason="proxy_timeout")
        assert denied["client"].startswith("127.0.0.1:")
        assert daemon.events("connection_closed", service="echo")[0]["client"] == "192.0.2.1:5000"
        assert daemon.stop() == 0
        (summary,) = daemon.events("connections_denied", service="echo", reason="proxy_timeout")
        assert summary["count"] == 19  # the other 19, in one line

    def test_a_child_does_not_hold_the_connections_that_wait(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A child forked while a header waits has no descriptor of that connection."""
        daemon = start(sockd, tmp_path)
        with connect(address(daemon, "peers")) as waiting:
            waiting.sendall(b"PROXY ")
            time.sleep(0.1)  # accepted, and waiting
            answer = exchange(address(daemon, "peers"), v1(CLIENT, SERVER))
            peers = [tuple(peer) for peer in json.loads(answer)]
            assert waiting.getsockname() not in peers
            assert len(peers) == 1  # its own connection
        assert daemon.stop() == 0

    def test_a_header_waited_for_on_a_unix_listener_does_not_spin_the_forker(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A UNIX socket's poll ignores SO_RCVLOWAT: the wait must not be a busy loop."""
        daemon = start(sockd, tmp_path)
        forker = daemon.forker()
        with connect(address(daemon, "unix")) as client:
            client.sendall(b"PROXY TCP4 192.0.2.1 ")
            time.sleep(0.1)
            before = cpu_seconds(forker)
            time.sleep(1)
            spent = cpu_seconds(forker) - before
            client.sendall(b"198.51.100.1 5000 80\r\nunix")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"unix"
        assert spent < 0.2, f"the forker spent {spent:.2f} s of CPU in 1 s waiting for a header"
        assert daemon.stop() == 0

    def test_a_graceful_stop_serves_a_header_still_coming(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Accepted before SIGTERM, its header half sent: served once the rest comes."""
        daemon = start(sockd, tmp_path)
        with connect(address(daemon, "report")) as client:
            client.sendall(b"PROXY TCP4 192.0.2.1 ")
            time.sleep(0.1)  # accepted, and waiting
            daemon.signal(signal.SIGTERM)
            daemon.wait_event("stopping")
            client.sendall(b"198.51.100.1 5000 80\r\nlate")
            client.shutdown(socket.SHUT_WR)
            answer = json.loads(recv_all(client))
        assert (answer["client"], answer["payload"]) == (list(CLIENT), "late")
        assert daemon.wait() == 0

    def test_a_bad_header_is_refused_with_its_problem(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Not a header: refused at once, the problem said in one line."""
        daemon = start(sockd, tmp_path)
        assert exchange(address(daemon, "echo"), b"GET / HTTP/1.0\r\n\r\n") == b""
        (denied,) = daemon.wait_event("connection_denied", service="echo")
        assert denied["reason"] == "proxy_header"
        assert denied["error"]
        assert daemon.stop() == 0

    def test_connections_waiting_for_their_header_count_toward_the_cap(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """max_children = 2 with two headers waiting: the third waits until they are dropped."""
        daemon = start(sockd, tmp_path)
        limited = address(daemon, "limited")
        stalled = [connect(limited) for _ in range(2)]
        for client in stalled:
            client.sendall(b"PROXY ")
        wait_until(lambda: daemon.events("cap_reached", service="limited"), what="cap_reached")
        answer = exchange(limited, v1(("192.0.2.9", 9), SERVER) + b"third")
        assert answer == b"third"
        daemon.wait_event("connection_closed", service="limited", client="192.0.2.9:9")
        events = [(event["event"], event.get("reason")) for event in daemon.events()]
        dropped = events.index(("connection_denied", "proxy_timeout"))
        assert dropped < events.index(("connection_closed", None)), "the third after a drop"
        for client in stalled:
            client.close()
        assert daemon.stop() == 0


class TestPooled:
    def test_a_pooled_worker_reads_the_header_itself(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Served as in a forked child; a bad header and a slow one refused by the worker."""
        daemon = start(sockd, tmp_path)
        pooled = address(daemon, "pooled")
        answer = report(daemon, "pooled", v1(CLIENT, SERVER) + b"pool")
        assert (answer["client"], answer["payload"]) == (list(CLIENT), "pool")
        (closed,) = daemon.wait_event("connection_closed", service="pooled")
        assert (closed["client"], closed["worker"]) == ("192.0.2.1:5000", True)
        assert closed["via"].startswith("127.0.0.1:")
        assert exchange(pooled, b"\x00garbage") == b""
        daemon.wait_event("connection_denied", service="pooled", reason="proxy_header")
        with connect(pooled) as slow:
            slow.sendall(b"PROXY TCP4")
            slow.settimeout(5)
            assert recv_all(slow) == b""
        daemon.wait_event("connection_denied", service="pooled", reason="proxy_timeout")
        assert report(daemon, "pooled", v1(CLIENT, SERVER) + b"again")["payload"] == "again"
        assert daemon.stop() == 0
