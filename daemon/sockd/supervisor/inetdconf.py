"""inetd.conf (openbsd-inetd's syntax) read into services for `sockd import inetd` (the daemon)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import socket
from typing import TYPE_CHECKING

from sockd.supervisor.config import MAX_ARGS, MAX_RATE
from sockd.supervisor.importer import (
    Entry,
    lines,
    listen_addresses,
    port_of,
    read_text,
    set_builtin,
    set_program,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sockd.supervisor.importer import Resolved

DEFAULT_PATH = "/etc/inetd.conf"
OFF = "#<off>#"  # update-inetd --disable's mark
_FIELD = re.compile(r"[^ \t]+")
# The daemon reads the file at each SIGHUP, in its loop: a few hundred ms at most (the
# watchdog waits 30 s). A real inetd.conf is a few kB.
MAX_BYTES = 4 << 20
MAX_FIELDS = 6 + MAX_ARGS  # service, socket type, protocol, wait, user, server, its argv
_FAMILIES = {
    "tcp": (socket.AF_INET, socket.AF_INET6),  # openbsd-inetd: both, one socket each
    "tcp4": (socket.AF_INET,),
    "tcp6": (socket.AF_INET6,),
    "tcp46": (socket.AF_INET, socket.AF_INET6),
}
_UDP = {  # the same families as TCP's
    "udp": _FAMILIES["tcp"],
    "udp4": _FAMILIES["tcp4"],
    "udp6": _FAMILIES["tcp6"],
    "udp46": _FAMILIES["tcp46"],
}


def read(path: str = DEFAULT_PATH) -> list[Entry]:
    """Read every service line of the inetd.conf at `path`, enabled or disabled by update-inetd.

    Raises:
        ConfigError: the file cannot be read.
    """
    return list(entries(path))


def entries(path: str, *, enabled: bool = False) -> Iterator[Entry]:
    """Yield the service lines of the inetd.conf at `path` one by one (`enabled`: those only).

    As openbsd-inetd reads them: a line that starts with a space or a tab
    continues the service line before it (more arguments, or the rest of its
    fields); a line `HOST[,HOST...]:` alone sets the local addresses of the
    lines after it (`*:`, every address, before the first), and `HOST:` may
    stand apart from the service. A service line that is not UTF-8 is a
    failed entry; a comment that is not is a comment (old files have Latin-1
    ones).

    Raises:
        ConfigError: the file cannot be read.
    """
    hosts = ["*"]
    resolved: Resolved = {}  # a host name is looked up once a read (HOST: lines are shared)
    read: _Read | None = None  # the service line read so far, and its continuations
    for number, raw in lines(read_text(path, errors="surrogateescape", limit=MAX_BYTES)):
        if read is not None and not read.disabled and raw[:1] in (" ", "\t"):
            read.fields += _fields(raw, MAX_FIELDS + 1 - len(read.fields))
            read.utf8 = read.utf8 and _is_utf8(raw)
            continue
        if read is not None:
            hosts, entry = read.entry(path, hosts, resolved)
            if entry is not None:
                yield entry
            read = None
        line = raw.strip(" \t")
        disabled = ""
        if line.startswith(OFF):
            line = line.removeprefix(OFF).strip(" \t")
            if enabled or not line:  # `#<off>#` alone: a comment
                continue
            disabled = f"disabled by update-inetd ({OFF})"
        elif not line or line.startswith("#"):
            continue
        read = _Read(number, _fields(line, MAX_FIELDS + 1), disabled, _is_utf8(line))
    if read is not None:
        hosts, entry = read.entry(path, hosts, resolved)
        if entry is not None:
            yield entry


@dataclasses.dataclass
class _Read:
    """A service line read, with the lines that continue it."""

    number: int
    fields: list[str]  # as inetd: fields apart by spaces and tabs only
    disabled: str
    utf8: bool

    def entry(
        self, path: str, hosts: list[str], resolved: Resolved
    ) -> tuple[list[str], Entry | None]:
        """Return the local addresses for the lines after it, and its entry (None: a HOST: line)."""
        origin, fields = f"{path}:{self.number}", self.fields
        if not self.utf8:
            shown = " ".join(fields).encode(errors="surrogateescape").decode(errors="replace")
            entry = Entry(origin, shown, (shown.split() or ["line"])[0], disabled=self.disabled)
            entry.fail("not UTF-8")
            return hosts, entry
        if len(fields) > MAX_FIELDS:
            entry = Entry(origin, " ".join(fields[:7]) + " ...", fields[0], disabled=self.disabled)
            entry.fail(f"more than {MAX_FIELDS} fields (exec takes {MAX_ARGS} items at most)")
            return hosts, entry
        if fields[0].endswith(":") and len(fields) == 1:
            return (fields[0][:-1].split(",") if not self.disabled else hosts), None
        if fields[0].endswith(":"):  # `HOST: service ...`
            fields = [fields[0] + fields[1], *fields[2:]]
        source = f"{OFF} {' '.join(fields)}" if self.disabled else " ".join(fields)
        return hosts, _entry(origin, source, fields, (hosts, resolved), self.disabled)


def _fields(line: str, most: int) -> list[str]:
    """Return the first `most` fields of `line`: a line of millions is never a list of them."""
    return [match.group() for match in itertools.islice(_FIELD.finditer(line), max(most, 0))]


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate: a byte that was not UTF-8
        return False
    return True


def _entry(
    origin: str, line: str, fields: list[str], where: tuple[list[str], Resolved], disabled: str
) -> Entry:
    """Return the entry of a service line; `where` is its hosts, and the names looked up so far."""
    hosts, resolved = where
    head, sep, service = fields[0].rpartition(":")
    if sep and head:
        hosts = head.split(",")
    entry = Entry(origin, line, service, disabled=disabled)
    if len(fields) < 6:
        entry.fail(
            f"{len(fields)} fields: expected service, socket type, protocol, wait, user, server"
        )
        return entry
    socket_type, protocol_field, wait, user, server, *argv = fields[1:]
    protocol, *buffers = protocol_field.split(",")
    if protocol == "unix":  # the service field is the socket's path
        entry.base = os.path.basename(service) or service
    if protocol != "tcp":
        entry.suffix = protocol
    _listen(entry, service, (socket_type, protocol), (hosts, resolved))
    entry.lost += [f"{option}: sockd does not size socket buffers" for option in buffers]
    _wait(entry, wait, internal_dgram=server == "internal" and socket_type == "dgram")
    if server == "internal":
        if entry.keys.pop("wait", False):  # (inetd.conf says wait for internal dgram services)
            entry.notes.append("wait: an internal service is served by sockd itself")
        set_builtin(entry, service)
        return entry
    set_program(entry, server, argv)
    name, sep, group = user.partition(":")
    if not sep:
        name, sep, group = user.partition(".")
    entry.keys["user"] = name
    if group:
        entry.keys["group"] = group
    return entry


def _listen(
    entry: Entry, service: str, kind: tuple[str, str], where: tuple[list[str], Resolved]
) -> None:
    socket_type, protocol = kind
    if protocol.startswith("rpc/"):
        entry.fail(f"{protocol}: RPC services (through the portmapper) have no equivalent")
    elif protocol in _UDP or socket_type == "dgram":
        _datagrams(entry, service, kind, where)
    elif socket_type != "stream":
        entry.fail(f"socket type {socket_type!r}: sockd serves stream sockets only")
    elif protocol == "unix":
        entry.keys["listen"] = [f"unix:{service}"]
    elif protocol not in _FAMILIES:
        entry.fail(f"protocol {protocol!r}: expected tcp, tcp4, tcp6, tcp46 or unix")
    else:
        try:
            port = port_of(service, "tcp")
            entry.keys["listen"] = listen_addresses(where[0], _FAMILIES[protocol], port, where[1])
        except ValueError as exc:
            entry.fail(str(exc))
        if protocol == "tcp46":
            entry.notes.append("tcp46: IPv4 clients arrive on an IPv4 socket, not IPv4-mapped")


def _datagrams(
    entry: Entry, service: str, kind: tuple[str, str], where: tuple[list[str], Resolved]
) -> None:
    """Listen on a `dgram udp` line's UDP addresses, or a `dgram unix` line's path."""
    socket_type, protocol = kind
    if socket_type == "dgram" and protocol == "unix":
        entry.keys["listen"] = [f"unix-dgram:{service}"]
    elif socket_type == "dgram" and protocol in _UDP:
        try:
            port = port_of(service, "udp")
            addresses = listen_addresses(where[0], _UDP[protocol], port, where[1])
        except ValueError as exc:
            entry.fail(str(exc))
            return
        entry.keys["listen"] = [f"udp:{address}" for address in addresses]
    else:
        entry.fail(f"{socket_type} {protocol}: datagram sockets are udp (or unix) ones")


def _wait(entry: Entry, wait: str, *, internal_dgram: bool = False) -> None:
    mode, dot, maximum = wait.partition(".")
    if mode == "wait" and internal_dgram:
        # inetd answers a datagram of an internal service itself, wait or not
        # (Debian's files write those lines `wait`): so do sockd's built-ins.
        pass
    elif mode == "wait":
        entry.keys["wait"] = True  # the program gets the listening socket
    elif mode != "nowait":
        entry.fail(f"{wait!r}: expected wait or nowait[.max]")
    if not dot:
        return
    if not (maximum.isascii() and maximum.isdigit() and int(maximum) > 0):
        entry.lost.append(f"{wait!r}: the maximum is not a positive number (ignored)")
        return
    count = int(maximum)
    entry.keys["rate"] = max(round(count / 60, 3), 0.001)
    entry.keys["burst"] = min(count, MAX_RATE)
    if entry.keys.get("wait"):  # a wait service's rate and burst count its program's starts
        entry.notes.append(
            f"{wait}: {count} starts a minute, as rate (a second) and burst; inetd stops the "
            "service for 10 minutes past it, sockd pauses it until its bucket is full again"
        )
        return
    entry.notes.append(
        f"{wait}: {count} a minute, as rate (a second) and burst; inetd stops the "
        "service for 10 minutes past it, sockd refuses only the connections over it"
    )
