"""xinetd.conf and its includes read into services for `sockd import xinetd`, in the daemon."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import pwd
import re
import socket
from typing import TYPE_CHECKING

from sockd.errors import ConfigError
from sockd.supervisor import rlimits as resource_limits
from sockd.supervisor.config import MAX_CHILDREN, MAX_RATE
from sockd.supervisor.importer import (
    Entry,
    lines,
    listen_addresses,
    port_of,
    read_text,
    set_builtin,
    set_program,
    wrapper_rules,
)
from sockd.supervisor.tables import one_line

if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_PATH = "/etc/xinetd.conf"
MAX_DEPTH = 32  # files including one another, at most
_ASSIGNMENT = re.compile(r"([A-Za-z_]+)\s*(\+=|-=|=)\s*(.*)")
# Attributes a service inherits from `defaults`; the cumulative ones add up there.
_INHERITED = {"bind", "per_source", "instances", "cps", "only_from", "no_access", "passenv"}
_INHERITED |= {"banner", "banner_success", "banner_fail", "umask", "groups", "max_load"}
_INHERITED |= {"log_type", "log_on_success", "log_on_failure"}
_CUMULATIVE = {"only_from", "no_access", "passenv", "log_on_success", "log_on_failure", "env"}
_CUMULATIVE |= {"disabled", "enabled", "log_type"}
_LOGS = {"log_type", "log_on_success", "log_on_failure"}
_DONE = {"id", "type", "flags", "disable", "socket_type", "protocol", "wait", "user", "group"}
_DONE |= {"server", "server_args", "port", "bind", "interface", "only_from", "no_access"}
_DONE |= {"instances", "per_source", "cps", "env", "passenv", "redirect"} | _LOGS
_NO_EQUIVALENT = {
    "banner": "sockd sends no banner",
    "banner_success": "sockd sends no banner",
    "banner_fail": "sockd sends no banner (a refused client gets `refusal`)",
    "access_times": "sockd serves at all hours",
    "max_load": "sockd does not watch the load average",
    "nice": "sockd does not change a program's priority",
    "umask": "a program inherits sockd's umask",
    "groups": "a program with `user` gets that user's groups",
    "deny_time": "sockd has no SENSOR services",
    "libwrap": "sockd does not call libwrap",
    "mdns": "sockd registers nothing with mDNS",
    "rpc_version": "sockd serves no RPC services",
    "rpc_number": "sockd serves no RPC services",
}
# xinetd's resource limits (xinetd.conf(5)): a program's `rlimits`.
_RLIMITS = {"rlimit_as": "as", "rlimit_cpu": "cpu", "rlimit_data": "data"}
_RLIMITS |= {"rlimit_files": "files", "rlimit_rss": "rss", "rlimit_stack": "stack"}
_DONE |= set(_RLIMITS)


@dataclasses.dataclass
class _Block:
    """A `service NAME { ... }` or `defaults { ... }` block: its assignments in order."""

    kind: str
    name: str
    origin: str
    assignments: list[tuple[str, str, list[str]]] = dataclasses.field(default_factory=list)


def read(path: str = DEFAULT_PATH) -> list[Entry]:
    """Read the xinetd.conf at `path` with its `include` files and `includedir` directories.

    Raises:
        ConfigError: a file that cannot be read or parsed, one line naming FILE:LINE.
    """
    blocks: list[_Block] = []
    _parse(path, blocks, ())
    defaults: dict[str, list[str]] = {}
    for block in blocks:
        if block.kind == "defaults":
            for attribute, operator, values in block.assignments:
                _assign(defaults, attribute, "+=" if operator == "=" else operator, values)
    return [_entry(block, defaults) for block in blocks if block.kind == "service"]


def _parse(path: str, blocks: list[_Block], including: tuple[str, ...]) -> None:
    """Read the blocks of the file at `path`, included by the files `including` (a loop fails)."""
    including = _include(path, including)
    block: _Block | None = None
    opened = False
    for origin, raw, words in _statements(path):
        if block is None:
            block = _top_level(origin, words, blocks, including)
            opened = block is not None and words[-1] == "{"
        elif not opened:
            if words != ["{"]:
                raise ConfigError(f"{one_line(origin)}: expected '{{' after {block.kind}")
            opened = True
        elif words == ["}"]:
            blocks.append(block)
            block = None
        else:
            match = _ASSIGNMENT.fullmatch(raw.strip())
            if match is None:
                problem = f"expected ATTRIBUTE = VALUE... (or '}}'), got {raw.strip()!r}"
                raise ConfigError(f"{one_line(origin)}: {one_line(problem)}")
            attribute, operator, values = match.groups()
            block.assignments.append((attribute, operator, values.split()))
    if block is not None:
        raise ConfigError(f"{one_line(block.origin)}: {block.kind} {block.name}: no closing '}}'")


def _statements(path: str) -> Iterator[tuple[str, str, list[str]]]:
    """Yield the lines of the file at `path` but blanks and comments: FILE:LINE, text, words.

    Raises:
        ConfigError: the file cannot be read, or such a line is not UTF-8 (a
            comment may be: old files have Latin-1 ones).
    """
    for number, raw in lines(read_text(path, errors="surrogateescape")):
        words = raw.split()
        if words and not words[0].startswith("#"):
            try:
                raw.encode()
            except UnicodeEncodeError:  # a lone surrogate: a byte that was not UTF-8
                raise ConfigError(f"{one_line(path)}:{number}: not UTF-8") from None
            yield f"{path}:{number}", raw, words


def _include(path: str, including: tuple[str, ...]) -> tuple[str, ...]:
    """Return `including` with `path` added, if it may be included there.

    Raises:
        ConfigError: an include loop, or files included too deep.
    """
    if os.path.realpath(path) in including:
        raise ConfigError(f"{one_line(path)}: included by itself (an include loop)")
    if len(including) >= MAX_DEPTH:  # each level is two frames of Python's stack
        raise ConfigError(f"{one_line(path)}: included more than {MAX_DEPTH} files deep")
    return (*including, os.path.realpath(path))


def _top_level(
    origin: str, words: list[str], blocks: list[_Block], including: tuple[str, ...]
) -> _Block | None:
    """Act on a line outside any block: return the block it opens, or include files."""
    keyword, *rest = words
    if rest and rest[-1] == "{":
        rest = rest[:-1]
    if keyword == "service" and len(rest) == 1:
        return _Block("service", rest[0], origin)
    if keyword == "defaults" and not rest:
        return _Block("defaults", "", origin)
    if keyword == "include" and len(rest) == 1:
        _parse(rest[0], blocks, including)
        return None
    if keyword == "includedir" and len(rest) == 1:
        try:
            names = sorted(os.listdir(rest[0]), key=os.fsencode)  # the C locale's order
        except OSError as exc:
            raise ConfigError(
                f"{one_line(origin)}: includedir {one_line(rest[0])}: cannot read: {exc.strerror}"
            ) from None
        for name in names:  # as xinetd: not a name with a dot, nor one ending in ~
            full = os.path.join(rest[0], name)
            if "." not in name and not name.endswith("~") and os.path.isfile(full):
                _parse(full, blocks, including)
        return None
    problem = (
        f"expected service NAME, defaults, include FILE or includedir DIR, got {' '.join(words)!r}"
    )
    raise ConfigError(f"{one_line(origin)}: {one_line(problem)}")


def _assign(values: dict[str, list[str]], attribute: str, operator: str, given: list[str]) -> None:
    if operator == "=":
        values[attribute] = list(given)
    elif operator == "+=":
        values[attribute] = [*values.get(attribute, []), *given]
    else:
        values[attribute] = [value for value in values.get(attribute, []) if value not in given]


def _entry(block: _Block, defaults: dict[str, list[str]]) -> Entry:
    values = {key: list(value) for key, value in defaults.items() if key in _INHERITED}
    for attribute, operator, given in block.assignments:
        # xinetd refuses += on a single value; the value is still what was meant.
        single = operator != "=" and attribute not in _CUMULATIVE
        _assign(values, attribute, "=" if single else operator, given)
    ident = _one(values, "id") or block.name
    entry = Entry(block.origin, f"service {block.name}", ident)
    if _one(values, "disable").lower() == "yes":
        entry.disabled = "disable = yes"
    elif ident in defaults.get("disabled", []):
        entry.disabled = "listed in defaults' disabled"
    elif "enabled" in defaults and ident not in defaults["enabled"]:
        entry.disabled = "not listed in defaults' enabled"
    types = {value.upper() for value in values.get("type", [])}
    flags = {value.upper() for value in values.get("flags", [])}
    for kind in sorted(types & {"RPC", "TCPMUX", "TCPMUXPLUS"}):
        entry.fail(f"type = {kind}: sockd serves no {kind} services")
    _listen(entry, block.name, values, flags)
    wait = _one(values, "wait").lower() == "yes" and "INTERNAL" not in types
    if wait:  # the program gets the listening socket
        entry.keys["wait"] = True
    if "INTERNAL" in types:
        set_builtin(entry, block.name)
    elif "redirect" in values:
        entry.fail(f"redirect = {' '.join(values['redirect'])}: sockd does not forward connections")
    else:
        _program(entry, values, flags)
    if wait:
        _unseen(entry, values)
    else:
        _access(entry, values)
    _limits(entry, values, wait=wait)
    _rlimits(entry, values)
    _the_rest(entry, values, flags)
    return entry


def _unseen(entry: Entry, values: dict[str, list[str]]) -> None:
    """Say that a wait service's clients are not checked: sockd never sees them."""
    for attribute in ("only_from", "no_access"):
        if values.get(attribute):
            entry.lost.append(
                f"{attribute} = {' '.join(values[attribute])}: sockd never sees a wait "
                "service's clients (the program takes them): restrict them in a firewall"
            )


