"""Tests of sockd.forker.service: the hooks of ServiceServer, with real sockets and forks."""

from __future__ import annotations

import math
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING, Any

import pytest
from harness import children_of, recv_all, wait_until

from sockd import ipc
from sockd.errors import OSFailure, exception_fields
from sockd.forker.service import ServiceServer
from sockd.forker.shared import Service, Shared
from sockd.listeners import Endpoint
from sockd.server import ForkingMixIn
from sockd.spec import ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Iterator


class Exits(socketserver.BaseRequestHandler):
    """Exit as the client's first byte says: sys.exit() for b"0", else sys.exit(3)."""

    def handle(self) -> None:
        if self.request.recv(1) == b"0":
            sys.exit()
        sys.exit(3)


@pytest.fixture
def events() -> list[tuple[str, str, dict[str, Any]]]:
    return []


@pytest.fixture
def server(events: list[tuple[str, str, dict[str, Any]]]) -> Iterator[ServiceServer]:
    shared = Shared()
    shared.report = lambda level, event, fields: events.append((level, event, fields))
    sock = socket.create_server(("127.0.0.1", 0))  # as the daemon passes it
    endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
    service = Service(ServiceSpec("svc", "echo", deny=("127.0.0.2",)))
    served = ServiceServer(endpoint, service, shared)
    yield served
    served.server_close()


