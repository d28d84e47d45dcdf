"""What the forker's children report, and write to stderr, read by the forker with the kernel's pid.

Runs in the forker (`Inbox`) and in its children (`Inbox.child_send`).
Children hold no end of the forker<->daemon channel: they send records on a
datagram socket whose other end only the forker holds, and their fd 2 is a
stream socket to it. A record that the datagram socket cannot take (the
forker is behind) is counted instead: a byte on a pipe, one per record.
The forker reads the sockets with SO_PASSCRED, so that the kernel tells
which process sent what it reads (a process can only claim its own pid
without CAP_SYS_ADMIN); it accepts from a child only the events a child may
send, sets `pid`, `service` (and `client`, for a child forked per
connection) from its own record of that child, drops what comes from a pid
that is not a child, and bounds what one child may send.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import select
import socket
import sys
import time

from sockd import ipc
from sockd.exits import BATCH_HEADER, batch_header, client_fields, read_batch_header
from sockd.forker.programs import LineBudget, StderrLines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sockd.exits import RawExit
    from sockd.forker.children import Children

# The log events a child may send (a pooled worker reports its own connections' too).
CHILD_EVENTS = frozenset(
    (
        "handler_error",
        "idle_timeout",
        "worker_crashed",
        "accept_failed",
        "connection_denied",
        "connections_denied",
        "max_duration_exceeded",
    )
)
# A report a child could not send is counted by a byte on the `lost` pipe: its event's index.
LOST_KINDS = ("child_report", *sorted(CHILD_EVENTS))
_LOST_CODES = {kind: bytes((code,)) for code, kind in enumerate(LOST_KINDS)}
MAX_DATAGRAM = 65536  # the longest report (longer: dropped); stderr is read in pieces this long
CHILD_BUDGET = 1 << 20  # bytes of reports one child may send per WINDOW; the rest is counted
WINDOW = 60.0  # seconds: a child's stderr may give MAX_LINES lines per window
SEND_BUFFER = 1 << 20  # bytes of children's reports in flight (the kernel caps it: wmem_max)
READS_PER_TURN = 256  # reads per socket per turn, at most: the loop serves on
SERVED_BYTES = ipc.MESSAGE  # workers' entries passed on in one record, about (then another)
_CREDENTIALS = socket.CMSG_SPACE(12)  # struct ucred: pid, uid, gid


class _Lines(StderrLines):
    """One process's stderr, fed as the forker reads it instead of read from a pipe."""

    __slots__ = ("window_end",)

    def __init__(self, emit: Callable[[dict[str, Any], str], None], fields: dict[str, Any]) -> None:
        super().__init__(-1, emit, fields)
        self.window_end = time.monotonic() + WINDOW

    def feed(self, data: bytes, now: float) -> None:
        if now >= self.window_end:  # a new window: the count starts again
            self._summary()
            self.lines = 0
            self.window_end = now + WINDOW
        self.buffer += data
        self._emit_lines(final=False)

    def end(self) -> None:
        self._emit_lines(final=True)
        self._summary()

    def _summary(self) -> None:
        if self.dropped:
            self.emit(self.fields, f"[sockd: {self.dropped} more lines not logged]")
            self.dropped = 0


