"""`sockd import` in the daemon's command: converted services, checked as `check` does, as TOML.

`sockd.supervisor.inetdconf` and `sockd.supervisor.xinetdconf` read the
files into `Entry`s; `convert` validates each enabled one against what came
before it (the same `from_dict` that `check` runs, so the output passes
`sockd check`), keeps every entry that fails, is disabled, or lost a part as
a comment, and renders the result.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
from typing import TYPE_CHECKING, Any

from sockd.errors import ConfigError
from sockd.handlers import BUILTINS
from sockd.supervisor import config as sockd_config
from sockd.supervisor.tables import one_line, toml_pairs

if TYPE_CHECKING:
    from collections.abc import Iterator

# Where tcpd finds a daemon named without a path (Debian's REAL_DAEMON_DIR).
TCPD_DAEMON_DIR = "/usr/sbin"
# TCP wrappers' rules (hosts_access(5)): tcpd and Debian's xinetd (built with libwrap) apply them.
HOSTS_ACCESS = ("/etc/hosts.allow", "/etc/hosts.deny")
EX_PARTIAL = 1  # `sockd import`: converted, but parts were left as comments
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")
_KEY_ORDER = ("name", "handler", "exec", "listen", "user", "group", "env", "rlimits")


@dataclasses.dataclass
class Entry:
    """One service read from an inetd.conf line or an xinetd block, as converted so far.

    `keys` are the `[[service]]` keys (`name` is given by `convert`); `notes`
    are comments for the reader; `lost` are parts with no equivalent in sockd
    (comments too, and listed on stderr); `disabled` says why the service is
    kept as a comment although it converted (it is off where it came from).
    """

    origin: str  # FILE:LINE
    source: str  # the line, or `service NAME`, as written
    base: str  # what its name is made of
    suffix: str = ""  # what tells it apart from another of that name (echo-tcp6)
    keys: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)
    disabled: str = ""
    failed: bool = False  # a part it cannot do without was lost: kept as a comment
    rejected: str = ""  # what `sockd check` would say of it: kept as a comment

    def fail(self, problem: str) -> None:
        """Record a part without which the service cannot be served: it stays a comment."""
        self.lost.append(problem)
        self.failed = True

    @property
    def served(self) -> bool:
        """Tell whether the service goes into the output as a `[[service]]` (not a comment)."""
        return not (self.failed or self.disabled or self.rejected)


@dataclasses.dataclass
class Result:
    """The TOML text, the lines for stderr, and how many services it serves."""

    text: str
    problems: list[str]
    served: int


def read_text(path: str, errors: str = "strict", limit: int = sockd_config.MAX_FILE_BYTES) -> str:
    """Return the text of the file at `path` (UTF-8, at most `limit` bytes: a config file's).

    With `errors="surrogateescape"` bytes that are not UTF-8 are kept as
    lone surrogates, for the caller to refuse in the lines that hold them.

    Only a regular file is read, and opening never waits (`read_file`), as
    xinetd skips what is not a regular file.

    Raises:
        ConfigError: one line naming the file and why it cannot be read.
    """
    where = one_line(path, 4096)
    raw = sockd_config.read_file(path, limit)
    try:
        return raw.decode(errors=errors)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{where}:{line}: not UTF-8") from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield the lines of `text` with their numbers, split at newlines only, as inetd splits them.

    `str.splitlines` would also split at form feeds, vertical tabs, U+2028...:
    a comment holding one would hide a line from inetd (and from `grep`) that
    sockd served, and every line after it would get the wrong number. One
    line at a time: a file of many short lines is never a list in memory.
    """
    start, number = 0, 1
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        yield number, text[start:end].removesuffix("\r")  # CRLF: a file from elsewhere
        start, number = end + 1, number + 1


def port_of(service: str, protocol: str) -> int:
    """Return the port of `service` (a number, or a name in /etc/services) for tcp or udp.

    Raises:
        ValueError: not a port number, nor a name known for `protocol`.
    """
    if service.isascii() and service.isdigit():
        if not 0 < int(service) <= 65535:
            raise ValueError(f"port {service} is not from 1 to 65535")
        return int(service)
    try:
        return socket.getservbyname(service, protocol)
    except OSError:
        raise ValueError(f"service {service!r} is not in /etc/services for {protocol}") from None


# Host names looked up, by (name, family): their (address, family) pairs (none: failed).
Resolved = dict[tuple[str, int], list[tuple[str, int]]]


def listen_addresses(
    hosts: list[str],
    families: tuple[int, ...],
    port: int,
    resolved: Resolved | None = None,
) -> list[str]:
    """Return `listen` entries for `hosts` ("*" is every address) of `families` on `port`.

    An address of another family than `families` is left out; a host name is
    kept as it is (sockd binds every address it resolves to) when both
    families are asked for, else resolved to the addresses of the one asked
    (once a name and family for as long as `resolved` lives: a reader gives
    one to a file's lines, which may share one `HOST:` line's names).

    Raises:
        ValueError: more hosts than a service may listen on, a host name that
            does not resolve, or no address left.
    """
    if len(hosts) > sockd_config.MAX_LISTEN:
        raise ValueError(f"{len(hosts)} hosts: at most {sockd_config.MAX_LISTEN}")
    found: dict[str, None] = {}  # ordered, and a test of membership in constant time
    pairs: list[tuple[str, int]]
    for host in hosts:
        bare = host.removeprefix("[").removesuffix("]")
        if bare in ("*", ""):
            pairs = [("0.0.0.0", socket.AF_INET), ("::", socket.AF_INET6)]
        elif (address := _ip(bare)) is not None:
            pairs = [(str(address), socket.AF_INET6 if address.version == 6 else socket.AF_INET)]
        elif len(families) == 2:
            found[f"{bare}:{port}"] = None
            continue
        else:
            pairs = _resolve(bare, families[0], {} if resolved is None else resolved)
        for text, family in pairs:
            if family in families:
                found[f"[{text}]:{port}" if family == socket.AF_INET6 else f"{text}:{port}"] = None
    if not found:
        raise ValueError(f"no address of {' '.join(hosts)} for this protocol")
    return list(found)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _resolve(host: str, family: int, resolved: Resolved) -> list[tuple[str, int]]:
    """Return the (address, family) pairs of `host`: looked up once in `resolved`, a failure too."""
    if (host, family) not in resolved:
        try:
            infos = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            infos = []
        resolved[host, family] = [(str(info[4][0]), family) for info in infos]
    if not resolved[host, family]:
        raise ValueError(f"host {host!r} does not resolve")
    return resolved[host, family]


def wrapper_rules(entry: Entry, what: str) -> None:
    """Say that TCP wrappers' rules no longer apply: a lost part if there are any rules.

    Debian ships /etc/hosts.allow and /etc/hosts.deny with comments only;
    dropping the wrapper then changes nothing. A rule in either would have
    refused some clients that sockd now serves: that is listed.
    """
    ruled = [path for path in HOSTS_ACCESS if _has_rules(path)]
    if ruled:
        files = " and ".join(ruled)
        entry.lost.append(f"{what}: the rules in {files} no longer apply; write them as allow/deny")
    else:
        entry.notes.append(f"{what}: {' and '.join(HOSTS_ACCESS)} hold no rules: nothing is lost")


def _has_rules(path: str) -> bool:
    """Tell whether the file at `path` may hold rules: only a file that is not there holds none.

    A file there that cannot be read (not UTF-8, unreadable, not a regular
    file) is taken as holding rules: sockd never serves wider than it can tell.
    """
    try:
        text = read_text(path, errors="surrogateescape")  # a Latin-1 comment is still a comment
    except ConfigError:
        return os.path.lexists(path)  # absent: hosts_access(5) then allows everyone, as sockd does
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def set_program(entry: Entry, server: str, argv: list[str]) -> None:
    """Set `exec` from a server path and its argv (argv[0] included), as inetd runs them.

    sockd runs a program with exec[0] as both its path and argv[0], so tcpd,
    which finds the real daemon through its argv[0], cannot be kept: the real
    daemon is run directly, and the rules of /etc/hosts.allow and
    /etc/hosts.deny, if any, no longer apply to it (a part lost: the service
    may be open wider now).
    """
    name = argv[0] if argv else os.path.basename(server)
    if os.path.basename(server) == "tcpd":
        daemon = name if name.startswith("/") else f"{TCPD_DAEMON_DIR}/{name}"
        entry.keys["exec"] = [daemon, *argv[1:]]
        wrapper_rules(entry, f"tcpd dropped ({daemon} is run directly)")
        return
    entry.keys["exec"] = [server, *argv[1:]]
    if os.path.basename(name) != os.path.basename(server):
        entry.lost.append(
            f"argv[0] {name!r} is not the program's name: sockd runs {server} as "
            f"{os.path.basename(server)!r}"
        )


def set_builtin(entry: Entry, service: str) -> None:
    """Serve an internal service with sockd's built-in of that name, if it has one."""
    if service in BUILTINS:
        entry.keys["handler"] = service
    else:
        entry.fail(f"internal service {service!r} has no sockd built-in")


def safe_name(text: str) -> str:
    """Return `text` as a valid service name (characters sockd refuses become '-')."""
    return (_UNSAFE.sub("-", text) or "service")[:56]  # room for -2, -3...


def convert(entries: list[Entry], what: str) -> Result:
    """Name, validate and render `entries`, read from `what` (a file, for the header).

    Each served entry is validated with the services before it, by the
    function `sockd check` runs; one that fails is kept as a comment with
    the reason. Every lost part is one line for stderr, naming FILE:LINE.
    """
    names: set[str] = set()
    accepted: list[dict[str, Any]] = []
    for entry in entries:
        entry.keys = {"name": _unique(entry, names), **entry.keys}
        if entry.failed:
            continue
        try:
            sockd_config.from_dict({"service": [*accepted, entry.keys]}, entry.origin)
        except ConfigError as exc:
            reason = str(exc).removeprefix(f"{entry.origin}: ")
            if entry.disabled:
                entry.notes.append(f"sockd check would refuse it: {reason}")
            else:
                entry.rejected = reason
        else:
            if entry.served:
                accepted.append(entry.keys)
    # What a disabled service lost costs nothing now: its comments say it.
    problems = [
        f"{one_line(entry.origin)}: {entry.keys['name']}: {one_line(lost)}"
        for entry in entries
        if not entry.disabled
        for lost in [
            *entry.lost,
            *([f"kept as a comment: {entry.rejected}"] * bool(entry.rejected)),
        ]
    ]
    lines = [
        f"# Converted by `sockd import` from {one_line(what)}; check it with `sockd check`.",
        "# Parts with no equivalent in sockd are comments, listed on stderr as well.",
    ]
    for entry in entries:
        lines += ["", *_render(entry)]
    return Result("\n".join(lines) + "\n", problems, len(accepted))


def _unique(entry: Entry, names: set[str]) -> str:
    base = safe_name(entry.base)
    name = base if base not in names or not entry.suffix else f"{base}-{entry.suffix}"
    name = safe_name(name)
    index = 2
    while name in names:
        name = f"{base}-{index}"
        index += 1
    names.add(name)
    return name


def _render(entry: Entry) -> list[str]:
    lines = [f"# {one_line(entry.origin)}: {one_line(entry.source)}"]
    lines += [f"# - {one_line(note)}" for note in entry.notes]
    lines += [f"# - no equivalent: {one_line(lost)}" for lost in entry.lost]
    if entry.rejected:
        lines.append(f"# - kept as a comment: {one_line(entry.rejected)}")
    if entry.disabled:
        lines.append(f"# - {one_line(entry.disabled)}: uncomment to serve it")
    values = {key: entry.keys[key] for key in _KEY_ORDER if key in entry.keys}
    values |= {key: value for key, value in entry.keys.items() if key not in values}
    if "env" in values:
        values["env"] = tuple(sorted(values["env"].items()))
    if "rlimits" in values:  # in the order of xinetd's attributes: by name
        values["rlimits"] = tuple(values["rlimits"].items())
    rendered = toml_pairs(
        {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
    )
    table = ["[[service]]", *rendered]
    return lines + (table if entry.served else [f"# {line}" for line in table])
