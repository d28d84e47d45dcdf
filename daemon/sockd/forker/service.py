"""The forker's server: the library's ForkingMixIn, its hooks overridden, one per listening socket.

It runs in the forker (see `sockd.forker`), and from `fork_request` on in each
connection's child. The forker's size is the cost of every fork: it imports
nothing heavy, and reports what it logs as records that the daemon renders
with structlog.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import math
import os
import signal
import socket
import socketserver
import sys
import time

from sockd import listeners
from sockd.errors import OSFailure, exception_fields
from sockd.exits import client_fields
from sockd.forker.access import source_text
from sockd.forker.children import peak_rss_kib
from sockd.forker.proxied import ProxiedMixIn
from sockd.forker.shared import Service, Shared, unix_client
from sockd.privileges import become_ids
from sockd.server import ForkingMixIn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sockd.listeners import Endpoint

# Signals the forker handles (in a child, its handlers take their default actions).
HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGCHLD,
)
_close_socket: Callable[[socket.socket], None] = _socket.socket.close
_SHUT_WR = socket.SHUT_WR
_SOL_SOCKET, _SO_ERROR = socket.SOL_SOCKET, socket.SO_ERROR
# A connection whose peer reset it while it waited in the backlog is dropped
# before anything is forked for it: one getsockopt(SO_ERROR) per connection
# (an int, no exception, under a microsecond), which a flood of resets repays
# many times over (a fork each). A peer that only half-closed (sent, then
# SHUT_WR) has no error pending, and is served. Drops are counted, not logged
# one by one: a `connections_denied` summary with reason "peer_reset".
PEER_RESET = "peer_reset"
# accept(2) errors that concern one connection only, not the listener.
TRANSIENT_ACCEPT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
# fork(2) or spawn errors that mean "not now" (process, memory or descriptor
# limits): forking pauses, with back-off (see sockd.forker.shared.ForkBackoff).
FORK_RESOURCE_ERRORS = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
# Connections `rehearse` serves: more than CPython 3.11 to 3.13 take to warm up
# a function and specialize its instructions.
REHEARSALS = 32


class ForkPaused(Exception):
    """Forking failed for lack of resources: accept nothing for `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


class ServiceServer(ProxiedMixIn, ForkingMixIn, socketserver.TCPServer):
    """One listening socket (TCP or UNIX, bound or passed by the daemon) of one service.

    sockd's ForkingMixIn, with the forker's hooks: admission in
    `verify_request`, the spawn of programs in `process_request`, children of
    every service reaped through `Shared.reap` (not `active_children`),
    events sent to the daemon instead of structlog. Each accepted connection
    is served by `RequestHandlerClass` in a forked child (`fork_request`). The
    forker's loop drives it with `accept_ready()`; `serve_forever()` is not
    used, so one epoll serves every listener. A pooled worker drives its own
    copy the same way, serving in process (`sockd.forker.pool._PooledServer`).
    """

    request_queue_size = socket.SOMAXCONN
    # A server that answers in the forker, forking nothing (a built-in over UDP,
    # see sockd.forker.datagrams): no cap applies to it.
    inline = False
    block_on_close = False  # the forker waits for children, with a deadline
    # Never reached: the forker enforces the configured caps by not polling a
    # capped listener.
    max_children = sys.maxsize
    timeout = None

    def __init__(self, endpoint: Endpoint, service: Service, shared: Shared) -> None:
        """Serve the listening socket the daemon passed (`endpoint.adopted`).

        Raises:
            SockdError: the passed socket is unusable.
        """
        self.endpoint = endpoint
        self.service = service
        self.shared = shared
        self.admission = shared.admission(service)
        self._source: Any = None  # the source group of the connection being admitted
        self._local_address: Any = None  # every connection's local address, if one
        self._started: list[tuple[int, Any, bool]] = []  # pid, client, group: not yet recorded
        self.address_family = endpoint.family
        self._family = int(endpoint.family)
        self._unix = self._family == socket.AF_UNIX
        try:
            super().__init__(endpoint.sockaddr, service.handler, fd_name=endpoint.fd_name)
        except OSError as exc:  # TCPServer's socket(2), closed at once: bind raises SockdErrors
            raise self._failure("cannot create a socket", exc) from None

    def server_bind(self) -> None:
        """Take the socket the daemon passed: the forker never binds one.

        Overrides ForkingMixIn's, without calling it: the forker's sockets
        come from the daemon (which bound them, or adopted them from systemd),
        never from LISTEN_FDS.

        May be extended, do not override.

        Raises:
            SockdError: no socket was passed, or it has no address.
        """
        passed = self.endpoint.adopted
        if passed is None:
            msg = f"service {self.service.name!r}: no socket passed by the daemon"
            raise OSFailure(msg)
        self.socket.close()  # the one TCPServer made
        self.socket = passed
        self.adopted = True
        try:
            self.server_address = self.socket.getsockname()
        except OSError as exc:
            raise self._failure("cannot read its address", exc) from None
        if isinstance(self.server_address, tuple) and self.server_address[0] not in (
            "0.0.0.0",
            "::",
        ):
            self._local_address = self.server_address

    def server_activate(self) -> None:
        """Check that the passed socket listens; leave it non-blocking (accepted until EAGAIN).

        A wait service's socket is left blocking: its program takes it as
        stdin and stdout (the flag is the socket's, not the descriptor's), and
        a program that accepts or receives expects to wait there.

        Overrides ForkingMixIn's, without calling it (its errors name systemd).

        May be extended, do not override.

        Raises:
            SockdError: the passed socket is unusable.
        """
        try:
            where = f"socket of service {self.service.name!r}"
            listeners.check_listening(self.socket, where, self.endpoint.type)
            self.socket.setblocking(self.service.wait)
            self.defer_accept()
        except OSError as exc:
            raise self._failure("cannot check the passed socket", exc) from None

    def defer_accept(self) -> None:
        """Have the kernel accept a TCP connection only once its first bytes came.

        On a TCP listener of a service that takes PROXY headers (which a
        proxy sends first, at once), TCP_DEFER_ACCEPT for `proxy_timeout`
        (rounded up to whole seconds); on any other, none. Accepted, the
        header is there already: read at once, the quick way, where one that
        had not come yet (a connection accepted between the handshake and the
        header: one in five at one client, measured) waits and takes the
        slow way. A client that connects and sends nothing is held by the
        kernel, not polled by the forker, for those seconds; then accepted,
        it waits `proxy_timeout` more, at most, for its header.

        May be extended, do not override.
        """
        if self.socket.family not in (socket.AF_INET, socket.AF_INET6):
            return
        service = self.service
        seconds = math.ceil(service.proxy_timeout) if service.proxy_trusted is not None else 0
        with contextlib.suppress(OSError):  # only sooner, never more or less served
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, seconds)

    def _failure(self, what: str, exc: OSError) -> OSFailure:
        where = (
            f"service {self.service.name!r}: listen {listeners.describe(self.endpoint.sockaddr)}"
        )
        return OSFailure(f"{where}: {what}: {exc.strerror}")

    def server_close(self) -> None:
        """Close the listener (the daemon removes a UNIX socket file it created).

        Overrides ForkingMixIn's, without calling it (it reaps: the forker
        reaps in its loop).

        May be extended, do not override.
        """
        self.socket.close()

    def apply(self, service: Service) -> None:
        """Take a reloaded service's handler and rules; the socket stays.

        May be extended, do not override.
        """
        self.service = service
        self.RequestHandlerClass = service.handler  # type: ignore[assignment]
        self.admission = self.shared.admission(service)
        self.defer_accept()

    def cannot_serve(self, service: Service) -> str | None:  # noqa: ARG002 (a stream's answer)
        """Return why this socket cannot serve `service` (reloaded), or None: a stream always can.

        May be overridden.
        """
        return None

    def rehearse(self) -> None:
        """Serve `REHEARSALS` connections of a socket pair here, in the forker, with no handler.

        Until the interpreter has warmed a function up and specialized its
        instructions, each run writes to its code (counters, inline caches)
        and looks up its attributes the slow way, writing CPython's type
        cache; in a child, every page written is a page copied. Rehearsed
        in the forker, `serve_connection`, `finish_request` and
        `shutdown_request` are specialized once, and children only read them.
        Nothing is reported; a rehearsal cut short (no descriptors left) only
        costs its children those copies.
        """
        if self.service.handler is None:  # a program: spawned, never served here
            return
        handler = self.RequestHandlerClass
        self.RequestHandlerClass = _Rehearsal  # type: ignore[assignment]
        try:
            for _ in range(REHEARSALS):
                request, peer = socket.socketpair()
                with peer:
                    self.serve_connection(request, "rehearsal")
        except OSError:
            pass
        finally:
            self.RequestHandlerClass = handler

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection.

        Like socket.accept(), without the enum conversions of the family and
        type properties on every call (measured: several percent per connection).

        May be overridden.
        """
        fd, client_address = self.socket._accept()  # type: ignore[attr-defined]  # noqa: SLF001
        return socket.socket(self._family, socket.SOCK_STREAM, 0, fileno=fd), client_address

    def shutdown_request(self, request: Any) -> None:
        """Half-close the connection (the peer reads the end of our data), then close it.

        TCPServer's, as one function (see `fork_request`) that closes with the C method.

        May be overridden.
        """
        try:  # noqa: SIM105 (contextlib.suppress is two more calls in each child)
            request.shutdown(_SHUT_WR)
        except OSError:
            pass
        _close_socket(request)

    def close_request(self, request: Any) -> None:
        """Close a connection's socket with the C method directly.

        socket.socket.close() adds a Python layer (reference counting of
        makefile() objects) that a closing server never needs.

        May be overridden.
        """
        _close_socket(request)

    def accept_ready(self, budget: int) -> int:
        """Accept and serve up to `budget` pending connections; return how many were taken.

        The children started are recorded once the burst is over (see
        `process_request`).

        Raises:
            OSError: accept(2) failed in a way that concerns the listener (EMFILE, say).
            ForkPaused: forking failed for lack of resources (the connection is closed).
        """
        try:
            return self._accept_burst(budget)
        finally:
            self.record_started()

    def _accept_burst(self, budget: int) -> int:
        if self.service.proxy_trusted is not None:
            return self.accept_proxied(budget)  # the same loop, with its header read
        for taken in range(budget):
            try:
                request, client_address = self.get_request()
            except BlockingIOError:
                return taken
            except OSError as exc:
                self.accept_failed(exc)
                continue
            if request.getsockopt(_SOL_SOCKET, _SO_ERROR):  # reset while it waited
                self.drop_reset(request)
                continue
            self._admit(request, client_address)
        return budget

    def accept_failed(self, exc: OSError) -> None:
        """Go on after an accept(2) error that concerns one connection only; raise the others.

        May be overridden.

        Raises:
            OSError: `exc`, an error of the listener's (EMFILE, say).
        """
        if exc.errno not in TRANSIENT_ACCEPT_ERRORS:
            raise exc

    def _admit(self, request: Any, client_address: Any) -> None:
        """Admit (`verify_request`) and serve (`process_request`) a connection, or refuse it."""
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception as exc:  # noqa: BLE001 (fork or spawn failed: report it, serve on)
            self.shared.stats.errors += 1
            self.shutdown_request(request)
            if isinstance(exc, OSError) and exc.errno in FORK_RESOURCE_ERRORS:
                delay = self.shared.fork_failed(self.service.name, exc.strerror)
                raise ForkPaused(delay) from None
            error = exc.strerror if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            fields = {"service": self.service.name, "error": error}
            self.shared.report("error", "fork_failed", fields)

    def record_started(self) -> None:
        """Record the children started since the last call (see `process_request`).

        Once per burst of connections, not once per fork: the pages it writes
        are copied once per burst.

        May be extended, do not override.
        """
        if not self._started:
            return
        shared, service = self.shared, self.service
        if shared.fork_backoff.failures:
            shared.fork_worked()
        # A program's peak RSS counts only above the forker's (see Children.add).
        floor = peak_rss_kib() if service.program is not None else 0
        for pid, client, group in self._started:
            program = floor if group else None
            shared.children.add(pid, service.name, client, service.max_duration, program=program)
        shared.stats.served += len(self._started)
        self._started.clear()

    def drop_reset(self, request: Any) -> None:
        """Close a connection its peer reset before it was served, and count it (see PEER_RESET)."""
        _close_socket(request)
        self.shared.denials.count(self.service.name, PEER_RESET, time.monotonic())

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection, or refuse it: allow/deny, then per-source and rate limits.

        A refused client gets the service's `refusal` text, if any, and is
        closed; the refusal is logged within the bounds of `access.Denials`.

        May be overridden.
        """
        # Each call is a page or two the forker writes, and copies, per connection:
        # a service without rules or limits calls none.
        self._source = None
        rules = self.service.rules
        reason = rules.refusal(client_address) if rules.active else None
        if reason is None:
            admission = self.admission
            if not admission.limited:
                return True
            self._source = admission.key(client_address)
            reason = admission.refusal(self._source, time.monotonic())
            if reason == "per_source":
                # Connections that ended count until reaped (reaping waits for a
                # batch under load): reap now, and count again. The children of
                # this burst are recorded first, or their exits would be lost.
                self.record_started()
                if self.shared.reap():
                    reason = admission.refusal(self._source, time.monotonic())
            if reason is None:
                return True
        self._refuse(request, client_address, reason, time.monotonic())
        return False

    def _refuse(
        self, request: Any, client_address: Any, reason: str, now: float, error: str | None = None
    ) -> None:
        self.shared.stats.denied += 1
        if self.service.refusal:
            with contextlib.suppress(OSError):
                request.send(self.service.refusal, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        key = self._source if reason.startswith(("per_source", "rate")) else None
        if key is not None:
            limits = self.admission.limits
            source = source_text(key, limits.source_prefix_v4, limits.source_prefix_v6)
        elif isinstance(client_address, tuple):
            source = client_address[0]  # repeated refusals of one address sum up
        else:
            source = "unix"
        if self.shared.denials.first(self.service.name, reason, source, now):
            client = client_fields(self.record_client(request, client_address))
            fields = {"service": self.service.name, **client, "reason": reason}
            if error is not None:
                fields["error"] = error
            self.shared.report("info", "connection_denied", fields)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a new process: a forked child, or the service's program.

        The new child is recorded by `accept_ready`, after the burst: every page
        the forker writes between two forks is copied again, so between forks
        it does no more than it must.

        Overrides ForkingMixIn's, whose children are its `active_children`:
        these are the forker's (`Shared.children`).

        May be extended, do not override.
        """
        # The text is made later, by the daemon, except for UNIX peers: their
        # credentials (SO_PEERCRED), never the path they bound (they choose it).
        via = self.proxy_address
        if via is None:
            client = unix_client(request, client_address) if self._unix else client_address
        elif self.proxy_local or type(client_address) is not tuple or self._unix:
            client = self.record_client(request, client_address)
        else:  # `proxied_client`'s, inline: the common case, a call less
            client = {"client": client_address, "via": via}
        program = self.service.program
        if program is None:
            pid = self.fork_request(request, client_address)
        else:
            header = self.proxy_header
            proxied = None if header is None else (header, via)
            pid, stderr = program.start(
                request,
                client_address,
                self._local_address,
                self.shared.close_in_child,
                proxied,
            )
            self.shared.watch_stderr(stderr, pid, self.service.name, client)
        self._started.append((pid, client, program is not None))
        if self._source is not None:  # counted at once: the next admission depends on it
            self.admission.opened(self._source)
            self.shared.sources[pid] = (self.admission, self._source, client_address)
        self.close_request(request)

    def serve_in_child(self, request: Any, client_address: Any) -> int:
        """Close the forker's descriptors, take the child's ids, then serve (`serve_connection`).

        Overrides ForkingMixIn's: what a forked child does before serving. A
        pooled worker did the same once, at its start, and calls
        `serve_connection` itself. Each function a child calls for the first
        time writes to pages it shares with the forker (the code's warm-up
        counter, a new frame), and each page written is a page copied: the
        child's path is this, `serve_connection`, `finish_request` and
        `shutdown_request`. The child keeps the forker's signal handlers,
        which take each signal's default action in any process but the
        forker (`Forker._record_signal`): resetting them in each child cost it
        26 page copies.

        May be overridden.
        """
        shared = self.shared
        for fd in shared.child_fds:  # as Shared.close_in_child does
            os.close(fd)
        for fd in shared.waiting_fds:
            os.close(fd)
        if shared.child_identity is not None:
            become_ids(shared.child_identity)
        return self.serve_connection(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler within the service's `idle_timeout`, its end reported by `report_idle`.

        A timeout is the end of an idle connection when the service has an
        `idle_timeout` (no error); without one, it is the handler's own, an
        error (`serve_connection` passes it to `handle_error`). Called by
        `serve_connection`, in a forked child and in a pooled worker alike.

        May be extended, do not override.
        """
        idle_timeout = self.service.idle_timeout
        if idle_timeout:
            request.settimeout(idle_timeout)
        handler = self.RequestHandlerClass  # loaded as an attribute: specialized, unlike a call
        try:
            handler(request, client_address, self)  # type: ignore[arg-type]
        except TimeoutError:
            if not idle_timeout:
                raise  # the handler's own: an error
            self.report_idle(request, client_address)  # the end of an idle connection

    def report_idle(self, request: Any, client_address: Any) -> None:
        """Report a connection ended by `idle_timeout` as one `idle_timeout` event.

        May be overridden.
        """
        with contextlib.suppress(Exception):  # the error path must not raise
            fields = {
                "service": self.service.name,
                **client_fields(self.record_client(request, client_address)),
                "pid": os.getpid(),
                "seconds": self.service.idle_timeout,
            }
            self.shared.report("info", "idle_timeout", fields)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Report the exception being handled as one `handler_error` event, as data.

        Sent to the daemon (its log renders it), not written to stderr.

        May be overridden.
        """
        exc = sys.exception()
        if exc is None:
            return
        with contextlib.suppress(Exception):  # the error path must not raise
            fields = {
                "service": self.service.name,
                **client_fields(self.record_client(request, client_address)),
                "pid": os.getpid(),
                "exception": exception_fields(exc),
            }
            self.shared.report("error", "handler_error", fields)

    def collect_children(self, *, blocking: bool = False) -> None:  # noqa: ARG002
        """Reap exited children of every service; never blocks, whatever `blocking` says.

        Overrides ForkingMixIn's: the forker's children are in `Shared.children`
        (those `handle_request()` or `serve_forever()` started are recorded first).

        May be extended, do not override.
        """
        self.record_started()
        self.shared.reap()


class _Rehearsal:
    """The handler of `ServiceServer.rehearse`: it does nothing."""

    def __init__(self, request: object, client_address: object, server: object) -> None:
        pass
