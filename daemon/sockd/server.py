"""Drop-in forking servers: socketserver's, with systemd's sockets, safe reaping, JSON errors.

A leaf: it runs in any program that imports it, and in sockd's forker, whose
`ServiceServer` subclasses `ForkingMixIn`. So it imports nothing heavy:
structlog is imported by `handle_error`, when it is called.

Hooks are documented as socketserver documents its own: "May be overridden"
(replace it freely), or "May be extended, do not override" (call super()).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import socketserver
import sys
import threading
import time
import warnings

from sockd import listeners
from sockd.errors import exception_fields
from sockd.exits import PEER_GONE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Any

    # What the mix-in's methods may use: a stream server's (mypy sees this base;
    # at run time the mix-in's only base is socketserver.ForkingMixIn).
    class _Base(socketserver.ForkingMixIn, socketserver.TCPServer):
        def _handle_request_noblock(self) -> None: ...  # BaseServer's, not in typeshed

    _Server = socketserver.BaseServer
else:
    _Base = socketserver.ForkingMixIn
    _Server = object

# A peer that resets or hangs up ends its connection normally: no handler
# error, exit status PEER_GONE (141, as a shell's writer killed by SIGPIPE).
PEER_GONE_ERRORS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class ForkingMixIn(_Base):
    """socketserver.ForkingMixIn, systemd-native: a child per connection, and no zombie.

    A child per request: a connection for a stream server, a datagram for a
    datagram server (whose request is socketserver's `(data, socket)`).

    - `server_bind()` adopts a socket of the server's family and type that
      systemd passed (sd_listen_fds(3)), if one matches the server (the one
      named `fd_name` if given; else its address, else the only one), and
      binds as socketserver does otherwise.
    - Children are reaped, each by its pid and never blocking, in
      `handle_timeout()` and `service_actions()`. At `max_children`, the
      server stops accepting (connections wait in the backlog, datagrams in
      the socket's receive buffer) and reaps every `cap_poll_interval` seconds
      until a child has exited. `server_close()` waits for them when
      `block_on_close`, as socketserver's does.
    - `notify_ready()` tells systemd the server is ready (READY=1).
    """

    # How often children are reaped while `max_children` are alive (the
    # listener is not polled then, so no exit wakes the server up).
    cap_poll_interval = 0.05

    fd_name: str | None = None  # picks an inherited socket by its name (see server_bind)
    adopted = False  # the socket was passed by systemd, not bound here
    _inherited_as = ""  # the adopted socket, as error messages name it

    def __init__(self, *args: Any, fd_name: str | None = None, **kwargs: Any) -> None:
        """Construct as socketserver does; the keyword `fd_name` picks an inherited socket.

        socketserver's arguments, `(server_address, RequestHandlerClass,
        bind_and_activate=True)`, go on unchanged to the next class, as a
        subclass of the mix-in may take others.

        May be extended, do not override.
        """
        self.fd_name = fd_name
        # serve_forever()'s state: socketserver's own is private to BaseServer.
        self._shutdown_requested = threading.Event()
        self._is_shut_down = threading.Event()
        super().__init__(*args, **kwargs)

    # Listening ----------------------------------------------------------------

    def server_bind(self) -> None:
        """Adopt the inherited socket meant for this server, or bind one.

        Stream and datagram servers adopt, each only sockets of its family and
        type (`ListenStream=`, `ListenDatagram=`): others are left to the
        program's other servers. The inherited socket is the one named
        `fd_name` (LISTEN_FDNAMES), and no other if it is given; else the one
        bound to `server_address` (a numeric address or a path; port 0 matches
        none), else the only one untaken: each is taken once per process.

        May be overridden: an override that does not call super() adopts
        nothing (sockd's forker takes the sockets its daemon passes).

        Raises:
            SockdError: the LISTEN_* variables are garbage.
        """
        inherited = None
        if self.socket_type in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            inherited = listeners.claim(
                self.address_family, self.server_address, self.fd_name, self.socket_type
            )
        if inherited is None:
            super().server_bind()
            return
        self.socket.close()
        self.socket = socket.socket(fileno=inherited.fd)
        self.adopted = True
        self._inherited_as = f"socket from systemd (fd {inherited.fd}, name {inherited.name!r})"
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listen on a socket bound here; check that an adopted stream socket listens already.

        A datagram server does not listen (socketserver's `UDPServer`): an
        adopted datagram socket is taken as it is.

        May be overridden: an override checks an adopted socket itself
        (`listeners.check_listening`).

        Raises:
            SockdError: the adopted stream socket is not listening.
        """
        if not self.adopted:
            super().server_activate()
        elif self.socket_type == socket.SOCK_STREAM:
            listeners.check_listening(self.socket, self._inherited_as)

    # Serving ------------------------------------------------------------------

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Handle connections until `shutdown()`, as socketserver does, and reap children.

        At `max_children` the listener is not polled: connections wait in
        the backlog while children are reaped every `cap_poll_interval`.
        """
        pause = self.cap_poll_interval
        if poll_interval is not None:
            pause = min(pause, poll_interval)
        self._is_shut_down.clear()
        try:
            with selectors.PollSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                while not self._shutdown_requested.is_set():
                    if self._full():
                        self._shutdown_requested.wait(pause)
                    else:
                        ready = selector.select(poll_interval)
                        if self._shutdown_requested.is_set():
                            break  # bpo-35017: shutdown() called during select()
                        if ready:
                            self._handle_request_noblock()
                    self.service_actions()
        finally:
            self._shutdown_requested.clear()
            self._is_shut_down.set()

    def shutdown(self) -> None:
        """Stop the serve_forever() loop, and wait until it has stopped.

        Call it from another thread: from the serving one, it waits forever.
        """
        self._shutdown_requested.set()
        self._is_shut_down.wait()

    def handle_request(self) -> None:
        """Handle one connection, waiting at most `timeout` (socketserver's rules).

        At `max_children` it waits for a child to exit first (reaping every
        `cap_poll_interval`), within the same timeout.
        """
        timeout = self.socket.gettimeout()
        if timeout is None:
            timeout = self.timeout
        elif self.timeout is not None:
            timeout = min(timeout, self.timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with selectors.PollSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            while True:  # polls at least once, as socketserver does (a timeout of 0 polls)
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._full():
                    self.collect_children()
                if self._full():
                    pause = self.cap_poll_interval
                    time.sleep(pause if left is None else min(pause, left))
                elif selector.select(left):
                    self._handle_request_noblock()
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    self.handle_timeout()
                    return

    def _full(self) -> bool:
        children = self.active_children
        return children is not None and len(children) >= self.max_children

    # Children -----------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a forked child (`fork_request`); count it in `active_children`.

        May be overridden: an override that forks through `fork_request`
        records the child where `collect_children` reaps it.
        """
        pid = self.fork_request(request, client_address)
        if self.active_children is None:
            self.active_children = set()
        self.active_children.add(pid)
        self.close_request(request)

    def fork_request(self, request: Any, client_address: Any) -> int:
        """Fork; return the child's pid. The child serves the connection and ends in `os._exit`.

        The child runs `serve_in_child` and exits with the status it returns
        (see `serve_connection`; 0 if it returns None); or SystemExit's code if
        an int, else 1; or 1 after `handle_error` if `serve_in_child` raised
        before serving. Nothing escapes it. The child calls nothing else here:
        every function a child calls for the first time writes to a page it
        shares with its parent, which is copied.

        May be extended, do not override: what follows super() runs in the
        parent; what the child does goes in `serve_in_child`.
        """
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            status = self.serve_in_child(request, client_address)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1  # sys.exit(): 1, as socketserver
        except Exception:  # noqa: BLE001 (an override's preparation failed: reported, status 1)
            self.handle_error(request, client_address)
        finally:
            os._exit(status if isinstance(status, int) else 0)  # an override returned nothing

    def serve_in_child(self, request: Any, client_address: Any) -> int:
        """Serve the connection in the forked child (`serve_connection`); return the exit status.

        May be overridden: an override typically prepares the child (drops
        privileges, closes descriptors, sets a timeout on `request`), then
        returns super()'s status.
        """
        return self.serve_connection(request, client_address)

    def serve_connection(self, request: Any, client_address: Any) -> int:
        """Serve a connection in this process: `finish_request`, then `shutdown_request`.

        Return the status of its end: 0 when the handler returned; 141
        (PEER_GONE) when the peer reset or hung up; 1 after `handle_error` for
        any other exception. SystemExit is left to the caller (the connection
        shut down first): a forked child exits with its code.

        May be extended, do not override: a forked child (`serve_in_child`)
        and a process that serves connections one after another both call it.
        """
        status = 1
        try:
            self.finish_request(request, client_address)
            status = 0
        except PEER_GONE_ERRORS:
            status = PEER_GONE
        except Exception:  # noqa: BLE001 (reported by handle_error, then status 1)
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
        return status

    def collect_children(self, *, blocking: bool = False) -> None:
        """Reap the children in `active_children` that exited (with `blocking`: wait for all).

        Each is waited for by its pid: children the server did not fork are
        left to their owner, even at `max_children`. Each exit is passed to
        `child_exited`.

        May be overridden (a server that records its children elsewhere), as
        long as it does not block unless `blocking`.
        """
        children = self.active_children
        if not children:
            return
        flags = 0 if blocking else os.WNOHANG
        for pid in list(children):
            try:
                found, status = os.waitpid(pid, flags)
            except ChildProcessError:  # reaped by someone else: its status is lost
                children.discard(pid)
                continue
            if found:
                children.discard(pid)
                self.child_exited(pid, status)

    def child_exited(self, pid: int, status: int) -> None:
        """Take note of a child reaped, and of its wait status (see `os.waitstatus_to_exitcode`).

        May be overridden; the default does nothing.
        """

    def handle_timeout(self) -> None:
        """Reap exited children (called when `handle_request()` times out).

        May be extended, do not override.
        """
        self.collect_children()

    def service_actions(self) -> None:
        """Reap exited children (called at each turn of `serve_forever()`).

        May be extended, do not override.
        """
        self.collect_children()

    # Telling systemd -----------------------------------------------------------

    def notify_ready(self) -> None:
        """Tell systemd the server is ready (READY=1): call it before serving.

        Does nothing outside systemd (no NOTIFY_SOCKET in the environment).
        """
        self._notify("READY=1")

    def notify_status(self, text: str) -> None:
        """Tell systemd a status line to show (STATUS=), where NOTIFY_SOCKET is set."""
        self._notify("STATUS=" + " ".join(text.splitlines()))

    def _notify(self, state: str) -> None:
        """Send `state` to NOTIFY_SOCKET through sdnotify (sd_notify(3)); errors are ignored."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return
        import sdnotify  # noqa: PLC0415 (under systemd only: the forker never imports it)

        with warnings.catch_warnings():
            # Nobody listening: sdnotify drops its socket unclosed (and keeps None).
            warnings.simplefilter("ignore", ResourceWarning)
            notifier = sdnotify.SystemdNotifier()
        if notifier.socket is None:
            return
        with notifier.socket:
            # sdnotify encodes text as latin-1: hand it the UTF-8 bytes as latin-1 text.
            notifier.notify(state.encode().decode("latin-1"))


class JSONErrorMixIn(_Server):
    """Mix-in whose `handle_error()` writes one JSON line to stderr (structlog).

    Apart from ForkingMixIn: a mix-in comes first in a class's bases, and its
    `handle_error()` would take the place of the one a base class defines
    (CPython's tests of socketserver do just that).
    """

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Write the exception being handled to stderr as one JSON line.

        The line has `event` "handler_error", `level` "error", a `timestamp`,
        the `client`, the `pid`, and the `exception`: its type, message and
        frames (file, line, function: never local variables). Written by a
        structlog logger of its own: the program's structlog configuration is
        neither used nor changed.

        Never raises: the server that calls it goes on serving (nothing is
        written where stderr is None or broken).

        May be overridden.
        """
        exc = sys.exc_info()[1]
        if exc is None or sys.stderr is None:
            return
        with contextlib.suppress(Exception):
            _error_log().error(
                "handler_error",
                client=listeners.client_text(request, client_address),
                pid=os.getpid(),
                exception=exception_fields(exc),
            )


class ForkingTCPServer(ForkingMixIn, JSONErrorMixIn, socketserver.TCPServer):
    """socketserver.ForkingTCPServer, with sockd's ForkingMixIn and JSONErrorMixIn."""


class ForkingUnixStreamServer(ForkingMixIn, JSONErrorMixIn, socketserver.UnixStreamServer):
    """socketserver.ForkingUnixStreamServer, with sockd's ForkingMixIn and JSONErrorMixIn."""


class ForkingUDPServer(ForkingMixIn, JSONErrorMixIn, socketserver.UDPServer):
    """socketserver.ForkingUDPServer, with sockd's ForkingMixIn and JSONErrorMixIn."""


class ForkingUnixDatagramServer(ForkingMixIn, JSONErrorMixIn, socketserver.UnixDatagramServer):
    """socketserver.ForkingUnixDatagramServer, with sockd's ForkingMixIn and JSONErrorMixIn."""


def _error_log() -> Any:
    """Return a structlog logger of our own, writing JSON lines to stderr."""
    import structlog  # noqa: PLC0415 (the error path only: the forker stays small)

    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[
            _add_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=False,
    )


def _add_level(
    _logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Name the level after the method called (as structlog's add_log_level, in every version)."""
    event["level"] = method
    return event