def _one(values: dict[str, list[str]], attribute: str) -> str:
    return " ".join(values.get(attribute, []))


def _listen(entry: Entry, name: str, values: dict[str, list[str]], flags: set[str]) -> None:
    socket_type = _one(values, "socket_type") or "stream"
    protocol = _one(values, "protocol") or ("udp" if socket_type == "dgram" else "tcp")
    hosts = values.get("bind") or values.get("interface") or ["*"]
    udp = (socket_type, protocol) == ("dgram", "udp")
    if not udp and (socket_type, protocol) != ("stream", "tcp"):
        entry.fail(f"{socket_type} {protocol}: sockd serves stream tcp and dgram udp services")
        return
    # xinetd listens on IPv4 unless told IPv6, where its one socket takes both.
    families = (socket.AF_INET, socket.AF_INET6) if "IPV6" in flags else (socket.AF_INET,)
    if hosts != ["*"] and "IPV6" not in flags and ":" in hosts[0]:
        families = (socket.AF_INET6,)
    try:
        port = port_of(_one(values, "port") or name, protocol)
        addresses = listen_addresses(hosts[:1], families, port)
    except ValueError as exc:
        entry.fail(str(exc))
        return
    entry.keys["listen"] = [f"udp:{address}" for address in addresses] if udp else addresses


