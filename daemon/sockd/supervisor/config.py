"""The TOML configuration, loaded by the daemon (and `check`) into frozen, validated dataclasses."""

from __future__ import annotations

import dataclasses
import errno
import grp
import ipaddress
import os
import pwd
import re
import shutil
import socket
import stat
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sockd.errors import ConfigError
from sockd.handlers import BUILTINS, load_handler
from sockd.privileges import group_ids
from sockd.spec import Limits, ServiceSpec
from sockd.supervisor import rlimits as resource_limits
from sockd.supervisor.sockets import resolve
from sockd.supervisor.tables import Table, key_text, one_line, shown, toml_pairs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

DEFAULT_PATH = "/etc/sockd/sockd.toml"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # of a host name (RFC 1123)
_WILDCARDS = ("0.0.0.0", "::")
_FORMS = "HOST:PORT, [IPV6]:PORT or unix:/path"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CHARGEN_DEFAULT_MAX_DURATION = 60.0
# The range of every value (README "Configuration", sockd.toml(5)): finite, and
# small enough for what the forker does with it (timers, token buckets, argv).
MAX_FILE_BYTES = 32 << 20  # the config file
MAX_SERVICES = 256
MAX_SECONDS = 2_592_000  # 30 days: stop_timeout, max_duration, idle_timeout
MIN_SECONDS = 0.001
MAX_CHILDREN = 65_536  # both max_children, per_source, renew_forker_after
MAX_RATE = 1_000_000  # rate and per_source_rate (a second), burst and per_source_burst
MIN_RATE = 0.001
MAX_CONNECTIONS_PER_CHILD = 1_000_000_000
MAX_REFUSAL = 512
MAX_WORKERS = 1024
MAX_LISTEN = 64  # addresses per service
MAX_ADDRESS_BYTES = 512  # a listen address as written
MAX_NETWORKS = 100_000  # entries of allow, and of deny
MAX_NETWORK_BYTES = 64  # an allow/deny entry as written
MAX_PROXY_TIMEOUT = 300.0  # seconds a PROXY header may take, at most
# A wait service's program starts (its `rate` and `burst` unless they are given): in
# quick succession at most WAIT_BURST, and WAIT_RATE a second on average; past them
# the program is looping (exits without taking what made the socket readable), and
# the service pauses until the bucket is full again (WAIT_BURST / WAIT_RATE: 10 s).
WAIT_RATE = 2.0
WAIT_BURST = 20
# What a wait service cannot have: sockd neither accepts nor reads for it.
_NOT_WITH_WAIT = {
    "workers": "the program serves, not pooled workers",
    "max_children": "one program runs per listening socket at a time",
    "proxy_protocol": "sockd reads nothing of a wait service's connections",
    "allow": "sockd never sees a wait service's clients (the program accepts or reads)",
    "deny": "sockd never sees a wait service's clients (the program accepts or reads)",
    "refusal": "sockd refuses no client of a wait service",
    "per_source": "sockd never sees a wait service's clients",
    "per_source_rate": "sockd never sees a wait service's clients",
    "per_source_burst": "sockd never sees a wait service's clients",
}
# Who may send PROXY headers, unless proxy_trusted says: this host only.
DEFAULT_PROXY_TRUSTED = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1"))
MAX_NAME_BYTES = 256  # handler, user, group
MAX_PATH_BYTES = 4096  # a pythonpath entry
MAX_PYTHONPATH = 64
MAX_ARGS = 256  # exec items; env variables likewise
MAX_PROGRAM_BYTES = 65_536  # exec and env together: far below the kernel's ARG_MAX
# systemd's variables for sockd itself: never a program's.
RESERVED_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
RESERVED_ENV_PREFIXES = ("WATCHDOG_", "LISTEN_")


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    """One `listen` entry: a TCP or UDP host and port, or a UNIX stream or datagram socket path."""

    kind: Literal["tcp", "unix", "udp", "unix-dgram"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        """Return the address as it is written in the config."""
        if self.kind in ("unix", "unix-dgram"):
            return f"{self.kind}:{self.path}"
        prefix = "udp:" if self.kind == "udp" else ""
        if ":" in self.host:
            return f"{prefix}[{self.host}]:{self.port}"
        return f"{prefix}{self.host}:{self.port}"

    @property
    def type(self) -> int:
        """Return the socket type: SOCK_DGRAM for `udp:` and `unix-dgram:`, else SOCK_STREAM."""
        return socket.SOCK_DGRAM if self.kind in ("udp", "unix-dgram") else socket.SOCK_STREAM

    @property
    def is_unix(self) -> bool:
        """Tell whether the address is a UNIX socket path (stream or datagram)."""
        return self.kind in ("unix", "unix-dgram")


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
    proxy_protocol: bool = False  # each connection starts with a PROXY header (v1 or v2)
    proxy_trusted: tuple[IPNetwork, ...] = DEFAULT_PROXY_TRUSTED  # who may send one
    proxy_timeout: float = 3.0  # seconds the header may take
    # UDP echo and chargen answer whoever a datagram claims to come from: off unless set.
    udp_reflection: bool = False
    wait: bool = False  # the program gets the listening socket itself (inetd's `wait`)
    # A program's resource limits, (name, limit or None: unlimited), in RESOURCES' order.
    rlimits: tuple[tuple[str, int | None], ...] = ()


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
    # An inetd.conf whose enabled lines are served too (sockd.supervisor.inetdserve).
    inetd_conf: str | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole configuration; `path` is None when it came from the command line."""

    daemon: DaemonConfig = dataclasses.field(default_factory=DaemonConfig)
    services: tuple[ServiceConfig, ...] = ()
    path: str | None = None
    # What loading said without refusing: inetd_conf's lines skipped or served in part.
    warnings: tuple[str, ...] = ()


def parse_listen(text: str) -> ListenAddress:
    """Parse `HOST:PORT`, `[V6]:PORT`, `unix:/path`, `udp:HOST:PORT`, `unix-dgram:/path`.

    `udp:` takes any TCP form (`udp:[V6]:PORT`, a host name).

    Raises:
        ValueError: the address is malformed; the message says how.
    """
    for kind in ("unix", "unix-dgram"):
        if text.startswith(f"{kind}:"):
            path = text.removeprefix(f"{kind}:")
            if not path.startswith("/"):
                raise ValueError("a UNIX socket path must be absolute")
            if len(path.encode()) > 107:
                raise ValueError("a UNIX socket path is at most 107 bytes")
            return ListenAddress(kind, path=path)
    kind = "udp" if text.startswith("udp:") else "tcp"
    host, sep, port_text = text.removeprefix("udp:").rpartition(":")
    if not sep or not host:
        expected = "udp:HOST:PORT or udp:[IPV6]:PORT" if kind == "udp" else _FORMS
        raise ValueError(f"expected {expected}")
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or int(port_text) > 65535:
        raise ValueError(f"port {shown(port_text)} is not a number from 0 to 65535")
    return ListenAddress(kind, host=_parse_host(host), port=int(port_text))  # type: ignore[arg-type]


def _parse_host(host: str) -> str:
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("an IPv6 address needs its closing ']'")
        address = _ip(host[1:-1])
        if not isinstance(address, ipaddress.IPv6Address):
            raise ValueError(f"{shown(host[1:-1])} is not an IPv6 address")
        if address.scope_id is not None:
            raise ValueError("scoped addresses (%zone) are not supported")
        if address.ipv4_mapped is not None:
            raise ValueError(f"write an IPv4 address as such: {address.ipv4_mapped}:PORT")
        return host[1:-1]
    if ":" in host:
        raise ValueError("write an IPv6 address in brackets: [ADDR]:PORT")
    labels = host.removesuffix(".").split(".")
    if _ip(host) is None and not (
        len(host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise ValueError(f"{shown(host)} is neither an IP address nor a host name")
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
    where = one_line(path, 4096)
    raw = read_file(path, MAX_FILE_BYTES)
    try:
        data = tomllib.loads(raw.decode())
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{where}: invalid TOML: not UTF-8 (line {line})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    except ValueError:  # int(): more digits than Python converts
        digits = sys.get_int_max_str_digits()
        msg = f"{where}: invalid TOML: an integer of more than {digits} digits"
        raise ConfigError(msg) from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid TOML: arrays or tables nested too deeply") from None
    return from_dict(data, path, import_handlers=import_handlers)


def read_file(path: str, limit: int) -> bytes:
    """Return the bytes of the regular file at `path`, at most `limit` of them.

    Opening never waits: a FIFO (which would block the daemon's reload until
    a writer came) or a device (/dev/zero, endless) is refused.

    Raises:
        ConfigError: one line naming the file and why it cannot be read.
    """
    where = one_line(path, 4096)
    try:
        # Never waiting (a FIFO), never taking a terminal as the daemon's controlling one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            why = os.strerror(errno.EISDIR) if stat.S_ISDIR(mode) else "not a regular file"
            raise ConfigError(f"{where}: cannot read: {why}")
        with open(fd, "rb", closefd=False) as file:
            raw = file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise ConfigError(f"{where}: larger than {limit} bytes")
    return raw


def from_dict(data: dict[str, Any], path: str, *, import_handlers: bool = True) -> Config:
    """Validate parsed TOML; `path` only names the source in messages.

    With `import_handlers` (check, start), `pythonpath` goes first on
    `sys.path`, each handler is imported and listen addresses are resolved;
    without (the daemon's reload), validation changes nothing in this process.

    Raises:
        ConfigError: with one line naming the file, the key and the problem.
    """
    where = one_line(path, 4096)
    top = Table(data, path, "")
    daemon = _daemon(top.table("daemon"))
    tables = top.items("service", max_items=MAX_SERVICES)
    top.done()
    if not tables and daemon.inetd_conf is None:
        raise ConfigError(f"{where}: no [[service]] defined")
    for directory in daemon.pythonpath if import_handlers else ():
        if directory not in sys.path:
            sys.path.insert(0, directory)
    services = []
    for index, table in enumerate(tables):
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: service[{index}]: expected a [[service]] table")
        entry = Table(table, path, f"service[{index}].")
        services.append(_service(entry, import_handlers=import_handlers))
    warnings: list[str] = []
    if daemon.inetd_conf is not None:
        warnings = _inetd_services(daemon.inetd_conf, services, where, import_handlers)
    _check_unique(services, where)
    if import_handlers:  # not at a reload: its listeners stay, and DNS may not stall the daemon
        _check_listen(services, where)
    pooled = sum(service.workers or 0 for service in services)
    if pooled >= daemon.max_children:
        msg = f"{where}: daemon.max_children: {daemon.max_children} leaves no room beside"
        raise ConfigError(f"{msg} {pooled} workers (they count as children)")
    return Config(daemon=daemon, services=tuple(services), path=path, warnings=tuple(warnings))


def _inetd_services(
    inetd_conf: str, services: list[ServiceConfig], where: str, import_handlers: bool
) -> list[str]:
    """Add the services of inetd_conf's enabled lines to `services`; return the warnings.

    A line that cannot be served (malformed, refused as `check` refuses a
    service, on an address taken before it) is skipped with a warning, as
    inetd skips it: one line never stops the others, nor sockd.toml's.

    Raises:
        ConfigError: a service of ours takes their prefix, or two of ours
            overlap; the file cannot be read.
    """
    # Imported here: the inetd.conf reader uses this module's limits and validation.
    from sockd.supervisor import inetdserve  # noqa: PLC0415

    for service in services:
        if service.name.startswith(inetdserve.PREFIX):
            msg = f"{where}: service {service.name!r}: name: the prefix {inetdserve.PREFIX!r}"
            raise ConfigError(f"{msg} is for the services of daemon.inetd_conf")
    # At a reload, the overlap check looks up no name (numeric addresses only). An
    # inetd.conf line's host name on tcp4/udp4/tcp6/udp6 is looked up as openbsd-inetd
    # does, once a name a read (importer.listen_addresses).
    taken = _check_listen(services, where, numeric=not import_handlers)
    tables, warnings = inetdserve.services(inetd_conf, MAX_SERVICES - len(services))
    for origin, table in tables:
        try:
            service = _service(Table(table, origin, ""), import_handlers=import_handlers)
            taken.add(service, one_line(origin, 4096))
        except ConfigError as exc:
            problem = str(exc).removeprefix(f"{one_line(origin, 4096)}: ")
            warnings.append(f"{one_line(origin, 4096)}: {table['name']}: skipped: {problem}")
            continue
        services.append(service)
    return inetdserve.bounded(warnings, inetd_conf)


def one_service(handler: str, listen: Iterable[str], name: str) -> Config:
    """Build the config for `sockd run --handler SPEC [--listen ADDR ...]`.

    Raises:
        ConfigError: naming the option and the problem.
    """
    data = {"service": [{"name": name, "handler": handler, "listen": list(listen)}]}
    return dataclasses.replace(from_dict(data, "command line"), path=None)


def _daemon(table: Table) -> DaemonConfig:
    defaults = DaemonConfig()
    stop_timeout = table.number(
        "stop_timeout", defaults.stop_timeout, minimum=0, maximum=MAX_SECONDS
    )
    max_children = table.integer(
        "max_children", defaults.max_children, minimum=1, maximum=MAX_CHILDREN
    )
    renew_forker_after = table.integer(
        "renew_forker_after", defaults.renew_forker_after, minimum=0, maximum=MAX_CHILDREN
    )
    user = _user(table)
    group = _group(table)
    pythonpath = table.strings("pythonpath", max_items=MAX_PYTHONPATH, max_bytes=MAX_PATH_BYTES)
    inetd_conf = table.string("inetd_conf", None, max_bytes=MAX_PATH_BYTES)
    if inetd_conf is not None and not inetd_conf.startswith("/"):
        table.fail("inetd_conf", f"{shown(inetd_conf)}: give an absolute path")
    table.done()
    base = Path(table.source).parent if table.source != "command line" else Path.cwd()
    # realpath, not Path.resolve: a symlink loop is a directory that imports nothing, not a crash.
    directories = [os.path.realpath(base / entry) for entry in pythonpath]
    return DaemonConfig(
        stop_timeout, max_children, user, group, tuple(directories), renew_forker_after, inetd_conf
    )


def _service(table: Table, *, import_handlers: bool = True) -> ServiceConfig:
    name = table.string("name", max_bytes=64)
    if not _NAME.fullmatch(name):
        table.fail("name", f"{shown(name)} must be 1-64 letters, digits or any of '_.@-'")
    table.prefix = f"service {name!r}: "
    handler = table.string("handler", None, max_bytes=MAX_NAME_BYTES)
    argv = table.strings("exec", max_items=MAX_ARGS, max_bytes=MAX_PROGRAM_BYTES)
    argv_bytes = sum(len(arg.encode()) + 1 for arg in argv)
    if argv_bytes > MAX_PROGRAM_BYTES:
        table.fail("exec", f"at most {MAX_PROGRAM_BYTES} bytes in all (with env)")
    if (handler is None) == (not argv):
        table.fail("handler", "give either handler or exec (a program and its arguments)")
    listen = []
    for index, text in enumerate(
        table.strings("listen", max_items=MAX_LISTEN, max_bytes=MAX_ADDRESS_BYTES)
    ):
        try:
            listen.append(parse_listen(text))
        except ValueError as exc:
            table.fail(f"listen[{index}]", f"bad address {shown(text)}: {exc}")
    unix_mode = table.get("unix_mode", int, 0o666)
    if not 0 <= unix_mode <= 0o777:
        written = f"{unix_mode} is {unix_mode:#o}, " if 0 < unix_mode < 8**8 else ""
        problem = "not a file mode from 0 to 0o777 (write it in octal: 0o660)"
        table.fail("unix_mode", written + problem)
    default_duration = CHARGEN_DEFAULT_MAX_DURATION if handler == "chargen" else None
    wait = table.flag("wait", default=False)
    service = ServiceConfig(
        name,
        handler,
        tuple(listen),
        max_children=table.integer("max_children", None, minimum=1, maximum=MAX_CHILDREN),
        allow=_networks(table, "allow"),
        deny=_networks(table, "deny"),
        unix_mode=unix_mode,
        max_duration=_seconds(table, "max_duration", default_duration),
        idle_timeout=_seconds(table, "idle_timeout", None),
        exec=tuple(argv),
        program=_program(table, argv[0]) if argv else None,
        env=_environment(table, argv_bytes),
        user=_user(table),
        group=_group(table),
        refusal=table.string("refusal", "", max_bytes=MAX_REFUSAL, nul=True),
        limits=_limits(table, wait=wait),
        workers=table.integer("workers", None, minimum=1, maximum=MAX_WORKERS),
        max_connections_per_child=table.integer(
            "max_connections_per_child", None, minimum=1, maximum=MAX_CONNECTIONS_PER_CHILD
        ),
        **_proxy(table),
        udp_reflection=table.flag("udp_reflection", default=False),
        wait=wait,
        rlimits=_rlimits(table),
    )
    table.done()
    _check_kind(table, service, import_handlers=import_handlers)
    return service


def _proxy(table: Table) -> dict[str, Any]:
    """Return proxy_protocol, and proxy_trusted and proxy_timeout, which go with it."""
    proxy_protocol = table.flag("proxy_protocol", default=False)
    settings: dict[str, Any] = {"proxy_protocol": proxy_protocol}
    for key in ("proxy_trusted", "proxy_timeout"):
        if key in table.data and not proxy_protocol:
            table.fail(key, "goes with proxy_protocol = true")
    if "proxy_trusted" in table.data:
        settings["proxy_trusted"] = _networks(table, "proxy_trusted")
    timeout = table.number("proxy_timeout", 3.0, minimum=MIN_SECONDS, maximum=MAX_PROXY_TIMEOUT)
    settings["proxy_timeout"] = timeout
    return settings


def _check_kind(table: Table, service: ServiceConfig, *, import_handlers: bool = True) -> None:
    """Check what depends on the kind of service (handler or program), and load a handler."""
    _check_wait(table, service)
    _check_pool(table, service)
    _check_datagrams(table, service)
    if service.handler is None:
        if service.idle_timeout is not None:
            table.fail("idle_timeout", "applies to handlers; a program gets max_duration")
        if service.group is not None and service.user is None:
            table.fail("group", "goes with user (whose primary group it replaces)")
        return
    for key in ("env", "user", "group", "rlimits"):
        if getattr(service, key):
            table.fail(key, "applies to exec programs only")
    if import_handlers:
        _load(table, service.handler)


def _check_wait(table: Table, service: ServiceConfig) -> None:
    """Check a wait service: a program, and nothing that needs sockd to accept or read."""
    if not service.wait:
        return
    if service.handler is not None:
        table.fail("wait", "hands the listening socket to a program (exec), not a handler")
    for key, why in _NOT_WITH_WAIT.items():
        if table.data.get(key) not in (None, False, [], ""):
            table.fail(key, f"not with wait = true: {why}")


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
    # Over datagrams only, each worker keeps its share of the rates (forker.datagrampool).
    datagrams = bool(service.listen) and all(a.type == socket.SOCK_DGRAM for a in service.listen)
    for key in ("per_source", "rate", "per_source_rate"):
        if getattr(limits, key) is not None and not (datagrams and key != "per_source"):
            msg = "needs fork-per-connection (the forker keeps the counts); not with workers"
            table.fail(key, msg)
    rated = limits.rate is not None or limits.per_source_rate is not None
    if datagrams and rated and service.max_connections_per_child is not None:
        msg = "not with rate limits (each fresh worker's buckets would start full)"
        table.fail("max_connections_per_child", msg)


# The built-ins whose UDP answer goes to whoever a datagram's (spoofable) source
# says: echo as large as the request, chargen larger. Refused unless udp_reflection.
REFLECTING = ("echo", "chargen")


def _check_datagrams(table: Table, service: ServiceConfig) -> None:
    """Check a service with `udp:` or `unix-dgram:` addresses (one given by systemd: the forker).

    The forker applies the same rules to a datagram socket from systemd
    (`sockd.forker.datagrams.problem`), which `check` cannot see.
    """
    datagrams = [address for address in service.listen if address.type == socket.SOCK_DGRAM]
    if not datagrams:
        if service.udp_reflection:
            table.fail("udp_reflection", "goes with a udp: listen address")
        return
    if service.workers is not None and service.handler in BUILTINS:
        table.fail("workers", "not with a built-in over udp: (answered in the forker, no process)")
    if service.proxy_protocol:
        table.fail("proxy_protocol", "not with udp: or unix-dgram: addresses (streams only)")
    if service.refusal:
        table.fail("refusal", "never sent to a datagram (its source may be spoofed): remove it")
    if service.exec and not service.wait and any(a.kind == "unix-dgram" for a in datagrams):
        why = "a program per datagram serves udp: ones; wait = true gives one the socket itself"
        table.fail("exec", f"not with unix-dgram: addresses ({why})")
    if service.handler in REFLECTING and not service.udp_reflection:
        what = f"UDP {service.handler} answers any forged source (a reflection attack)"
        table.fail("handler", f"{what}: set udp_reflection = true to serve it anyway")


def _load(table: Table, handler: str) -> None:
    try:
        load_handler(handler)
    except (ImportError, ValueError, TypeError, AttributeError) as exc:
        table.fail("handler", f"cannot load {handler!r}: {exc}")
    except (Exception, SystemExit) as exc:  # noqa: BLE001 (the module fails as it is imported)
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


def _environment(table: Table, size: int) -> tuple[tuple[str, str], ...]:
    """Return the valid `env`; `size` is what exec takes of MAX_PROGRAM_BYTES."""
    env = table.get("env", dict, {})
    if len(env) > MAX_ARGS:
        table.fail("env", f"at most {MAX_ARGS} variables, got {len(env)}")
    for key, value in env.items():
        where = f"env.{key_text(key)}"
        if not _ENV_NAME.fullmatch(key):
            table.fail(where, "not a valid environment variable name (at most 128 bytes)")
        if key in RESERVED_ENV or key.startswith(RESERVED_ENV_PREFIXES):
            table.fail(where, "reserved: sockd never passes it to programs")
        if not isinstance(value, str):
            table.fail(where, f"expected a string, got {type(value).__name__}")
        table.check_string(where, value, MAX_PROGRAM_BYTES)
        size += len(key) + len(value.encode()) + 2
    if size > MAX_PROGRAM_BYTES:
        table.fail("env", f"exec and env together: at most {MAX_PROGRAM_BYTES} bytes, got {size}")
    return tuple(sorted(env.items()))


def _rlimits(table: Table) -> tuple[tuple[str, int | None], ...]:
    """Return a program's resource limits, each one this process could set (`rlimits.parse`)."""
    given = table.get("rlimits", dict, {})
    limits = {}
    for key, value in given.items():
        where = f"rlimits.{key_text(key)}"
        if key not in resource_limits.RESOURCES:
            table.fail(where, f"not a resource: {', '.join(resource_limits.RESOURCES)}")
        try:
            limits[key] = resource_limits.parse(key, value)
        except ValueError as exc:
            table.fail(where, str(exc))
        problem = resource_limits.beyond_hard(key, limits[key])
        if problem is not None:
            table.fail(where, problem)
    return tuple((key, limits[key]) for key in resource_limits.RESOURCES if key in limits)


def _seconds(table: Table, key: str, default: float | None) -> float | None:
    """Return a duration of a service (max_duration, idle_timeout)."""
    seconds: float | None = table.number(key, default, minimum=MIN_SECONDS, maximum=MAX_SECONDS)
    return seconds


def _user(table: Table) -> str | None:
    return _existing(table, "user", pwd.getpwnam)


def _group(table: Table) -> str | None:
    return _existing(table, "group", grp.getgrnam)


def _existing(table: Table, key: str, lookup: Callable[[str], object]) -> str | None:
    """Return the user or group named at `key`, which must exist on this system."""
    name: str | None = table.string(key, None, max_bytes=MAX_NAME_BYTES)
    if name is not None:
        try:
            lookup(name)
        except KeyError:
            table.fail(key, f"no such {key} {shown(name)}")
    return name


def _limits(table: Table, *, wait: bool = False) -> Limits:
    """Return the service's limits (a wait service's `rate` and `burst` bound its starts)."""
    limits = Limits(
        per_source=table.integer("per_source", None, minimum=1, maximum=MAX_CHILDREN),
        source_prefix_v4=table.integer("source_prefix_v4", 32, minimum=0, maximum=32),
        source_prefix_v6=table.integer("source_prefix_v6", 64, minimum=0, maximum=128),
        rate=table.number("rate", None, minimum=MIN_RATE, maximum=MAX_RATE),
        burst=table.integer("burst", None, minimum=1, maximum=MAX_RATE),
        per_source_rate=table.number("per_source_rate", None, minimum=MIN_RATE, maximum=MAX_RATE),
        per_source_burst=table.integer("per_source_burst", None, minimum=1, maximum=MAX_RATE),
    )
    if limits.burst is not None and limits.rate is None:
        table.fail("burst", "goes with rate")
    if limits.per_source_burst is not None and limits.per_source_rate is None:
        table.fail("per_source_burst", "goes with per_source_rate")
    if wait and limits.rate is None:
        limits = Limits(**{**limits.as_dict(), "rate": WAIT_RATE, "burst": WAIT_BURST})
    return limits


def _networks(table: Table, key: str) -> tuple[IPNetwork, ...]:
    networks = []
    for index, text in enumerate(table.items(key, max_items=MAX_NETWORKS)):
        try:
            if not isinstance(text, str) or len(text) > MAX_NETWORK_BYTES:
                raise TypeError  # noqa: TRY301 (one message for every bad entry)
            network = ipaddress.ip_network(text, strict=False)
        except (ValueError, TypeError):
            table.fail(f"{key}[{index}]", f"{shown(text)} is not an address or CIDR network")
        if "%" in text:  # a client's address carries no zone to match
            problem = f"{shown(text)}: write it without its %zone (clients' addresses have none)"
            table.fail(f"{key}[{index}]", problem)
        networks.append(network)
    return tuple(networks)


def _check_unique(services: list[ServiceConfig], where: str) -> None:
    names: set[str] = set()
    for service in services:
        if service.name in names:
            raise ConfigError(f"{where}: service {service.name!r}: name: duplicate service name")
        names.add(service.name)


def _check_listen(
    services: list[ServiceConfig], where: str, *, numeric: bool = False
) -> _Addresses:
    """Resolve every address as `sockd run` binds it, and refuse what binding would refuse.

    Host names are resolved by the function `run` uses, so that a name which
    does not resolve is the same error in both. Two entries that cannot both
    be bound are refused: the same address (after resolving), a wildcard
    (0.0.0.0, ::) beside an address of its family on the same port, the same
    UNIX socket path; and so is a path taken by a file that is not a socket.
    With `numeric`, an address with a host name is left out (nothing is resolved).

    Raises:
        ConfigError: naming the service, the `listen` entry and the problem.
    """
    taken = _Addresses(numeric=numeric)
    for service in services:
        taken.add(service, where)
    return taken


class _Addresses:
    """The addresses of the services checked so far (`_check_listen`), by whom each is taken."""

    def __init__(self, *, numeric: bool = False) -> None:
        """Start with no address taken; `numeric`: leave out addresses with a host name."""
        self.numeric = numeric
        self.paths: dict[str, str] = {}  # a socket path: whose it is ("ADDRESS of service 'x'")
        # TCP and UDP ports are apart: each key starts with the socket type.
        self.bound: dict[tuple[int, int, str, int], str] = {}  # (type, family, host, port)
        self.ports: dict[tuple[int, int, int], str] = {}  # (type, family, port): the first on it
        self.wildcards: dict[tuple[int, int, int], str] = {}  # (type, family, port): a wildcard

    def add(self, service: ServiceConfig, where: str) -> None:
        """Take the addresses of `service`, or none if one cannot be bound beside those taken.

        Raises:
            ConfigError: naming the service, the `listen` entry and the problem.
        """
        paths, bound = dict(self.paths), dict(self.bound)
        ports, wildcards = dict(self.ports), dict(self.wildcards)
        for index, address in enumerate(service.listen):
            key = f"{where}: service {service.name!r}: listen[{index}]"
            mine = f"{one_line(str(address))} of service {service.name!r}"
            kind = address.type
            if address.is_unix:
                _check_socket_path(address.path, key)
                other = paths.get(os.path.normpath(address.path))
                if other is not None:
                    raise ConfigError(f"{key}: {one_line(str(address))} overlaps {other}")
                paths[os.path.normpath(address.path)] = mine
                continue
            if self.numeric and not _is_numeric(address.host):
                continue
            pairs = [
                (family, sockaddr[0], sockaddr[1])
                for family, sockaddr in resolve(address, key)
                if isinstance(sockaddr, tuple) and sockaddr[1] != 0  # port 0: the kernel picks
            ]
            for family, host, port in pairs:
                other = bound.get((kind, family, host, port)) or wildcards.get((kind, family, port))
                if host in _WILDCARDS:
                    other = other or ports.get((kind, family, port))
                if other is not None:
                    raise ConfigError(f"{key}: {address} overlaps {other}")
            for family, host, port in pairs:
                bound[kind, family, host, port] = mine
                ports.setdefault((kind, family, port), mine)
                if host in _WILDCARDS:
                    wildcards[kind, family, port] = mine
        self.paths, self.bound, self.ports, self.wildcards = paths, bound, ports, wildcards


def _is_numeric(host: str) -> bool:
    """Tell whether `host` is an IP address (or empty: every address), resolved without DNS."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return not host
    return True


def _check_socket_path(path: str, key: str) -> None:
    """Refuse a UNIX socket path taken by another kind of file (`run` replaces only sockets)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # nothing there (or nothing we may see): binding will tell
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{key}: {shown(path)} exists and is not a socket")


def service_spec(service: ServiceConfig) -> ServiceSpec:
    """Return what the forker needs of the service (it never imports this module)."""
    return ServiceSpec(
        service.name,
        service.handler,
        exec=service.exec,
        program=service.program,
        env=service.env,
        identity=_identity(service.user, service.group),
        max_children=service.max_children,
        max_duration=service.max_duration,
        idle_timeout=service.idle_timeout,
        allow=tuple(str(network) for network in service.allow),
        deny=tuple(str(network) for network in service.deny),
        refusal=service.refusal,
        limits=service.limits,
        workers=service.workers,
        max_connections_per_child=service.max_connections_per_child,
        proxy_protocol=service.proxy_protocol,
        proxy_trusted=tuple(str(network) for network in service.proxy_trusted),
        proxy_timeout=service.proxy_timeout,
        udp_reflection=service.udp_reflection,
        wait=service.wait,
        rlimits=service.rlimits,
    )


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
        values = {**vars(service), **service.limits.as_dict()}
        del values["limits"]
        if not service.proxy_protocol:  # they go with it
            del values["proxy_trusted"], values["proxy_timeout"]
        if not service.wait:
            del values["wait"]
        if not service.rlimits:
            del values["rlimits"]
        lines += ["", "[[service]]", *toml_pairs(values)]
    return "\n".join(lines) + "\n"
