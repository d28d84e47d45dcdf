"""Listening sockets (a leaf): systemd's claimed (sd_listen_fds(3)) and checked; addresses."""

from __future__ import annotations

import os
import resource
import socket
import sys

from sockd.errors import ConfigError

TYPE_CHECKING = False  # typing is not imported at run time: the forker stays small
if TYPE_CHECKING:
    from collections.abc import MutableMapping
    from typing import Any


SD_LISTEN_FDS_START = 3
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# What a listener may be: anything else (AF_VSOCK, AF_NETLINK...) has addresses
# that sockd can neither match, log nor filter.
FAMILIES = {socket.AF_INET: "AF_INET", socket.AF_INET6: "AF_INET6", socket.AF_UNIX: "AF_UNIX"}


class InheritedFd:
    """A file descriptor passed by systemd, with its `FileDescriptorName=`."""

    __slots__ = ("fd", "name")

    def __init__(self, fd: int, name: str | None) -> None:
        """Name descriptor `fd`."""
        self.fd = fd
        self.name = name

    def __repr__(self) -> str:
        return f"InheritedFd({self.fd}, {self.name!r})"


class Endpoint:
    """Where one server listens: an adopted socket, or an address to bind.

    `type` is the socket type: SOCK_STREAM (TCP, UNIX stream) or SOCK_DGRAM
    (UDP, UNIX datagram).
    """

    __slots__ = ("address", "adopted", "family", "fd_name", "owner", "service", "sockaddr", "type")

    def __init__(  # noqa: PLR0913, PLR0917 (one value per attribute)
        self,
        service: str,
        family: int,
        sockaddr: str | tuple[str, int] | tuple[str, int, int, int],
        address: object = None,
        adopted: socket.socket | None = None,
        fd_name: str | None = None,
        type: int = socket.SOCK_STREAM,  # noqa: A002 (socket.socket's name for it)
    ) -> None:
        """Describe a listener of `service`."""
        self.service = service
        self.family = family
        self.sockaddr = sockaddr
        self.address = address
        self.adopted = adopted
        self.fd_name = fd_name
        self.type = type
        self.owner: tuple[int, int] | None = None  # uid, gid given a UNIX socket file we bind


def listen_fds(environ: MutableMapping[str, str], pid: int) -> list[InheritedFd]:
    """Return the sockets systemd passed to process `pid`, as sd_listen_fds(3) does.

    The LISTEN_* variables are removed from `environ` in every case, so no child
    ever sees them. Each passed descriptor gets FD_CLOEXEC.

    Raises:
        ConfigError: a variable is garbage, or names and descriptors disagree.
    """
    pid_text, count_text, names_text = (environ.pop(name, None) for name in _LISTEN_VARS)
    if pid_text is None or count_text is None:
        return []
    listen_pid = ascii_number(pid_text)
    if not listen_pid:
        raise ConfigError(f"environment: LISTEN_PID={pid_text!r} is not a process id")
    if listen_pid != pid:
        return []  # meant for another process (our parent, typically)
    count = ascii_number(count_text)
    if count is None:
        raise ConfigError(f"environment: LISTEN_FDS={count_text!r} is not a count")
    # Checked before anything is allocated for them: no process has more.
    most = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - SD_LISTEN_FDS_START
    if count > most:
        msg = f"environment: LISTEN_FDS={count} is more than the {most} descriptors allowed"
        raise ConfigError(f"{msg} (RLIMIT_NOFILE)")
    inherited = []
    for offset, name in enumerate(_fd_names(names_text, count)):
        fd = SD_LISTEN_FDS_START + offset
        try:
            os.set_inheritable(fd, False)
        except OSError:
            msg = f"environment: LISTEN_FDS={count} but file descriptor {fd} is not open"
            raise ConfigError(msg) from None
        inherited.append(InheritedFd(fd, name or None))
    return inherited


def _fd_names(text: str | None, count: int) -> list[str | None]:
    """Return the names LISTEN_FDNAMES gives `count` descriptors (None: no name).

    Raises:
        ConfigError: there are more or fewer names than descriptors.
    """
    if text is None or not count:  # zero descriptors: none, whatever the names ("" is one)
        return [None] * count
    names: list[str | None] = list(text.split(":"))
    if len(names) != count:
        msg = (
            f"environment: LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count} descriptors"
        )
        raise ConfigError(msg)
    return names


