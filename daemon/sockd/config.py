"""The TOML configuration, loaded into frozen dataclasses and validated on load."""

from __future__ import annotations

import dataclasses
import grp
import ipaddress
import pwd
import re
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sockd.errors import ConfigError
from sockd.handlers import load_handler

if TYPE_CHECKING:
    from collections.abc import Iterable

DEFAULT_PATH = "/etc/sockd/sockd.toml"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")
CHARGEN_DEFAULT_MAX_DURATION = 60.0


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
class ServiceConfig:
    """One `[[service]]` table."""

    name: str
    handler: str
    listen: tuple[ListenAddress, ...] = ()
    max_children: int | None = None
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    unix_mode: int = 0o666
    max_duration: float | None = None


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """The `[daemon]` table."""

    stop_timeout: float = 30.0
    max_children: int = 128
    user: str | None = None
    group: str | None = None
    pythonpath: tuple[str, ...] = ()


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


def load(path: str) -> Config:
    """Read and validate the config file at `path`.

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
    return from_dict(data, path)


def from_dict(data: dict[str, Any], path: str) -> Config:
    """Validate parsed TOML; `path` only names the source in messages.

    Raises:
        ConfigError: with one line naming the file, the key and the problem.
    """
    top = _Table(data, path, "")
    daemon = _daemon(top.table("daemon"))
    tables = top.get("service", list, [])
    top.done()
    if not tables:
        raise ConfigError(f"{path}: no [[service]] defined")
    for directory in daemon.pythonpath:
        if directory not in sys.path:
            sys.path.insert(0, directory)
    services = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: service[{index}]: expected a [[service]] table")
        services.append(_service(_Table(table, path, f"service[{index}].")))
    _check_unique(services, path)
    return Config(daemon=daemon, services=tuple(services), path=path)


def one_service(handler: str, listen: Iterable[str], name: str) -> Config:
    """Build the config for `sockd run --handler SPEC [--listen ADDR ...]`.

    Raises:
        ConfigError: naming the option and the problem.
    """
    data = {"service": [{"name": name, "handler": handler, "listen": list(listen)}]}
    return dataclasses.replace(from_dict(data, "command line"), path=None)


def _daemon(table: _Table) -> DaemonConfig:
    defaults = DaemonConfig()
    stop_timeout = table.number("stop_timeout", defaults.stop_timeout, minimum=0)
    max_children = table.integer("max_children", defaults.max_children, minimum=1)
    user = table.get("user", str, None)
    group = table.get("group", str, None)
    pythonpath = table.get("pythonpath", list, [])
    table.done()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            table.fail("user", f"no such user {user!r}")
    if group is not None:
        try:
            grp.getgrnam(group)
        except KeyError:
            table.fail("group", f"no such group {group!r}")
    base = Path(table.source).parent if table.source != "command line" else Path.cwd()
    directories = []
    for index, entry in enumerate(pythonpath):
        if not isinstance(entry, str):
            table.fail(f"pythonpath[{index}]", "expected a string")
        directories.append(str((base / entry).resolve()))
    return DaemonConfig(stop_timeout, max_children, user, group, tuple(directories))


def _service(table: _Table) -> ServiceConfig:
    name = table.get("name", str)
    if not _NAME.fullmatch(name):
        table.fail("name", f"{name!r} must be 1-64 letters, digits or any of '_.@-'")
    table.prefix = f"service {name!r}: "
    handler = table.get("handler", str)
    listen = []
    for index, text in enumerate(table.get("listen", list, [])):
        if not isinstance(text, str):
            table.fail(f"listen[{index}]", "expected a string")
        try:
            listen.append(parse_listen(text))
        except ValueError as exc:
            table.fail(f"listen[{index}]", f"bad address {text!r}: {exc}")
    max_children = table.integer("max_children", None, minimum=1)
    allow = _networks(table, "allow")
    deny = _networks(table, "deny")
    unix_mode = table.integer("unix_mode", 0o666, minimum=0)
    if unix_mode > 0o777:
        table.fail("unix_mode", f"{unix_mode:#o} is not a file mode (write it as 0o660)")
    default_duration = CHARGEN_DEFAULT_MAX_DURATION if handler == "chargen" else None
    max_duration = table.number("max_duration", default_duration, minimum=0.001)
    table.done()
    try:
        load_handler(handler)
    except (ImportError, ValueError, TypeError, AttributeError) as exc:
        table.fail("handler", f"cannot load {handler!r}: {exc}")
    except Exception as exc:  # noqa: BLE001 (the module itself fails as it is imported)
        table.fail("handler", f"cannot load {handler!r}: {type(exc).__name__}: {exc}")
    return ServiceConfig(
        name, handler, tuple(listen), max_children, allow, deny, unix_mode, max_duration
    )


def _networks(table: _Table, key: str) -> tuple[IPNetwork, ...]:
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


class _Table:
    """A TOML table being validated: typed getters, and unknown keys reported."""

    def __init__(self, data: dict[str, Any], source: str, prefix: str) -> None:
        self.data = data
        self.source = source
        self.prefix = prefix
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> None:
        raise ConfigError(f"{self.source}: {self.prefix}{key}: {problem}")

    _MISSING: Any = object()

    def get(self, key: str, kind: type, default: Any = _MISSING) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is self._MISSING:
                self.fail(key, "required key is missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"expected {_KIND_NAMES[kind]}, got {type(value).__name__}")
        return value

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, dict, {}), self.source, f"{self.prefix}{key}.")

    def integer(self, key: str, default: int | None, *, minimum: int) -> Any:
        value = self.get(key, int, default)
        if value is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}")
        return value

    def number(self, key: str, default: float | None, *, minimum: float) -> Any:
        value = self.get(key, (int, float), default)  # type: ignore[arg-type]
        if isinstance(value, bool):
            self.fail(key, "expected a number, got bool")
        if value is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}")
        return None if value is None else float(value)

    def done(self) -> None:
        for key in self.data.keys() - self.seen:
            self.fail(key, "unknown key")


_KIND_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "a table",
    (int, float): "a number",
}


def service_record(service: ServiceConfig) -> dict[str, Any]:
    """Return the service as plain values, for the forker (which never imports this module)."""
    return {
        "name": service.name,
        "handler": service.handler,
        "max_children": service.max_children,
        "max_duration": service.max_duration,
        "unix_mode": service.unix_mode,
        "allow": [str(network) for network in service.allow],
        "deny": [str(network) for network in service.deny],
    }


def to_toml(config: Config) -> str:
    """Render the effective config (defaults filled in) as TOML."""
    lines = [f"# effective configuration of {config.path or 'the command line'}", "[daemon]"]
    lines += _toml_pairs(vars(config.daemon))
    for service in config.services:
        lines += ["", "[[service]]", *_toml_pairs(vars(service))]
    return "\n".join(lines) + "\n"


def _toml_pairs(values: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key} is not set")
        elif key == "unix_mode":
            lines.append(f"{key} = {value:#o}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_value(str(value))
