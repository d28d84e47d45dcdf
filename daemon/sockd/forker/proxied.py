"""Connections whose PROXY header the forker reads before it admits them; what they record.

Runs in the forker (`Waiting`), and in its children and pooled workers (the
records and the environment). A service with `proxy_protocol` takes a
connection only from a trusted proxy (`proxy_trusted`, checked before
anything is read), then reads its header without waiting
(`sockd.proxy.receive`): a header that came with the connection is read at
once, and the connection admitted and served as any other, under the real
client's address. One that did not waits here, polled with the listeners,
until it is complete or `proxy_timeout` runs out. No child is forked before
the header is complete and the real client admitted: a proxy that sends its
header a byte at a time, or never, costs a descriptor and a poll, not a
fork. Connections that wait count toward their service's caps (`Caps`).
"""

from __future__ import annotations

import heapq
import math
import select
import socket
import time

from sockd.forker.access import trusted
from sockd.forker.shared import client_record
from sockd.listeners import client_text, describe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType
    from typing import Any

    from sockd.forker.shared import Service, Shared
    from sockd.proxy import Header

MAX_ERROR = 200  # characters of a header's problem in `connection_denied`
MAX_KNOWN_PROXIES = 64  # trusted proxy addresses a service remembers (see `take_proxied`)
# The headers `take_proxied` takes the quick way: a v2 PROXY command for TCP over IPv4
# (then 12 bytes of addresses) or IPv6 (36 bytes), with no TLVs, as HAProxy's
# `send-proxy-v2` sends them by default. Their first 16 bytes, and their size.
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # sockd.proxy.SIGNATURE
_V2_TCP4, _V2_TCP4_SIZE = _V2_SIGNATURE + b"\x21\x11\x00\x0c", 16 + 12
_V2_TCP6, _V2_TCP6_SIZE = _V2_SIGNATURE + b"\x21\x21\x00\x24", 16 + 36
_peeked = bytearray(_V2_TCP6_SIZE)  # what `take_proxied` peeks into: nothing allocated
_PEEK_NOW, _NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT), int(socket.MSG_DONTWAIT)
_AF_INET, _AF_INET6 = int(socket.AF_INET), int(socket.AF_INET6)
_SOL_SOCKET, _SO_ERROR = int(socket.SOL_SOCKET), int(socket.SO_ERROR)
_inet_ntop = socket.inet_ntop


