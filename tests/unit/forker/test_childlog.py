"""Tests of sockd.forker.childlog: what children send the forker, attributed by the kernel's pid."""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Any

import pytest

from sockd import ipc
from sockd.exits import BATCH_HEADER, batch_header, entry, read_entries
from sockd.forker import childlog, programs
from sockd.forker.childlog import Inbox
from sockd.forker.children import Children
from sockd.forker.programs import MAX_LINE

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class Box:
    """An inbox with what it forwards and counts as dropped."""

    def __init__(self) -> None:
        self.children = Children()
        self.workers: dict[int, Any] = {}
        self.forwarded: list[Any] = []
        self.dropped: dict[str, int] = {}
        self.inbox = Inbox(self.children, self.workers, self.forwarded.append, self._dropped)

    def _dropped(self, kind: str, count: int) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + count

    def child(
        self, act: Callable[[Inbox], object], *, worker: bool = False, reap: bool = True
    ) -> int:
        """Fork a child that runs `act` (its fd 2 the stderr socket), registered as ours.

        Returns once it has exited; not reaped with `reap=False` (`Children.reap` does it).
        """
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            try:
                os.close(write_end)
                os.read(read_end, 1)  # registered by now
                os.dup2(self.inbox.stderr_child.fileno(), 2)
                act(self.inbox)
            finally:
                os._exit(0)
        os.close(read_end)
        if worker:
            self.workers[pid] = ("pool", 0.0)
            self.children.add(pid, "pool", "worker")
        else:
            self.children.add(pid, "echo", ("127.0.0.1", 4000))
        os.write(write_end, b".")
        os.close(write_end)
        if reap:
            os.waitpid(pid, 0)
        else:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return pid


@pytest.fixture
def box() -> Iterator[Box]:
    """Make an inbox; close it at the end."""
    made = Box()
    yield made
    made.inbox.close()


def forged(inbox: Inbox) -> None:
    """Claim another pid, service and client; send kinds a child may not send."""
    fields = {"service": "evil", "pid": 1, "client": "forged", "seconds": 3}
    inbox.child_send(("log", "info", "idle_timeout", fields))
    inbox.child_send(("log", "info", "connection_closed", fields))
    inbox.child_send(("reloaded", 1))
    inbox.child_send(("served", [(1, "evil", "x", 0, 0.1)], 0, 0))
    inbox.served_send(entry(1, "x", 0, 0.1), 1, 0, 0)  # a worker's batch
    inbox.child_send(("log", "exit", "handler_error", {}))


def report(number: int) -> ipc.Record:
    """Return a child's report, numbered."""
    return ("log", "error", "handler_error", {"n": number})


