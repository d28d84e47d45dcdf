"""Tests of sockd.server: the drop-in forking servers, with real sockets, forks and LISTEN_FDS."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from harness import alive, children_of, in_child, inherit, recv_all, wait_until

import sockd
from sockd.errors import ConfigError
from sockd.exits import PEER_GONE
from sockd.server import (
    ForkingMixIn,
    ForkingTCPServer,
    ForkingUDPServer,
    ForkingUnixDatagramServer,
    ForkingUnixStreamServer,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

LOOPBACK = ("127.0.0.1", 0)


class Echo(socketserver.StreamRequestHandler):
    """Write each line back until the client half-closes."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line)


_made: list[socket.socket] = []  # the sockets a test passes to its child: closed after it


@pytest.fixture(autouse=True)
def _close_made() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()


def made(sock: socket.socket) -> socket.socket:
    _made.append(sock)
    return sock


def listening(family: int = socket.AF_INET, where: Any = LOOPBACK) -> socket.socket:
    sock = made(socket.socket(family, socket.SOCK_STREAM))
    sock.bind(where)
    sock.listen()
    return sock


def listen_vars() -> list[str]:
    return [name for name in os.environ if name.startswith("LISTEN_")]


def exchange(address: Any, data: bytes = b"ping\n") -> bytes:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(address)
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        return recv_all(client)


def address(server: ForkingMixIn) -> tuple[str, int]:
    host, port = server.server_address[:2]
    assert isinstance(host, str)
    return host, port


def zombies() -> list[int]:
    return [pid for pid, state in children_of(os.getpid()) if state == "Z"]


@contextlib.contextmanager
def serving(server: ForkingMixIn) -> Iterator[threading.Thread]:
    """Run `server.serve_forever()` in a thread; shut it down and close it on the way out."""
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        server.shutdown()
        thread.join(10)
        server.server_close()


def _bound_only() -> socket.socket:
    sock = made(socket.socket())
    sock.bind(LOOPBACK)
    return sock


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