class _Inherited:
    """The sockets systemd passed this process, read once per process, each taken once.

    The LISTEN_* variables are parsed (and removed from os.environ) at the
    first `claim` in a process; a forked child starts afresh, with nothing:
    LISTEN_PID names its parent, and the variables are gone anyway.
    """

    __slots__ = ("error", "fds", "pid", "untaken")

    def __init__(self) -> None:
        self.pid = 0  # the process that read them
        self.fds: list[InheritedFd] = []
        self.untaken: list[InheritedFd] = []
        self.error: str | None = None  # what was wrong with the variables: raised again

    def available(self) -> list[InheritedFd]:
        """Return the sockets not taken yet, reading the variables if this process has not.

        Raises:
            ConfigError: the variables are garbage (at each call in this process).
        """
        pid = os.getpid()
        if self.pid != pid:
            self.pid, self.error = pid, None
            try:
                self.fds = listen_fds(os.environ, pid)
            except ConfigError as exc:
                self.fds, self.error = [], str(exc)
            self.untaken = list(self.fds)
        if self.error is not None:
            raise ConfigError(self.error)
        return self.untaken


_inherited = _Inherited()


def claim(
    family: int,
    address: object,
    fd_name: str | None = None,
    type: int = socket.SOCK_STREAM,  # noqa: A002 (socket.socket's name for it)
) -> InheritedFd | None:
    """Take the socket systemd passed this process for a server of `family` at `address`.

    As sd_listen_fds(3) describes, among the untaken sockets of `family` and
    `type` (SOCK_STREAM, or SOCK_DGRAM) systemd passed (others are left
    alone, for the program's other servers): the one named `fd_name`
    (FileDescriptorName=), and no other if a name is given; else the one
    bound to `address` (a TCP port 0 matches none), else the only one. Each
    is taken once per process, so several servers take one each. Its
    descriptor is returned as it is (close-on-exec): the caller wraps it and
    checks that it listens (`check_listening`).

    Raises:
        ConfigError: the LISTEN_* variables are garbage.
    """
    available = _inherited.available()
    fitting = []  # the untaken sockets of the family and type, and where each is bound
    for inherited in available:
        bound = _bound(inherited.fd, family, type)
        if bound is not None:
            fitting.append((inherited, bound))
    if fd_name is not None:
        chosen = next((fd for fd, _ in fitting if fd.name == fd_name), None)
    else:
        chosen = next((fd for fd, bound in fitting if bound_at(family, address, bound)), None)
        if chosen is None and len(fitting) == 1:
            chosen = fitting[0][0]
    if chosen is not None:
        available.remove(chosen)
    return chosen


def _bound(fd: int, family: int, type: int) -> object:  # noqa: A002 (socket.socket's name)
    """Return where socket `fd` is bound, if it is a socket of `family` and `type` (else None)."""
    try:
        probe = socket.socket(fileno=fd)
    except OSError:  # closed, or not a socket
        return None
    try:
        if probe.family != family:
            return None
        if probe.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != type:
            return None
        return probe.getsockname()
    except OSError:
        return None
    finally:
        probe.detach()


def bound_at(family: int, address: object, bound: object) -> bool:
    """Tell whether a socket of `family` bound to `bound` is at `address` (numeric, or a path).

    A relative path and its absolute form are one place; a host name is never
    resolved here (the daemon resolves its configured names first).
    """
    if family == socket.AF_UNIX:
        return isinstance(bound, (str, bytes)) and _same_path(address, bound)
    return isinstance(bound, tuple) and _same_ip(family, address, bound)


def _same_ip(family: int, address: object, bound: tuple[Any, ...]) -> bool:
    """Tell whether an IP socket bound to `bound` is at `address` (a numeric host; "": any)."""
    # Port 0 asks for the kernel's choice: it matches no socket (an unbound one has port 0).
    if not isinstance(address, tuple) or len(address) < 2 or not address[1]:
        return False
    if address[1] != bound[1]:
        return False
    host = address[0]
    if host == "":  # socketserver's spelling of "every address"
        return bound[0] in ("0.0.0.0", "::")
    try:
        return socket.inet_pton(family, host) == socket.inet_pton(family, bound[0])
    except (OSError, TypeError):
        return False  # a host name: never resolved here


