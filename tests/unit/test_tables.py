"""Tests of sockd.tables: typed access to TOML tables, errors naming file and key."""

from __future__ import annotations

import tomllib

import pytest

from sockd.errors import ConfigError
from sockd.tables import Table, toml_pairs


def table(**data: object) -> Table:
    return Table(dict(data), "/etc/x.toml", "service 'a': ")


class TestTable:
    def test_typed_values_and_defaults(self) -> None:
        """Values of the right kind come back; absent keys give the default."""
        values = table(n=3, f=1, s="x", items=["a"])
        assert values.integer("n", None, minimum=1, maximum=5) == 3
        assert values.number("f", None, minimum=0) == 1.0
        assert values.get("s", str) == "x"
        assert values.strings("items") == ["a"]
        assert values.integer("absent", 7, minimum=0) == 7
        values.done()

    @pytest.mark.parametrize(
        ("data", "call", "message"),
        [
            ({}, lambda t: t.get("s", str), "service 'a': s: required key is missing"),
            (
                {"n": True},
                lambda t: t.integer("n", 1, minimum=0),
                "n: expected an integer, got bool",
            ),
            ({"n": 0}, lambda t: t.integer("n", 1, minimum=1), "n: must be at least 1"),
            ({"n": 9}, lambda t: t.integer("n", 1, minimum=1, maximum=8), "n: must be at most 8"),
            ({"f": True}, lambda t: t.number("f", 1, minimum=0), "f: expected a number, got bool"),
            ({"l": ["a", 2]}, lambda t: t.strings("l"), "l[1]: expected a string, got int"),
            ({"zz": 1, "aa": 2}, lambda t: t.done(), "aa: unknown key"),
        ],
    )
    def test_errors_are_one_line_naming_file_and_key(
        self, data: dict[str, object], call: object, message: str
    ) -> None:
        """Each mistake raises a ConfigError `FILE: PREFIX.KEY: PROBLEM`."""
        with pytest.raises(ConfigError) as caught:
            call(table(**data))  # type: ignore[operator]
        assert str(caught.value).startswith("/etc/x.toml: service 'a': ")
        assert str(caught.value).endswith(message)


class TestTomlPairs:
    def test_rendered_pairs_parse_back(self) -> None:
        """Strings are escaped, None is a comment, env is an inline table, tuples are lists."""
        lines = toml_pairs(
            {"refusal": 'no "x"\r\n', "unset": None, "env": (("A", "1"),), "exec": ("a", "b")}
        )
        assert lines[1] == "# unset is not set"
        assert tomllib.loads("\n".join(lines)) == {
            "refusal": 'no "x"\r\n',
            "env": {"A": "1"},
            "exec": ["a", "b"],
        }