def _program(entry: Entry, values: dict[str, list[str]], flags: set[str]) -> None:
    server = _one(values, "server")
    if not server:
        entry.fail("no server: nothing to run")
        return
    args = values.get("server_args", [])
    argv = args if "NAMEINARGS" in flags else [os.path.basename(server), *args]
    set_program(entry, server, argv)
    if "NOLIBWRAP" not in flags and os.path.basename(server) != "tcpd":
        wrapper_rules(entry, "libwrap (Debian's xinetd checks TCP wrappers' rules)")
    _identity(entry, values)
    _environment(entry, values)


def _identity(entry: Entry, values: dict[str, list[str]]) -> None:
    user, group = _one(values, "user"), _one(values, "group")
    if user.isdigit():
        with contextlib.suppress(KeyError):  # else kept: `sockd check` names it
            user = pwd.getpwuid(int(user)).pw_name
    if user:
        entry.keys["user"] = user
        if group:
            entry.keys["group"] = group
    elif group:
        entry.lost.append(f"group = {group} without user: the program runs as sockd's user")


def _environment(entry: Entry, values: dict[str, list[str]]) -> None:
    environment = {}
    for pair in values.get("env", []):
        name, sep, value = pair.partition("=")
        if sep:
            environment[name] = value
        else:
            entry.lost.append(f"env {pair!r}: not NAME=VALUE")
    if environment:
        entry.keys["env"] = environment
    if values.get("passenv"):
        entry.lost.append(
            f"passenv = {' '.join(values['passenv'])}: a program starts from a clean "
            "environment; the values where xinetd ran are not known here: give them in env"
        )


