"""The forker's datagram servers (UDP, UNIX datagram): built-ins answered here, the rest forked.

It runs in the forker, and from `fork_request` on in a datagram's child. A
datagram service is served as inetd serves a `dgram nowait` line:

- The built-ins (echo, discard, daytime, chargen, time) are answered by the
  forker itself, without a process (`sockd.handlers.builtin.DATAGRAM_ANSWERS`):
  a bounded burst of datagrams read with MSG_DONTWAIT per turn of its loop,
  each answer sent with MSG_DONTWAIT (one that cannot go now is dropped).
- A Python handler runs in a forked child per datagram, with socketserver's
  datagram semantics (ForkingUDPServer's): `request` is `(data, socket)`, the
  listening socket, on which the child answers with `sendto`;
  `client_address` is the sender.
- A program (`exec`) gets the datagram on stdin (a pipe), and a UDP socket
  connected to the sender as stdout (see `DatagramServer.start_program`).

UDP sources are forged at will, so every datagram is checked before
anything is done for it (see README "UDP"): none from a source port below
1024, from the port of any UDP socket this forker serves, or from the path
of any of its UNIX datagram sockets is answered (inetd's loop check: two
services answering each other forever, or a forged request that makes a
service flood a system port); allow/deny and the rate limits apply per
datagram; UDP echo and chargen need `udp_reflection` (`problem`). Dropped
datagrams are counted, and logged within the bounds of `access.Denials`.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from sockd import listeners
from sockd.errors import ConfigError
from sockd.forker.service import ServiceServer
from sockd.forker.shared import unix_client
from sockd.handlers.builtin import DATAGRAM_ANSWERS, Chargen, Echo
from sockd.privileges import become_ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sockd.forker.shared import Service, Shared
    from sockd.listeners import Endpoint

MAX_DATAGRAM_BURST = 64  # datagrams read per listener per turn, at most
PRIVILEGED_PORTS = 1024  # source ports below this are never answered (loop check)
LOOP = "source_port"  # why a datagram from such a port was dropped
# recvfrom(2) errors that concern one datagram, or an earlier answer's ICMP error.
TRANSIENT_RECEIVE_ERRORS = frozenset((errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH))
_MSG_DONTWAIT = socket.MSG_DONTWAIT


def problem(service: Service, family: int) -> str | None:
    """Return why `service` cannot serve a datagram socket of `family`, or None.

    `sockd check` says the same of `udp:` and `unix-dgram:` addresses; this
    catches datagram sockets from systemd, which it cannot see.
    """
    if service.workers and (service.program is not None or service.handler in DATAGRAM_ANSWERS):
        return "workers: a built-in is answered in the forker, a program runs per datagram"
    if service.proxy_trusted is not None:
        return "proxy_protocol: not on a datagram socket"
    if service.refusal:
        return "refusal: never sent to a datagram (its source may be spoofed)"
    if service.program is not None and not service.wait and family == socket.AF_UNIX:
        return "exec: not on a UNIX datagram socket unless wait = true (per datagram: UDP only)"
    if service.handler in (Echo, Chargen) and not service.udp_reflection:
        return "UDP echo and chargen answer forged sources: set udp_reflection = true"
    return None


class DatagramServer(ServiceServer):
    """One datagram socket (UDP or UNIX, bound by the daemon or passed by systemd) of one service.

    The loop drives it with `accept_ready(budget)`, as a `ServiceServer`; a
    built-in's server (`inline`) forks nothing, so no cap applies to it.
    """

    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192  # bytes of a datagram read, at most (socketserver.UDPServer's)

    def __init__(self, endpoint: Endpoint, service: Service, shared: Shared) -> None:
        """Serve the datagram socket the daemon passed (`endpoint.adopted`).

        Raises:
            SockdError: the passed socket is unusable, or the service cannot serve datagrams.
        """
        super().__init__(endpoint, service, shared)
        address = self.server_address
        shared.datagram_sources.add(address[1] if isinstance(address, tuple) else address)
        try:
            self._answer_for(service)
        except ConfigError:
            self.socket.close()
            raise

    def _answer_for(self, service: Service) -> None:
        why = problem(service, self._family)
        if why is not None:
            where = listeners.describe(self.server_address, socket.SOCK_DGRAM)
            raise ConfigError(f"service {service.name!r}: listen {where}: {why}")
        handler: Any = service.handler
        self.answer = DATAGRAM_ANSWERS.get(handler) if service.program is None else None
        self.inline = self.answer is not None
        if self._family != socket.AF_UNIX:
            # Only a program's socket to its sender shares the port (`start_program`): on
            # UDP, SO_REUSEADDR lets any local user's socket bind it, and take its datagrams.
            reuse = service.program is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, reuse)

    def server_activate(self) -> None:
        """Check that the passed socket is a bound datagram socket; it stays blocking.

        The forker reads and answers with MSG_DONTWAIT; a handler's child
        gets the socket as socketserver gives it, blocking.

        May be extended, do not override.

        Raises:
            SockdError: the passed socket is unusable.
        """
        where = f"socket of service {self.service.name!r}"
        listeners.check_listening(self.socket, where, socket.SOCK_DGRAM)
        # Blocking, with no timeout of Python's: one would make a MSG_DONTWAIT read wait.
        self.socket.settimeout(None)

    def cannot_serve(self, service: Service) -> str | None:
        """Return why this socket cannot serve `service` (reloaded), or None (see `problem`).

        May be overridden.
        """
        return problem(service, self._family)

    def apply(self, service: Service) -> None:
        """Take a reloaded service (checked by `cannot_serve` first: see Forker._reload).

        May be extended, do not override.
        """
        super().apply(service)
        self._answer_for(service)

    def defer_accept(self) -> None:
        """Do nothing: a datagram socket accepts nothing (see ServiceServer.defer_accept)."""

    def rehearse(self) -> None:
        """Do nothing: a datagram's child is not rehearsed (see ServiceServer.rehearse)."""

    def accept_ready(self, budget: int) -> int:
        """Read and serve up to `budget` datagrams waiting; return how many were read.

        Raises:
            OSError: recvfrom(2) failed in a way that concerns the socket.
            ForkPaused: forking failed for lack of resources.
        """
        try:
            return self._receive(budget)
        finally:
            self.record_started()

    def _receive(self, budget: int) -> int:
        recvfrom, sendto = self.socket.recvfrom, self.socket.sendto
        answer, size, own = self.answer, self.max_packet_size, self.shared.datagram_sources
        for taken in range(budget):
            try:
                data, client_address = recvfrom(size, _MSG_DONTWAIT)
            except BlockingIOError:
                return taken
            except OSError as exc:
                if exc.errno in TRANSIENT_RECEIVE_ERRORS:
                    continue
                raise
            request = (data, self.socket)
            # (A UNIX sender's path may be a symlink to one of ours: sendto() follows it.)
            looped = (
                client_address[1] < PRIVILEGED_PORTS or client_address[1] in own
                if type(client_address) is tuple
                else client_address in own
            )
            if looped:
                self.drop(LOOP)
                continue
            if answer is None:
                self._admit(request, client_address)
                continue
            if not self.verify_request(request, client_address):
                continue
            self.shared.stats.served += 1
            reply = answer(data)
            if reply is not None and client_address:  # an unbound UNIX sender has no address
                try:  # noqa: SIM105 (no contextlib per datagram)
                    sendto(reply, _MSG_DONTWAIT, client_address)
                except OSError:
                    pass  # the send buffer is full, or the sender unreachable: UDP loses it
        return budget

    def drop(self, reason: str) -> None:
        """Count a datagram dropped unanswered: one summary line per window, never one each."""
        self.shared.stats.denied += 1
        self.shared.denials.count(self.service.name, reason, time.monotonic())

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a datagram in a new process: a forked child (the handler), or the program.

        Overrides ServiceServer's (a datagram has no connection to pass).

        May be extended, do not override.
        """
        client = unix_client(request, client_address) if self._unix else client_address
        program = self.service.program
        if program is None:
            pid = self.fork_request(request, client_address)
        else:
            pid, stderr = self.start_program(request[0], client_address)
            self.shared.watch_stderr(stderr, pid, self.service.name, client)
        self._started.append((pid, client, program is not None))
        if self._source is not None:  # counted at once: the next admission depends on it
            self.admission.opened(self._source)
            self.shared.sources[pid] = (self.admission, self._source, client_address)

    def start_program(self, data: bytes, client_address: Any) -> tuple[int, int]:
        """Start the service's program on one datagram; return its pid and stderr's read end.

        inetd hands a `dgram nowait` program the listening socket itself, from
        which it must recvfrom() the datagram and sendto() its answer: no
        stdin/stdout program (cat, a shell script) can, and the listener is
        then read by two processes at once. Here the forker has read the
        datagram (to admit it), and the kernel cannot queue it again on
        another socket; so the program gets:

        - stdin: a pipe holding the datagram, then end of file. Not a UNIX
          datagram socket: each read(2) there takes a whole datagram, and a
          shell's `read`, which reads a byte at a time, would lose the rest;
        - stdout: a UDP socket bound to the listener's address and port
          (SO_REUSEADDR, which `_answer_for` sets on the listener of a
          program's service, and on no other) and connected to the
          sender: each write(2) is one datagram to it, from the service's
          port, which connected clients (nc -u, socat) require. Datagrams the
          sender sends while the program runs reach that socket (the kernel
          prefers a connected socket) and are not read: one datagram, one
          program, as `nowait` means. On a host with several addresses, a
          listener bound to a wildcard answers from the address the route
          to the sender picks.

        The environment says PROTO=UDP, UDPREMOTEIP/PORT, UDPLOCALIP/PORT.

        Raises:
            OSError: a socket could not be made or bound, or the spawn failed.
        """
        program = self.service.program
        assert program is not None  # noqa: S101 (called for programs only)
        output = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            output.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._family == socket.AF_INET6:  # as the listener's: systemd's may take IPv4 too
                v6only = self.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                output.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            output.bind(self.server_address)
            output.connect(client_address)
            stdin, feed = os.pipe2(os.O_CLOEXEC)
            try:
                os.write(feed, data)  # at most max_packet_size: a new pipe holds 64 KiB
                os.close(feed)
                feed = -1
                local = output.getsockname()
                return program.start(
                    output, client_address, local, self.shared.close_in_child, datagram=stdin
                )
            finally:
                os.close(stdin)
                if feed >= 0:
                    os.close(feed)
        finally:
            output.close()

    def serve_in_child(self, request: Any, client_address: Any) -> int:
        """Close the forker's descriptors but this socket (the handler answers on it), then serve.

        Overrides ServiceServer's, whose lines these are but for `mine`: not
        one helper both call, which would be a function more in each child,
        pages copied from the forker (see ServiceServer.serve_in_child).

        May be overridden.
        """
        shared = self.shared
        mine = self.socket.fileno()
        for fd in shared.child_fds:
            if fd != mine:
                os.close(fd)
        for fd in shared.waiting_fds:
            os.close(fd)
        if shared.child_identity is not None:
            become_ids(shared.child_identity)
        return self.serve_connection(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handler on the datagram (`idle_timeout` is for streams).

        May be extended, do not override.
        """
        self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]

    def shutdown_request(self, request: Any) -> None:
        """Do nothing: a datagram has no connection to shut down (socketserver.UDPServer's).

        May be overridden.
        """

    def close_request(self, request: Any) -> None:
        """Do nothing: the socket is the listener's.

        May be overridden.
        """