class TestServiceServer:
    def test_a_proxied_tcp_listener_defers_accepting_until_data(self) -> None:
        """TCP_DEFER_ACCEPT for proxy_timeout, rounded up; none once a reload drops PROXY."""
        sock = socket.create_server(("127.0.0.1", 0))
        endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
        spec = ServiceSpec("svc", "echo", proxy_protocol=True, proxy_timeout=2.5)
        server = ServiceServer(endpoint, Service(spec), Shared())
        with server:
            deferred = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT)
            assert deferred >= 3  # the kernel rounds up to its SYN-ACK retransmissions
            with socket.create_connection(sock.getsockname()), pytest.raises(BlockingIOError):
                server.get_request()  # connected, nothing sent: not accepted yet
            server.apply(Service(ServiceSpec("svc", "echo")))
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0

    def test_takes_the_passed_socket_non_blocking(self, server: ServiceServer) -> None:
        """server_bind/server_activate take the daemon's listening socket, non-blocking."""
        assert server.server_address[0] == "127.0.0.1"
        assert server.adopted
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert server.socket.getblocking() is False
        assert server.accept_ready(10) == 0

    def test_without_a_passed_socket_it_says_so(self) -> None:
        """The forker never binds: an endpoint without a socket is an error naming the service."""
        endpoint = Endpoint("svc", socket.AF_INET, ("127.0.0.1", 0))
        with pytest.raises(OSFailure, match="service 'svc': no socket passed by the daemon"):
            ServiceServer(endpoint, Service(ServiceSpec("svc", "echo")), Shared())

    def test_adopted_socket_must_listen(self) -> None:
        """An inherited socket that does not listen fails activation with a clear error."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
        with pytest.raises(Exception, match="not listening"):
            ServiceServer(endpoint, Service(ServiceSpec("svc", "echo")), Shared())
        assert sock.fileno() == -1, "closed on failure"

    def test_failure_in_the_constructor_says_what_failed(self) -> None:
        """An OSError after socket(2) names its step, not "cannot create a socket"."""
        sock = socket.socket()
        sock.close()  # getsockname() fails: EBADF
        endpoint = Endpoint(
            "svc", sock.family, ("127.0.0.1", 0), address="127.0.0.1:0", adopted=sock
        )
        with pytest.raises(OSFailure) as raised:
            ServiceServer(endpoint, Service(ServiceSpec("svc", "echo")), Shared())
        message = "service 'svc': listen 127.0.0.1:0: cannot read its address: Bad file descriptor"
        assert str(raised.value) == message

    @pytest.mark.parametrize(("action", "code"), [(b"0", 1), (b"3", 3)])
    def test_system_exit_status(
        self,
        server: ServiceServer,
        events: list[tuple[str, str, dict[str, Any]]],
        action: bytes,
        code: int,
    ) -> None:
        """A handler's sys.exit() ends its child with 1, sys.exit(3) with 3 (connection_closed)."""
        server.RequestHandlerClass = Exits
        with socket.create_connection(server.server_address[:2], timeout=5) as client:  # type: ignore[arg-type]
            assert wait_until(lambda: server.accept_ready(1)) == 1
            client.sendall(action)
            assert recv_all(client) == b""
        wait_until(server.shared.reap, what="the child to exit")
        ((_, event, fields),) = events
        assert (event, fields["exit_code"]) == ("connection_closed", code)

    def test_fork_serve_and_reap(
        self, server: ServiceServer, events: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """A connection is served in a forked child; reaping reports connection_closed."""
        with socket.create_connection(server.server_address[:2], timeout=5) as client:  # type: ignore[arg-type]
            assert wait_until(lambda: server.accept_ready(1)) == 1
            client.sendall(b"ping")
            assert client.recv(10) == b"ping"
            # The forked child holds a copy of this very socket: only shutdown() ends it.
            client.shutdown(socket.SHUT_WR)
        assert len(server.shared.children) == 1
        wait_until(server.shared.reap, what="the child to exit")
        ((level, event, fields),) = events
        assert (level, event) == ("info", "connection_closed")
        assert fields["exit_code"] == 0
        assert fields["service"] == "svc"
        assert server.shared.stats.as_tuple() == (1, 0, 0)

    def test_denied_connection_is_closed_and_reported(
        self, server: ServiceServer, events: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """verify_request refuses a denied source, closes it and reports the reason."""
        client = socket.socket()
        client.bind(("127.0.0.2", 0))
        client.settimeout(5)
        client.connect(server.server_address)
        assert wait_until(lambda: server.accept_ready(1)) == 1
        assert client.recv(10) == b""
        client.close()
        ((_, event, fields),) = events
        assert event == "connection_denied"
        assert fields["reason"] == "deny 127.0.0.2/32"
        assert server.shared.children.reap() == []
        assert server.shared.stats.denied == 1

    def test_reset_before_accept_is_dropped_unforked_half_closed_served(
        self, server: ServiceServer, events: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """A connection reset in the backlog gets no child, only a count; a half-closed one is."""
        address = server.server_address[:2]
        reset = socket.create_connection(address, timeout=5)  # type: ignore[arg-type]
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()  # linger 0: an RST, before sockd accepts it
        with socket.create_connection(address, timeout=5) as polite:  # type: ignore[arg-type]
            polite.sendall(b"ping")
            polite.shutdown(socket.SHUT_WR)  # as harness.exchange() does
            assert wait_until(lambda: server.accept_ready(2)) == 2
            assert len(server.shared.children) == 1, "one child: the half-closed connection's"
            assert recv_all(polite) == b"ping"
        wait_until(server.shared.reap, what="the child to exit")
        assert [event for _, event, _ in events] == ["connection_closed"]
        assert server.shared.stats.as_tuple() == (1, 0, 0)
        (summary,) = server.shared.denials.due(math.inf)
        assert (summary["reason"], summary["count"]) == ("peer_reset", 1)

    def test_is_the_library_server(self, server: ServiceServer) -> None:
        """The forker's server is the library's ForkingMixIn with hooks overridden, not a copy."""
        assert isinstance(server, ForkingMixIn)
        assert ServiceServer.fork_request is ForkingMixIn.fork_request
        assert ServiceServer.serve_forever is ForkingMixIn.serve_forever

    @pytest.mark.parametrize("driver", ["handle_request", "serve_forever"])
    def test_socketserver_loops_record_and_reap(
        self, server: ServiceServer, events: list[tuple[str, str, dict[str, Any]]], driver: str
    ) -> None:
        """Driven by handle_request() or serve_forever(), its children are recorded and reaped."""
        server.socket.setblocking(True)  # handle_request() would take its timeout, 0, as its own
        if driver == "serve_forever":
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        else:
            thread = threading.Thread(target=server.handle_request, daemon=True)
        thread.start()
        with socket.create_connection(server.server_address[:2], timeout=5) as client:  # type: ignore[arg-type]
            client.sendall(b"ping")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"ping"
        if driver == "serve_forever":
            wait_until(lambda: events, what="the child reaped by service_actions")
            server.shutdown()
        else:
            thread.join(5)

            def reaped() -> bool:
                server.handle_timeout()  # as handle_request() does when it times out
                return bool(events)

            wait_until(reaped, what="the child reaped")
        thread.join(5)
        assert [event for _, event, _ in events] == ["connection_closed"]
        assert not [pid for pid, state in children_of(os.getpid()) if state == "Z"]

    def test_rehearsal_serves_nothing_reports_nothing_and_restores_the_handler(
        self, server: ServiceServer, events: list[tuple[str, str, dict[str, Any]]]
    ) -> None:
        """rehearse() calls no handler and reports nothing; real connections are served after it."""
        called: list[object] = []

        class Recording(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                called.append(self.client_address)
                self.request.sendall(b"real")

        server.RequestHandlerClass = Recording
        fds_before = len(os.listdir("/proc/self/fd"))
        server.rehearse()
        assert (called, events, server.RequestHandlerClass) == ([], [], Recording)
        assert len(os.listdir("/proc/self/fd")) == fds_before  # every socket pair closed
        with socket.create_connection(server.server_address[:2], timeout=5) as client:  # type: ignore[arg-type]
            assert wait_until(lambda: server.accept_ready(1)) == 1
            assert recv_all(client) == b"real"
        wait_until(server.shared.reap, what="the child to exit")
        assert [event for _, event, _ in events] == ["connection_closed"]

    def test_rehearsal_specializes_the_childs_path(self) -> None:
        """After rehearse(), a fresh interpreter's finish_request loads attributes specialized."""
        script = textwrap.dedent(
            """
            import dis, socket
            from sockd.forker.service import ServiceServer
            from sockd.forker.shared import Service, Shared
            from sockd.listeners import Endpoint
            from sockd.spec import ServiceSpec

            def specialized():
                code = dis.get_instructions(ServiceServer.finish_request, adaptive=True)
                names = {i.opname for i in code}
                return "LOAD_ATTR_INSTANCE_VALUE" in names

            sock = socket.create_server(("127.0.0.1", 0))
            endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
            server = ServiceServer(endpoint, Service(ServiceSpec("svc", "echo")), Shared())
            before = specialized()
            server.rehearse()
            print(before, specialized())
            """
        )
        source_root = os.path.dirname(os.path.dirname(ipc.__file__))
        result = subprocess.run(
            [sys.executable, "-S", "-c", script],
            env={**os.environ, "PYTHONPATH": source_root},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert result.stdout.split() == ["False", "True"]

    def test_collect_children_never_blocks(self, server: ServiceServer) -> None:
        """ForkingMixIn's blocking wait is gone: collect_children(blocking=True) returns at once."""
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            signal.pause()
        server.shared.children.add(pid, "svc", "x")
        server.collect_children(blocking=True)
        server.handle_timeout()
        assert len(server.shared.children) == 1
        os.kill(pid, 9)
        wait_until(server.shared.reap)


def raising(secret: str, kind: type[Exception] = KeyError) -> None:
    raise kind(secret[:3] if kind is KeyError else secret)


def recurse(depth: int) -> None:
    if depth:
        recurse(depth - 1)
    raise RuntimeError("deep " * 500)


class TestExceptionFields:
    def test_frames_without_locals(self) -> None:
        """Exceptions become type, message and frames (file, line, function), never locals."""
        try:
            raising("hunter2-password")
        except KeyError as exc:
            fields = exception_fields(exc)
        assert fields["type"] == "KeyError"
        assert fields["message"] == "'hun'"
        assert fields["frames"][-1]["function"] == "raising"
        assert fields["frames"][-1]["file"] == __file__
        assert isinstance(fields["frames"][-1]["line"], int)
        assert "hunter2" not in repr(fields)

    def test_deep_traceback_stays_one_small_record(self) -> None:
        """A deep traceback is trimmed in the middle, so that its record stays under 4 KiB."""
        try:
            recurse(200)
        except RuntimeError as exc:
            fields = exception_fields(exc)
        record = ipc.encode(("log", "error", "handler_error", {"exception": fields}))
        assert len(record) <= 4096
        assert fields["frames_omitted"] > 0
        assert fields["frames"][0]["function"] == "test_deep_traceback_stays_one_small_record"
        assert fields["frames"][-1]["function"] == "recurse"
        assert fields["message"].startswith("deep deep")

    def test_wide_characters_count_as_bytes(self) -> None:
        """A message of 4-byte characters is cut by its encoded size, not its length."""
        try:
            raising("\N{GRINNING FACE}" * 1000, ValueError)
        except ValueError as exc:
            fields = exception_fields(exc)
        assert len(ipc.encode(("log", "error", "handler_error", {"exception": fields}))) <= 4096
        assert fields["message"].startswith("\N{GRINNING FACE}")