def _access(entry: Entry, values: dict[str, list[str]]) -> None:
    for attribute, key in (("only_from", "allow"), ("no_access", "deny")):
        if attribute not in values:
            continue
        if not values[attribute]:  # an empty only_from lets no one in
            if key == "allow":
                entry.keys["deny"] = ["0.0.0.0/0", "::/0"]
            continue
        networks = []
        for host in values[attribute]:
            try:
                networks += _networks(host)
            except ValueError as exc:
                entry.lost.append(f"{attribute} {host}: {exc}")
        if "0.0.0.0/0" in networks and key == "allow":
            continue  # everyone, as no allow
        if networks:
            entry.keys[key] = [*entry.keys.get(key, []), *networks]
    _overlaps(entry)


def _overlaps(entry: Entry) -> None:
    """List what xinetd allowed inside a denied network: sockd's deny wins there."""
    for allowed in entry.keys.get("allow", []):
        for denied in entry.keys.get("deny", []):
            inner, outer = ipaddress.ip_network(allowed), ipaddress.ip_network(denied)
            if inner.version == outer.version and inner != outer and inner.subnet_of(outer):  # type: ignore[arg-type]
                entry.lost.append(
                    f"only_from {allowed} inside no_access {denied}: xinetd lets the closer "
                    "match win, sockd's deny always wins (refused now)"
                )


def _networks(host: str) -> list[str]:
    """Return the networks an xinetd host form names.

    Raises:
        ValueError: a form with no equivalent (a domain, a network name).
    """
    if "{" in host:  # factorized: 10.0.{1,2}
        head, _, tail = host.partition("{")
        if not tail.endswith("}") or not head.endswith(".") or "{" in tail:
            raise ValueError("not a factorized address (A.B.{C,D})")  # (nested: no recursion)
        return [net for part in tail[:-1].split(",") for net in _networks(f"{head}{part}")]
    if host.startswith("."):
        raise ValueError("a domain: sockd matches addresses only, never names")
    try:
        if "/" in host or ":" in host:
            return [str(ipaddress.ip_network(host, strict=False))]
        parts = host.split(".")
        if len(parts) <= 4 and all(part.isdigit() for part in parts):
            numbers = [int(part) for part in parts]
            while numbers and numbers[-1] == 0:
                numbers.pop()  # trailing zeros are wildcards: 10.1.0.0 is 10.1.0.0/16
            address = ".".join(str(number) for number in [*numbers, 0, 0, 0, 0][:4])
            return [str(ipaddress.ip_network(f"{address}/{8 * len(numbers)}"))]
    except ValueError:
        raise ValueError("not an address or a network") from None
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise ValueError("a name that does not resolve (or from /etc/networks)") from None
    return sorted({str(ipaddress.ip_network(info[4][0])) for info in infos})