class Inbox:
    """The forker's two sockets for its children: records, and stderr (their fd 2).

    `forward(record)` sends a checked record on to the daemon; `dropped(kind,
    count)` counts what was refused. `child_send(record)` is what a child
    calls (in the child).
    """

    def __init__(
        self,
        children: Children,
        workers: dict[int, Any],
        forward: Callable[[ipc.Record], object],
        dropped: Callable[[str, int], None],
        budget: LineBudget | None = None,
    ) -> None:
        """Make the sockets (see `become_stderr`); `budget` bounds the stderr lines logged."""
        self.children = children
        self.workers = workers
        self.forward = forward
        self.dropped = dropped
        self.reports, self._reports_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        # Room for what all children send while the forker does not read (see loop.INBOX_DELAY).
        self._reports_child.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        # A stream, as a pipe is (no size limit per write): the kernel still never
        # hands over the bytes of two writers in one read, with SO_PASSCRED.
        self.stderr, self.stderr_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # A byte per record a child could not send (`LOST_KINDS`): one write, never waits.
        self.lost, self._lost_child = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # All three in an epoll of their own, which the forker's polls: after each
        # reaping, one poll(0) of it (1 us) says whether anything is to be read.
        self.poller = select.epoll()
        for sock in (self.reports, self.stderr):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setblocking(False)
            self.poller.register(sock.fileno(), select.EPOLLIN)
        self.poller.register(self.lost, select.EPOLLIN)
        self._reports_fd = self.reports.fileno()
        self._send = self._reports_child.send
        # Workers' batches read in this turn, passed on in one record: (pid, service, entries).
        self.served: list[tuple[int, str, bytes]] = []
        self.served_bytes = 0
        self.denied = 0  # and their refusals
        self.received: dict[int, int] = {}  # worker's pid -> number of its last connection read
        # Children reaped since the reports socket was last found empty: what they sent
        # before they exited may wait there still (pid -> service, client).
        self.exited: dict[int, tuple[str, object]] = {}
        self.spent: dict[int, list[float]] = {}  # pid -> [window end, bytes of reports]
        self.lines: dict[int, _Lines] = {}  # pid -> its stderr, while it has written some
        self.strays = _Lines(self._stderr_line, {"service": None, "client": None, "pid": None})
        self.budget = budget  # shared with programs' stderr (the forker's StderrWatch's)

    def become_stderr(self) -> None:
        """Make the stderr socket our fd 2 (the forker's own lines come back as strays).

        Inherited by each child as it is forked: no work per connection. A
        program gets its own pipe as fd 2 instead (sockd.forker.programs).
        """
        os.dup2(self.stderr_child.fileno(), 2)
        self.stderr_child.close()

    def fds(self) -> tuple[int, int, int, int]:
        """Return the descriptors a child closes: our epoll and the reading ends."""
        return self.poller.fileno(), self._reports_fd, self.stderr.fileno(), self.lost

    def child_send(self, record: ipc.Record) -> bool:
        """In a child: send `record` to the forker without waiting; False if it was not sent.

        What was not sent is counted: a byte on the `lost` pipe, which the
        forker reports as dropped (`events_dropped`), by event.
        """
        try:
            data = marshal.dumps(record)  # type: ignore[arg-type]
            if len(data) > MAX_DATAGRAM:
                raise ValueError  # noqa: TRY301 (handled as one with the rest)
            self._send(data, socket.MSG_DONTWAIT)
        except (OSError, ValueError):  # full (EAGAIN), or not plain values
            kind = record[2] if record[0] == "log" and len(record) > 2 else None
            with contextlib.suppress(OSError):  # a full pipe: 64 KiB of them unread
                os.write(self._lost_child, _LOST_CODES.get(kind, b"\0"))  # type: ignore[call-overload]
            return False
        return True

    def served_send(self, entries: bytes, last: int, denied: int, lost: int) -> bool:
        """In a pooled worker: send a batch of entries (sockd.exits); False if not sent (kept).

        `last` is the number of its last entry; `denied` and `lost` count the
        connections refused and the records lost since the last batch.
        """
        try:
            self._send(batch_header(last, denied, lost) + entries, socket.MSG_DONTWAIT)
        except OSError:  # full (EAGAIN): the batch is kept for later
            return False
        return True

    def read(self) -> None:
        """Take what children sent: records and stderr writes (a bounded number of each)."""
        emptied = True
        for fd, _ in self.poller.poll(0):
            if fd == self._reports_fd:
                emptied = self._read(self.reports, self._report)
                # Workers send batches: the daemon gets this turn's in one record.
                self._forward_served()
            elif fd == self.lost:
                self._count_lost()
            else:
                self._read(self.stderr, self._stderr)
        if emptied and self.exited:
            self.exited.clear()

    def reaped(self, exits: list[RawExit]) -> None:
        """Read what children sent before they exited, with them still known (call after reaping).

        A child may send its report after our last read and exit before the
        reaping: its report, still in the socket, would come from a pid that is
        no child's any more. The reaped stay known until the socket is empty.
        """
        workers = self.workers
        for raw in exits:
            if raw[0] not in workers:
                self.exited[raw[0]] = (raw[1], raw[2])
        self.read()

    def _read(self, sock: socket.socket, take: Callable[[int, bytes, bool], None]) -> bool:
        """Read up to READS_PER_TURN writes; return whether the socket was read empty."""
        for _ in range(READS_PER_TURN):
            try:
                data, ancillary, flags, _ = sock.recvmsg(MAX_DATAGRAM, _CREDENTIALS)
            except (BlockingIOError, InterruptedError):
                return True
            pid = 0
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(value[:4], sys.byteorder)
            take(pid, data, bool(flags & socket.MSG_TRUNC))
        return False

    def _count_lost(self) -> None:
        with contextlib.suppress(BlockingIOError):
            codes = os.read(self.lost, 65536)
            for code, kind in enumerate(LOST_KINDS):
                count = codes.count(code)
                if count:
                    self.dropped(kind, count)

    def _forward_served(self) -> None:
        if self.served or self.denied:
            self.forward(("served", self.served, self.denied))
            self.served, self.served_bytes, self.denied = [], 0, 0

    def _report(self, pid: int, data: bytes, truncated: bool) -> None:
        worker = self.workers.get(pid)
        entry = (self.children.get(pid) or self.exited.get(pid)) if worker is None else None
        if (worker is None and entry is None) or truncated:
            self.dropped("child_report", 1)
            return
        # A worker's batch: its connections are as many as it serves (the forker's queue
        # bounds them, and MAX_DATAGRAM each read); not budgeted, nor read.
        header = read_batch_header(data) if worker is not None else None
        if header is not None:
            self._batch(pid, worker[0], header, data)  # type: ignore[index]
            return
        if self._over_budget(pid, len(data)):
            self.dropped("child_report", 1)
            return
        try:
            record = marshal.loads(data)  # noqa: S302 (plain values only: no code is built)
        except (EOFError, ValueError, TypeError):
            record = None
        if worker is not None:
            record = _as_worker(record, pid, worker[0])
        else:
            service, client = entry  # type: ignore[misc]
            record = _as_child(record, pid, service, client_fields(client))
        if record is None:
            self.dropped("child_report", 1)
        else:
            self.forward(record)

    def _batch(self, pid: int, service: str, header: tuple[int, int, int], data: bytes) -> None:
        """Take a worker's batch (sockd.exits): the header read, the entries passed on unread.

        The daemon decodes and checks the entries (attributed here: the
        kernel's pid, our service name), and logs one of the wrong shape.
        """
        last, denied, lost = header
        if lost:
            self.dropped("worker_events", lost)
        self.denied += denied
        if len(data) > BATCH_HEADER:
            self.received[pid] = last
            self.served.append((pid, service, data[BATCH_HEADER:]))
            self.served_bytes += len(data)
            if self.served_bytes >= SERVED_BYTES:  # one record stays small enough to queue
                self._forward_served()

    def _over_budget(self, pid: int, size: int) -> bool:
        now = time.monotonic()
        spent = self.spent.get(pid)
        if spent is None or now >= spent[0]:
            spent = self.spent[pid] = [now + WINDOW, 0.0]
        spent[1] += size
        return spent[1] > CHILD_BUDGET

    def _stderr(self, pid: int, data: bytes, truncated: bool) -> None:  # noqa: ARG002 (cut: kept)
        now = time.monotonic()
        lines = self.lines.get(pid)
        if lines is None:
            worker = self.workers.get(pid)
            entry = self.children.get(pid) if worker is None else None
            if worker is not None:
                fields = {"service": worker[0], "client": "worker", "pid": pid}
            elif entry is not None:
                fields = {"service": entry[0], **client_fields(entry[1]), "pid": pid}
            else:  # a process a handler started, say: attributed by pid only
                self.strays.fields = {"service": None, "client": None, "pid": pid}
                self.strays.feed(data, now)
                return
            lines = self.lines[pid] = _Lines(self._stderr_line, fields)
        lines.feed(data, now)

    def _stderr_line(self, fields: dict[str, Any], line: str) -> None:
        if self.budget is None or self.budget.take(fields["service"] or "-"):
            self.forward(("log", "info", "handler_stderr", {**fields, "line": line}))

    def drain(self, pid: int) -> None:
        """Log the rest of a reaped child's stderr; forget its budget."""
        self.spent.pop(pid, None)
        lines = self.lines.pop(pid, None)
        if lines is not None:
            lines.end()

    def close(self) -> None:
        """Close the sockets and the pipe (not fd 2)."""
        for sock in (self.reports, self._reports_child, self.stderr, self.stderr_child):
            sock.close()
        os.close(self.lost)
        os.close(self._lost_child)
        self.poller.close()