class Waiting:
    """The connections whose header is not complete yet, each until its deadline.

    `counts` (service name -> connections waiting) is what `Caps` counts.
    """

    def __init__(self, poller: select.epoll) -> None:
        """Poll waiting connections in `poller` (the forker's)."""
        self.poller = poller
        self.connections: dict[int, tuple[ProxiedMixIn, socket.socket, Any, float]] = {}
        self.deadlines: list[tuple[float, int]] = []  # (deadline, fd), the soonest first
        self.counts: dict[str, int] = {}
        # `sockd.proxy.receive_seen`, taken once (see `parser`).
        self.receive: Callable[[socket.socket], Header | int] | None = None

    def take(
        self, server: ProxiedMixIn, request: socket.socket, proxy_address: Any, waited: int = -1
    ) -> None:
        """Read the header of a connection from a trusted proxy: serve it, or wait for the rest.

        `waited` is the descriptor of a connection that waits already (see
        `ready`). The socket stays blocking, as a handler or program expects
        it: the header is read with MSG_DONTWAIT.

        Raises:
            ForkPaused: the header was complete, and forking failed (see `ServiceServer`).
        """
        receive = self.receive
        if receive is None:
            receive = self.receive = parser().receive_seen
        try:
            header = receive(request)
        except Exception as exc:  # noqa: BLE001 (what a peer sends never stops serving)
            if waited >= 0:
                self._forget(waited)
            server.refuse_proxied(request, proxy_address, "proxy_header", header_problem(exc))
            return
        if isinstance(header, int):  # incomplete
            if waited < 0:
                self._wait(server, request, proxy_address)
            return
        if waited >= 0:
            self._forget(waited)
        server.serve_proxied(request, header, proxy_address)

    def ready(self, fd: int) -> None:
        """Read more of a waiting connection's header (its socket is readable).

        Raises:
            ForkPaused: as `take`.
        """
        server, request, proxy_address, _ = self.connections[fd]
        try:
            self.take(server, request, proxy_address, waited=fd)
        finally:
            server.record_started()  # outside a burst: its child is recorded now

    def next_deadline(self) -> float:
        """Return when the soonest wait ends (math.inf: none waits)."""
        deadlines, connections = self.deadlines, self.connections
        while deadlines:
            deadline, fd = deadlines[0]
            entry = connections.get(fd)
            if entry is not None and entry[3] == deadline:
                return deadline
            heapq.heappop(deadlines)  # its connection ended (and its fd may wait anew)
        return math.inf

    def expire(self, now: float) -> None:
        """Drop the connections whose header is not complete by their deadline."""
        while self.next_deadline() <= now:
            _, fd = heapq.heappop(self.deadlines)
            server, request, proxy_address, _ = self._forget(fd)
            server.refuse_proxied(request, proxy_address, "proxy_timeout")

    def close(self) -> None:
        """Close every waiting connection (the forker stops)."""
        for fd in list(self.connections):
            self._forget(fd)[1].close()

    def _wait(self, server: ProxiedMixIn, request: socket.socket, proxy_address: Any) -> None:
        fd = request.fileno()
        deadline = time.monotonic() + server.service.proxy_timeout
        self.connections[fd] = (server, request, proxy_address, deadline)
        heapq.heappush(self.deadlines, (deadline, fd))
        name = server.service.name
        self.counts[name] = self.counts.get(name, 0) + 1
        # Edge-triggered: each read looks at all that came. A TCP socket is readable
        # only once the rest could be there (`proxy.receive` sets SO_RCVLOWAT); a UNIX
        # one, whose poll ignores that, would wake the loop until its header ended.
        self.poller.register(fd, select.EPOLLIN | select.EPOLLET)

    def _forget(self, fd: int) -> tuple[ProxiedMixIn, socket.socket, Any, float]:
        entry = self.connections.pop(fd)
        self.poller.unregister(fd)
        name = entry[0].service.name
        self.counts[name] -= 1
        if not self.counts[name]:
            del self.counts[name]
        return entry