class TestReports:
    def test_a_child_reports_only_about_itself(self, box: Box) -> None:
        """Pid, service and client come from the forker's record; other kinds are dropped."""
        pid = box.child(forged)
        box.inbox.read()
        assert box.forwarded == [
            (
                "log",
                "info",
                "idle_timeout",
                {"service": "echo", "pid": pid, "client": "127.0.0.1:4000", "seconds": 3},
            )
        ]
        assert box.dropped == {"child_report": 5}

    def test_a_child_cannot_set_the_daemons_own_fields(self, box: Box) -> None:
        """Fields the renderer or the daemon set (level, timestamp, exc_info...) are dropped."""

        def claims(inbox: Inbox) -> None:
            fields = {"level": "critical", "timestamp": "1970", "exc_info": [1, 2], "n": 1}
            inbox.child_send(("log", "error", "handler_error", {**fields, "stack_info": True}))

        box.child(claims)
        box.inbox.read()
        ((_, _, _, fields),) = box.forwarded
        assert set(fields) == {"n", "service", "pid", "client"}

    def test_a_stranger_is_not_heard(self, box: Box) -> None:
        """A record from a pid that is not a child (here: the forker's own) is dropped."""
        forged(box.inbox)
        box.inbox.read()
        assert box.forwarded == []
        assert box.dropped == {"child_report": 6}

    def test_a_report_sent_after_the_last_read_is_read_once_the_child_is_reaped(
        self, box: Box
    ) -> None:
        """A child reports after the forker's last read and exits before the reaping: kept."""
        box.inbox.read()  # the last read: nothing yet
        pid = box.child(lambda inbox: inbox.child_send(report(1)), reap=False)
        box.inbox.reaped(box.children.reap())
        fields = {"n": 1, "service": "echo", "pid": pid, "client": "127.0.0.1:4000"}
        assert box.forwarded == [("log", "error", "handler_error", fields)]
        assert box.dropped == {}
        assert box.inbox.exited == {}, "forgotten once the socket is empty"

    def test_the_reaped_stay_known_until_the_socket_is_empty(
        self, box: Box, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Reads are bounded per turn: what is left is read in a later one, still attributed."""
        monkeypatch.setattr(childlog, "READS_PER_TURN", 2)
        pid = box.child(lambda inbox: [inbox.child_send(report(n)) for n in range(5)], reap=False)
        box.inbox.reaped(box.children.reap())
        assert len(box.forwarded) == 2
        assert pid in box.inbox.exited
        box.inbox.read()
        box.inbox.read()  # the fifth, and the socket found empty
        assert [fields["n"] for _, _, _, fields in box.forwarded] == [0, 1, 2, 3, 4]
        assert {fields["pid"] for _, _, _, fields in box.forwarded} == {pid}
        assert box.dropped == {}
        assert box.inbox.exited == {}

    def test_what_a_child_could_not_send_is_counted_by_event(
        self, box: Box, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The socket full (the forker behind), or a record too large: counted, by event."""
        monkeypatch.setattr(childlog, "READS_PER_TURN", 1 << 20)
        sent = os.pipe()

        def flood(inbox: Inbox) -> None:
            number = 0
            while inbox.child_send(report(number)):  # until the socket is full
                number += 1
            inbox.child_send(("log", "info", "idle_timeout", {}))
            inbox.child_send(("log", "error", "handler_error", {"pad": "x" * 70000}))
            inbox.child_send(("reloaded", 1))  # not a log record
            os.write(sent[1], b"%d" % number)

        box.child(flood)
        box.inbox.read()
        assert len(box.forwarded) == int(os.read(sent[0], 100)) > 100
        for fd in sent:
            os.close(fd)
        assert box.dropped == {"handler_error": 2, "idle_timeout": 1, "child_report": 1}

    def test_a_worker_reports_its_connections_under_its_own_pid(self, box: Box) -> None:
        """A pooled worker's batch goes on unread, with its pid and service; lost ones counted."""
        entries = entry(1, ("1.2.3.4", 5), 0, 0.5) + b"\x03\x00bad" + entry(2, "x", 1, 0.1)

        def served(inbox: Inbox) -> None:
            inbox.served_send(entries, 2, 3, 3)

        pid = box.child(served, worker=True)
        box.inbox.read()
        assert box.forwarded == [("served", [(pid, "pool", entries)], 3)]
        assert box.dropped == {"worker_events": 3}
        assert box.inbox.received == {pid: 2}

    def test_a_workers_garbage_is_dropped_counted(self, box: Box) -> None:
        """A datagram too short for a header, or garbage, is a report dropped: never fatal."""

        def garbage(inbox: Inbox) -> None:
            for data in (b"\x00", b"\x00" * (BATCH_HEADER - 1), b"\xff" * 100, b""):
                inbox._send(data)

        pid = box.child(garbage, worker=True)
        box.inbox.read()
        assert box.forwarded == []
        assert box.dropped == {"child_report": 4}
        assert pid not in box.inbox.received

    def test_a_header_claiming_a_huge_number_is_taken_as_it_is(self, box: Box) -> None:
        """The worker's own numbers: a huge one (or huge counts) is recorded, nothing breaks."""
        huge = 2**64 - 1

        def claims(inbox: Inbox) -> None:
            inbox._send(batch_header(huge, huge, 0) + entry(1, "x", 0, 0.1))
            inbox._send(batch_header(huge - 1, 0, 0))  # no entries: the number is not taken

        pid = box.child(claims, worker=True)
        box.inbox.read()
        assert box.forwarded == [("served", [(pid, "pool", entry(1, "x", 0, 0.1))], huge)]
        assert box.inbox.received == {pid: huge}

    def test_one_child_sends_within_its_budget(
        self, box: Box, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past CHILD_BUDGET bytes, a child's records are counted, not forwarded."""
        monkeypatch.setattr(childlog, "CHILD_BUDGET", 1000)

        def flood(inbox: Inbox) -> None:
            for number in range(50):
                inbox.child_send(("log", "error", "handler_error", {"n": number, "pad": "p" * 80}))

        box.child(flood)
        box.inbox.read()
        assert 0 < len(box.forwarded) < 50
        assert len(box.forwarded) + box.dropped["child_report"] == 50

    def test_a_workers_connections_are_not_budgeted(
        self, box: Box, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A busy pooled worker's `served` records all go on (the forker's queue bounds them)."""
        monkeypatch.setattr(childlog, "CHILD_BUDGET", 1000)

        def busy(inbox: Inbox) -> None:
            for number in range(50):
                inbox.served_send(entry(number, ("10.0.0.1", number), 0, 0.1) * 4, number, 0, 0)

        box.child(busy, worker=True)
        box.inbox.read()
        ((_, batches, _),) = box.forwarded  # in one record: 1 turn
        assert sum(len(read_entries(data)[0]) for _, _, data in batches) == 200
        assert box.dropped == {}

    def test_a_turns_batches_go_on_in_records_of_bounded_size(self, box: Box) -> None:
        """Past SERVED_BYTES of entries, the batches read so far go on in one record."""
        big = entry(1, ("10.0.0.1", 1), 0, 0.1) * (childlog.SERVED_BYTES // 60)  # half, about
        assert childlog.SERVED_BYTES < 2 * len(big) < 2 * childlog.SERVED_BYTES

        def busy(inbox: Inbox) -> None:
            for number in range(8):
                assert inbox.served_send(big, number, 1, 0)

        box.child(busy, worker=True)
        box.inbox.read()
        assert len(box.forwarded) > 1
        assert all(len(ipc.encode(record)) < 2 * childlog.SERVED_BYTES for record in box.forwarded)
        assert [len(record[1]) for record in box.forwarded] == [2, 2, 2, 2]
        assert sum(record[2] for record in box.forwarded) == 8


class TestStderr:
    def test_lines_are_attributed_and_cut(self, box: Box) -> None:
        """Each line is a handler_stderr event of its child; long ones cut; the rest at reap."""

        def write(_inbox: Inbox) -> None:
            os.write(2, b"first line\nsecond " + b"y" * 3000 + b"\nno newline")

        pid = box.child(write)
        box.inbox.read()
        box.inbox.drain(pid)
        lines = [record[3]["line"] for record in box.forwarded]
        assert lines[0] == "first line"
        assert [len(line) for line in lines[1:3]] == [MAX_LINE, 3007 - MAX_LINE]
        assert lines[3] == "no newline"
        fields = {key: box.forwarded[0][3][key] for key in ("service", "client", "pid")}
        assert fields == {"service": "echo", "client": "127.0.0.1:4000", "pid": pid}
        assert {record[2] for record in box.forwarded} == {"handler_stderr"}

    def test_lines_share_the_budget_of_all_stderr(
        self, box: Box, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Past the forker's line budget (programs' and handlers'), lines are counted, not sent."""
        monkeypatch.setattr(programs, "STDERR_BURST", 10)
        box.inbox.budget = programs.LineBudget()

        def noisy(_inbox: Inbox) -> None:
            os.write(2, b"line\n" * 50)

        pid = box.child(noisy)
        box.inbox.read()
        box.inbox.drain(pid)
        assert len(box.forwarded) == 10
        assert box.inbox.budget.dropped == {"echo": 40}

    def test_a_stranger_is_logged_by_pid_only(self, box: Box) -> None:
        """A process that is no child of ours (one a handler started, say): pid, no service."""
        box.inbox.stderr_child.send(b"stray\n")
        box.inbox.read()
        ((_, _, event, fields),) = box.forwarded
        assert event == "handler_stderr"
        assert fields == {"service": None, "client": None, "pid": os.getpid(), "line": "stray"}


def test_sockets_pass_credentials() -> None:
    """Both sockets carry the sender's credentials (SO_PASSCRED)."""
    box = Box()
    try:
        for sock in (box.inbox.reports, box.inbox.stderr):
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED) == 1
    finally:
        box.inbox.close()
