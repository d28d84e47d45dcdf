"""Tests of sockd.exits: a pooled worker's connections as entries, batch headers, decoding."""

from __future__ import annotations

import marshal

import pytest

from sockd import exits
from sockd.exits import entry, read_entries

GOOD = (1, ("127.0.0.1", 40000), 0, 0.25)


def framed(value: object) -> bytes:
    """Frame any marshalled value as an entry (what a hostile worker may send)."""
    data = marshal.dumps(value)  # type: ignore[arg-type]
    return len(data).to_bytes(2, "little") + data


class TestEntries:
    def test_entries_read_back_in_order(self) -> None:
        """Each client a worker records (address, UNIX peer, with a path) is read back as sent."""
        sent = [
            GOOD,
            (2, ("::1", 40001, 0, 0), 141, 0.5),
            (3, "unix:uid=0,pid=1", -9, 1.0),
            (4, ["unix:uid=0,pid=1", "/run/x\\x00"], 1, 0.0),
            (5, None, 0, 0.0),  # the connection a worker died serving, its slot unreadable
            (6, {"client": "192.0.2.1:5", "via": "127.0.0.1:4"}, 0, 0.1),  # proxied
        ]
        assert read_entries(b"".join(entry(*values) for values in sent)) == (sent, 0)

    def test_an_undecodable_entry_is_skipped_the_next_kept(self) -> None:
        """An entry that does not decode is counted; its length frames it: the next is read."""
        data = entry(*GOOD) + (4).to_bytes(2, "little") + b"\xff\xfe\xfd\xfc" + entry(*GOOD)
        assert read_entries(data) == ([GOOD, GOOD], 1)

    def test_a_torn_entry_ends_the_reading(self) -> None:
        """An entry cut short (its length past the end) is counted once; those before are kept."""
        assert read_entries(entry(*GOOD) + entry(*GOOD)[:-3]) == ([GOOD], 1)
        assert read_entries(entry(*GOOD) + b"\x07") == ([GOOD], 1)

    def test_a_length_of_zero_ends_the_reading(self) -> None:
        """Zeros (a length scribbled over, in a slot) count once, not once per two bytes."""
        assert read_entries(entry(*GOOD) + bytes(1000)) == ([GOOD], 1)

    @pytest.mark.parametrize(
        "value",
        [
            (1, ("127.0.0.1", 1), 0),  # three fields
            [1, ("127.0.0.1", 1), 0, 0.5],  # a list
            {1: 0, "x": 0, 2: 0, 0.5: 0},  # a dict whose keys would unpack
            ("1", ("127.0.0.1", 1), 0, 0.5),  # the number a string
            (True, ("127.0.0.1", 1), 0, 0.5),  # a bool is no number
            (1, ("127.0.0.1", 1), "0", 0.5),  # the exit code a string
            (1, ("127.0.0.1", 1), 0, 1),  # seconds an int
            (1, ("127.0.0.1", 1), 0, -1.0),
            (1, ("127.0.0.1", 1), 0, float("nan")),
            (1, ("127.0.0.1", 1), 0, float("inf")),
            (1, (), 0, 0.5),  # clients served_fields cannot describe
            (1, ("127.0.0.1",), 0, 0.5),
            (1, (1, 2), 0, 0.5),
            (1, ["unix:uid=0,pid=1"], 0, 0.5),
            (1, [1, 2], 0, 0.5),
            (1, b"127.0.0.1", 0, 0.5),
            (1, 7, 0, 0.5),
            (1, {"client": "a"}, 0, 0.5),  # a proxied client without its proxy
            (1, {"client": "a", "via": "b", "x": "c"}, 0, 0.5),
            (1, {"client": "a", "via": 1}, 0, 0.5),
        ],
    )
    def test_an_entry_of_the_wrong_shape_is_skipped(self, value: object) -> None:
        """Values that decode but are not an entry are counted, and those around them kept."""
        assert read_entries(entry(*GOOD) + framed(value) + entry(*GOOD)) == ([GOOD, GOOD], 1)

    def test_every_entry_read_can_be_logged(self) -> None:
        """What read_entries keeps, served_fields describes: no client read can make it raise."""
        for client in (
            ("h", 1),
            ("h", "p", 3),
            ["a", "b"],
            "text",
            None,
            {"client": "a", "via": "b"},
        ):
            (kept,), _ = read_entries(entry(1, client, 0, 0.5))
            exits.served_fields(7, "pool", kept[1], kept[2], kept[3])

    def test_an_entry_too_long_is_refused(self) -> None:
        """Its length takes 2 bytes: a longer one cannot be framed."""
        with pytest.raises(ValueError, match="an entry of"):
            entry(1, "x" * exits.MAX_ENTRY, 0, 0.5)

    def test_entries_are_counted_unread(self) -> None:
        """A batch dropped on the way is counted by its frames alone."""
        assert exits.count_entries(entry(*GOOD) * 5) == 5
        assert exits.count_entries(b"") == 0


def test_a_proxied_client_is_named_with_its_proxy() -> None:
    """The client its header named, and the proxy `via`."""
    fields = exits.client_fields({"client": "192.0.2.1:5", "via": "127.0.0.1:4"})
    assert fields == {"client": "192.0.2.1:5", "via": "127.0.0.1:4"}


class TestBatchHeader:
    def test_read_back(self) -> None:
        """Last number, denied and lost come back, whatever their size (8 bytes each)."""
        header = exits.batch_header(2**64 - 1, 3, 0)
        assert len(header) == exits.BATCH_HEADER
        assert exits.read_batch_header(header + entry(*GOOD)) == (2**64 - 1, 3, 0)

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\x00" * (exits.BATCH_HEADER - 1),  # too short
            b"\x01" + bytes(exits.BATCH_HEADER),  # not the mark
            marshal.dumps(("log", "error", "handler_error", {})),  # a log record
        ],
    )
    def test_anything_else_has_no_header(self, data: bytes) -> None:
        """A datagram too short, or that does not start with the mark, is no batch."""
        assert exits.read_batch_header(data) is None

    def test_no_marshal_output_starts_with_the_mark(self) -> None:
        """A child's log records (marshalled) are never taken for a batch."""
        values: list[object] = [None, 0, "", (), [], {}, ("log",), b"", 0.5, 2**70, frozenset()]
        for value in values:
            assert marshal.dumps(value)[0] != exits.BATCH_MARK  # type: ignore[arg-type]
