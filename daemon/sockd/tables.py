"""TOML tables: typed access with errors that name the file and the key, and rendering."""

from __future__ import annotations

import json
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


class Table:
    """A TOML table being validated: typed getters, and unknown keys reported by `done()`."""

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
        raise ConfigError(f"{self.source}: {self.prefix}{key}: {problem}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = _MISSING) -> Any:
        """Return the value of `key`, which must be of `kind`; `default` if absent."""
        self.seen.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.fail(key, "required key is missing")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(key, f"expected {_KIND_NAMES[kind]}, got {type(value).__name__}")
        return value

    def table(self, key: str) -> Table:
        """Return the sub-table `key` (empty if absent)."""
        return Table(self.get(key, dict, {}), self.source, f"{self.prefix}{key}.")

    def integer(
        self, key: str, default: int | None, *, minimum: int, maximum: int | None = None
    ) -> Any:
        """Return an integer from `minimum` to `maximum`, or `default`."""
        value = self.get(key, int, default)
        if value is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}")
        if value is not None and maximum is not None and value > maximum:
            self.fail(key, f"must be at most {maximum}")
        return value

    def number(self, key: str, default: float | None, *, minimum: float) -> Any:
        """Return a number (int or float) of at least `minimum` as a float, or `default`."""
        value = self.get(key, (int, float), default)
        if isinstance(value, bool):
            self.fail(key, "expected a number, got bool")
        if value is not None and value < minimum:
            self.fail(key, f"must be at least {minimum}")
        return None if value is None else float(value)

    def strings(self, key: str) -> list[str]:
        """Return a list of strings (empty if absent)."""
        values = self.get(key, list, [])
        for index, value in enumerate(values):
            if not isinstance(value, str):
                self.fail(f"{key}[{index}]", f"expected a string, got {type(value).__name__}")
        return list(values)

    def done(self) -> None:
        """Fail on the first key no getter asked for."""
        for key in sorted(self.data.keys() - self.seen):
            self.fail(key, "unknown key")


def toml_pairs(values: dict[str, Any]) -> list[str]:
    """Render `key = value` lines; None as a comment; `env` (pairs) as an inline table."""
    lines = []
    for key, value in values.items():
        if key == "program":
            if value is not None:
                lines.append(f"# exec[0] is {value}")
        elif value is None:
            lines.append(f"# {key} is not set")
        elif key == "unix_mode":
            lines.append(f"{key} = {value:#o}")
        elif key == "env":
            pairs = ", ".join(f"{name} = {_toml_value(text)}" for name, text in value)
            lines.append(f"env = {{ {pairs} }}" if pairs else "env = {}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return lines


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string, escapes and all
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    return _toml_value(str(value))
