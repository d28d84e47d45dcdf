"""A service's settings as the daemon hands them to its forker: one typed record, and its wire form.

The daemon builds a `ServiceSpec` from its config (`sockd.supervisor.config.
service_spec`), sends `to_wire()` (a tuple of plain values, for `marshal`; see
`sockd.ipc`), and the forker gets it back with `from_wire()`, which checks
every field's type: a record of the wrong shape is refused, naming the field.
Both processes import this module: it imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Self

    Decode = Callable[[object], Any]  # checks a field's wire value; returns the attribute's


class WireError(ValueError):
    """Wire data that is not the record expected: the message names the field and the problem."""


def _expected(what: str, value: object) -> WireError:
    return WireError(f"expected {what}, got {type(value).__name__}")


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def _integer(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):  # a bool is no integer here
        raise _expected("an integer", value)
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("true or false", value)
    return value


def _number(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _expected("a number", value)
    return value


def _optional(decode: Decode, what: str) -> Decode:
    """Return a `decode` of a scalar (`what`) that also takes None."""

    def optional(value: object) -> Any:
        if value is None:
            return None
        try:
            return decode(value)
        except WireError:
            raise _expected(f"{what} or None", value) from None

    return optional


def _items(value: object) -> list[object] | tuple[object, ...]:
    if not isinstance(value, list | tuple):
        raise _expected("a list", value)
    return value


def _within(where: str, decode: Decode, value: object) -> Any:
    """Decode `value`, naming `where` it is in any problem."""
    try:
        return decode(value)
    except WireError as exc:
        raise WireError(f"{where}: {exc}") from None


def _texts(value: object) -> tuple[str, ...]:
    items = _items(value)
    for index, item in enumerate(items):  # (a deny list may hold 100000: no call per item)
        if not isinstance(item, str):
            raise WireError(f"item {index}: {_expected('a string', item)}")
    return tuple(items)  # type: ignore[arg-type]  # (each checked)


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    pairs = []
    for index, item in enumerate(_items(value)):
        pair = _within(f"item {index}", _texts, item)
        if len(pair) != 2:
            msg = f"item {index}: expected [name, value], got {type(item).__name__} of {len(pair)}"
            raise WireError(msg)
        pairs.append(pair)
    return tuple(pairs)


def _identity(value: object) -> list[Any] | None:
    """Decode None or [uid, gid, groups] (see `sockd.privileges.group_ids`)."""
    if value is None:
        return None
    items = _items(value)
    if len(items) != 3:
        msg = f"expected None or [uid, gid, groups], got {type(value).__name__} of {len(items)}"
        raise WireError(msg)
    groups = _within("groups", _items, items[2])
    return [
        _within("uid", _integer, items[0]),
        _within("gid", _integer, items[1]),
        [_within(f"groups: item {index}", _integer, group) for index, group in enumerate(groups)],
    ]


_OPTIONAL_INTEGER = _optional(_integer, "an integer")
_OPTIONAL_NUMBER = _optional(_number, "a number")
_OPTIONAL_TEXT = _optional(_text, "a string")

# A program's resource limits: the config's names and their resources (see
# `sockd.supervisor.rlimits`), in the order they are set and rendered.
RLIMITS = {
    "as": "RLIMIT_AS",
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "files": "RLIMIT_NOFILE",
    "fsize": "RLIMIT_FSIZE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "stack": "RLIMIT_STACK",
}


def _rlimits(value: object) -> tuple[tuple[str, int | None], ...]:
    """Decode [[name, limit or None (unlimited)], ...]: each name known, at most once."""
    limits: dict[str, int | None] = {}
    for index, item in enumerate(_items(value)):
        pair = _within(f"item {index}", _items, item)
        if len(pair) != 2:
            msg = f"item {index}: expected [name, limit], got {type(item).__name__} of {len(pair)}"
            raise WireError(msg)
        name = _within(f"item {index}: name", _text, pair[0])
        if name not in RLIMITS:
            raise WireError(f"item {index}: {name!r} is not a resource of RLIMITS")
        if name in limits:
            raise WireError(f"item {index}: {name!r} given twice")
        limit = _within(f"item {index}: limit", _OPTIONAL_INTEGER, pair[1])
        if limit is not None and not 0 <= limit < 1 << 63:
            raise WireError(f"item {index}: {limit} is not a limit (0 to 2^63-1)")
        limits[name] = limit
    return tuple(limits.items())


class WireRecord:  # noqa: PLW1641 (compared by value; only Limits, in a frozen dataclass, hashes)
    """A record whose wire form is a tuple of plain values: one a field of FIELDS, in order."""

    __slots__ = ()
    FIELDS: tuple[tuple[str, Decode], ...] = ()  # each field's name, and how its value is checked

    def to_wire(self) -> tuple[object, ...]:
        """Return the record as plain values, for `marshal` (see `sockd.ipc`)."""
        values = (getattr(self, name) for name, _ in self.FIELDS)
        return tuple(
            value.to_wire() if isinstance(value, WireRecord) else value for value in values
        )

    @classmethod
    def from_wire(cls, data: object) -> Self:
        """Return the record whose `to_wire()` gave `data`, each field checked.

        Raises:
            WireError: `data` is not such a record; the message names the field.
        """
        if not isinstance(data, list | tuple) or len(data) != len(cls.FIELDS):
            size = f" of {len(data)}" if isinstance(data, list | tuple) else ""
            msg = f"expected {len(cls.FIELDS)} values, got {type(data).__name__}{size}"
            raise WireError(msg)
        record = cls.__new__(cls)
        for (name, decode), value in zip(cls.FIELDS, data, strict=True):
            setattr(record, name, _within(name, decode, value))
        return record

    def as_dict(self) -> dict[str, Any]:
        """Return the fields by name (a nested record as it is)."""
        return {name: getattr(self, name) for name, _ in self.FIELDS}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WireRecord) or type(other) is not type(self):
            return NotImplemented
        return self.to_wire() == other.to_wire()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self.as_dict().items())
        return f"{type(self).__name__}({fields})"


class Limits(WireRecord):
    """Admission limits of a service, checked before a connection is served (None: no limit)."""

    __slots__ = (
        "burst",
        "per_source",
        "per_source_burst",
        "per_source_rate",
        "rate",
        "source_prefix_v4",
        "source_prefix_v6",
    )
    FIELDS = (
        ("per_source", _OPTIONAL_INTEGER),
        ("source_prefix_v4", _integer),
        ("source_prefix_v6", _integer),
        ("rate", _OPTIONAL_NUMBER),
        ("burst", _OPTIONAL_INTEGER),
        ("per_source_rate", _OPTIONAL_NUMBER),
        ("per_source_burst", _OPTIONAL_INTEGER),
    )

    def __init__(  # noqa: PLR0913 (a keyword a field)
        self,
        *,
        per_source: int | None = None,  # connections at once from one source
        source_prefix_v4: int = 32,  # a source is an IPv4 address...
        source_prefix_v6: int = 64,  # ...or an IPv6 /64
        rate: float | None = None,  # connections per second, all sources (token bucket)
        burst: int | None = None,
        per_source_rate: float | None = None,  # connections per second from one source
        per_source_burst: int | None = None,
    ) -> None:
        self.per_source = per_source
        self.source_prefix_v4 = source_prefix_v4
        self.source_prefix_v6 = source_prefix_v6
        self.rate = rate
        self.burst = burst
        self.per_source_rate = per_source_rate
        self.per_source_burst = per_source_burst

    def __hash__(self) -> int:  # a field of the config's frozen ServiceConfig
        return hash(self.to_wire())


class ServiceSpec(WireRecord):
    """What the forker needs of one `[[service]]`: its config, minus the listeners (passed apart).

    `program` is exec[0] found on PATH; `identity` is [uid, gid, groups] for
    a program's `user`/`group`, or None; `allow` and `deny` are networks as
    text. Read-only once made: the forker's `Service` copies what it uses.
    With `proxy_protocol`, each connection starts with a PROXY header, taken
    from the addresses in `proxy_trusted` only, within `proxy_timeout` seconds.
    With `udp_reflection`, the echo and chargen built-ins answer datagrams.
    With `wait`, the program gets the listening socket itself, one at a time
    (see `sockd.forker.waits`); `limits.rate` and `burst` bound its starts.
    `rlimits` are a program's resource limits, (name, limit or None), set in
    its child (see `sockd.forker.programs`).
    """

    __slots__ = (
        "allow",
        "deny",
        "env",
        "exec",
        "handler",
        "identity",
        "idle_timeout",
        "limits",
        "max_children",
        "max_connections_per_child",
        "max_duration",
        "name",
        "program",
        "proxy_protocol",
        "proxy_timeout",
        "proxy_trusted",
        "refusal",
        "rlimits",
        "udp_reflection",
        "wait",
        "workers",
    )
    FIELDS = (
        ("name", _text),
        ("handler", _OPTIONAL_TEXT),
        ("exec", _texts),
        ("program", _OPTIONAL_TEXT),
        ("env", _pairs),
        ("identity", _identity),
        ("max_children", _OPTIONAL_INTEGER),
        ("max_duration", _OPTIONAL_NUMBER),
        ("idle_timeout", _OPTIONAL_NUMBER),
        ("allow", _texts),
        ("deny", _texts),
        ("refusal", _text),
        ("limits", Limits.from_wire),
        ("workers", _OPTIONAL_INTEGER),
        ("max_connections_per_child", _OPTIONAL_INTEGER),
        ("proxy_protocol", _flag),
        ("proxy_trusted", _texts),
        ("proxy_timeout", _number),
        ("udp_reflection", _flag),
        ("wait", _flag),
        ("rlimits", _rlimits),
    )

    def __init__(  # noqa: PLR0913 (a keyword a field)
        self,
        name: str,
        handler: str | None,
        *,
        exec: tuple[str, ...] = (),  # noqa: A002 (the config's key)
        program: str | None = None,
        env: tuple[tuple[str, str], ...] = (),
        identity: list[Any] | None = None,
        max_children: int | None = None,
        max_duration: float | None = None,
        idle_timeout: float | None = None,
        allow: tuple[str, ...] = (),
        deny: tuple[str, ...] = (),
        refusal: str = "",
        limits: Limits | None = None,
        workers: int | None = None,
        max_connections_per_child: int | None = None,
        proxy_protocol: bool = False,
        proxy_trusted: tuple[str, ...] = (),
        proxy_timeout: float = 3.0,
        udp_reflection: bool = False,
        wait: bool = False,
        rlimits: tuple[tuple[str, int | None], ...] = (),
    ) -> None:
        self.name = name
        self.handler = handler
        self.exec = exec
        self.program = program
        self.env = env
        self.identity = identity
        self.max_children = max_children
        self.max_duration = max_duration
        self.idle_timeout = idle_timeout
        self.allow = allow
        self.deny = deny
        self.refusal = refusal
        self.limits = Limits() if limits is None else limits
        self.workers = workers
        self.max_connections_per_child = max_connections_per_child
        self.proxy_protocol = proxy_protocol
        self.proxy_trusted = proxy_trusted
        self.proxy_timeout = proxy_timeout
        self.udp_reflection = udp_reflection
        self.wait = wait
        self.rlimits = rlimits


def services_from_wire(data: object) -> list[ServiceSpec]:
    """Return the services of a "setup" or "reload" record (a list of `to_wire()` tuples).

    Raises:
        WireError: naming the service (by its place) and its field.
    """
    items = _items(data)
    return [
        _within(f"service {index}", ServiceSpec.from_wire, item) for index, item in enumerate(items)
    ]
