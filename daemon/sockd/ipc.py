"""Records between the daemon and its forker, over SOCK_SEQPACKET sockets: framing, queues, shapes.

A record is a tuple of plain values (str, int, float, None, lists, dicts),
encoded with `marshal`: built in, fast, and free of code execution for
these types. Each record goes as one or more messages of a SOCK_SEQPACKET
socket, which the kernel keeps whole and in order (never merged, never
interleaved): a flag byte (MORE: the record goes on in the next message;
LAST) and up to MESSAGE bytes of the encoded record. A record longer than
MAX_RECORD is refused by its sender (`TooLarge`); a message or record that
does not decode, or a record of the wrong shape (`problem`), is skipped by
its reader, never fatal, and the messages around it are kept.
"""

from __future__ import annotations

import collections
import marshal
import os
import select
import socket
import time

from sockd.exits import count_entries

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# LD_BIND_NOW as the daemon sets it for the forker, which takes it out of the
# environment its children and programs inherit.
BIND_NOW_MARK = "sockd-forker"
MESSAGE = 32768  # bytes of a record per message: a few fit the socket's send buffer
MAX_RECORD = 16 << 20  # the longest record (512 messages): a reload with a huge deny list fits
READ_BATCH = 1024  # messages a reader takes per call, at most: its loop acts on the rest later
_MORE, _LAST = 1, 0
Record = tuple[object, ...]
LEVELS = frozenset(("debug", "info", "warning", "error", "critical"))
NUMBER = (int, float)


class TooLarge(ValueError):
    """A record longer than MAX_RECORD: the sender refuses it."""


