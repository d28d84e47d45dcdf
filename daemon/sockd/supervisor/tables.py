"""The daemon's TOML tables: typed, bounded access, errors naming file and key, rendering."""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

from sockd.errors import ConfigError

_MISSING: Any = object()
_KIND_NAMES: dict[Any, str] = {
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "a table",
    (int, float): "a number",
}
_SHOWN = 60  # characters of a value quoted in a message
_PROBLEM = 400  # characters of a problem (say, a handler module's own error) in a message


def shown(value: object) -> str:
    """Quote a value for a message: its repr (control characters escaped), cut if long."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def one_line(text: str, limit: int = _PROBLEM) -> str:
    """Return `text` with every non-printable character escaped, cut at `limit` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else f"{text[:limit]}..."


def key_text(key: str) -> str:
    """Write a key as written in the file, or quoted when it is odd (control characters, long)."""
    return key if key.isprintable() and len(key) <= _SHOWN else shown(key)


class Table:
    """A TOML table being validated: typed getters, and unknown keys reported by `done()`.

    Every getter bounds what it returns (numbers finite and in range, strings
    and lists of a maximum length), so nothing unbounded reaches the forker.
    """

    def __init__(self, data: dict[str, Any], source: str, prefix: str) -> None:
        self.data = data
        self.source = source
        self.prefix = prefix
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> NoReturn:
        """Raise the one-line error for `key`.

        Raises:
            ConfigError: `FILE: PREFIX.KEY: PROBLEM`.
        """
        source = one_line(self.source, 4096)
        raise ConfigError(f"{source}: {self.prefix}{key_text(key)}: {one_line(problem)}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """Return the value of `key`, which must be of `kind`; `default` if absent."""
        self.seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.fail(key, "required key is missing")
            return default
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, kind):  # no key is a bool
            self.fail(key, f"expected {_KIND_NAMES[kind]}, got {type(value).__name__}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """Return true or false, or `default` if absent."""
        self.seen.add(key)
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, f"expected true or false, got {type(value).__name__}")
        return value

    def table(self, key: str) -> Table:
        """Return the sub-table `key` (empty if absent)."""
        return Table(self.get(key, dict, {}), self.source, f"{self.prefix}{key}.")

    def integer(self, key: str, default: int | None, *, minimum: int, maximum: int) -> Any:
        """Return an integer from `minimum` to `maximum`, or `default`."""
        value = self.get(key, int, default)
        if value is not None:
            self.check_range(key, value, minimum, maximum)
        return value

    def number(self, key: str, default: float | None, *, minimum: float, maximum: float) -> Any:
        """Return a finite number (int or float) from `minimum` to `maximum` as a float."""
        value = self.get(key, (int, float), default)
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(key, f"must be a finite number, got {value}")
        self.check_range(key, value, minimum, maximum)
        return float(value)

    def check_range(self, key: str, value: float, minimum: float, maximum: float) -> None:
        """Fail unless `minimum <= value <= maximum` (the value is not quoted: it may be huge)."""
        if value < minimum:
            self.fail(key, f"must be at least {minimum}")
        if value > maximum:
            self.fail(key, f"must be at most {maximum}")

    def string(
        self, key: str, default: Any = _MISSING, *, max_bytes: int, nul: bool = False
    ) -> Any:
        """Return a string of at most `max_bytes` in UTF-8, without NUL unless `nul`."""
        value = self.get(key, str, default)
        if isinstance(value, str):
            self.check_string(key, value, max_bytes, nul=nul)
        return value

    def check_string(self, key: str, value: str, max_bytes: int, *, nul: bool = False) -> None:
        """Fail if `value` is longer than `max_bytes` in UTF-8, or holds a NUL (unless `nul`)."""
        if len(value) > max_bytes or len(value.encode()) > max_bytes:
            self.fail(key, f"at most {max_bytes} bytes")
        if not nul and "\0" in value:
            self.fail(key, "contains a NUL character")

    def items(self, key: str, *, max_items: int) -> list[Any]:
        """Return a list of at most `max_items` (empty if absent)."""
        values = self.get(key, list, [])
        if len(values) > max_items:
            self.fail(key, f"at most {max_items} entries, got {len(values)}")
        return list(values)

    def strings(self, key: str, *, max_items: int, max_bytes: int) -> list[str]:
        """Return a list of at most `max_items` strings of at most `max_bytes`, without NUL."""
        values = self.items(key, max_items=max_items)
        for index, value in enumerate(values):
            if not isinstance(value, str):
                self.fail(f"{key}[{index}]", f"expected a string, got {type(value).__name__}")
            self.check_string(f"{key}[{index}]", value, max_bytes)
        return values

    def done(self) -> None:
        """Fail on the first key no getter asked for."""
        for key in sorted(self.data.keys() - self.seen):
            self.fail(key, "unknown key")


def toml_pairs(values: dict[str, Any]) -> list[str]:
    """Render `key = value` lines; None as a comment; `env`, `rlimits` (pairs) as inline tables."""
    lines = []
    for key, value in values.items():
        if key == "program":
            if value is not None:
                lines.append(f"# exec[0] is {value}")
        elif value is None:
            lines.append(f"# {key} is not set")
        elif key == "unix_mode":
            lines.append(f"{key} = {value:#o}")
        elif key in ("env", "rlimits"):  # pairs: an inline table (a limit None is unlimited)
            pairs = ", ".join(
                f"{name} = {_toml_value('unlimited' if item is None else item)}"
                for name, item in value
            )
            lines.append(f"{key} = {{ {pairs} }}" if pairs else f"{key} = {{}}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # A valid TOML basic string, escapes and all (JSON leaves DEL as it is; TOML does not).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_value(str(value))