def _limits(entry: Entry, values: dict[str, list[str]], *, wait: bool = False) -> None:
    for attribute, key in (("instances", "max_children"), ("per_source", "per_source")):
        text = _one(values, attribute)
        if not text or text.upper() == "UNLIMITED":
            continue
        if wait:
            why = "a wait service runs one program at a time"
            if key == "per_source":
                why = "sockd never sees a wait service's clients"
            entry.notes.append(f"{attribute} = {text}: dropped: {why}")
            continue
        if text.isdigit() and 1 <= int(text) <= MAX_CHILDREN:
            entry.keys[key] = int(text)
        else:
            entry.lost.append(f"{attribute} = {text}: not a number from 1 to {MAX_CHILDREN}")
    cps = values.get("cps", [])
    if cps:
        if len(cps) == 2 and all(value.isdigit() for value in cps) and 1 <= int(cps[0]) <= MAX_RATE:
            entry.keys["rate"] = entry.keys["burst"] = int(cps[0])
            if wait:
                entry.notes.append(
                    f"cps = {cps[0]} {cps[1]}: xinetd turns the service off for {cps[1]} s past "
                    f"{cps[0]} starts a second; sockd pauses it until its bucket is full again"
                )
                return
            entry.notes.append(
                f"cps = {cps[0]} {cps[1]}: xinetd turns the service off for {cps[1]} s past "
                f"{cps[0]} connections a second; sockd refuses only the connections over it"
            )
        else:
            entry.lost.append(f"cps = {' '.join(cps)}: expected two numbers")


def _rlimits(entry: Entry, values: dict[str, list[str]]) -> None:
    """Give a program xinetd's rlimit_* (soft and hard, as xinetd sets them) as `rlimits`."""
    limits: dict[str, int | str] = {}
    for attribute in sorted(key for key in values if key in _RLIMITS):
        text = f"{attribute} = {' '.join(values[attribute])}"
        if "exec" not in entry.keys:
            entry.lost.append(f"{text}: sockd sets resource limits on programs (exec) only")
            continue
        name = _RLIMITS[attribute]
        try:
            value = _rlimit(name, values[attribute])
            if value == 0:  # xinetd sets no limit of 0
                entry.notes.append(f"{text}: xinetd sets no limit of 0: nor does sockd")
                continue
            limit = resource_limits.parse(name, value)
        except ValueError as exc:
            entry.lost.append(f"{text}: {exc}")
            continue
        problem = resource_limits.beyond_hard(name, limit)
        if problem is not None:
            entry.lost.append(f"{text}: {problem}")
        else:
            limits[name] = value
    if limits:
        entry.keys["rlimits"] = limits


def _rlimit(name: str, words: list[str]) -> int | str:
    """Return an xinetd limit as sockd writes it: bytes with K or M as they were, else a number.

    Raises:
        ValueError: not a number (with K or M but for cpu), nor UNLIMITED.
    """
    text = " ".join(words)
    if text.upper() == "UNLIMITED":
        return "unlimited"
    digits, suffix = text, ""
    if name != "cpu" and text[-1:].upper() in ("K", "M"):  # xinetd's get_limit takes both cases
        digits, suffix = text[:-1], text[-1].upper()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        forms = "a number" if name == "cpu" else "a number (with K or M)"
        raise ValueError(f"neither {forms} nor UNLIMITED")
    if suffix and name in resource_limits.SIZES:
        return f"{int(digits)}{suffix}"
    return int(digits) * resource_limits.SUFFIXES.get(suffix, 1)


def _the_rest(entry: Entry, values: dict[str, list[str]], flags: set[str]) -> None:
    for attribute in sorted(values):
        text = f"{attribute} = {' '.join(values[attribute])}"
        if attribute in _NO_EQUIVALENT:
            entry.lost.append(f"{text}: {_NO_EQUIVALENT[attribute]}")
        elif attribute in _LOGS:
            entry.notes.append(f"{text}: sockd logs each connection as JSON events")
        elif attribute not in _DONE:
            entry.lost.append(f"{text}: not an xinetd attribute sockd knows")
    for flag in sorted(flags - {"IPV4", "IPV6", "NAMEINARGS", "NOLIBWRAP", "REUSE", "NORETRY"}):
        entry.lost.append(f"flags {flag}: sockd has no such option")
