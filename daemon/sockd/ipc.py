"""Length-prefixed records between the daemon and its forker, over pipes.

A record is a tuple of plain values (str, int, float, None, lists, dicts),
encoded with `marshal`: built in, fast, and free of code execution for
these types. Records up to PIPE_BUF bytes are written with one write(2), so
the forker and its children can share one pipe without interleaving.
"""

from __future__ import annotations

import marshal
import os
import select
import time

PIPE_BUF = select.PIPE_BUF
# LD_BIND_NOW as the daemon sets it for the forker, which takes it out of the
# environment its children and programs inherit.
BIND_NOW_MARK = "sockd-forker"
_HEADER_SIZE = 4  # the length of the marshalled record, big-endian
Record = tuple[object, ...]


def encode(record: Record) -> bytes:
    """Frame one record."""
    # Plain values only: marshal itself refuses anything else.
    data = marshal.dumps(record)  # type: ignore[arg-type]
    return len(data).to_bytes(_HEADER_SIZE, "big") + data


def send(fd: int, record: Record) -> None:
    """Write one record to a blocking pipe.

    Raises:
        OSError: the reader is gone (EPIPE).
    """
    data = encode(record)
    while data:
        data = data[os.write(fd, data) :]


class GarbledError(Exception):
    """The stream is not a sequence of records (a writer broke the framing)."""


MAX_RECORD = 1 << 20


class Reader:
    """Reassembles records from a non-blocking pipe."""

    def __init__(self, fd: int) -> None:
        """Read records from `fd`."""
        self.fd = fd
        self.buffer = b""
        self.eof = False
        self.last_read = time.monotonic()

    def read(self) -> list[Record]:
        """Return every complete record available now; set `eof` at end of file.

        A list, not a generator: a caller that stops early must not lose the
        records read behind the one it wanted.

        Raises:
            GarbledError: a record does not decode; what was buffered is dropped.
        """
        try:
            while chunk := os.read(self.fd, 65536):
                self.buffer += chunk
                self.last_read = time.monotonic()
        except BlockingIOError:
            pass
        else:
            self.eof = True
        buffer, offset = self.buffer, 0
        self.buffer = b""
        records = []
        while len(buffer) - offset >= _HEADER_SIZE:
            length = int.from_bytes(buffer[offset : offset + _HEADER_SIZE], "big")
            end = offset + _HEADER_SIZE + length
            if length > MAX_RECORD:
                msg = f"a record claims {length} bytes"
                raise GarbledError(msg)
            if len(buffer) < end:
                break
            try:
                # Our own processes write this pipe; marshal builds no code from these types.
                record = marshal.loads(buffer[offset + _HEADER_SIZE : end])  # noqa: S302
            except (EOFError, ValueError, TypeError) as exc:
                raise GarbledError(str(exc)) from None
            offset = end
            records.append(record)
        self.buffer = buffer[offset:]
        return records

    def read_blocking(self) -> Record | None:
        """Wait for one record (start-up only); None at end of file."""
        while True:
            records = self.read()
            if records:
                self.buffer = b"".join(encode(record) for record in records[1:]) + self.buffer
                return records[0]
            if self.eof:
                return None
            select.select([self.fd], [], [])