def _as_child(
    record: object, pid: int, service: str, client: dict[str, object]
) -> ipc.Record | None:
    """Check a log record from a child forked per connection; tag it with its connection."""
    if not isinstance(record, tuple) or not record or record[0] != "log":
        return None
    if ipc.problem(record, ipc.EVENTS) is not None or record[2] not in CHILD_EVENTS:
        return None
    fields = {**_own_fields(record[3]), "pid": pid, "service": service, **client}
    if "peer_path" not in client:  # none that the child made up
        fields.pop("peer_path", None)
    return ("log", record[1], record[2], fields)


def _as_worker(record: object, pid: int, service: str) -> ipc.Record | None:
    """Check a pooled worker's log record (its connections come in batches: `Inbox._batch`)."""
    if not isinstance(record, tuple) or not record or record[0] != "log":
        return None
    if ipc.problem(record, ipc.EVENTS) is not None or record[2] not in CHILD_EVENTS:
        return None
    return ("log", record[1], record[2], {**_own_fields(record[3]), "pid": pid, "service": service})


# Fields a child may not set: the daemon writes them itself (or a renderer reads them).
_RESERVED_FIELDS = frozenset(("timestamp", "level", "event", "exc_info", "stack_info"))


def _own_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Return a child's fields without those only the daemon may set."""
    return {key: value for key, value in fields.items() if key not in _RESERVED_FIELDS}
