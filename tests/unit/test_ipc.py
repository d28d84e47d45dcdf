"""Tests of sockd.ipc: records framed over a real pipe."""

from __future__ import annotations

import os

import pytest

from sockd import ipc


class TestRecords:
    def test_round_trip_in_pieces(self) -> None:
        """Records written back to back come out whole and in order, however reads split."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        reader = ipc.Reader(read_end)
        records = [("log", "info", "x", {"pid": 1, "n": [1.5, None]}), ("status", 1, 2, 3, 4)]
        data = b"".join(ipc.encode(record) for record in records)
        os.write(write_end, data[:5])
        assert reader.read() == []
        os.write(write_end, data[5:])
        assert reader.read() == records
        os.close(write_end)
        assert reader.read() == []
        assert reader.eof
        os.close(read_end)

    def test_blocking_read_and_eof(self) -> None:
        """read_blocking waits for one record, and returns None at end of file."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        reader = ipc.Reader(read_end)
        ipc.send(write_end, ("ready",))
        assert reader.read_blocking() == ("ready",)
        os.close(write_end)
        assert reader.read_blocking() is None
        os.close(read_end)

    def test_records_behind_the_first_are_kept(self) -> None:
        """A set-up record and an early stop in one read: the stop is not lost."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        reader = ipc.Reader(read_end)
        os.write(write_end, ipc.encode(("setup", {})) + ipc.encode(("stop", 1.0)))
        assert reader.read_blocking() == ("setup", {})
        assert reader.read() == [("stop", 1.0)]
        os.close(write_end)
        os.close(read_end)

    def test_garbage_is_reported(self) -> None:
        """A broken length or payload raises GarbledError instead of stalling for ever."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        reader = ipc.Reader(read_end)
        os.write(write_end, b"\xff\xff\xff\xff")
        with pytest.raises(ipc.GarbledError, match="claims"):
            reader.read()
        os.write(write_end, b"\x00\x00\x00\x02\xff\xff")
        with pytest.raises(ipc.GarbledError):
            reader.read()
        os.close(write_end)
        os.close(read_end)
