"""The private CPython names the forker relies on exist, and still do what it uses them for.

Each is a shortcut past a public layer, taken for speed per connection (see
the module that takes it); a CPython release that drops or changes one would
break the forker where nothing else says why. Here they are in one place,
run under every interpreter the suite runs on (3.11, and Debian 13's 3.13),
by the module that uses them:

- sockd.forker.service: `socket.socket._accept` and `_socket.socket.close`;
- sockd.forker.access: `_socket`'s AF_INET, AF_INET6, inet_pton and inet_ntop;
- sockd.forker.pool: `_signal`'s signal, pthread_sigmask and set_wakeup_fd;
- sockd.forker.forkhooks: threading registers its after-fork hook at import
  only where `os.register_at_fork` exists, and `threading._after_fork` is that hook;
- sockd.forker.typecache: what a function looks up is in its code's
  `co_names`, nested functions in `co_consts` (whether filling the type cache
  saves copies is tests/unit/forker/test_typecache.py's);
- sockd.server (the ForkingMixIn of the forker's servers):
  `socketserver.BaseServer._handle_request_noblock`.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # the C module behind signal
import _socket
import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
from typing import TYPE_CHECKING

from sockd.forker import service

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextlib.contextmanager
def connected() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Yield a listening TCP socket on loopback and a client connected to it."""
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname(), timeout=10) as client,
    ):
        yield listener, client


class TestService:
    def test_accept_gives_the_descriptor_and_the_address(self) -> None:
        """socket.socket._accept() returns the connection's descriptor and the peer's address."""
        with connected() as (listener, client):
            fd, address = listener._accept()  # type: ignore[attr-defined]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fileno=fd) as request:
                assert address == client.getsockname()
                request.sendall(b"x")
                assert client.recv(1) == b"x"

    def test_the_c_close_closes_a_python_socket(self) -> None:
        """_socket.socket.close, a base method of socket.socket, closes one (EOF at the peer)."""
        assert service._close_socket is _socket.socket.close
        assert issubclass(socket.socket, _socket.socket)
        with connected() as (listener, client):
            request, _ = listener.accept()
            service._close_socket(request)
            assert request.fileno() == -1
            assert client.recv(1) == b""


class TestAccess:
    def test_address_family_constants_and_conversions(self) -> None:
        """_socket's AF_INET, AF_INET6, inet_pton and inet_ntop are socket's."""
        assert (_socket.AF_INET, _socket.AF_INET6) == (socket.AF_INET, socket.AF_INET6)
        packed = _socket.inet_pton(_socket.AF_INET6, "2001:db8::1")
        assert len(packed) == 16
        assert _socket.inet_ntop(_socket.AF_INET6, packed) == "2001:db8::1"
        assert _socket.inet_ntop(_socket.AF_INET, _socket.inet_pton(_socket.AF_INET, "10.0.0.1"))


class TestPool:
    def test_signal_mask_handler_and_wakeup_descriptor(self) -> None:
        """_signal's pthread_sigmask, signal (an int handler) and set_wakeup_fd act as signal's."""
        before = _signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        try:
            assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        finally:
            _signal.pthread_sigmask(signal.SIG_SETMASK, before)
        assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        handler = _signal.signal(signal.SIGUSR1, int(signal.SIG_IGN))
        try:
            assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        finally:
            signal.signal(signal.SIGUSR1, handler)
        read_end, write_end = os.pipe2(os.O_NONBLOCK)
        try:
            wakeup = _signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            try:
                assert signal.set_wakeup_fd(write_end) == write_end
            finally:
                signal.set_wakeup_fd(wakeup)
        finally:
            os.close(read_end)
            os.close(write_end)


# Hides os.register_at_fork while threading is imported (as forkhooks does),
# then forks with a second thread running: the child counts that thread until
# threading._after_fork() forgets it.
THREADING_HOOK = """
import os
register = os.register_at_fork
del os.register_at_fork
import threading
os.register_at_fork = register
stop = threading.Event()
thread = threading.Thread(target=stop.wait)
thread.start()
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    before = threading.active_count()
    threading._after_fork()
    os.write(write_end, f"{before} {threading.active_count()}".encode())
    os._exit(0)
os.close(write_end)
print(os.read(read_end, 100).decode())
os.waitpid(pid, 0)
stop.set()
thread.join()
"""


class TestForkhooks:
    def test_threading_registers_its_hook_only_if_it_can_and_it_is_after_fork(self) -> None:
        """Imported without os.register_at_fork, threading runs no hook; _after_fork is the hook."""
        result = subprocess.run(
            # The warning about forking with threads (3.12+) is beside the point here.
            [sys.executable, "-S", "-W", "ignore::DeprecationWarning", "-c", THREADING_HOOK],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert result.stdout.split() == ["2", "1"], result.stderr


class TestTypecache:
    def test_attribute_names_are_in_the_code_and_nested_code_in_its_constants(self) -> None:
        """A method's attribute names are in co_names; a nested function's code is a constant."""

        class Handler:
            def handle(self) -> object:
                return [item.inner_name for item in self.outer_name]  # type: ignore[attr-defined]

        code = Handler.handle.__code__
        nested = [constant for constant in code.co_consts if isinstance(constant, type(code))]
        names = set(code.co_names).union(*(inner.co_names for inner in nested))
        assert {"outer_name", "inner_name"} <= names


class TestServer:
    def test_handle_request_noblock_serves_one_pending_connection(self) -> None:
        """BaseServer._handle_request_noblock accepts and serves the connection that waits."""

        class Hello(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(b"hello")

        with (
            socketserver.TCPServer(("127.0.0.1", 0), Hello) as server,
            socket.create_connection(server.socket.getsockname(), timeout=10) as client,
        ):
            server._handle_request_noblock()  # type: ignore[attr-defined]
            assert client.recv(5) == b"hello"
