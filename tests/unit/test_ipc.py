"""Tests of sockd.ipc: records framed over a real pipe."""

from __future__ import annotations

import os

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
        assert list(reader.read()) == []
        os.write(write_end, data[5:])
        assert list(reader.read()) == records
        os.close(write_end)
        assert list(reader.read()) == []
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