class ProxiedMixIn:
    """The `ServiceServer` hooks for connections that start with a PROXY header.

    `proxy_header` (a `sockd.proxy.Header`) and `proxy_address` (the proxy's
    own address: the connection's peer) are set while such a connection is
    admitted and served: a handler reads them as `self.server.proxy_header`
    and `self.server.proxy_address` (None without a header).
    """

    proxy_address: Any = None
    proxy_local = False  # the header is LOCAL or UNKNOWN: served with the real endpoints
    # The header as parsed, or as received (`proxy_data`: taken the quick way, parsed
    # only if asked for, which a child serving a handler seldom does).
    _header: Header | None = None
    proxy_data: bytes | None = None
    if TYPE_CHECKING:  # what the server that mixes this in has
        service: Service
        shared: Shared

        def _admit(self, request: Any, client_address: Any) -> None: ...
        def get_request(self) -> tuple[socket.socket, Any]: ...  # noqa: D102
        def accept_failed(self, exc: OSError) -> None: ...  # noqa: D102
        def drop_reset(self, request: Any) -> None: ...  # noqa: D102
        def record_started(self) -> None: ...  # noqa: D102
        def shutdown_request(self, request: Any) -> None: ...  # noqa: D102
        def _refuse(
            self, request: Any, client_address: Any, reason: str, now: float, error: str | None
        ) -> None: ...

    @property
    def proxy_header(self) -> Header | None:
        """Return the PROXY header of the connection admitted or served (None: none)."""
        header = self._header
        if header is None and self.proxy_data is not None:
            parsed = parser().parse(self.proxy_data)
            if not isinstance(parsed, int):  # (always: it was taken whole)
                header = self._header = parsed
        return header

    def accept_proxied(self, budget: int) -> int:  # noqa: C901, PLR0912 (no call a connection)
        """Accept and serve up to `budget` connections that start with a header (`accept_ready`).

        `ServiceServer`'s loop, with each connection's header taken between
        the accept and the admission. The common headers (see _V2_TCP4) are
        taken here, the quick way: each Python call in the forker writes pages
        that every fork then copies (README, "Where the time goes"), and the
        parser is several calls. The others, and a header not all there yet,
        go to `take_proxied`.
        """
        known = self.service.proxy_known
        for taken in range(budget):
            try:
                request, proxy_address = self.get_request()
            except BlockingIOError:
                return taken
            except OSError as exc:
                self.accept_failed(exc)
                continue
            if request.getsockopt(_SOL_SOCKET, _SO_ERROR):  # reset while it waited
                self.drop_reset(request)
                continue
            if type(proxy_address) is tuple and proxy_address[0] not in known:
                self.take_proxied(request, proxy_address)  # a proxy not seen yet: checked there
                continue
            try:
                seen = request.recv_into(_peeked, 0, _PEEK_NOW)
            except OSError:
                seen = 0
            if seen >= _V2_TCP4_SIZE and _peeked.startswith(_V2_TCP4):
                size = _V2_TCP4_SIZE
            elif seen >= _V2_TCP6_SIZE and _peeked.startswith(_V2_TCP6):
                size = _V2_TCP6_SIZE
            else:
                self.take_proxied(request, proxy_address)
                continue
            try:
                data = request.recv(size, _NOW)  # the header, and not a byte more
            except OSError as exc:
                self.refuse_proxied(request, proxy_address, "proxy_header", header_problem(exc))
                continue
            if size == _V2_TCP4_SIZE:
                client = (_inet_ntop(_AF_INET, data[16:20]), data[24] << 8 | data[25])
            else:
                client = (_inet_ntop(_AF_INET6, data[16:32]), data[48] << 8 | data[49])
            self.proxy_address, self.proxy_data = proxy_address, data
            try:
                self._admit(request, client)
            finally:
                self.proxy_address = self.proxy_data = None
        return budget

    def take_proxied(self, request: Any, proxy_address: Any) -> None:
        """Take a connection that starts with a PROXY header: from a trusted proxy only.

        Nothing is read from an untrusted one. In the forker, the header is
        read without waiting (`sockd.forker.proxied.Waiting`); elsewhere,
        waiting for it (`read_proxied`).

        May be extended, do not override.
        """
        service = self.service
        # The proxies are few: each found trusted once is known by its address. (A UNIX
        # peer is trusted: the socket file's mode says who may connect.)
        known = service.proxy_known
        if isinstance(proxy_address, tuple) and proxy_address[0] not in known:
            networks = service.proxy_trusted
            if networks is None or not trusted(networks, proxy_address):
                self.refuse_proxied(request, proxy_address, "proxy_untrusted")
                return
            if len(known) < MAX_KNOWN_PROXIES:
                known.add(proxy_address[0])
        if self.shared.waiting is not None:
            self.shared.waiting.take(self, request, proxy_address)
        else:
            self.read_proxied(request, proxy_address)

    def read_proxied(self, request: Any, proxy_address: Any) -> None:
        """Wait for the connection's header (up to `proxy_timeout`), then serve it, or refuse it.

        May be extended, do not override.
        """
        try:
            header = parser().read(request, self.service.proxy_timeout)
        except TimeoutError:
            self.refuse_proxied(request, proxy_address, "proxy_timeout")
        except Exception as exc:  # noqa: BLE001 (what a peer sends never stops serving)
            self.refuse_proxied(request, proxy_address, "proxy_header", header_problem(exc))
        else:
            self.serve_proxied(request, header, proxy_address)

    def serve_proxied(self, request: Any, header: Header, proxy_address: Any) -> None:
        """Admit and serve a connection whose header is read, as the real client's.

        A LOCAL header (a proxy's health check) or an UNKNOWN one is served
        with the connection's own addresses.

        Raises:
            ForkPaused: see `accept_ready`.

        May be extended, do not override.
        """
        self._header, self.proxy_address, self.proxy_local = header, proxy_address, header.local
        try:
            self._admit(request, proxy_address if header.local else header.source)
        finally:
            self._header = self.proxy_address = None
            self.proxy_local = False

    def refuse_proxied(
        self, request: Any, proxy_address: Any, reason: str, error: str | None = None
    ) -> None:
        """Refuse a connection whose proxy is not trusted, or whose header failed; close it.

        Logged as `connection_denied` with the `reason` (and the header's
        `error`), within the bounds of `access.Denials`.

        May be extended, do not override.
        """
        self._refuse(request, proxy_address, reason, time.monotonic(), error)
        self.shutdown_request(request)

    def record_client(self, request: Any, client_address: Any) -> object:
        """Return how the connection's client is recorded (see `sockd.exits.client_fields`).

        A proxied client is named by its header, the proxy as `via`.

        May be overridden.
        """
        if self.proxy_address is not None and not self.proxy_local:
            return proxied_client(request, client_address, self.proxy_address)
        return client_record(request, client_address)


