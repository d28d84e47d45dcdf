"""Which socket serves which service: systemd's adopted, or our own bound (the daemon's side).

The daemon opens every listener before it starts the forker, which inherits them.
The TCP and UDP sockets it binds itself it may give systemd to keep across a restart
(its file descriptor store), named `STORED` + the service: a later start takes
back those its config still listens on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

from sockd import listeners
from sockd.errors import ConfigError, OSFailure, PermissionFailure
from sockd.listeners import Endpoint, InheritedFd, check_listening, describe

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sockd.supervisor.config import ListenAddress, ServiceConfig

# The FDNAME= prefix of the sockets we give systemd to keep ("/" is in no service name).
STORED = "sockd-bound/"


def is_stored(fd_name: str | None) -> bool:
    """Tell whether a socket from systemd is one we bound and gave it to keep."""
    return fd_name is not None and fd_name.startswith(STORED)


def plan(services: Sequence[ServiceConfig], inherited: Sequence[InheritedFd]) -> list[Endpoint]:
    """Decide where every service listens.

    Inherited sockets go to the service named by `FileDescriptorName=`, else to
    the service with a matching `listen` address, else to the only service. A
    service that receives any inherited socket uses only those; the others bind
    their own `listen` addresses, or take back the socket systemd kept for one
    (`STORED`). A kept socket no service listens on any more is closed.

    Raises:
        ConfigError: an inherited socket matches no service, an address does not
            resolve, or a service ends up with nowhere to listen.
    """
    endpoints: list[Endpoint] = []
    kept: list[tuple[str, socket.socket]] = []
    try:
        endpoints += [_adopted_endpoint(services, fd) for fd in inherited if not is_stored(fd.name)]
        kept = _kept([fd for fd in inherited if is_stored(fd.name)])
        served = {endpoint.service for endpoint in endpoints}
        for service in services:
            if service.name not in served:
                endpoints += _own_endpoints(service, kept)
    except ConfigError:
        for endpoint in endpoints:
            if endpoint.adopted is not None:
                endpoint.adopted.close()
        raise
    finally:
        for _, sock in kept:
            sock.close()
    return endpoints


def _own_endpoints(service: ServiceConfig, kept: list[tuple[str, socket.socket]]) -> list[Endpoint]:
    """Return where a service with no socket from a unit listens: kept sockets, or to bind."""
    if not service.listen:
        msg = f"service {service.name!r}: no listen address and no socket from systemd"
        raise ConfigError(msg)
    endpoints = []
    name = STORED + service.name
    for index, address in enumerate(service.listen):
        kind = address.type
        for family, sockaddr in resolve(address, f"service {service.name!r}: listen[{index}]"):
            sock = _take(kept, name, family, kind, sockaddr)
            fd_name = None if sock is None else name
            endpoints.append(
                Endpoint(service.name, family, sockaddr, address, sock, fd_name, type=kind)
            )
    return endpoints


def _kept(stored: Sequence[InheritedFd]) -> list[tuple[str, socket.socket]]:
    """Return the sockets systemd kept for us, with their names; drop any that is unusable."""
    kept = []
    for fd in stored:
        with contextlib.suppress(ConfigError):  # adopt() closed it
            kept.append((str(fd.name), adopt(fd)))
    return kept


def _take(
    kept: list[tuple[str, socket.socket]], name: str, family: int, kind: int, sockaddr: object
) -> socket.socket | None:
    """Remove from `kept` and return the socket of `name`, type `kind`, at (family, sockaddr)."""
    for index, (kept_name, sock) in enumerate(kept):
        same = kept_name == name and sock.family == family and sock.type == kind
        if same and listeners.bound_at(family, sockaddr, sock.getsockname()):
            del kept[index]
            return sock
    return None


def _adopted_endpoint(services: Sequence[ServiceConfig], fd: InheritedFd) -> Endpoint:
    sock = adopt(fd)
    service = next((s for s in services if s.name == fd.name), None)
    service = service or _match_address(services, sock)
    if service is None and len(services) == 1:
        service = services[0]
    if service is None:
        name = sock.getsockname()
        sock.close()
        where = f"fd {fd.fd}, name {fd.name!r}, {describe(name, sock.type)}"
        msg = f"socket from systemd ({where}) matches no service"
        raise ConfigError(msg)
    return Endpoint(
        service.name, sock.family, sock.getsockname(), adopted=sock, fd_name=fd.name, type=sock.type
    )


def resolve(address: ListenAddress, where: str) -> list[tuple[int, str | tuple[str, int]]]:
    """Return the distinct (family, sockaddr) pairs an address stands for.

    Raises:
        ConfigError: the host name does not resolve.
    """
    if address.is_unix:
        return [(socket.AF_UNIX, address.path)]
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=address.type, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"{where}: cannot resolve {address.host!r}: {exc.strerror}") from None
    result: list[tuple[int, str | tuple[str, int]]] = []
    for family, _, _, _, sockaddr in infos:
        pair = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if pair not in result:
            result.append(pair)
    return result


def _match_address(services: Sequence[ServiceConfig], sock: socket.socket) -> ServiceConfig | None:
    name = sock.getsockname()
    for service in services:
        for address in service.listen:
            if sockname_matches(name, address, sock.type):
                return service
    return None


def sockname_matches(
    sockname: object,
    address: ListenAddress,
    type: int = socket.SOCK_STREAM,  # noqa: A002 (socket.socket's name for it)
) -> bool:
    """Tell whether a socket of `type` bound at `sockname` is the configured `address`.

    By the library's rule (`listeners.bound_at`), once the host name is resolved;
    a datagram socket is only ever a `udp:` or `unix-dgram:` address, a stream one never.
    """
    if address.type != type:
        return False
    try:
        resolved = resolve(address, "")
    except ConfigError:
        return False
    return any(listeners.bound_at(family, sockaddr, sockname) for family, sockaddr in resolved)


def adopt(inherited: InheritedFd) -> socket.socket:
    """Wrap an inherited descriptor: a listening IP or UNIX stream socket, or a bound datagram one.

    Its type is the kernel's (SO_TYPE): `ListenDatagram=` sockets are datagram ones.

    Raises:
        ConfigError: it is not a socket, of another family, neither a stream nor
            a datagram socket, or not listening.
    """
    where = f"socket from systemd (fd {inherited.fd}, name {inherited.name!r})"
    try:
        sock = socket.socket(fileno=inherited.fd)
    except OSError as exc:
        raise ConfigError(f"{where}: not a socket: {exc.strerror}") from None
    try:
        # A datagram socket must be one; anything else, a listening stream socket.
        dgram = sock.type == socket.SOCK_DGRAM
        check_listening(sock, where, socket.SOCK_DGRAM if dgram else socket.SOCK_STREAM)
    except ConfigError:
        sock.close()
        raise
    return sock


def bind(sock: socket.socket, endpoint: Endpoint, unix_mode: int) -> None:
    """Bind our own socket for `endpoint` (TCP: SO_REUSEADDR; IP: IPv6-only; UNIX: mode, owner).

    A UNIX socket file gets its mode from the umask at bind(), and its owner
    (`endpoint.owner`, as root) through `_give_away`: nothing is done to the
    path once it exists, where another user could have put a symlink by then.

    Raises:
        OSFailure: the address is in use or unavailable, or the socket file was
            replaced before its owner could be set.
        PermissionFailure: binding needs privileges we lack.
        ConfigError: a UNIX path is taken by a file that is not a socket.
    """
    where = f"service {endpoint.service!r}: listen {endpoint.address}"
    try:
        if sock.family == socket.AF_UNIX:
            assert isinstance(endpoint.sockaddr, str)  # noqa: S101 (AF_UNIX implies a path)
            _remove_stale_socket(endpoint.sockaddr, where, endpoint.type)
            old_umask = os.umask(0o777 & ~unix_mode)
            try:
                sock.bind(endpoint.sockaddr)
            finally:
                os.umask(old_umask)
            if endpoint.owner is not None:
                _give_away(endpoint.sockaddr, endpoint.owner, where)
            return
        if endpoint.type == socket.SOCK_STREAM:
            # Not on UDP: there, any local user's socket with SO_REUSEADDR could bind the
            # port too, and take its datagrams (the forker sets it for a program's answers).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(endpoint.sockaddr)
    except PermissionError as exc:
        raise PermissionFailure(f"{where}: cannot bind: {exc.strerror}") from None
    except OSError as exc:
        raise OSFailure(f"{where}: cannot bind: {exc.strerror}") from None


def _give_away(path: str, owner: tuple[int, int], where: str) -> None:
    """Give the socket file just bound at `path` to `owner` (uid, gid), following nothing.

    Whoever may write the socket's directory can replace the file by a symlink
    (or another file) between bind() and here. So the name is opened without
    following it (O_PATH | O_NOFOLLOW: a symlink is opened as itself), the
    inode opened must be what bind() made (a socket, ours, with one name: a
    hard link to someone else's socket has two), and that very inode is
    changed, through /proc/self/fd (fchown() refuses O_PATH descriptors).

    Raises:
        OSFailure: the file is not the socket we made, or cannot be changed.
    """
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OSFailure(f"{where}: cannot open {path}: {exc.strerror}") from None
    try:
        found = os.fstat(fd)
        if not stat.S_ISSOCK(found.st_mode) or found.st_uid != os.geteuid() or found.st_nlink != 1:
            msg = f"{where}: {path} was replaced after bind(): not changing its owner"
            raise OSFailure(msg)
        os.chown(f"/proc/self/fd/{fd}", *owner)
    except OSError as exc:
        raise OSFailure(f"{where}: cannot chown {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _remove_stale_socket(path: str, where: str, kind: int = socket.SOCK_STREAM) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{where}: {path} exists and is not a socket")
    # Probed with our own type: a socket of another type bound there answers
    # EPROTOTYPE (alive, so in use), a stale file ECONNREFUSED.
    with socket.socket(socket.AF_UNIX, kind) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno == errno.EPROTOTYPE:
                raise OSFailure(f"{where}: {path} is in use by another process") from None
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
        else:
            raise OSFailure(f"{where}: {path} is in use by another process")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Listener:
    """A socket the daemon holds for a service (listening, or bound: datagrams) for the forker."""

    __slots__ = ("bound_path", "endpoint", "socket")

    def __init__(self, endpoint: Endpoint, unix_mode: int) -> None:
        """Take the adopted socket (it must listen), or bind and listen on our own (datagram: bind).

        Raises:
            SockdError: binding failed, or an adopted socket is unusable.
        """
        self.endpoint = endpoint
        self.bound_path: str | None = None  # a UNIX socket file we created, to remove
        where = f"service {endpoint.service!r}: listen {endpoint.address}"
        try:
            self.socket = endpoint.adopted or socket.socket(endpoint.family, endpoint.type)
        except OSError as exc:
            raise OSFailure(f"{where}: cannot create a socket: {exc.strerror}") from None
        try:
            if endpoint.adopted is not None:
                where = f"socket of service {endpoint.service!r}"
                listeners.check_listening(self.socket, where, endpoint.type)
            else:
                bind(self.socket, endpoint, unix_mode)
                if self.socket.family == socket.AF_UNIX:
                    self.bound_path = str(endpoint.sockaddr)
                if endpoint.type == socket.SOCK_STREAM:
                    self.socket.listen(socket.SOMAXCONN)
        except OSError as exc:
            self.close()
            raise OSFailure(f"{where}: cannot listen: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        """Return the socket's descriptor (-1 once closed)."""
        return self.socket.fileno()

    def describe(self) -> dict[str, Any]:
        """Return the listener as the `starting` event shows it."""
        return {
            "service": self.endpoint.service,
            "address": describe(self.socket.getsockname(), self.endpoint.type),
            "origin": self.origin,
            "fd_name": self.endpoint.fd_name,
        }

    @property
    def origin(self) -> str:
        """Return "bound" (by us now), "stored" (by us before, kept by systemd) or "adopted"."""
        if self.endpoint.adopted is None:
            return "bound"
        return "stored" if is_stored(self.endpoint.fd_name) else "adopted"

    def close(self) -> None:
        """Close the socket, and remove a UNIX socket file we created (once)."""
        self.socket.close()
        if self.bound_path:
            path, self.bound_path = self.bound_path, None
            with contextlib.suppress(OSError):
                os.unlink(path)