def channel() -> tuple[socket.socket, socket.socket]:
    """Return a connected pair of SOCK_SEQPACKET sockets (close-on-exec)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def encode(record: Record) -> bytes:
    """Encode one record (plain values only: marshal itself refuses anything else)."""
    return marshal.dumps(record)  # type: ignore[arg-type]


def messages(record: Record, data: bytes | None = None) -> list[bytes]:
    """Encode one record (unless `data` is its encoding already) as the messages that carry it.

    Raises:
        TooLarge: it encodes to more than MAX_RECORD bytes.
    """
    if data is None:
        data = encode(record)
    if len(data) <= MESSAGE:  # the usual case: one message
        return [b"\x00" + data]
    if len(data) > MAX_RECORD:
        msg = f"a {record[0]!r} record of {len(data)} bytes exceeds the limit of {MAX_RECORD} bytes"
        raise TooLarge(msg)
    last = len(data) - MESSAGE
    return [
        (b"\x01" if start < last else b"\x00") + data[start : start + MESSAGE]
        for start in range(0, len(data), MESSAGE)
    ]


def send(fd: int, record: Record) -> None:
    """Send one record on a blocking socket (the forker's start-up, tests).

    Raises:
        OSError: the reader is gone (EPIPE).
        TooLarge: the record exceeds MAX_RECORD.
    """
    for message in messages(record):
        os.write(fd, message)


def split(kind: str, items: list[Any], *rest: object) -> list[tuple[Record, bytes]]:
    """Return records (kind, part of items, *rest) that each fit one message, with their encoding.

    A batch is halved until each half encodes to one MESSAGE (a lone item
    that does not fit goes alone, in fragments); `rest` goes with the first.
    """
    record = (kind, items, *rest)
    data = encode(record)
    if len(items) < 2 or len(data) <= MESSAGE:
        return [(record, data)]
    half = len(items) // 2
    first = split(kind, items[:half], *rest)
    return first + split(kind, items[half:], *(0 for _ in rest))


def dropped_kind(record: Record) -> tuple[str, int]:
    """Name what a record carries, for the count of what was dropped: (event, how many)."""
    kind = str(record[0])
    if kind == "log":
        return str(record[2]), 1
    if kind == "closed":
        return "connection_closed", len(record[1])  # type: ignore[arg-type]
    if kind == "served":  # batches of entries, counted (a drop is rare: no need to be quick)
        batches: list[tuple[int, str, bytes]] = record[1]  # type: ignore[assignment]
        return "connection_closed", sum(count_entries(batch[2]) for batch in batches)
    return kind, 1


class Sender:
    """Sends records on a non-blocking socket; what the socket cannot take waits in a queue.

    `watch(True)` is called when the queue starts (poll the socket for
    writing, then call `flush`), `watch(False)` when it is empty again.
    With `max_bytes`, records of the kinds in `droppable` that would grow
    the queue past `max_bytes` or `max_records` are dropped and counted;
    the counts go out as ("events_dropped", {event: count}) once the queue
    has drained. Other records are always queued (they are few and small,
    or the daemon's commands).
    """

    def __init__(
        self,
        fd: int,
        *,
        max_bytes: int | None = None,
        max_records: int = 0,
        droppable: frozenset[str] = frozenset(),
    ) -> None:
        """Send on `fd` (made non-blocking)."""
        os.set_blocking(fd, False)
        self.fd = fd
        self.max_bytes = max_bytes
        self.max_records = max_records
        self.droppable = droppable
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.queued_records = 0
        self.dropped: dict[str, int] = {}
        self.broken = False  # the reader is gone: everything is dropped silently
        self.watch: Callable[[bool], None] = lambda _wanted: None

    def send(self, record: Record, data: bytes | None = None) -> bool:
        """Send or queue `record` (`data`: its encoding, if made already); False if dropped.

        Raises:
            TooLarge: the record exceeds MAX_RECORD (nothing was sent).
        """
        pieces = messages(record, data)
        if self.broken:
            return False
        if not self.queue:
            pieces = self._write(pieces)
            if not pieces:
                return True
            self._enqueue(pieces)  # the rest of a record that has begun: always
            self.watch(True)
            return True
        size = sum(map(len, pieces))
        if self.max_bytes is not None and record[0] in self.droppable:
            full = self.queued_bytes + size > self.max_bytes
            if full or self.queued_records >= self.max_records:
                self.count_dropped(*dropped_kind(record))
                return False
        self._enqueue(pieces)
        return True

    def count_dropped(self, kind: str, count: int = 1) -> None:
        """Count records lost on the way: reported by the next `events_dropped`."""
        self.dropped[kind] = self.dropped.get(kind, 0) + count

    def report_dropped(self) -> None:
        """Send the counts of what was dropped now, unless records wait (they go after them)."""
        if self.dropped and not self.queue and not self.broken:
            dropped, self.dropped = self.dropped, {}
            self.send(("events_dropped", dropped))

    def _enqueue(self, pieces: list[bytes]) -> None:
        self.queue.extend(pieces)
        self.queued_bytes += sum(map(len, pieces))
        self.queued_records += 1

    def _write(self, pieces: list[bytes]) -> list[bytes]:
        """Write messages until the socket is full; return those left."""
        for index, piece in enumerate(pieces):
            try:
                os.write(self.fd, piece)
            except BlockingIOError:
                return pieces[index:]
            except OSError:  # EPIPE, ECONNRESET: the reader is gone
                self.broken = True
                return []
        return []

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it; then report drops, if any."""
        queue = self.queue
        while queue and not self.broken:
            piece = queue[0]
            if self._write([piece]):
                return
            queue.popleft()
            self.queued_bytes -= len(piece)
            self.queued_records -= piece[0] == _LAST
        if self.broken:
            queue.clear()
            self.queued_bytes = self.queued_records = 0
        self.watch(False)
        self.report_dropped()

    def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the queue to go out (a process about to exit)."""
        deadline = time.monotonic() + timeout
        self.flush()
        while self.queue and not self.broken:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            select.select([], [self.fd], [], remaining)
            self.flush()


class Tally:
    """Bounds the log of malformed records: the first is logged, then at most one per INTERVAL.

    `add(error)` returns the fields to log now (the error and how many
    came since the last one logged), or None.
    """

    INTERVAL = 60.0

    def __init__(self) -> None:
        self.unlogged = 0
        self.next_log = 0.0

    def add(self, error: str, count: int = 1) -> dict[str, object] | None:
        """Count `count` malformed records; return what to log now, if anything."""
        self.unlogged += count
        now = time.monotonic()
        if now < self.next_log:
            return None
        self.next_log = now + self.INTERVAL
        fields: dict[str, object] = {"error": error, "count": self.unlogged}
        self.unlogged = 0
        return fields


class Reader:
    """Reassembles records from the messages of a non-blocking SOCK_SEQPACKET socket.

    Malformed input goes to `malformed(error)`, one call per record lost.
    """

    def __init__(self, fd: int, malformed: Callable[[str], None] | None = None) -> None:
        """Read records from `fd`."""
        os.set_blocking(fd, False)
        self.fd = fd
        self.parts: list[bytes] = []
        self.size = 0
        self.pending: list[Record] = []  # read by read_blocking behind its record
        self.skipping = False  # the rest of a record over MAX_RECORD is read and dropped
        self.eof = False
        self.last_read = time.monotonic()
        self.malformed = malformed or (lambda _error: None)

    def read(self) -> list[Record]:
        """Return every complete record available now; set `eof` at end of file.

        A list, not a generator: a caller that stops early must not lose the
        records read behind the one it wanted.
        """
        records, self.pending = self.pending, []
        for _ in range(READ_BATCH):
            try:
                message = os.read(self.fd, MESSAGE + 2)
            except BlockingIOError:
                return records
            except OSError:  # ECONNRESET: the writer is gone
                message = b""
            if not message:
                self.eof = True
                return records
            self.last_read = time.monotonic()
            self._take(message, records)
        return records  # more may wait: the socket polls readable still

    def _take(self, message: bytes, records: list[Record]) -> None:
        flag = message[0]
        if len(message) > MESSAGE + 1 or flag not in (_MORE, _LAST):
            self._drop(f"a message of {len(message)}+ bytes, flag {flag}")
            return
        if not self.skipping:
            self.parts.append(message[1:])
            self.size += len(message) - 1
            if self.size > MAX_RECORD:
                self._drop(f"a record over {MAX_RECORD} bytes")
                self.skipping = True
        if flag == _MORE:
            return
        if self.skipping:
            self.skipping = False
            return
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        try:
            # Our own processes write this socket; marshal builds no code from these types.
            record = marshal.loads(data)  # noqa: S302
        except (EOFError, ValueError, TypeError) as exc:
            self.malformed(f"does not decode: {exc}")
            return
        if not isinstance(record, tuple) or not record or not isinstance(record[0], str):
            self.malformed(f"not a record: {type(record).__name__}")
            return
        records.append(record)

    def _drop(self, error: str) -> None:
        """Drop the record being assembled (and this message)."""
        self.parts, self.size = [], 0
        self.malformed(error)

    def read_blocking(self) -> Record | None:
        """Wait for one record (start-up only); None at end of file."""
        while True:
            records = self.read()
            if records:
                self.pending = records[1:]
                return records[0]
            if self.eof:
                return None
            select.select([self.fd], [], [])


# What each record kind carries after its name: a type per field.
EVENTS: dict[str, tuple[type | tuple[type, ...], ...]] = {
    "ready": (),
    "alive": (),
    "status": (int, int, int, int, (tuple, list)),  # the last: services at a cap
    "log": (str, str, dict),
    "closed": (list,),
    "served": (list, int),
    "reloaded": (int,),
    "reload_failed": (int, str),
    "fatal": (str, int),
    "crowded": (int,),
    "children": (int, dict),
    "events_dropped": (dict,),
}
COMMANDS: dict[str, tuple[type | tuple[type, ...], ...]] = {
    # Their lists of services: ServiceSpec.to_wire() each, decoded by the forker
    # (`sockd.spec.services_from_wire`).
    "setup": (dict, list),
    "reload": (int, list, int, NUMBER, int),
    "stop": (NUMBER,),
    "quit": (),
    "retire": (),
    "take_over": (int, dict),
    "elsewhere": (int, dict),
}
# A child's exit: pid, service, client, wait status, seconds, user CPU, system CPU, max RSS.
RAW_EXIT = (int, str, object, int, NUMBER, NUMBER, NUMBER, (int, type(None)))
# A batch of a pooled worker's connections: its pid, service, entries (see sockd.exits).
SERVED = (int, str, bytes)


def fits(values: tuple[object, ...], shape: tuple[type | tuple[type, ...], ...]) -> bool:
    """Tell whether `values` has one value of each type of `shape` (a bool is no int here)."""
    return len(values) == len(shape) and all(
        isinstance(value, kind) and not isinstance(value, bool)
        for value, kind in zip(values, shape, strict=True)
    )


def problem(record: Record, shapes: dict[str, tuple[type | tuple[type, ...], ...]]) -> str | None:
    """Return what is wrong with the shape of `record`, or None if it has the shape of its kind."""
    kind = record[0]
    shape = shapes.get(str(kind))
    if shape is None:
        return f"unknown record {str(kind)[:40]!r}"
    if not fits(record[1:], shape):
        return f"{kind!r} record of the wrong shape"
    if kind == "log":
        level, fields = record[1], record[3]
        if level not in LEVELS or not _text_keys(fields):
            return "'log' record of the wrong shape"
    elif kind in ("children", "take_over", "elsewhere", "events_dropped"):
        counts: dict[object, object] = record[2 if kind != "events_dropped" else 1]  # type: ignore[assignment]
        if not all(isinstance(k, str) and type(v) is int for k, v in counts.items()):
            return f"{kind!r} record of the wrong shape"
    return None


def _text_keys(fields: object) -> bool:
    """Tell whether `fields` is a dict whose keys may be keyword arguments of a log call."""
    return isinstance(fields, dict) and all(
        isinstance(key, str) and key != "event" for key in fields
    )
