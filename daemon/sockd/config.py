"""The TOML configuration, loaded into frozen dataclasses and validated on load."""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import os
import pwd
import re
import shutil
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sockd.errors import ConfigError
from sockd.handlers import load_handler
from sockd.privileges import group_ids
from sockd.tables import Table, toml_pairs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

DEFAULT_PATH = "/etc/sockd/sockd.toml"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CHARGEN_DEFAULT_MAX_DURATION = 60.0
MAX_REFUSAL = 512
MAX_WORKERS = 1024
# systemd's variables for sockd itself: never a program's.
RESERVED_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
RESERVED_ENV_PREFIXES = ("WATCHDOG_", "LISTEN_")


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    """One `listen` entry: a TCP host and port, or a UNIX socket path."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        """Return the address as it is written in the config."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Admission limits of a service, checked before a connection is served."""

    per_source: int | None = None  # connections at once from one source
    source_prefix_v4: int = 32  # a source is an IPv4 address...
    source_prefix_v6: int = 64  # ...or an IPv6 /64
    rate: float | None = None  # connections per second, all sources (token bucket)
    burst: int | None = None
    per_source_rate: float | None = None  # connections per second from one source
    per_source_burst: int | None = None


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """One `[[service]]` table: a handler (`handler`) or a program (`exec`)."""

    name: str
    handler: str | None
    listen: tuple[ListenAddress, ...] = ()
    max_children: int | None = None
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    unix_mode: int = 0o666
    max_duration: float | None = None
    idle_timeout: float | None = None
    exec: tuple[str, ...] = ()
    program: str | None = None  # exec[0], found on PATH
    env: tuple[tuple[str, str], ...] = ()
    user: str | None = None
    group: str | None = None
    refusal: str = ""
    workers: int | None = None  # pooled: this many pre-forked processes serve one after another
    max_connections_per_child: int | None = None  # pooled: a worker is replaced after these
    limits: Limits = dataclasses.field(default_factory=Limits)


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """The `[daemon]` table."""

    stop_timeout: float = 30.0
    max_children: int = 128
    user: str | None = None
    group: str | None = None
    pythonpath: tuple[str, ...] = ()
    # A fresh forker takes over new connections once this many long-lived ones
    # (open over a second) are children of the current one; 0: never.
    renew_forker_after: int = 256


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration; `path` is None when it came from the command line."""

    daemon: DaemonConfig = dataclasses.field(default_factory=DaemonConfig)
    services: tuple[ServiceConfig, ...] = ()
    path: str | None = None


def parse_listen(text: str) -> ListenAddress:
    """Parse `HOST:PORT`, `[V6]:PORT` or `unix:/path`.

    Raises:
        ValueError: the address is malformed; the message says how.
    """
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path.startswith("/"):
            raise ValueError("a UNIX socket path must be absolute")
        if len(path.encode()) > 107:
            raise ValueError("a UNIX socket path is at most 107 bytes")
        return ListenAddress("unix", path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, [IPV6]:PORT or unix:/path")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return ListenAddress("tcp", host=_parse_host(host), port=int(port_text))


def _parse_host(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("an IPv6 address needs its closing ']'")
        if not isinstance(_ip(host[1:-1]), ipaddress.IPv6Address):
            raise ValueError(f"{host[1:-1]!r} is not an IPv6 address")
        return host[1:-1]
    if ":" in host:
        raise ValueError("write an IPv6 address in brackets: [ADDR]:PORT")
    if _ip(host) is None and not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return host


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def load(path: str, *, import_handlers: bool = True) -> Config:
    """Read and validate the config file at `path` (see `from_dict` for `import_handlers`).

    Raises:
        ConfigError: with one line naming the file, the key and the problem.
    """
    try:
        with Path(path).open("rb") as file:
            data = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return from_dict(data, path, import_handlers=import_handlers)


def from_dict(data: dict[str, Any], path: str, *, import_handlers: bool = True) -> Config:
    """Validate parsed TOML; `path` only names the source in messages.

    With `import_handlers` (check, start), `pythonpath` goes first on
    `sys.path` and each handler is imported; without (the daemon's reload),
    validation changes nothing in this process.

    Raises:
        ConfigError: with one line naming the file, the key and the problem.
    """
    top = Table(data, path, "")
    daemon = _daemon(top.table("daemon"))
    tables = top.get("service", list, [])
    top.done()
    if not tables:
        raise ConfigError(f"{path}: no [[service]] defined")
    for directory in daemon.pythonpath if import_handlers else ():
        if directory not in sys.path:
            sys.path.insert(0, directory)
    services = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: service[{index}]: expected a [[service]] table")
        where = Table(table, path, f"service[{index}].")
        services.append(_service(where, import_handlers=import_handlers))
    _check_unique(services, path)
    pooled = sum(service.workers or 0 for service in services)
    if pooled >= daemon.max_children:
        msg = f"{path}: daemon.max_children: {daemon.max_children} leaves no room beside"
        raise ConfigError(f"{msg} {pooled} workers (they count as children)")
    return Config(daemon=daemon, services=tuple(services), path=path)


def one_service(handler: str, listen: Iterable[str], name: str) -> Config:
    """Build the config for `sockd run --handler SPEC [--listen ADDR ...]`.

    Raises:
        ConfigError: naming the option and the problem.
    """
    data = {"service": [{"name": name, "handler": handler, "listen": list(listen)}]}
    return dataclasses.replace(from_dict(data, "command line"), path=None)


def _daemon(table: Table) -> DaemonConfig:
    defaults = DaemonConfig()
    stop_timeout = table.number("stop_timeout", defaults.stop_timeout, minimum=0)
    max_children = table.integer("max_children", defaults.max_children, minimum=1)
    renew_forker_after = table.integer("renew_forker_after", defaults.renew_forker_after, minimum=0)
    user = _user(table)
    group = _group(table)
    pythonpath = table.strings("pythonpath")
    table.done()
    base = Path(table.source).parent if table.source != "command line" else Path.cwd()
    directories = [str((base / entry).resolve()) for entry in pythonpath]
    return DaemonConfig(
        stop_timeout, max_children, user, group, tuple(directories), renew_forker_after
    )


def _service(table: Table, *, import_handlers: bool = True) -> ServiceConfig:
    name = table.get("name", str)
    if not _NAME.fullmatch(name):
        table.fail("name", f"{name!r} must be 1-64 letters, digits or any of '_.@-'")
    table.prefix = f"service {name!r}: "
    handler = table.get("handler", str, None)
    argv = table.strings("exec")
    for index, arg in enumerate(argv):
        if "\0" in arg:
            table.fail(f"exec[{index}]", "contains a NUL character")
    if (handler is None) == (not argv):
        table.fail("handler", "give either handler or exec (a program and its arguments)")
    listen = []
    for index, text in enumerate(table.strings("listen")):
        try:
            listen.append(parse_listen(text))
        except ValueError as exc:
            table.fail(f"listen[{index}]", f"bad address {text!r}: {exc}")
    unix_mode = table.integer("unix_mode", 0o666, minimum=0)
    if unix_mode > 0o777:
        table.fail("unix_mode", f"{unix_mode:#o} is not a file mode (write it as 0o660)")
    default_duration = CHARGEN_DEFAULT_MAX_DURATION if handler == "chargen" else None
    service = ServiceConfig(
        name,
        handler,
        tuple(listen),
        max_children=table.integer("max_children", None, minimum=1),
        allow=_networks(table, "allow"),
        deny=_networks(table, "deny"),
        unix_mode=unix_mode,
        max_duration=table.number("max_duration", default_duration, minimum=0.001),
        idle_timeout=table.number("idle_timeout", None, minimum=0.001),
        exec=tuple(argv),
        program=_program(table, argv[0]) if argv else None,
        env=_environment(table),
        user=_user(table),
        group=_group(table),
        refusal=table.get("refusal", str, ""),
        limits=_limits(table),
        workers=table.integer("workers", None, minimum=1, maximum=MAX_WORKERS),
        max_connections_per_child=table.integer("max_connections_per_child", None, minimum=1),
    )
    table.done()
    _check_kind(table, service, import_handlers=import_handlers)
    return service


def _check_kind(table: Table, service: ServiceConfig, *, import_handlers: bool = True) -> None:
    """Check what depends on the kind of service (handler or program), and load a handler."""
    if len(service.refusal.encode()) > MAX_REFUSAL:
        table.fail("refusal", f"at most {MAX_REFUSAL} bytes")
    _check_pool(table, service)
    if service.handler is None:
        if service.idle_timeout is not None:
            table.fail("idle_timeout", "applies to handlers; a program gets max_duration")
        if service.group is not None and service.user is None:
            table.fail("group", "goes with user (whose primary group it replaces)")
        return
    for key in ("env", "user", "group"):
        if getattr(service, key):
            table.fail(key, "applies to exec programs only")
    if import_handlers:
        _load(table, service.handler)


def _check_pool(table: Table, service: ServiceConfig) -> None:
    """Check a pooled service: handlers only, its pool is its cap, no per-source counts."""
    if service.workers is None:
        if service.max_connections_per_child is not None:
            table.fail("max_connections_per_child", "goes with workers")
        return
    if service.handler is None:
        table.fail("workers", "applies to handlers; a program runs per connection")
    if service.max_children is not None:
        table.fail("max_children", "a pooled service serves `workers` connections at once")
    limits = service.limits
    for key in ("per_source", "rate", "per_source_rate"):
        if getattr(limits, key) is not None:
            msg = "needs fork-per-connection (the forker keeps the counts); not with workers"
            table.fail(key, msg)


def _load(table: Table, handler: str) -> None:
    try:
        load_handler(handler)
    except (ImportError, ValueError, TypeError, AttributeError) as exc:
        table.fail("handler", f"cannot load {handler!r}: {exc}")
    except Exception as exc:  # noqa: BLE001 (the module itself fails as it is imported)
        table.fail("handler", f"cannot load {handler!r}: {type(exc).__name__}: {exc}")


def _program(table: Table, program: str) -> str:
    """Find exec[0] now: a missing program is a config error, not a per-connection one."""
    found = program if "/" in program else shutil.which(program)
    if found is None:
        table.fail("exec[0]", f"{program!r} is not on PATH")
    if not os.path.isabs(found):
        table.fail("exec[0]", f"{program!r}: give an absolute path, or a name found on PATH")
    if not os.path.isfile(found):
        table.fail("exec[0]", f"{found}: no such program")
    if not os.access(found, os.X_OK):
        table.fail("exec[0]", f"{found}: not executable")
    return found


def _environment(table: Table) -> tuple[tuple[str, str], ...]:
    env = table.get("env", dict, {})
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key):
            table.fail(f"env.{key}", "not a valid environment variable name")
        if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            table.fail(f"env.{key}", "reserved: sockd never passes it to programs")
        if not isinstance(value, str):
            table.fail(f"env.{key}", f"expected a string, got {type(value).__name__}")
        if "\0" in value:
            table.fail(f"env.{key}", "contains a NUL character")
    return tuple(sorted(env.items()))


def _user(table: Table) -> str | None:
    return _existing(table, "user", pwd.getpwnam)


def _group(table: Table) -> str | None:
    return _existing(table, "group", grp.getgrnam)


def _existing(table: Table, key: str, lookup: Callable[[str], object]) -> str | None:
    """Return the user or group named at `key`, which must exist on this system."""
    name: str | None = table.get(key, str, None)
    if name is not None:
        try:
            lookup(name)
        except KeyError:
            table.fail(key, f"no such {key} {name!r}")
    return name


def _limits(table: Table) -> Limits:
    limits = Limits(
        per_source=table.integer("per_source", None, minimum=1),
        source_prefix_v4=table.integer("source_prefix_v4", 32, minimum=0, maximum=32),
        source_prefix_v6=table.integer("source_prefix_v6", 64, minimum=0, maximum=128),
        rate=table.number("rate", None, minimum=0.001),
        burst=table.integer("burst", None, minimum=1),
        per_source_rate=table.number("per_source_rate", None, minimum=0.001),
        per_source_burst=table.integer("per_source_burst", None, minimum=1),
    )
    if limits.burst is not None and limits.rate is None:
        table.fail("burst", "goes with rate")
    if limits.per_source_burst is not None and limits.per_source_rate is None:
        table.fail("per_source_burst", "goes with per_source_rate")
    return limits


def _networks(table: Table, key: str) -> tuple[IPNetwork, ...]:
    networks = []
    for index, text in enumerate(table.get(key, list, [])):
        try:
            if not isinstance(text, str):
                raise TypeError  # noqa: TRY301 (one message for every bad entry)
            networks.append(ipaddress.ip_network(text, strict=False))
        except (ValueError, TypeError):
            table.fail(f"{key}[{index}]", f"{text!r} is not an address or CIDR network")
    return tuple(networks)


def _check_unique(services: list[ServiceConfig], path: str) -> None:
    names: set[str] = set()
    addresses: dict[ListenAddress, str] = {}
    for service in services:
        if service.name in names:
            raise ConfigError(f"{path}: service {service.name!r}: name: duplicate service name")
        names.add(service.name)
        for address in service.listen:
            if address.kind == "tcp" and address.port == 0:
                continue  # the kernel picks a distinct port for each
            if address in addresses:
                other = addresses[address]
                msg = f"{path}: service {service.name!r}: listen: {address} is also in {other!r}"
                raise ConfigError(msg)
            addresses[address] = service.name


def service_record(service: ServiceConfig) -> dict[str, Any]:
    """Return the service as plain values, for the forker (which never imports this module)."""
    return {
        "name": service.name,
        "handler": service.handler,
        "exec": list(service.exec),
        "program": service.program,
        "env": dict(service.env),
        "identity": _identity(service.user, service.group),
        "max_children": service.max_children,
        "max_duration": service.max_duration,
        "idle_timeout": service.idle_timeout,
        "unix_mode": service.unix_mode,
        "allow": [str(network) for network in service.allow],
        "deny": [str(network) for network in service.deny],
        "refusal": service.refusal,
        "limits": dataclasses.asdict(service.limits),
        "workers": service.workers,
        "max_connections_per_child": service.max_connections_per_child,
    }


def _identity(user: str | None, group: str | None) -> list[Any] | None:
    """Return [uid, gid, groups] for a program's `user`/`group`, or None to run as sockd."""
    if user is None:  # group goes with user
        return None
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    return group_ids(entry.pw_name, entry.pw_uid, gid)


def to_toml(config: Config) -> str:
    """Render the effective config (defaults filled in) as TOML."""
    lines = [f"# effective configuration of {config.path or 'the command line'}", "[daemon]"]
    lines += toml_pairs(vars(config.daemon))
    for service in config.services:
        values = {**vars(service), **vars(service.limits)}
        del values["limits"]
        lines += ["", "[[service]]", *toml_pairs(values)]
    return "\n".join(lines) + "\n"