def parser() -> ModuleType:
    """Return the PROXY header parser, `sockd.proxy`.

    A forker imports it only when a service takes PROXY headers (its code is
    a few hundred kilobytes more to every fork): `Service` does, as it is
    built, so that the forker has it before it freezes its objects for the
    collector (see `Forker.run`).
    """
    from sockd import proxy  # noqa: PLC0415

    return proxy


def header_problem(exc: BaseException) -> str:
    """Say in one bounded line why a header could not be read (`connection_denied`'s `error`)."""
    if isinstance(exc, EOFError):
        return "the connection ended before its header did"
    if isinstance(exc, OSError) and exc.strerror:
        return f"reading the header: {exc.strerror}"
    if isinstance(exc, parser().ProxyError):
        return str(exc)[:MAX_ERROR]
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR]  # a bug of ours: said, and served on


def proxied_client(request: Any, client_address: Any, proxy_address: Any) -> dict[str, Any]:
    """Return how a proxied connection's client is recorded: the real one, and `via` the proxy.

    Addresses as they are (the daemon writes them: `sockd.exits.client_fields`);
    a UNIX client's path, and a UNIX proxy's credentials, as text.
    """
    if not isinstance(client_address, tuple):
        client_address = describe(client_address)
    if not isinstance(proxy_address, tuple):
        proxy_address = client_text(request, proxy_address)
    return {"client": client_address, "via": proxy_address}


def proxy_environment(
    environ: dict[bytes, bytes], header: Header, request: Any, proxy_address: Any
) -> None:
    """Add what a PROXY header says to a program's environment (see README, "PROXY protocol").

    The UCSPI variables (TCPREMOTEIP...) already name the real client; this
    adds the proxy's own connection (PROXYREMOTEIP, PROXYREMOTEPORT,
    PROXYLOCALIP, PROXYLOCALPORT) and the header's TLVs. A value that cannot
    be in an environment (a NUL) is left out.
    """
    if isinstance(proxy_address, tuple):
        local = request.getsockname()
        environ[b"PROXYREMOTEIP"] = proxy_address[0].encode()
        environ[b"PROXYREMOTEPORT"] = b"%d" % proxy_address[1]
        environ[b"PROXYLOCALIP"] = local[0].encode()
        environ[b"PROXYLOCALPORT"] = b"%d" % local[1]
    values: dict[bytes, bytes | str | None] = {
        b"PROXY_ALPN": header.alpn,
        b"PROXY_AUTHORITY": header.authority,
        b"PROXY_UNIQUE_ID": None if header.unique_id is None else header.unique_id.hex(),
    }
    ssl = header.ssl
    if ssl is not None:
        values[b"SSL_PROTOCOL"] = ssl.version
        values[b"SSL_CIPHER"] = ssl.cipher
        values[b"SSL_PEER_CERT_CN"] = ssl.cn
    for name, value in values.items():
        data = value.encode() if isinstance(value, str) else value
        if data is not None and b"\0" not in data:
            environ[name] = data
