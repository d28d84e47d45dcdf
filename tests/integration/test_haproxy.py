"""sockd behind the real HAProxy on loopback: PROXY v1 and v2, health checks, the real client.

Three sockd instances stand for three hosts behind one HAProxy in tcp mode.
The client binds 127.0.0.5 (or .6, .7) and HAProxy connects from 127.0.0.9
(`source`), so the client's, the proxy's and sockd's own addresses all differ,
as they would across machines.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from haproxylib import server
from harness import connect, exchange, recv_all, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from haproxylib import HAProxy
    from harness import Sockd

CLIENT = "127.0.0.5"
DENIED = "127.0.0.6"
OTHER = "127.0.0.7"
PROXY = "127.0.0.9"  # HAProxy's source towards the servers
# The program tells who it was told the client is, and who the proxy; then echoes.
WHO = """["sh", "-c", 'echo "$TCPREMOTEIP:$TCPREMOTEPORT $PROXYREMOTEIP"; exec cat']"""
# Two servers get PROXY v2, one v1; their checks send headers too (see haproxylib.server).
HEADERS = ("send-proxy-v2", "send-proxy-v2", "send-proxy")


def start_host(
    sockd: Callable[..., Sockd], tmp_path: Path, name: str, service: str, proxied: bool = True
) -> Sockd:
    """Start one sockd "host" serving `service` (a `[[service]]` body without name/listen)."""
    proxy = "proxy_protocol = true\n" if proxied else ""
    config = write_config(
        tmp_path / f"{name}.toml",
        f'[[service]]\nname = "{name}"\nlisten = ["127.0.0.1:0"]\n{proxy}{service}\n',
    )
    return sockd("run", "--config", config)


def three_hosts(
    sockd: Callable[..., Sockd],
    haproxy: Callable[..., HAProxy],
    tmp_path: Path,
    service: str,
    headers: tuple[str, ...] = HEADERS,
) -> tuple[list[Sockd], HAProxy]:
    """Start hosts s1, s2, s3 serving `service` behind one HAProxy; wait until all are UP."""
    proxied = any(headers)
    hosts = [start_host(sockd, tmp_path, f"s{n}", service, proxied=proxied) for n in range(1, 4)]
    servers = [
        server(f"s{n}", host.address(), header, f"source {PROXY}")
        for n, (host, header) in enumerate(zip(hosts, headers, strict=True), 1)
    ]
    proxy = haproxy(servers)
    proxy.wait_states(s1="UP", s2="UP", s3="UP")
    return hosts, proxy


def served(host: Sockd, client: str) -> list[dict[str, object]]:
    """Return `host`'s connection_closed events of connections from `client` (an address)."""
    return [
        event
        for event in host.events("connection_closed")
        if str(event["client"]).startswith(f"{client}:")
    ]


def all_served(hosts: list[Sockd], client: str, count: int) -> list[list[dict[str, object]]]:
    """Wait until the hosts logged `count` connections from `client`; return each host's."""

    def logged() -> list[list[dict[str, object]]] | None:
        found = [served(host, client) for host in hosts]
        return found if sum(map(len, found)) >= count else None

    found: list[list[dict[str, object]]] = wait_until(logged, what=f"{count} from {client}")
    return found


class TestWithoutProxyProtocol:
    def test_haproxy_spreads_connections_and_sockd_sees_only_the_proxy(
        self, sockd: Callable[..., Sockd], haproxy: Callable[..., HAProxy], tmp_path: Path
    ) -> None:
        """Plain tcp mode, checks on: all UP, 9 clients spread over the three, each the proxy.

        Why the PROXY protocol exists: without it a host knows only the proxy.
        """
        hosts, proxy = three_hosts(sockd, haproxy, tmp_path, f"exec = {WHO}", ("", "", ""))
        for n in range(9):
            answer = exchange(proxy.address, b"payload %d\n" % n, source=CLIENT)
            assert answer.startswith(f"{PROXY}:".encode()), answer
            assert answer.endswith(b" \npayload %d\n" % n), answer
        sessions = {name: int(row["stot"]) for name, row in proxy.servers().items()}
        assert sessions == {"s1": 3, "s2": 3, "s3": 3}  # roundrobin, all UP
        assert not any(served(host, CLIENT) for host in hosts)