class TestAdoption:
    def test_by_name(self) -> None:
        """fd_name takes the socket of that name (LISTEN_FDNAMES); the variables are consumed."""
        first, second = listening(), listening()

        def run() -> tuple[Any, ...]:
            inherit([first, second], ["web", "admin"])
            with ForkingTCPServer(LOOPBACK, Echo, fd_name="admin") as server:
                return server.adopted, server.socket.fileno(), server.server_address, listen_vars()

        assert in_child(run) == (True, 4, second.getsockname(), [])

    def test_by_address(self) -> None:
        """Without a name, the socket bound to the requested address is taken."""
        first, second = listening(), listening()

        def run() -> tuple[Any, ...]:
            inherit([first, second], ["a", "b"])
            with ForkingTCPServer(second.getsockname(), Echo) as server:
                return server.adopted, server.socket.fileno(), server.server_address

        assert in_child(run) == (True, 4, second.getsockname())

    def test_port_zero_matches_no_address_of_two(self) -> None:
        """Two sockets of the family, neither named nor at the address: the server binds its own."""
        first, second = listening(), listening()

        def run() -> tuple[Any, ...]:
            inherit([first, second])
            with ForkingTCPServer(LOOPBACK, Echo) as server:
                address = server.server_address
                return server.adopted, address not in (first.getsockname(), second.getsockname())

        assert in_child(run) == (False, True)

    def test_only_one_of_each_family(self, tmp_path: Path) -> None:
        """The only inherited socket of a server's family is its own, whatever it asked for."""
        tcp, unix = listening(), listening(socket.AF_UNIX, str(tmp_path / "s"))

        def run() -> tuple[Any, ...]:
            inherit([unix, tcp], ["x", "y"])
            with (
                ForkingTCPServer(("127.0.0.1", 1), Echo) as ip_server,
                ForkingUnixStreamServer(str(tmp_path / "other"), Echo) as unix_server,
            ):
                return (
                    (ip_server.socket.fileno(), ip_server.server_address),
                    (unix_server.socket.fileno(), unix_server.server_address),
                    os.path.exists(tmp_path / "other"),
                )

        tcp_side, unix_side, bound = in_child(run)
        assert tcp_side == (4, tcp.getsockname())
        assert unix_side == (3, str(tmp_path / "s"))
        assert bound is False, "nothing bound in its stead"

    def test_two_servers_take_one_each_and_none_twice(self) -> None:
        """Servers in one process take their own socket each; a taken one is never given again."""
        first, second = listening(), listening()

        def run() -> list[tuple[bool, int]]:
            inherit([first, second], ["a", "b"])
            servers = [
                ForkingTCPServer(LOOPBACK, Echo, fd_name="b"),
                ForkingTCPServer(LOOPBACK, Echo, fd_name="a"),
                ForkingTCPServer(LOOPBACK, Echo, fd_name="a"),  # "a" is taken: binds
            ]
            taken = [(server.adopted, server.socket.fileno()) for server in servers]
            for server in servers:
                server.server_close()
            return taken

        (b, a, again) = in_child(run)
        assert (b, a) == ((True, 4), (True, 3))
        assert again[0] is False
        assert again[1] not in (3, 4)

    def test_forked_child_adopts_nothing_of_its_parent(self, tmp_path: Path) -> None:
        """The record of inherited sockets is per process: a forked child has none of them."""
        unix = listening(socket.AF_UNIX, str(tmp_path / "s"))

        def adopts() -> bool:
            with ForkingUnixStreamServer(str(tmp_path / "own"), Echo) as server:
                return server.adopted

        def run() -> bool:
            inherit([unix])
            with ForkingTCPServer(LOOPBACK, Echo) as server:  # reads LISTEN_*, takes nothing
                assert not server.adopted
            return bool(in_child(adopts))

        def as_parent() -> bool:
            inherit([unix])
            return adopts()

        assert in_child(run) is False
        assert in_child(as_parent) is True, "the parent would have taken it"

    def test_listen_pid_of_another_process(self) -> None:
        """LISTEN_PID naming another process: nothing is adopted, and the variables are gone."""
        only = listening()

        def run() -> tuple[Any, ...]:
            inherit([only], pid=os.getppid())
            with ForkingTCPServer(LOOPBACK, Echo) as server:
                return server.adopted, server.socket.fileno() != 3, listen_vars()

        assert in_child(run) == (False, True, [])

    @pytest.mark.parametrize("fd_name", ["web", None])
    def test_socket_not_listening_is_refused(self, fd_name: str | None) -> None:
        """An adopted stream socket that does not listen: an error naming it, and it is closed."""
        sock = _bound_only()

        def run() -> tuple[str, bool]:
            inherit([sock], ["web"])
            try:
                ForkingTCPServer(LOOPBACK, Echo, fd_name=fd_name)
            except ConfigError as exc:
                return str(exc), not _is_open(3)
            return "adopted", False

        message, closed = in_child(run)
        assert (
            message
            == "socket from systemd (fd 3, name 'web'): not listening (Accept=yes is not supported)"
        )
        assert closed, "the server closed the socket it refused"

    @pytest.mark.parametrize("fd_name", ["web", None])
    @pytest.mark.parametrize(
        "make",
        [
            lambda: made(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
            lambda: listening(socket.AF_INET6, ("::1", 0)),
        ],
        ids=["datagram", "other-family"],
    )
    def test_other_sockets_are_left_alone(
        self, make: Callable[[], socket.socket], fd_name: str | None
    ) -> None:
        """A datagram socket, or one of another family, is not adopted (even named), nor closed."""
        sock = make()

        def run() -> tuple[bool, bool]:
            inherit([sock], ["web"])
            with ForkingTCPServer(LOOPBACK, Echo, fd_name=fd_name) as server:
                return server.adopted, _is_open(3)

        assert in_child(run) == (False, True)

    @pytest.mark.parametrize("fd_name", ["dns", None])
    def test_stream_socket_beside_a_datagram_one(self, fd_name: str | None) -> None:
        """TCP and UDP on one port, one name (ListenDatagram= and ListenStream=): TCP is adopted."""
        tcp = listening()
        udp = made(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        udp.bind(tcp.getsockname())

        def run() -> tuple[Any, ...]:
            inherit([udp, tcp], ["dns", "dns"])
            with ForkingTCPServer(tcp.getsockname(), Echo, fd_name=fd_name) as server:
                return server.adopted, server.socket.fileno(), _is_open(3)

        assert in_child(run) == (True, 4, True)

    def test_name_of_the_family(self) -> None:
        """Two sockets of one name, IPv6 and IPv4: an IPv4 server takes the IPv4 one."""
        v6 = listening(socket.AF_INET6, ("::1", 0))
        v4 = listening()

        def run() -> tuple[Any, ...]:
            inherit([v6, v4], ["web", "web"])
            with ForkingTCPServer(LOOPBACK, Echo, fd_name="web") as server:
                return server.adopted, server.socket.fileno()

        assert in_child(run) == (True, 4)

    def test_name_given_takes_no_other(self) -> None:
        """A server asking for a name absent binds its own: the only socket passed is another's."""
        web = listening()

        def run() -> tuple[Any, ...]:
            inherit([web], ["web"])
            with (
                ForkingTCPServer(LOOPBACK, Echo, fd_name="admin") as admin,
                ForkingTCPServer(LOOPBACK, Echo, fd_name="web") as www,
            ):
                return admin.adopted, www.adopted, www.server_address

        assert in_child(run) == (False, True, web.getsockname())

    def test_only_one_untaken(self) -> None:
        """The fallback counts untaken sockets: once one of two is taken, the other is the one."""
        first, second = listening(), listening()

        def run() -> tuple[Any, ...]:
            inherit([first, second], ["a", "b"])
            with (
                ForkingTCPServer(LOOPBACK, Echo, fd_name="a") as named,
                ForkingTCPServer(LOOPBACK, Echo) as other,
            ):
                return named.socket.fileno(), other.adopted, other.socket.fileno()

        assert in_child(run) == (3, True, 4)

    def test_garbage_variables_are_an_error(self) -> None:
        """LISTEN_FDS that is not a count fails the server's construction with a one-line error."""

        def run() -> str:
            os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="many")
            try:
                ForkingTCPServer(LOOPBACK, Echo)
            except ConfigError as exc:
                return str(exc)
            return "bound"

        assert in_child(run) == "environment: LISTEN_FDS='many' is not a count"

    def test_adopted_socket_serves(self) -> None:
        """A server on an adopted socket serves connections made to that socket."""
        only = listening()

        def run() -> bytes:
            inherit([only])
            only.close()
            with ForkingTCPServer(LOOPBACK, Echo) as server, serving(server):
                return exchange(server.server_address)

        assert in_child(run) == b"ping\n"


class Records(ForkingMixIn):
    """Records each child's exit, and counts the calls of collect_children."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.exits: dict[int, int] = {}
        self.collections = 0
        super().__init__(*args, **kwargs)

    def child_exited(self, pid: int, status: int) -> None:
        self.exits[pid] = os.waitstatus_to_exitcode(status)

    def collect_children(self, *, blocking: bool = False) -> None:
        self.collections += 1
        super().collect_children(blocking=blocking)


class Recording(Records, ForkingTCPServer):
    """A ForkingTCPServer that records its children's exits."""


class Gate(socketserver.BaseRequestHandler):
    """Send b"in", then wait for the client to half-close."""

    def handle(self) -> None:
        self.request.sendall(b"in")
        while self.request.recv(1024):
            pass


def backlog(server: ForkingMixIn) -> int:
    """Return how many connections wait in the listener's accept queue (TCP_INFO's tcpi_unacked)."""
    info = server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int(struct.unpack_from("I", info, 24)[0])


class TestServing:
    def test_serve_forever_serves_and_reaps(self) -> None:
        """serve_forever() serves each connection in a child and reaps it while it serves."""
        with Recording(LOOPBACK, Echo) as server, serving(server):
            for _ in range(3):
                assert exchange(server.server_address) == b"ping\n"
            wait_until(lambda: len(server.exits) == 3, what="three children reaped")
            assert not server.active_children
            assert zombies() == []
        assert set(server.exits.values()) == {0}

    def test_handle_request_serves(self) -> None:
        """handle_request() serves one connection; server_close() waits for its child."""
        with Recording(LOOPBACK, Echo) as server:
            with socket.create_connection(address(server), timeout=10) as client:
                client.sendall(b"one\n")
                client.shutdown(socket.SHUT_WR)
                server.handle_request()
                assert recv_all(client) == b"one\n"
            (pid,) = server.active_children or set()
        assert server.exits == {pid: 0}
        assert not alive(pid), "reaped by server_close"

    @pytest.mark.parametrize("how", ["timeout", "non-blocking"])
    def test_handle_request_polls_once_at_timeout_zero(self, tmp_path: Path, how: str) -> None:
        """Timeout 0 (or a non-blocking listener) polls once: a waiting connection is served."""
        timeouts = []

        class Server(ForkingUnixStreamServer):
            def handle_timeout(self) -> None:
                timeouts.append(1)
                super().handle_timeout()

        path = str(tmp_path / "s")
        with Server(path, Echo) as server:
            if how == "timeout":
                server.timeout = 0
            else:
                server.socket.setblocking(False)
            with socket.socket(socket.AF_UNIX) as client:
                client.settimeout(10)
                client.connect(path)  # in the backlog when connect() returns
                client.sendall(b"now\n")
                client.shutdown(socket.SHUT_WR)
                server.handle_request()
                assert timeouts == []
                assert recv_all(client) == b"now\n"
            server.handle_request()  # nothing waits: times out at once
            assert timeouts == [1]

    def test_active_children_none_before_the_first(self) -> None:
        """active_children is None until a child is forked, as socketserver documents."""
        with ForkingTCPServer(LOOPBACK, Echo) as server:
            assert server.active_children is None
            server.collect_children()
            server.handle_timeout()

    def test_never_reaps_another_owners_child(self) -> None:
        """Reaping is by pid: a child the server did not fork stays for its owner to reap."""
        other = os.fork()
        if other == 0:  # pragma: no cover (the child)
            os._exit(7)
        with Recording(LOOPBACK, Echo) as server, serving(server):
            assert exchange(server.server_address) == b"ping\n"
            wait_until(lambda: server.exits, what="the server's child reaped")
            calls = server.collections
            wait_until(lambda: server.collections > calls + 2, what="more reaping")
        assert os.waitpid(other, 0) == (other, 7 << 8)

    @pytest.mark.parametrize("driver", ["serve_forever", "handle_request"])
    def test_at_max_children_the_backlog_waits(self, driver: str) -> None:
        """At max_children nothing is accepted (the backlog waits); serving resumes on an exit."""
        other = os.fork()  # not the server's: even at the cap it is left alone
        if other == 0:  # pragma: no cover (the child)
            os._exit(7)
        server = Recording(LOOPBACK, Gate)
        server.max_children = 1
        first = socket.create_connection(address(server), timeout=10)
        second = None
        if driver == "handle_request":
            server.handle_request()
            thread = threading.Thread(target=server.handle_request, daemon=True)
        else:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            assert first.recv(2) == b"in"
            second = socket.create_connection(address(server), timeout=10)
            wait_until(lambda: backlog(server) == 1, what="the second connection queued")
            calls = server.collections
            wait_until(lambda: server.collections > calls + 3, what="reaping at the cap")
            assert backlog(server) == 1, "not accepted at the cap"
            assert len(server.active_children or set()) == 1
            first.shutdown(socket.SHUT_WR)  # the first child ends: room for the second
            assert second.recv(2) == b"in"
            second.shutdown(socket.SHUT_WR)
            if driver == "handle_request":
                thread.join(10)
                assert not thread.is_alive()
        finally:  # shutdown(), not only close(): each child holds copies of the clients
            for client in (first, second):
                if client is not None:
                    with contextlib.suppress(OSError):
                        client.shutdown(socket.SHUT_RDWR)
                    client.close()
            if driver == "serve_forever":
                server.shutdown()
            thread.join(10)
            server.server_close()
        assert list(server.exits.values()) == [0, 0]
        assert os.waitpid(other, 0) == (other, 7 << 8)

    def test_shutdown_stops_serve_forever(self) -> None:
        """shutdown() from another thread ends serve_forever(), which may then run again."""
        with ForkingTCPServer(LOOPBACK, Echo) as server:
            for _ in range(2):
                thread = threading.Thread(target=server.serve_forever, args=(0.05,))
                thread.start()
                assert exchange(server.server_address) == b"ping\n"
                server.shutdown()
                thread.join(10)
                assert not thread.is_alive()

    def test_server_close_waits_for_children(self) -> None:
        """server_close() waits for every child with block_on_close (socketserver's default)."""
        server = Recording(LOOPBACK, Gate)
        client = socket.create_connection(address(server), timeout=10)
        server.handle_request()
        assert client.recv(2) == b"in"
        (pid,) = server.active_children or set()
        closing = threading.Thread(target=server.server_close)
        closing.start()
        closing.join(0.2)
        assert closing.is_alive(), "waiting: the child serves until the client half-closes"
        client.shutdown(socket.SHUT_WR)
        closing.join(10)
        client.close()
        assert server.exits == {pid: 0}
        assert not alive(pid)


class Failing(socketserver.BaseRequestHandler):
    """End the child as the client's first byte says."""

    def handle(self) -> None:
        hidden = "hunter2-in-a-local"  # never in the log
        action = self.request.recv(1)
        if action == b"E":
            raise ValueError("bad " + hidden[:6])
        if action == b"R":
            raise ConnectionResetError
        if action == b"P":
            raise BrokenPipeError
        if action == b"3":
            raise SystemExit(3)
        if action == b"0":
            raise SystemExit


class TestChild:
    def serve(self, action: bytes) -> tuple[Recording, int, str]:
        """Serve one connection whose handler does `action`; return the server, pid, client."""
        with Recording(LOOPBACK, Failing) as server:
            with socket.create_connection(address(server), timeout=10) as client:
                client.sendall(action)
                server.handle_request()
                client_text = "{}:{}".format(*client.getsockname())
                recv_all(client)
            (pid,) = server.active_children or set()
        return server, pid, client_text

    def test_handler_error_is_one_json_line(self, capfd: pytest.CaptureFixture[str]) -> None:
        """An exception in the handler: one JSON line on stderr, exit status 1."""
        server, pid, client = self.serve(b"E")
        assert server.exits == {pid: 1}
        lines = capfd.readouterr().err.splitlines()
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert record["event"] == "handler_error"
        assert record["level"] == "error"
        assert record["timestamp"].endswith("Z")
        assert (record["client"], record["pid"]) == (client, pid)
        exception = record["exception"]
        assert (exception["type"], exception["message"]) == ("ValueError", "bad hunter")
        assert exception["frames"][-1]["function"] == "handle"
        assert exception["frames"][-1]["file"] == __file__
        assert isinstance(exception["frames"][-1]["line"], int)
        assert "hunter2" not in lines[0]

    def test_handle_error_leaves_structlog_alone(self, capfd: pytest.CaptureFixture[str]) -> None:
        """The error line uses a logger of its own: structlog's configuration is unchanged."""
        structlog = pytest.importorskip("structlog")
        before = structlog.get_config()
        self.serve(b"E")
        assert len(capfd.readouterr().err.splitlines()) == 1
        assert structlog.get_config() == before

    @pytest.mark.parametrize(("action", "code"), [(b"R", PEER_GONE), (b"P", PEER_GONE)])
    def test_peer_gone_exits_141_quietly(
        self, action: bytes, code: int, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A peer reset or hang-up ends the child with 141, and no handler_error."""
        server, pid, _ = self.serve(action)
        assert server.exits == {pid: code}
        assert capfd.readouterr().err == ""

    @pytest.mark.parametrize(("action", "code"), [(b"3", 3), (b"0", 1)])
    def test_system_exit_gives_the_status(
        self, action: bytes, code: int, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """SystemExit's int code is the exit status (sys.exit(): 1), with no handler_error."""
        server, pid, _ = self.serve(action)
        assert server.exits == {pid: code}
        assert capfd.readouterr().err == ""

    @pytest.mark.parametrize("stderr", ["broken", "none"])
    def test_handle_error_never_raises(
        self, stderr: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """handle_error() with a broken stderr, or none, raises and writes nothing."""

        class Unforking(Recording):
            def fork_request(self, request: Any, client_address: Any) -> int:  # noqa: ARG002
                raise OSError(errno.EAGAIN, "no fork now")

        read_end, write_end = os.pipe()
        os.close(read_end)
        broken = open(write_end, "w")  # noqa: SIM115 (closed below, its error suppressed)
        monkeypatch.setattr(sys, "stderr", broken if stderr == "broken" else None)
        try:
            with Unforking(LOOPBACK, Failing) as server:
                for _ in range(2):
                    with socket.create_connection(address(server), timeout=10) as client:
                        server.handle_request()
                        assert recv_all(client) == b""
        finally:
            monkeypatch.undo()
            with contextlib.suppress(BrokenPipeError):  # what handle_error left in its buffer
                broken.close()
        assert capfd.readouterr() == ("", "")

    def test_serve_in_child_runs_first_in_the_child(self, tmp_path: Path) -> None:
        """serve_in_child runs in the child, before the handler: the hook a subclass prepares in."""
        marks = tmp_path / "marks"

        class Preparing(Recording):
            def serve_in_child(self, request: Any, client_address: Any) -> int:
                with marks.open("a") as out:
                    out.write(f"prepare {os.getpid()}\n")
                return super().serve_in_child(request, client_address)

        class Marking(Echo):
            def handle(self) -> None:
                with marks.open("a") as out:
                    out.write(f"handle {os.getpid()}\n")
                super().handle()

        with Preparing(LOOPBACK, Marking) as server, serving(server):
            assert exchange(server.server_address) == b"ping\n"
            wait_until(lambda: server.exits, what="the child reaped")
        (pid,) = server.exits
        assert marks.read_text() == f"prepare {pid}\nhandle {pid}\n"

    def test_serve_in_child_returning_nothing_exits_0(self) -> None:
        """An override of serve_in_child that returns None (no status) ends its child with 0."""

        class Silent(Recording):
            def serve_in_child(self, request: Any, client_address: Any) -> int:
                super().serve_in_child(request, client_address)
                return None  # type: ignore[return-value]  # what an older override returns

        with (  # the server's server_close() waits for the child
            Silent(LOOPBACK, Failing) as server,
            socket.create_connection(address(server), timeout=10) as client,
        ):
            client.sendall(b"E")
            server.handle_request()
            assert recv_all(client) == b""
        assert list(server.exits.values()) == [0]

    @pytest.mark.parametrize(
        ("action", "status"), [(b"-", 0), (b"E", 1), (b"R", PEER_GONE), (b"P", PEER_GONE)]
    )
    def test_serve_connection_in_process(
        self, action: bytes, status: int, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """serve_connection serves in the calling process: the status, the connection shut down."""
        with Recording(LOOPBACK, Failing) as server:
            with socket.create_connection(address(server), timeout=10) as client:
                request, client_address = server.get_request()
                client.sendall(action)
                assert server.serve_connection(request, client_address) == status
                assert request.fileno() == -1
                assert recv_all(client) == b""
            assert server.active_children is None, "nothing forked"
        errors = capfd.readouterr().err.splitlines()
        assert len(errors) == (action == b"E")

    def test_serve_connection_leaves_system_exit_to_its_caller(self) -> None:
        """A handler's SystemExit leaves serve_connection after the connection is shut down."""
        with (
            Recording(LOOPBACK, Failing) as server,
            socket.create_connection(address(server), timeout=10) as client,
        ):
            request, client_address = server.get_request()
            client.sendall(b"3")
            with pytest.raises(SystemExit):
                server.serve_connection(request, client_address)
            assert request.fileno() == -1


class TestNotify:
    def test_ready_and_status(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """notify_ready() sends READY=1, notify_status() one STATUS= line, on NOTIFY_SOCKET."""
        path = tmp_path / "notify"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
            systemd.bind(str(path))
            systemd.settimeout(10)
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
            with ForkingTCPServer(LOOPBACK, Echo) as server:
                server.notify_ready()
                server.notify_status("serving\nwell")
            assert systemd.recv(100) == b"READY=1"
            assert systemd.recv(100) == b"STATUS=serving well"

    def test_abstract_socket_and_utf8(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A NOTIFY_SOCKET starting with @ is in the abstract namespace; text is sent as UTF-8."""
        name = f"sockd-test-notify-{os.getpid()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
            systemd.bind("\0" + name)
            systemd.settimeout(10)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
            with ForkingTCPServer(LOOPBACK, Echo) as server:
                server.notify_status("prêt ✓")
            assert systemd.recv(100) == "STATUS=prêt ✓".encode()

    def test_nothing_without_systemd(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without NOTIFY_SOCKET, or with no one listening there, notify_ready() does nothing."""
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        with ForkingTCPServer(LOOPBACK, Echo) as server:
            with monkeypatch.context() as blocked:
                blocked.setitem(sys.modules, "sdnotify", None)  # importing it would raise
                server.notify_ready()
                server.notify_status("idle")
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
            server.notify_ready()  # the socket made is closed: no ResourceWarning


def test_importing_the_servers_is_light() -> None:
    """Importing the servers loads nothing heavy: structlog and sdnotify wait until needed."""
    code = (
        "import sys\nfrom sockd import ForkingTCPServer, ForkingUDPServer\n"
        "print(sorted(m for m in ('structlog', 'sdnotify', 'typing', 'json') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(sockd.__file__).parent.parent))
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "[]"


class DatagramEcho(socketserver.DatagramRequestHandler):
    """Answer a datagram with the child's pid and the datagram; fail on b"E", exit on b"3"."""

    def handle(self) -> None:
        data = self.rfile.read()
        if data == b"E":
            raise ValueError("bad datagram")
        if data == b"3":
            raise SystemExit(3)
        self.wfile.write(b"%d %s" % (os.getpid(), data))


class RecordingUDP(Records, ForkingUDPServer):
    """A ForkingUDPServer that records its children's exits."""


class RecordingUnixDatagram(Records, ForkingUnixDatagramServer):
    """A ForkingUnixDatagramServer that records its children's exits."""


def udp_client(source: str = "127.0.0.1") -> socket.socket:
    client = made(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.bind((source, 0))
    client.settimeout(10)
    return client


def ask(client: socket.socket, to: Any, data: bytes) -> tuple[int, bytes]:
    """Send `data` to `to`; return the answer's pid and data (each from the server's child)."""
    client.sendto(data, to)
    pid, _, echoed = client.recv(1024).partition(b" ")
    return int(pid), echoed


class TestDatagram:
    def test_udp_a_child_per_datagram(self) -> None:
        """A ForkingUDPServer answers each datagram from a child of its own, reaped, exit 0."""
        client = udp_client()
        with RecordingUDP(LOOPBACK, DatagramEcho) as server, serving(server):
            pids = [ask(client, server.server_address, b"ping %d" % n) for n in range(3)]
            assert [data for _, data in pids] == [b"ping 0", b"ping 1", b"ping 2"]
            wait_until(lambda: len(server.exits) == 3, what="three children reaped")
            assert server.socket.fileno() != -1, "the children left the server's socket open"
            assert zombies() == []
        assert server.exits == {pid: 0 for pid, _ in pids}
        assert os.getpid() not in server.exits

    def test_unix_datagram_a_child_per_datagram(self, tmp_path: Path) -> None:
        """A ForkingUnixDatagramServer answers each datagram from a child, at the sender's path."""
        client = made(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        client.bind(str(tmp_path / "client"))
        client.settimeout(10)
        with RecordingUnixDatagram(str(tmp_path / "s"), DatagramEcho) as server, serving(server):
            first = ask(client, server.server_address, b"one")
            second = ask(client, server.server_address, b"two")
            wait_until(lambda: len(server.exits) == 2, what="two children reaped")
        assert (first[1], second[1]) == (b"one", b"two")
        assert server.exits == {first[0]: 0, second[0]: 0}

    def test_at_max_children_datagrams_wait(self, tmp_path: Path) -> None:
        """At max_children no datagram is read (they wait in the buffer); one exit makes room."""
        gate = tmp_path / "open"

        class Held(DatagramEcho):
            def handle(self) -> None:
                self.socket.sendto(b"%d in" % os.getpid(), self.client_address)
                wait_until(gate.exists, what="the gate")
                super().handle()

        client = udp_client()
        with RecordingUDP(LOOPBACK, Held) as server, serving(server):
            server.max_children = 1
            held, _ = ask(client, server.server_address, b"first")
            client.sendto(b"second", server.server_address)
            calls = server.collections
            wait_until(lambda: server.collections > calls + 3, what="reaping at the cap")
            assert server.active_children == {held}, "the second datagram is not read at the cap"
            gate.touch()  # the first child answers and ends; the second datagram is read
            answers = [client.recv(1024).split(b" ") for _ in range(3)]
            second = int(answers[1][0])
            assert answers == [
                [b"%d" % held, b"first"],
                [b"%d" % second, b"in"],
                [b"%d" % second, b"second"],
            ]
            assert second != held
            wait_until(lambda: len(server.exits) == 2, what="both children reaped")
        assert set(server.exits.values()) == {0}

    def test_handler_error_is_one_json_line(self, capfd: pytest.CaptureFixture[str]) -> None:
        """An exception handling a datagram: one JSON line naming the sender, exit status 1."""
        client = udp_client()
        with RecordingUDP(LOOPBACK, DatagramEcho) as server:
            client.sendto(b"E", server.server_address)
            server.handle_request()
            (pid,) = server.active_children or set()
        assert server.exits == {pid: 1}
        (line,) = capfd.readouterr().err.splitlines()
        record = json.loads(line)
        assert (record["event"], record["pid"]) == ("handler_error", pid)
        assert record["client"] == f"127.0.0.1:{client.getsockname()[1]}"
        assert record["exception"]["type"] == "ValueError"

    def test_unix_sender_in_the_error_line(
        self, tmp_path: Path, capfd: pytest.CaptureFixture[str]
    ) -> None:
        """A UNIX datagram's sender is named by the path it bound (`unix` if it bound none)."""
        bound = made(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        bound.bind(str(tmp_path / "client"))
        unbound = made(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        with RecordingUnixDatagram(str(tmp_path / "s"), DatagramEcho) as server:
            for client in (bound, unbound):
                client.sendto(b"E", server.server_address)
                server.handle_request()
        clients = [json.loads(line)["client"] for line in capfd.readouterr().err.splitlines()]
        assert sorted(clients) == sorted([f"unix:{tmp_path / 'client'}", "unix"])
        assert set(server.exits.values()) == {1}

    def test_system_exit_gives_the_status(self) -> None:
        """SystemExit in a datagram's handler: its code is the child's exit status."""
        client = udp_client()
        with RecordingUDP(LOOPBACK, DatagramEcho) as server:
            client.sendto(b"3", server.server_address)
            server.handle_request()
        assert list(server.exits.values()) == [3]


def bound_datagram(family: int = socket.AF_INET, where: Any = LOOPBACK) -> socket.socket:
    sock = made(socket.socket(family, socket.SOCK_DGRAM))
    sock.bind(where)
    return sock


class TestDatagramAdoption:
    @pytest.mark.parametrize("fd_name", ["echo", None])
    def test_udp_socket_adopted_and_served(self, fd_name: str | None) -> None:
        """A datagram socket systemd passed (ListenDatagram=) is adopted, by name or alone."""
        udp = bound_datagram()

        def run() -> tuple[Any, ...]:
            inherit([udp], ["echo"])
            client = udp_client()
            with ForkingUDPServer(LOOPBACK, DatagramEcho, fd_name=fd_name) as server:
                server.timeout = 10
                client.sendto(b"hello", udp.getsockname())
                server.handle_request()
                answer = client.recv(1024).partition(b" ")[2]
                return server.adopted, server.socket.fileno(), server.server_address, answer

        assert in_child(run) == (True, 3, udp.getsockname(), b"hello")

    def test_unix_datagram_socket_adopted(self, tmp_path: Path) -> None:
        """A ForkingUnixDatagramServer adopts a UNIX datagram socket passed; it binds none."""
        unix = bound_datagram(socket.AF_UNIX, str(tmp_path / "s"))

        def run() -> tuple[Any, ...]:
            inherit([unix])
            with ForkingUnixDatagramServer(str(tmp_path / "own"), DatagramEcho) as server:
                return server.adopted, server.socket.fileno(), server.server_address

        assert in_child(run) == (True, 3, str(tmp_path / "s"))
        assert not (tmp_path / "own").exists()

    @pytest.mark.parametrize("fd_name", ["web", None])
    def test_stream_sockets_are_left_alone(self, fd_name: str | None) -> None:
        """A datagram server adopts no stream socket (even named), nor closes it: it binds."""
        tcp = listening()

        def run() -> tuple[bool, bool, str]:
            inherit([tcp], ["web"])
            with ForkingUDPServer(LOOPBACK, DatagramEcho, fd_name=fd_name) as server:
                return server.adopted, _is_open(3), server.socket.type.name

        assert in_child(run) == (False, True, "SOCK_DGRAM")

    @pytest.mark.parametrize("fd_name", ["dns", None])
    def test_stream_and_datagram_on_one_port(self, fd_name: str | None) -> None:
        """TCP and UDP on one port, one name: the TCP server takes the stream, UDP the datagram."""
        tcp = listening()
        udp = bound_datagram(where=tcp.getsockname())

        def run() -> tuple[Any, ...]:
            inherit([udp, tcp], ["dns", "dns"])
            with (
                ForkingTCPServer(tcp.getsockname(), Echo, fd_name=fd_name) as stream,
                ForkingUDPServer(tcp.getsockname(), DatagramEcho, fd_name=fd_name) as datagram,
            ):
                return stream.socket.fileno(), datagram.socket.fileno(), datagram.adopted

        assert in_child(run) == (4, 3, True)
