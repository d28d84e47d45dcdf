"""Tests of sockd.supervisor.tables: typed access to TOML tables, errors naming file and key."""

from __future__ import annotations

import tomllib

import pytest

from sockd.errors import ConfigError
from sockd.supervisor.tables import Table, key_text, one_line, shown, toml_pairs


def table(**data: object) -> Table:
    return Table(dict(data), "/etc/x.toml", "service 'a': ")


class TestTable:
    def test_typed_values_and_defaults(self) -> None:
        """Values of the right kind come back; absent keys give the default."""
        values = table(n=3, f=1, s="x", items=["a"])
        assert values.integer("n", None, minimum=1, maximum=5) == 3
        assert values.number("f", None, minimum=0, maximum=1) == 1.0
        assert values.get("s", str) == "x"
        assert values.strings("items", max_items=1, max_bytes=1) == ["a"]
        assert values.integer("absent", 7, minimum=0, maximum=7) == 7
        values.done()

    @pytest.mark.parametrize(
        ("data", "call", "message"),
        [
            ({}, lambda t: t.get("s", str), "service 'a': s: required key is missing"),
            (
                {"n": True},
                lambda t: t.integer("n", 1, minimum=0, maximum=1),
                "n: expected an integer, got bool",
            ),
            ({"n": 0}, lambda t: t.integer("n", 1, minimum=1, maximum=8), "n: must be at least 1"),
            ({"n": 9}, lambda t: t.integer("n", 1, minimum=1, maximum=8), "n: must be at most 8"),
            (
                {"f": True},
                lambda t: t.number("f", 1, minimum=0, maximum=1),
                "f: expected a number, got bool",
            ),
            (
                {"l": ["a", 2]},
                lambda t: t.strings("l", max_items=2, max_bytes=1),
                "l[1]: expected a string, got int",
            ),
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

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (float("nan"), "f: must be a finite number, got nan"),
            (float("inf"), "f: must be a finite number, got inf"),
            (float("-inf"), "f: must be a finite number, got -inf"),
            (10**400, "f: must be at most 5"),
            (-(10**400), "f: must be at least 0"),
            (5.000001, "f: must be at most 5"),
        ],
    )
    def test_numbers_are_finite_and_bounded(self, value: float, message: str) -> None:
        """nan, infinities and numbers past either bound are refused, the value not quoted."""
        with pytest.raises(ConfigError) as caught:
            table(f=value).number("f", None, minimum=0, maximum=5)
        assert str(caught.value) == f"/etc/x.toml: service 'a': {message}"

    def test_integers_are_bounded(self) -> None:
        """A 400-digit integer is refused in one short line."""
        with pytest.raises(ConfigError, match=r"n: must be at most 9$"):
            table(n=10**400).integer("n", None, minimum=0, maximum=9)

    @pytest.mark.parametrize(
        ("data", "call", "message"),
        [
            ({"s": "x" * 5}, lambda t: t.string("s", max_bytes=4), "s: at most 4 bytes"),
            ({"s": "éé"}, lambda t: t.string("s", max_bytes=3), "s: at most 3 bytes"),
            ({"s": "a\0"}, lambda t: t.string("s", max_bytes=4), "s: contains a NUL character"),
            ({"l": [1, 2, 3]}, lambda t: t.items("l", max_items=2), "l: at most 2 entries, got 3"),
            (
                {"l": ["a", "b\0"]},
                lambda t: t.strings("l", max_items=2, max_bytes=2),
                "l[1]: contains a NUL character",
            ),
            (
                {"l": ["a", "bcd"]},
                lambda t: t.strings("l", max_items=2, max_bytes=2),
                "l[1]: at most 2 bytes",
            ),
        ],
    )
    def test_strings_and_lists_are_bounded(
        self, data: dict[str, object], call: object, message: str
    ) -> None:
        """Strings have a length in UTF-8 bytes and no NUL; lists have a number of entries."""
        with pytest.raises(ConfigError) as caught:
            call(table(**data))  # type: ignore[operator]
        assert str(caught.value).endswith(message)

    def test_nul_where_allowed(self) -> None:
        """A string that may hold NUL (bytes for a client) keeps it."""
        assert table(s="a\0").string("s", max_bytes=2, nul=True) == "a\0"

    def test_odd_keys_and_problems_stay_on_one_line(self) -> None:
        """Control characters in a key, a problem or the file name are escaped; long keys cut."""
        values = Table({"a\nb": 1}, "/etc/\x1b.toml", "")
        with pytest.raises(ConfigError) as caught:
            values.done()
        assert str(caught.value) == "/etc/\\x1b.toml: 'a\\nb': unknown key"
        with pytest.raises(ConfigError) as caught:
            table().fail("k", "line\nbreak\t" + "x" * 1000)
        message = str(caught.value)
        assert message.isprintable()
        assert message.startswith("/etc/x.toml: service 'a': k: line\\nbreak\\t")
        assert len(message) < 500
        assert key_text("k" * 100).endswith("... (102 characters)")


class TestMessages:
    def test_shown_quotes_and_cuts(self) -> None:
        """Values are quoted with repr (control characters escaped) and cut past 60 characters."""
        assert shown("a\x1b") == "'a\\x1b'"
        assert shown("x" * 1_000_000) == "'" + "x" * 59 + "... (1000002 characters)"

    def test_one_line_keeps_printable_text(self) -> None:
        """Printable text, non-ASCII included, is left as it is."""
        assert one_line("déjà vu") == "déjà vu"
        assert one_line("a\u2028b\x7f") == "a\\u2028b\\x7f"


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

    def test_control_characters_render_as_valid_toml(self) -> None:
        """Every control character TOML forbids in a string (DEL too) is written escaped."""
        text = "".join(chr(code) for code in range(32)) + "\x7f é"
        assert tomllib.loads("\n".join(toml_pairs({"refusal": text}))) == {"refusal": text}