class TestBehindHAProxy:
    def test_three_hosts_are_up_share_connections_and_see_the_real_client(
        self, sockd: Callable[..., Sockd], haproxy: Callable[..., HAProxy], tmp_path: Path
    ) -> None:
        """v2, v2 and v1 with checks: all UP; 9 clients spread over all three, each seen as itself.

        The program's TCPREMOTEIP:TCPREMOTEPORT is the client's own address and
        port, PROXYREMOTEIP the proxy's; each host's log names the client in
        `client` and the proxy in `via`; the bytes after the header reach the
        program untouched.
        """
        hosts, proxy = three_hosts(sockd, haproxy, tmp_path, f"exec = {WHO}")
        ports = []
        for n in range(9):
            with connect(proxy.address, source=CLIENT) as sock:
                port = sock.getsockname()[1]
                ports.append(port)
                sock.sendall(b"payload %d\n" % n)
                sock.shutdown(socket.SHUT_WR)
                answer = recv_all(sock)
            assert answer == f"{CLIENT}:{port} {PROXY}\npayload {n}\n".encode()
        logged: dict[int, dict[str, object]] = {}
        for events in all_served(hosts, CLIENT, 9):
            assert len(events) == 3, "roundrobin over three servers UP: 3 each"
            for event in events:
                assert str(event["via"]).startswith(f"{PROXY}:"), event
                logged[int(str(event["client"]).rpartition(":")[2])] = event
        assert sorted(logged) == sorted(ports)
        # The checks (which must be echoed) pass: a LOCAL (v2) or the check's own (v1) header.
        assert proxy.states() == {"s1": "UP", "s2": "UP", "s3": "UP"}

    def test_a_deny_rule_refuses_the_client_haproxy_saw(
        self, sockd: Callable[..., Sockd], haproxy: Callable[..., HAProxy], tmp_path: Path
    ) -> None:
        """Deny = [127.0.0.6] on every host: 127.0.0.6 is refused through HAProxy, .5 is served."""
        service = f'handler = "echo"\ndeny = ["{DENIED}"]\nrefusal = "busy\\r\\n"'
        hosts, proxy = three_hosts(sockd, haproxy, tmp_path, service)
        for _ in range(3):  # whichever host it reaches
            assert exchange(proxy.address, b"ping\n", source=DENIED) == b"busy\r\n"
            assert exchange(proxy.address, b"ping\n", source=CLIENT) == b"ping\n"
        # The first refusal of each host is logged in full (the next ones are summed up).
        for host in hosts:
            host.wait_event("connection_denied")
        for event in [event for host in hosts for event in host.events("connection_denied")]:
            assert str(event["reason"]).startswith("deny "), event
            assert str(event["client"]).startswith(f"{DENIED}:"), event
            assert str(event["via"]).startswith(f"{PROXY}:"), event
        assert all(all_served(hosts, CLIENT, 3))

    def test_a_per_source_cap_counts_the_client_haproxy_saw(
        self, sockd: Callable[..., Sockd], haproxy: Callable[..., HAProxy], tmp_path: Path
    ) -> None:
        """per_source = 1: a second connection from 127.0.0.5 is refused, one from .7 served.

        Through one HAProxy every connection comes from the proxy's address: only
        the header's client tells them apart.
        """
        service = 'handler = "echo"\nper_source = 1\nrefusal = "busy\\r\\n"'
        host = start_host(sockd, tmp_path, "s1", service)
        proxy = haproxy([server("s1", host.address(), extra=f"source {PROXY}")])
        proxy.wait_states(s1="UP")
        with connect(proxy.address, source=CLIENT) as held:
            held.sendall(b"held\n")
            assert held.recv(100) == b"held\n"  # being served: it holds 127.0.0.5's one slot
            assert exchange(proxy.address, b"second\n", source=CLIENT) == b"busy\r\n"
            assert exchange(proxy.address, b"other\n", source=OTHER) == b"other\n"
        (denied,) = host.wait_event("connection_denied")
        assert denied["reason"] == "per_source"
        assert str(denied["client"]).startswith(f"{CLIENT}:")
        assert str(denied["via"]).startswith(f"{PROXY}:")