def _same_path(address: object, bound: str | bytes) -> bool:
    """Tell whether a UNIX socket bound to `bound` is at `address` (relative paths resolved)."""
    if not isinstance(address, (str, bytes)) or not address or not bound:
        return False
    wanted, found = os.fsencode(address), os.fsencode(bound)
    if wanted == found:
        return True
    return wanted[:1] != b"\0" and os.path.abspath(wanted) == os.path.abspath(found)


def ascii_number(text: str, digits: int = 10) -> int | None:
    """Return the number `text` writes in at most `digits` ASCII digits, else None.

    For numbers from the environment: `str.isdigit()` alone accepts "²",
    which `int()` refuses, and `int()` alone accepts " 1", "+1", "1_0" and
    other scripts' digits.
    """
    if text.isascii() and text.isdigit() and len(text) <= digits:
        return int(text)
    return None


def check_listening(
    sock: socket.socket,
    where: str,
    type: int = socket.SOCK_STREAM,  # noqa: A002 (socket.socket's name for it)
) -> None:
    """Check that an inherited socket is a listening IP or UNIX stream socket, or of `type`.

    With `type` SOCK_DGRAM: an IP or UNIX datagram socket, bound (it has no
    listen state; unbound, it would have no address to serve).

    Raises:
        ConfigError: naming `where` and what is wrong.
    """
    if sock.family not in FAMILIES:
        family = getattr(sock.family, "name", str(sock.family))
        supported = ", ".join(FAMILIES.values())
        raise ConfigError(f"{where}: address family {family} is not supported ({supported})")
    found = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    if type == socket.SOCK_DGRAM:
        if found != socket.SOCK_DGRAM:
            raise ConfigError(f"{where}: not a datagram socket (use ListenDatagram=)")
        if not _is_bound(sock.getsockname()):
            raise ConfigError(f"{where}: a datagram socket not bound to any address")
        return
    if found != socket.SOCK_STREAM:
        raise ConfigError(f"{where}: not a stream socket (use ListenStream=)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ConfigError(f"{where}: not listening (Accept=yes is not supported)")


def _is_bound(sockname: object) -> bool:
    """Tell whether a socket's name is an address (an unbound one has port 0, or no path)."""
    if isinstance(sockname, tuple):
        return bool(sockname[1])
    return bool(sockname)


def describe(sockname: object, type: int = socket.SOCK_STREAM) -> str:  # noqa: A002
    """Write a socket address as the config does: `host:port`, `[v6]:port`, `unix:/path`.

    A datagram socket's (`type` SOCK_DGRAM): `udp:host:port`, `unix-dgram:/path`.
    """
    dgram = type == socket.SOCK_DGRAM
    if isinstance(sockname, tuple):
        host, port = sockname[0], sockname[1]
        text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return f"udp:{text}" if dgram else text
    return f"unix-dgram:{sockname}" if dgram else f"unix:{sockname}"


def client_text(request: Any, client_address: Any) -> str:
    """Describe a client: `ip:port`, `[ipv6]:port`, or `unix:uid=U,pid=P` from SO_PEERCRED.

    A UNIX datagram's sender (a datagram server's request is `(data, socket)`,
    with no peer) is the path it bound: `unix:/path`, or `unix` if it bound none.
    """
    if isinstance(client_address, tuple):
        return describe(client_address)
    try:
        pid, uid, _ = peer_credentials(request)
    except (OSError, AttributeError):  # no peer, or not a socket (a datagram server's request)
        # A UNIX datagram's sender is the path it bound, if any (None: it bound none).
        return describe(client_address) if client_address else "unix"
    return f"unix:uid={uid},pid={pid}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """Return the pid, uid and gid of a UNIX socket's peer (SO_PEERCRED).

    Raises:
        OSError: the socket has no such peer.
    """
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)  # struct ucred: 3 ints
    pid, uid, gid = (int.from_bytes(creds[at : at + 4], sys.byteorder) for at in (0, 4, 8))
    return pid, uid, gid
