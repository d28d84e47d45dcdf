"""Tests of sockd.ipc: records over a real SOCK_SEQPACKET socketpair, queues, shapes."""

from __future__ import annotations

import contextlib
import marshal
import os
import socket
from typing import TYPE_CHECKING

import pytest

from sockd import ipc
from sockd.exits import entry

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def pair() -> Iterator[tuple[int, int]]:
    """Make a channel: (writer's descriptor, reader's descriptor)."""
    writer, reader = (sock.detach() for sock in ipc.channel())
    yield writer, reader
    for fd in (writer, reader):
        with contextlib.suppress(OSError):
            os.close(fd)


def big_exit(pid: int) -> tuple[object, ...]:
    """Make a connection_closed item with a large client label (a long UNIX peer path)."""
    return (pid, "echo", f"unix:{pid}:" + "\udcff" * 1900, 0, 0.5, 0.1, 0.1, 1000)


class TestRecords:
    def test_round_trip(self, pair: tuple[int, int]) -> None:
        """Records sent back to back come out whole and in order."""
        writer, reader_fd = pair
        reader = ipc.Reader(reader_fd)
        records = [("log", "info", "x", {"pid": 1, "n": [1.5, None]}), ("status", 1, 2, 3, 4)]
        for record in records:
            ipc.send(writer, record)
        assert reader.read() == records
        assert reader.read() == []
        os.close(writer)
        assert reader.read() == []
        assert reader.eof

    def test_a_large_record_goes_in_fragments(self, pair: tuple[int, int]) -> None:
        """A record of 2 MB (a reload with a huge deny list) is reassembled, between others."""
        writer, reader_fd = pair
        reader = ipc.Reader(reader_fd)
        deny = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32" for i in range(80000)]
        large = ("reload", 1, [{"deny": deny}], 128, 10.0, 0)
        pieces = ipc.messages(large)
        assert len(pieces) > 1
        assert all(len(piece) <= ipc.MESSAGE + 1 for piece in pieces)
        sender = ipc.Sender(writer)
        got: list[ipc.Record] = []
        for record in [("quit",), large, ("retire",)]:
            sender.send(record)
            while sender.queue:
                got += reader.read()
                sender.flush()
        got += reader.read()
        assert got == [("quit",), large, ("retire",)]

    def test_a_record_over_the_maximum_is_refused_by_its_sender(
        self, pair: tuple[int, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past MAX_RECORD the sender raises TooLarge and sends nothing."""
        writer, reader_fd = pair
        monkeypatch.setattr(ipc, "MAX_RECORD", 100000)
        with pytest.raises(ipc.TooLarge, match=r"'reload' record of .* exceeds the limit"):
            ipc.Sender(writer).send(("reload", "x" * 200000))
        assert ipc.Reader(reader_fd).read() == []

    def test_read_blocking_keeps_what_follows(self, pair: tuple[int, int]) -> None:
        """A set-up record and an early stop read at once: the stop is not lost; None at EOF."""
        writer, reader_fd = pair
        reader = ipc.Reader(reader_fd)
        ipc.send(writer, ("setup", {}))
        ipc.send(writer, ("stop", 1.0))
        assert reader.read_blocking() == ("setup", {})
        assert reader.read() == [("stop", 1.0)]
        os.close(writer)
        assert reader.read_blocking() is None

    def test_malformed_messages_are_skipped_and_the_rest_kept(self, pair: tuple[int, int]) -> None:
        """Garbage, a bad flag, an oversized message, a cut fragment, a non-record: each skipped."""
        writer, reader_fd = pair
        errors: list[str] = []
        reader = ipc.Reader(reader_fd, errors.append)
        ipc.send(writer, ("alive",))
        os.write(writer, b"\x00\xff\xfe")  # does not decode
        os.write(writer, b"\x07" + marshal.dumps(("alive",)))  # unknown flag
        os.write(writer, b"\x00" + b"x" * (ipc.MESSAGE + 10))  # longer than any message
        os.write(writer, b"\x01" + b"\x00" * 10)  # a fragment whose record never ends ...
        os.write(writer, b"\x00" + b"y" * (ipc.MESSAGE + 10))  # ... cut by an oversized one
        os.write(writer, b"\x00" + marshal.dumps([1, 2]))  # decodes, but not a tuple
        ipc.send(writer, ("ready",))
        assert reader.read() == [("alive",), ("ready",)]
        assert len(errors) == 5
        assert "does not decode" in errors[0]

    def test_three_thousand_large_exits_all_arrive(self, pair: tuple[int, int]) -> None:
        """3,000 connection_closed items with 5.7 KB labels: none lost (2,792 of 3,000 before)."""
        writer, reader_fd = pair
        reader = ipc.Reader(reader_fd)
        sender = ipc.Sender(writer)
        got: list[object] = []
        for start in range(0, 3000, 16):
            batch = [big_exit(pid) for pid in range(start, min(start + 16, 3000))]
            for record, data in ipc.split("closed", batch):
                assert len(data) <= ipc.MESSAGE
                sender.send(record, data)
            for record in reader.read():
                got += record[1]  # type: ignore[arg-type]
            sender.flush()
        while sender.queue:
            for record in reader.read():
                got += record[1]  # type: ignore[arg-type]
            sender.flush()
        for record in reader.read():
            got += record[1]  # type: ignore[arg-type]
        assert [item[0] for item in got] == list(range(3000))  # type: ignore[index]


class TestSplit:
    def test_split_by_size_not_count(self) -> None:
        """A batch is cut so each record fits one message; the extra fields go with the first."""
        batch = [big_exit(pid) for pid in range(40)]
        records = [record for record, _ in ipc.split("served", batch, 7, 3)]
        assert len(records) > 1
        assert all(len(ipc.encode(record)) <= ipc.MESSAGE for record in records)
        assert [item for record in records for item in record[1]] == batch  # type: ignore[attr-defined]
        assert [record[2:] for record in records] == [(7, 3)] + [(0, 0)] * (len(records) - 1)

    def test_a_small_batch_stays_whole(self) -> None:
        """The usual case: one record."""
        ((record, data),) = ipc.split("closed", [1, 2, 3])
        assert record == ("closed", [1, 2, 3])
        assert marshal.loads(data) == record  # noqa: S302 (our own bytes)


class TestSender:
    def test_queue_while_full_then_flush_in_order(self, pair: tuple[int, int]) -> None:
        """A full socket queues records, asks to be polled for writing, then sends them in order."""
        writer, reader_fd = pair
        watched: list[bool] = []
        sender = ipc.Sender(writer)
        sender.watch = watched.append
        count = 0
        while not sender.queue:
            sender.send(("log", "info", "x", {"n": count, "pad": "p" * 1000}))
            count += 1
        for extra in range(10):
            assert sender.send(("log", "info", "x", {"n": count + extra, "pad": ""}))
        assert watched == [True]
        reader = ipc.Reader(reader_fd)
        got = []
        while sender.queue:
            got += reader.read()
            sender.flush()
        got += reader.read()
        assert [record[3]["n"] for record in got] == list(range(count + 10))  # type: ignore[index]
        assert watched == [True, False]

    def test_bounded_queue_drops_and_counts(self, pair: tuple[int, int]) -> None:
        """Past its bounds droppable records are counted, the rest queued; counts follow a drain."""
        writer, reader_fd = pair
        sender = ipc.Sender(
            writer, max_bytes=50000, max_records=1000, droppable=frozenset(("log", "closed"))
        )
        sent = 0
        while not sender.queue:
            sender.send(("log", "info", "filler", {"pad": "p" * 1000}))
            sent += 1
        dropped = 0
        for _ in range(200):
            dropped += not sender.send(("log", "info", "flood", {"pad": "p" * 1000}))
        assert dropped > 100
        assert sender.send(("closed", [big_exit(1), big_exit(2)])) is False
        assert sender.send(("reloaded", 3))  # not droppable: queued whatever the bounds
        reader = ipc.Reader(reader_fd)
        got = []
        while sender.queue:
            got += reader.read()
            sender.flush()
        got += reader.read()
        assert got[-1] == ("events_dropped", {"flood": dropped, "connection_closed": 2})
        assert ("reloaded", 3) in got
        floods = sum(1 for record in got if record[0] == "log" and record[2] == "flood")
        assert floods + dropped == 200

    def test_a_reader_gone_is_not_an_error(self, pair: tuple[int, int]) -> None:
        """EPIPE: records are dropped silently (the forker notices the daemon's end elsewhere)."""
        writer, reader_fd = pair
        os.close(reader_fd)
        sender = ipc.Sender(writer)
        assert not sender.send(("alive",)) or sender.broken
        assert not sender.send(("alive",))


class TestShapes:
    @pytest.mark.parametrize(
        "record",
        [
            ("ready",),
            ("status", 1, 2, 3, 4, ("echo",)),
            ("log", "info", "handler_error", {"pid": 3}),
            ("closed", []),
            ("served", [], 0),
            ("reloaded", 1),
            ("reload_failed", 1, "no"),
            ("fatal", "bad", 78),
            ("children", 2, {"echo": 2}),
            ("events_dropped", {"handler_error": 3}),
        ],
    )
    def test_good_events(self, record: ipc.Record) -> None:
        """Every event the forker sends has the shape of its kind."""
        assert ipc.problem(record, ipc.EVENTS) is None

    @pytest.mark.parametrize(
        "record",
        [
            ("status", "1", 2, 3, 4, ()),
            ("status", 1, 2, 3, 4),
            ("status", True, 2, 3, 4, ()),
            ("log", "exit", "x", {}),
            ("log", "info", "x", {"event": 1}),
            ("log", "info", "x", {1: 2}),
            ("log", "info", "x", []),
            ("closed", 5),
            ("reloaded",),
            ("children", 1, {"echo": "2"}),
            ("take_over", 1, {}),
            ("nonsense", 1),
        ],
    )
    def test_wrong_shapes(self, record: ipc.Record) -> None:
        """Wrong types, counts, levels, keys and kinds are named, not acted on."""
        assert ipc.problem(record, ipc.EVENTS) is not None

    def test_commands(self) -> None:
        """Commands have shapes of their own."""
        assert ipc.problem(("reload", 1, [], 128, 10, 0), ipc.COMMANDS) is None
        assert ipc.problem(("stop", 2.5), ipc.COMMANDS) is None
        assert ipc.problem(("stop", "soon"), ipc.COMMANDS) is not None
        assert ipc.problem(("reload", [], 128, 10, 0), ipc.COMMANDS) is not None


class TestTally:
    def test_first_logged_then_counted(self) -> None:
        """The first malformed record is logged; the next ones are summed up later."""
        tally = ipc.Tally()
        assert tally.add("one") == {"error": "one", "count": 1}
        assert tally.add("two") is None
        assert tally.add("three") is None
        tally.next_log = 0.0
        assert tally.add("four") == {"error": "four", "count": 3}

    def test_many_at_once(self) -> None:
        """A batch's malformed entries are counted in one call."""
        tally = ipc.Tally()
        assert tally.add("five bad", 5) == {"error": "five bad", "count": 5}
        assert tally.add("one", 1) is None
        assert tally.unlogged == 1


def test_channel_is_seqpacket() -> None:
    """The channel keeps message boundaries."""
    one, two = ipc.channel()
    with one, two:
        assert one.type == socket.SOCK_SEQPACKET


class TestItems:
    def test_an_exit_without_memory_figure_fits(self) -> None:
        """A program's exit may have no max RSS of its own (None)."""
        assert ipc.fits((1, "echo", ("127.0.0.1", 1), 0, 0.5, 0.1, 0.1, None), ipc.RAW_EXIT)
        assert ipc.fits((1, "echo", "unix:uid=0,pid=1", 0, 0.5, 0.1, 0.1, 1000), ipc.RAW_EXIT)
        assert not ipc.fits((1, "echo", "x", 0, 0.5, 0.1, 0.1, "big"), ipc.RAW_EXIT)

    def test_a_pooled_batch_is_its_workers_entries_unread(self) -> None:
        """A `served` item is the worker's pid, its service, and its entries as bytes."""
        assert ipc.fits((7, "pool", entry(1, "x", 0, 0.5)), ipc.SERVED)
        assert not ipc.fits((7, "pool", "x", 0, 0.5), ipc.SERVED)
        assert not ipc.fits((7, "pool", "entries"), ipc.SERVED)


class TestDropped:
    def test_a_dropped_batch_counts_its_connections(self) -> None:
        """Workers' batches dropped on the way count as many `connection_closed` as entries."""
        batches = [(7, "pool", entry(1, "x", 0, 0.5) * 3), (8, "pool", entry(2, "y", 0, 0.5))]
        assert ipc.dropped_kind(("served", batches, 0)) == ("connection_closed", 4)
        assert ipc.dropped_kind(("closed", [1, 2])) == ("connection_closed", 2)
        assert ipc.dropped_kind(("log", "info", "handler_error", {})) == ("handler_error", 1)
