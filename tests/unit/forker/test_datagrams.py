"""Tests of sockd.forker.datagrams: built-ins answered in process, the loop check, forks, rules."""

from __future__ import annotations

import os
import select
import socket
import socketserver
from typing import TYPE_CHECKING

import pytest
from harness import wait_until

from sockd.errors import ConfigError
from sockd.forker.datagrams import DatagramServer, problem
from sockd.forker.shared import Service, Shared
from sockd.listeners import Endpoint
from sockd.spec import ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class Upper(socketserver.DatagramRequestHandler):
    """Answer the datagram in capitals, with the child's pid."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read().upper() + b" %d" % os.getpid())


def bound(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(10)
    return sock


def arrived(server: DatagramServer) -> DatagramServer:
    """Wait until a datagram is there to read (loopback may deliver it from a softirq later)."""
    assert select.select([server.socket], [], [], 10)[0]
    return server


@pytest.fixture
def serve() -> Iterator[Callable[..., DatagramServer]]:
    """Make DatagramServers on a fresh UDP socket (as the daemon passes it); close them after."""
    made: list[DatagramServer] = []

    def make(handler: str, **settings: object) -> DatagramServer:
        sock = bound()
        endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock, type=sock.type)
        service = Service(ServiceSpec("svc", handler, **settings))  # type: ignore[arg-type]
        server = DatagramServer(endpoint, service, Shared())
        made.append(server)
        return server

    yield make
    for server in made:
        server.server_close()


class TestBuiltins:
    def test_answered_in_the_forker(self, serve: Callable[..., DatagramServer]) -> None:
        """A built-in's datagram is answered in this process, from the service's address."""
        server = serve("daytime")
        assert server.inline
        with bound() as client:
            client.sendto(b"\n", server.server_address)
            assert arrived(server).accept_ready(64) == 1
            answer, sender = client.recvfrom(100)
        assert answer.endswith(b"\r\n")
        assert sender == server.server_address
        assert not server.shared.children
        assert server.shared.stats.served == 1

    def test_a_burst_is_bounded(self, serve: Callable[..., DatagramServer]) -> None:
        """accept_ready reads at most its budget; the rest waits for the next turn."""
        server = serve("discard")
        with bound() as client:
            for _ in range(10):
                client.sendto(b"x", server.server_address)
            taken: list[int] = []

            def all_read() -> bool:
                taken.append(server.accept_ready(4))
                return sum(taken) == 10

            wait_until(all_read)
            assert max(taken) == 4

    def test_the_loop_check(self, serve: Callable[..., DatagramServer]) -> None:
        """From the service's own port: dropped unanswered, counted, never logged one by one."""
        server = serve("time")
        port = server.server_address[1]
        with bound("127.0.0.2", port) as looped:
            looped.sendto(b"?", server.server_address)
            assert arrived(server).accept_ready(64) == 1
            looped.setblocking(False)
            with pytest.raises(BlockingIOError):
                looped.recv(10)
        assert server.shared.denials.counts == {("svc", "source_port", "all"): 1}
        assert server.shared.stats.denied == 1

    def test_deny_per_datagram(self, serve: Callable[..., DatagramServer]) -> None:
        """A denied source gets nothing; its first refusal is logged, the rest summed up."""
        events: list[object] = []
        server = serve("time", deny=("127.0.0.2",))
        server.shared.report = lambda *event: events.append(event)
        with bound("127.0.0.2") as denied, bound() as allowed:
            for _ in range(3):
                denied.sendto(b"?", server.server_address)
            allowed.sendto(b"?", server.server_address)

            def served() -> bool:
                server.accept_ready(64)
                return server.shared.stats.served == 1

            wait_until(served)
            assert len(allowed.recv(10)) == 4
        assert len(events) == 1
        assert server.shared.stats.denied == 3


class TestForked:
    def test_a_child_per_datagram_answers_with_sendto(
        self, serve: Callable[..., DatagramServer]
    ) -> None:
        """A handler runs in a child with (data, socket); it answers on the listening socket."""
        server = serve(f"{__name__}:Upper")
        assert not server.inline
        with bound() as client:
            client.sendto(b"abc", server.server_address)
            assert arrived(server).accept_ready(64) == 1
            answer, sender = client.recvfrom(100)
        text, _, pid = answer.partition(b" ")
        assert (text, sender) == (b"ABC", server.server_address)
        assert int(pid) != os.getpid()
        assert list(server.shared.children) == [int(pid)]

        def reaped() -> bool:
            server.collect_children()
            return not server.shared.children

        wait_until(reaped)


class TestProblem:
    @pytest.mark.parametrize(
        ("handler", "settings", "family", "expected"),
        [
            ("echo", {}, socket.AF_INET, "set udp_reflection = true"),
            ("chargen", {}, socket.AF_INET, "set udp_reflection = true"),
            ("echo", {"udp_reflection": True}, socket.AF_INET, None),
            ("time", {}, socket.AF_INET, None),
            ("time", {"workers": 2}, socket.AF_INET, "workers"),
            ("time", {"refusal": "no"}, socket.AF_INET, "refusal"),
            ("time", {"proxy_protocol": True}, socket.AF_INET, "proxy_protocol"),
            (None, {"program": "/bin/cat", "exec": ("cat",)}, socket.AF_UNIX, "unless wait = true"),
            (None, {"program": "/bin/cat", "exec": ("cat",), "wait": True}, socket.AF_UNIX, None),
        ],
    )
    def test_what_a_datagram_socket_cannot_serve(
        self, handler: str | None, settings: dict[str, object], family: int, expected: str | None
    ) -> None:
        """Rules sockd check applies to udp: addresses, for sockets from systemd."""
        found = problem(Service(ServiceSpec("svc", handler, **settings)), family)  # type: ignore[arg-type]
        if expected is None:
            assert found is None
        else:
            assert found is not None
            assert expected in found

    def test_refused_at_start_and_at_reload(self, serve: Callable[..., DatagramServer]) -> None:
        """The forker refuses UDP echo without udp_reflection; a reload to it fails."""
        with pytest.raises(ConfigError, match="set udp_reflection = true"):
            serve("echo")
        server = serve("time")
        reloaded = Service(ServiceSpec("svc", "chargen"))
        assert server.cannot_serve(reloaded) is not None
        assert server.cannot_serve(Service(ServiceSpec("svc", "daytime"))) is None
