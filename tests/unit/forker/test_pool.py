"""Tests of sockd.forker.pool: the forker's side of pooled workers, with real forks."""

from __future__ import annotations

import contextlib
import errno
import json
import marshal
import math
import mmap
import os
import signal
import socket
import socketserver
import struct
import sys
from typing import TYPE_CHECKING, Any

import pytest
from harness import alive, recv_all, wait_until

from sockd.exits import batch_header, entry, read_entries
from sockd.forker import pool
from sockd.forker.childlog import MAX_DATAGRAM, Inbox
from sockd.forker.children import Children
from sockd.forker.pool import RESPAWN_DELAY, Pools
from sockd.forker.service import ServiceServer
from sockd.forker.shared import Service, Shared
from sockd.listeners import Endpoint
from sockd.spec import Limits, ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


@pytest.fixture
def server() -> Iterator[ServiceServer]:
    sock = socket.create_server(("127.0.0.1", 0))
    endpoint = Endpoint("pool", sock.family, sock.getsockname(), adopted=sock)
    served = ServiceServer(endpoint, Service(ServiceSpec("pool", "echo", workers=2)), Shared())
    yield served
    for pid in served.shared.children:  # the workers the test has not waited for
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    served.server_close()


class TestPools:
    def test_fill_starts_the_workers_that_serve(self, server: ServiceServer) -> None:
        """fill() forks `workers` processes, registered as children; they answer connections."""
        pools = Pools([server], lambda *_: None)
        pools.fill()
        assert len(pools.workers) == 2
        assert len(server.shared.children) == 2
        pools.fill("pool")  # already full
        assert len(pools.workers) == 2
        host, port = server.server_address[:2]
        with socket.create_connection((str(host), int(port)), timeout=5) as client:
            client.sendall(b"hi\n")
            assert client.recv(10) == b"hi\n"

    def test_retired_workers_leave_and_are_not_replaced(self, server: ServiceServer) -> None:
        """retire() sends SIGTERM: idle workers exit 0; exited() then schedules nothing."""
        pools = Pools([server], lambda *_: None)
        pools.fill()
        pids = list(pools.workers)
        pools.retire("pool")
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert pools.exited(pid, failed=False, replace=True)["retired"]
        assert pools.workers == {}
        assert pools.next_due() is None

    def test_a_young_failed_worker_is_replaced_later(self, server: ServiceServer) -> None:
        """A worker that failed right after its start is replaced after RESPAWN_DELAY."""
        pools = Pools([server], lambda *_: None)
        pools.fill()
        victim = next(iter(pools.workers))
        os.kill(victim, signal.SIGKILL)
        os.waitpid(victim, 0)
        pools.exited(victim, failed=True, replace=True)
        due = pools.next_due()
        assert due is not None
        pools.replace_due(due - RESPAWN_DELAY / 2)
        assert len(pools.workers) == 1
        pools.replace_due(due)
        assert len(pools.workers) == 2
        assert all(alive(pid) for pid in pools.workers)

    def test_a_failed_fork_is_reported_and_retried(
        self, server: ServiceServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fork() failing (EAGAIN) is fork_failed, not a dead forker; a retry is scheduled."""
        reports: list[tuple[str, str, dict[str, object]]] = []
        pools = Pools([server], lambda *event: reports.append(event))
        server.shared.report = lambda *event: reports.append(event)  # logged with back-off

        def no_fork() -> int:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "fork", no_fork)
        pools.fill()
        assert pools.workers == {}
        assert reports == [
            (
                "error",
                "fork_failed",
                {
                    "service": "pool",
                    "error": "Resource temporarily unavailable",
                    "failures": 1,
                    "retry_in": 0.1,
                },
            )
        ]
        assert pools.next_due() is not None


def make_worker(emit: Callable[[bytes, int, int, int], bool] | None = None) -> pool._Worker:
    """Return a worker's record keeping (not forked): its slot, its batch, `emit` to send."""
    worker = pool._Worker.__new__(pool._Worker)
    worker.slot = mmap.mmap(-1, pool.SLOT_SIZE)
    worker.shared = Shared()
    if emit is not None:
        worker.shared.emit = emit
    worker.batch, worker.batch_due, worker.mirrored = [], 0.0, 0
    worker.denied = worker.lost = worker.number = 0
    worker.kept = False
    return worker


def serve(worker: pool._Worker, client: object = ("127.0.0.1", 40000), status: int = 0) -> None:
    """Record one connection as `_Worker._serve` does: in flight, then its record."""
    worker.number += 1
    worker._in_flight(client, 1.0)
    worker._record((worker.number, "pool", client, status, 0.5))


class Sent:
    """A worker's batches as `Inbox.served_send` gets them; refused while `full`."""

    def __init__(self) -> None:
        self.batches: list[tuple[bytes, int, int, int]] = []
        self.full = False

    def __call__(self, entries: bytes, last: int, denied: int, lost: int) -> bool:
        if self.full:
            return False
        self.batches.append((entries, last, denied, lost))
        return True


class TestBatch:
    """A worker's connections: encoded once as entries, sent in batches, kept while refused."""

    def test_a_batch_goes_as_entries_the_daemon_reads(self) -> None:
        """Through the forker's inbox, unread: the daemon decodes what the worker recorded."""
        forwarded: list[Any] = []
        inbox = Inbox(Children(), {os.getpid(): ("pool", 0.0)}, forwarded.append, print)
        try:
            worker = make_worker(inbox.served_send)
            for port in range(3):
                serve(worker, ("10.0.0.1", port), status=port)
            worker.denied = 2
            worker._flush()
            inbox.read()
        finally:
            inbox.close()
        ((kind, ((pid, service, entries),), denied),) = forwarded
        assert (kind, pid, service, denied) == ("served", os.getpid(), "pool", 2)
        expected = [(n + 1, ("10.0.0.1", n), n, 0.5) for n in range(3)]
        assert read_entries(entries) == (expected, 0)
        assert inbox.received == {os.getpid(): 3}

    def test_a_full_batch_goes_at_once(self) -> None:
        """BATCH_SIZE connections: sent without waiting for BATCH_DELAY; the slot emptied."""
        sent = Sent()
        worker = make_worker(sent)
        for _ in range(pool.BATCH_SIZE):
            serve(worker)
        ((entries, last, denied, lost),) = sent.batches
        assert (len(read_entries(entries)[0]), last, denied, lost) == (pool.BATCH_SIZE, 64, 0, 0)
        assert worker.batch == []
        assert pool.mirrored_batch(worker.slot) == ([], 0)

    def test_a_batch_stays_in_the_slot_until_it_is_sent(self) -> None:
        """Killed while it sends, a worker leaves its batch in the slot (none lost, none twice).

        The forker reads what a dead worker sent before its slot, and logs from
        the slot only the records numbered past the last one sent.
        """
        in_slot: list[list[Any]] = []

        def emit(*_sent: object) -> bool:
            in_slot.append(pool.mirrored_batch(worker.slot)[0])  # what a SIGKILL now leaves
            return True

        worker = make_worker(emit)
        for _ in range(3):
            serve(worker)
        worker._flush()
        assert [[number for number, *_ in batch] for batch in in_slot] == [[1, 2, 3]]
        assert pool.mirrored_batch(worker.slot) == ([], 0)  # sent: out of the slot

    def test_a_refused_batch_is_kept_counted_in_the_slot(self) -> None:
        """The forker cannot take it (EAGAIN): kept, counted in the slot, sent later in order."""
        sent = Sent()
        worker = make_worker(sent)
        sent.full = True
        for _ in range(pool.BATCH_SIZE + 3):
            serve(worker)
        assert sent.batches == []
        # Past BATCH_SIZE each connection tries again: all are counted, none left in the slot.
        assert int.from_bytes(worker.slot[pool._KEPT], sys.byteorder) == pool.BATCH_SIZE + 3
        assert pool.mirrored_batch(worker.slot) == ([], 0)
        sent.full = False
        worker._flush()
        ((entries, last, _, _),) = sent.batches
        assert [number for number, *_ in read_entries(entries)[0]] == list(range(1, 68))
        assert last == 67
        assert int.from_bytes(worker.slot[pool._KEPT], sys.byteorder) == 0

    def test_past_max_batch_the_oldest_are_lost_counted(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Kept records are bounded: the oldest go, and the next batch says how many."""
        monkeypatch.setattr(pool, "MAX_BATCH", 10)
        sent = Sent()
        worker = make_worker(sent)
        sent.full = True
        for _ in range(15):
            serve(worker)
        worker._flush()
        sent.full = False
        worker._flush()
        ((entries, last, _, lost),) = sent.batches
        assert [number for number, *_ in read_entries(entries)[0]] == list(range(6, 16))
        assert (last, lost) == (15, 5)

    def test_a_backlog_goes_in_datagrams_of_bounded_size(self) -> None:
        """Kept entries past MAX_DATAGRAM go in several batches, each naming its last number."""
        sent = Sent()
        worker = make_worker(sent)
        sent.full = True
        for _ in range(pool.BATCH_SIZE * 3):
            serve(worker, "unix:" + "x" * 1000)
        sent.full = False
        worker._flush()
        assert len(sent.batches) > 1
        numbers = []
        for entries, last, _, _ in sent.batches:
            assert len(batch_header(last, 0, 0) + entries) <= MAX_DATAGRAM
            part = [number for number, *_ in read_entries(entries)[0]]
            assert part[-1] == last
            numbers += part
        assert numbers == list(range(1, pool.BATCH_SIZE * 3 + 1))


class TestLeftOver:
    """What the forker logs of a worker that died: from its slot, each connection once."""

    PID = 99999

    def left_over(self, worker: pool._Worker, received: int) -> tuple[list[Any], int]:
        pools = Pools([], lambda *_: None)
        pools.slots[self.PID] = worker.slot
        pools.workers[self.PID] = ("pool", 0.0)
        entries, kept = pools.left_over(self.PID, signal.SIGKILL, received)
        decoded, bad = read_entries(entries)
        assert bad == 0
        return decoded, kept

    def test_its_unsent_batch_and_the_connection_it_died_serving(self) -> None:
        """Entries past the last number the forker read, then the one in flight, with the signal."""
        sent = Sent()
        worker = make_worker(sent)
        for _ in range(3):
            serve(worker, "unix:" + "x" * 500)  # in flight, longer than the last one
        worker._flush()  # 1 to 3 sent
        serve(worker)
        serve(worker)
        worker.number += 1
        worker._in_flight(("127.0.0.1", 6), 1.0)  # killed serving 6
        entries, kept = self.left_over(worker, received=3)
        assert [(number, code) for number, _, code, _ in entries] == [(4, 0), (5, 0), (6, -9)]
        assert entries[-1][1] == ("127.0.0.1", 6)
        assert kept == 0

    def test_what_the_forker_read_is_not_logged_again(self) -> None:
        """Killed after it sent its connection, before it cleared the slot: logged once, sent."""
        worker = make_worker(Sent())
        serve(worker)
        serve(worker)
        worker._flush()
        worker.slot[pool._BUSY] = 1  # as if killed just before the end of _record
        assert self.left_over(worker, received=2) == ([], 0)

    def test_kept_and_unreadable_records_are_counted(self) -> None:
        """Records kept past the slot, and a scribbled entry, are counted (events_dropped)."""
        sent = Sent()
        worker = make_worker(sent)
        sent.full = True
        serve(worker)
        worker._flush()  # 1 kept
        serve(worker)
        start = pool._BATCH + worker.mirrored
        worker.slot[start : start + 6] = (4).to_bytes(2, "little") + b"\xff\xfe\xfd\xfc"
        worker.slot[pool._BATCH_LENGTH] = (worker.mirrored + 6).to_bytes(4, sys.byteorder)
        entries, kept = self.left_over(worker, received=0)
        assert [number for number, *_ in entries] == [2]
        assert kept == 2

    def test_an_unreadable_connection_in_flight_is_logged_once(self) -> None:
        """Its slot scribbled on (by its handler, say): logged, its client unknown, never fatal."""
        for garbage in (b"\xff" * 20, marshal.dumps((("h", 1), 1.0, "7")), marshal.dumps(7)):
            worker = make_worker(Sent())
            worker.slot[pool._DATA : pool._DATA + len(garbage)] = garbage
            worker.slot[pool._BUSY] = 1
            entries, _ = self.left_over(worker, received=4)
            assert entries == [(5, None, -9, 0.0)]


class TestMirroredBatch:
    """A worker's unsent batch in its shared slot, as the forker reads it after a SIGKILL."""

    def test_entries_appended_one_by_one_read_back_in_order(self) -> None:
        """Each connection's entry, appended as it ends, is read back whole and in order."""
        worker = make_worker()
        records = [(n, ("127.0.0.1", 40000 + n), 0, 0.5) for n in range(1, 6)]
        for record in records:
            assert worker._mirror(entry(*record))
        assert pool.mirrored_batch(worker.slot) == (records, 0)

    def test_an_entry_that_does_not_decode_is_counted(self) -> None:
        """Garbage in the slot (a handler wrote there): skipped, counted; the rest read."""
        worker = make_worker()
        good = (1, "unix:uid=0,pid=1", 0, 0.1)
        assert worker._mirror(entry(*good))
        assert worker._mirror((4).to_bytes(2, "little") + b"\xff\xfe\xfd\xfc")
        assert worker._mirror(entry(*good))
        assert pool.mirrored_batch(worker.slot) == ([good, good], 1)

    def test_a_length_past_the_slot_is_bounded(self) -> None:
        """A batch length larger than the slot reads no further than the slot."""
        worker = make_worker()
        worker.slot[pool._BATCH_LENGTH] = (1 << 31).to_bytes(4, sys.byteorder)
        assert pool.mirrored_batch(worker.slot) == ([], 1)

    def test_a_full_slot_refuses_the_entry(self) -> None:
        """An entry that does not fit is refused (the worker then sends its batch)."""
        worker = make_worker()
        big = entry(1, "x" * 3000, 0, 0.1)
        fitted = 0
        while worker._mirror(big):
            fitted += 1
        assert fitted == (pool.SLOT_SIZE - pool._BATCH) // len(big)
        assert pool.mirrored_batch(worker.slot) == ([(1, "x" * 3000, 0, 0.1)] * fitted, 0)

    def test_an_entry_of_the_wrong_types_is_counted(self) -> None:
        """Four values, but not an entry's types (a handler scribbled): not passed on, counted."""
        worker = make_worker()
        good = (1, "unix:uid=0,pid=1", 0, 0.1)
        assert worker._mirror(entry(*good))
        assert worker._mirror(entry(2, "x", "0", 0.1))  # type: ignore[arg-type]  # the status a string
        assert worker._mirror(entry(3, "x", 0, 0.1))
        assert pool.mirrored_batch(worker.slot) == ([good, (3, "x", 0, 0.1)], 1)


class TestCut:
    """Cutting a worker's connection short: by its descriptor, whatever became of its socket."""

    def worker(self, request: socket.socket, peer: object) -> pool._Worker:
        worker = pool._Worker.__new__(pool._Worker)
        worker.cut = None
        worker.request_fd, worker.peer = request.fileno(), peer
        return worker

    def test_a_socket_taken_over_by_the_handler_is_shut_down(self) -> None:
        """The handler took the descriptor (as a TLS wrapper does): the peer still sees the end."""
        ours, theirs = socket.socketpair()
        worker = self.worker(ours, ours.getpeername())
        taken = socket.socket(fileno=ours.detach())  # the socket object has no descriptor now
        worker._cut("overtime")
        theirs.settimeout(5)
        assert theirs.recv(1) == b""
        assert worker.cut == "overtime"
        taken.close()
        theirs.close()

    def test_a_descriptor_reused_for_another_peer_is_left_alone(self) -> None:
        """Under the same number, a socket to another peer: not the connection, not shut down."""
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(server.getsockname())
        ours, peer = server.accept()
        worker = self.worker(ours, ("127.0.0.1", 1))  # the connection's peer was another
        worker._cut("stop")
        client.sendall(b"x")
        assert ours.recv(1) == b"x"
        for sock in (ours, client, server):
            sock.close()
        assert peer != ("127.0.0.1", 1)

    def test_after_a_cut_neither_an_error_nor_an_idle_peer_is_told(
        self, server: ServiceServer
    ) -> None:
        """A connection cut short fails as the cut made it: no handler_error, no idle_timeout."""
        reports: list[tuple[str, str, dict[str, object]]] = []
        server.shared.report = lambda *event: reports.append(event)
        ours, theirs = socket.socketpair()
        worker = self.worker(ours, "")
        pooled = pool._PooledServer(worker, server, os.dup(server.fileno()))
        worker.cut = "overtime"
        try:
            raise TimeoutError  # noqa: TRY301 (the exception being handled, as in serve_connection)
        except TimeoutError:
            pooled.handle_error(ours, "")
            pooled.report_idle(ours, "")
        assert reports == []
        worker.cut = None
        try:
            raise TimeoutError  # noqa: TRY301
        except TimeoutError:
            pooled.handle_error(ours, "")
        assert [event for _, event, _ in reports] == ["handler_error"]
        pooled.server_close()
        ours.close()
        theirs.close()


class TestPooledServer:
    """A worker's server: the forker's ServiceServer, its admission its own."""

    def test_admits_by_rules_only_and_counts_nothing_of_the_forker(
        self, server: ServiceServer
    ) -> None:
        """Per-source limits (refused by config for a pool) are not counted in a worker."""
        limits = Limits(per_source=1)
        spec = ServiceSpec("pool", "echo", workers=2, deny=("127.0.0.2",), limits=limits)
        server.apply(Service(spec))
        assert server.admission.limited
        worker = pool._Worker.__new__(pool._Worker)
        worker.denied = 0
        pooled = pool._PooledServer(worker, server, os.dup(server.fileno()))
        try:
            assert not pooled.admission.limited
            ours, theirs = socket.socketpair()
            for _ in range(3):
                assert pooled.verify_request(ours, ("127.0.0.1", 4000))
            assert not pooled.verify_request(ours, ("127.0.0.2", 4000))
            assert worker.denied == 1
            assert server.admission.open == {}
            assert server.shared.sources == {}
            ours.close()
            theirs.close()
        finally:
            pooled.server_close()
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


class Acts(socketserver.BaseRequestHandler):
    """As the client's first byte says: E raises, I waits (idle), C reads to the end, then raises.

    Anything else is echoed.
    """

    def handle(self) -> None:
        action = self.request.recv(1)
        if action == b"E":
            raise ValueError("bad")
        if action == b"I":
            self.request.recv(1)
        if action == b"C":
            self.request.sendall(b"ready\n")
            while self.request.recv(1024):
                pass
            raise ValueError("read the end")  # an error, were the end not the cut
        self.request.sendall(action)


def reporter(path: Path) -> Callable[..., bool]:
    """Return a function that appends its arguments to `path` as a JSON line (any process)."""

    def write(*args: Any) -> bool:
        with path.open("a") as out:
            out.write(json.dumps(args) + "\n")
        return True

    return write


class Served:
    """A listener of service "svc", served by forked children or by one pooled worker.

    Its connections wait in the backlog until `start()`: a fork-per-connection
    forker accepts them (`accept_ready`), or a worker is started that does.
    Every process reports into one file.
    """

    def __init__(self, mode: str, tmp_path: Path, idle_timeout: float | None = 0.5) -> None:
        self.mode = mode
        self.log = tmp_path / "events"
        shared = Shared()
        shared.report = reporter(self.log)  # type: ignore[assignment]  # returns True: no matter
        shared.emit = lambda entries, *counts: reporter(self.log)("emit", entries.hex(), *counts)
        sock = socket.create_server(("127.0.0.1", 0))
        endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
        spec = ServiceSpec("svc", "echo", deny=("127.0.0.2",), idle_timeout=idle_timeout)
        service = Service(spec)
        service.handler = Acts
        self.server = ServiceServer(endpoint, service, shared)
        self.address = self.server.server_address[:2]
        self.worker = 0

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        client = socket.socket()
        client.bind((source, 0))
        client.settimeout(10)
        client.connect(self.address)
        return client

    def serve_one(self, action: bytes) -> tuple[str, list[Any]]:
        """Serve one client that sends `action` and reads to the end; return its address, events."""
        with self.connect() as client:
            source = "{}:{}".format(*client.getsockname())
            client.sendall(action)
            self.start(1)
            assert recv_all(client) == b""
        return source, self.finish()

    def start(self, connections: int) -> None:
        if self.mode == "pool":
            self.worker = pool.start_worker([self.server], mmap.mmap(-1, pool.SLOT_SIZE))
            return
        for _ in range(connections):
            wait_until(lambda: self.server.accept_ready(1))

    def finish(self) -> list[Any]:
        """End the serving (reap the children, or stop the worker); return the events."""
        shared = self.server.shared
        if self.worker:
            os.kill(self.worker, signal.SIGTERM)
            _, status = os.waitpid(self.worker, 0)
            self.worker = 0
            assert os.waitstatus_to_exitcode(status) == 0
        else:
            wait_until(lambda: shared.reap() or not shared.children, what="the children reaped")
            for summary in shared.denials.due(math.inf):  # as the forker's loop does
                shared.report("info", "connections_denied", summary)
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def statuses(self, events: list[Any]) -> list[int]:
        """Return the connections' statuses: children's exit codes, or the worker's records."""
        if self.mode == "fork":
            return [e[2]["exit_code"] for e in events if e[1] == "connection_closed"]
        emitted = [read_entries(bytes.fromhex(e[1]))[0] for e in events if e[0] == "emit"]
        return [entry[2] for entries in emitted for entry in entries]

    def events(self, events: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
        """Return the events but the connections' ends (reported differently in each mode)."""
        return [
            (level, event, {key: value for key, value in fields.items() if key != "pid"})
            for level, event, fields in (e for e in events if e[0] != "emit")
            if event != "connection_closed"
        ]


@pytest.fixture
def made() -> Iterator[list[Served]]:
    """Collect the Served made by a test; kill a worker left running."""
    served: list[Served] = []
    yield served
    for one in served:
        if one.worker:
            with contextlib.suppress(ProcessLookupError):
                os.kill(one.worker, signal.SIGKILL)
            os.waitpid(one.worker, 0)
        one.server.server_close()


@pytest.mark.parametrize("mode", ["fork", "pool"])
class TestOnePath:
    """A connection in a forked child and in a pooled worker: the same server methods, events."""

    def test_a_refusal(self, mode: str, tmp_path: Path, made: list[Served]) -> None:
        """A denied client: connection_denied with the same fields, counted, nothing served."""
        served = Served(mode, tmp_path)
        made.append(served)
        with served.connect("127.0.0.2") as client:
            source = "{}:{}".format(*client.getsockname())
            served.start(1)
            assert recv_all(client) == b""
        events = served.finish()
        fields = {"service": "svc", "client": source, "reason": "deny 127.0.0.2/32"}
        assert served.events(events) == [("info", "connection_denied", fields)]
        assert served.statuses(events) == []
        if mode == "pool":
            assert [e[1:] for e in events if e[0] == "emit"] == [["", 0, 1, 0]]
        else:
            assert served.server.shared.stats.denied == 1

    def test_a_reset_in_the_backlog_is_dropped(
        self, mode: str, tmp_path: Path, made: list[Served]
    ) -> None:
        """Reset before it is served: no handler runs, one peer_reset counted; the next served."""
        served = Served(mode, tmp_path)
        made.append(served)
        reset = served.connect()
        reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset.close()  # linger 0: an RST, before the connection is accepted
        with served.connect() as polite:
            polite.sendall(b"p")
            served.start(2)
            assert recv_all(polite) == b"p"
        events = served.finish()
        summary = {"service": "svc", "reason": "peer_reset", "source": "all", "count": 1}
        summary["seconds"] = 10.0
        assert served.events(events) == [("info", "connections_denied", summary)]
        assert served.statuses(events) == [0]

    def test_an_idle_timeout(self, mode: str, tmp_path: Path, made: list[Served]) -> None:
        """A silent client: idle_timeout with the same fields, and status 0."""
        served = Served(mode, tmp_path)
        made.append(served)
        source, events = served.serve_one(b"I")
        fields = {"service": "svc", "client": source, "seconds": 0.5}
        assert served.events(events) == [("info", "idle_timeout", fields)]
        assert served.statuses(events) == [0]

    def test_a_handler_error(self, mode: str, tmp_path: Path, made: list[Served]) -> None:
        """A handler that raises: handler_error from the same frames on (serve_connection), 1."""
        served = Served(mode, tmp_path)
        made.append(served)
        source, events = served.serve_one(b"E")
        ((level, event, fields),) = served.events(events)
        assert (level, event, fields["service"], fields["client"]) == (
            "error",
            "handler_error",
            "svc",
            source,
        )
        exception = fields["exception"]
        assert (exception["type"], exception["message"]) == ("ValueError", "bad")
        functions = [frame["function"] for frame in exception["frames"]]
        assert functions == ["serve_connection", "finish_request", "__init__", "handle"]
        assert served.statuses(events) == [1]


def signal_handled(pid: int, signum: int) -> bool:
    """Tell whether process `pid` has taken `signum` and sleeps again (its handler has run)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        lines = dict(line.split(":", 1) for line in status.read().splitlines())
    pending = int(lines["SigPnd"], 16) | int(lines["ShdPnd"], 16)
    return not pending & (1 << (signum - 1)) and lines["State"].split()[0] == "S"


def blocked_in_a_system_call(pid: int) -> bool:
    """Tell whether process `pid` sleeps in a system call (not running Python code).

    A signal that comes while Python code runs is only noted: its handler
    runs later. One that interrupts a blocking call has its handler run at once.
    """
    with open(f"/proc/{pid}/syscall", encoding="ascii") as syscall:
        return syscall.read().split()[0] not in ("running", "-1")


def test_a_second_sigterm_cuts_a_handler_blocked_in_recv(
    tmp_path: Path, made: list[Served]
) -> None:
    """A worker's second SIGTERM ends the connection by its socket: no handler_error, status 1."""
    served = Served("pool", tmp_path, idle_timeout=None)
    made.append(served)
    with served.connect() as client:
        client.sendall(b"C")
        served.start(1)
        assert client.recv(10) == b"ready\n"  # the handler now blocks in recv()
        # Two signals before the handler of the first has run would be one: the
        # first must interrupt recv() itself, so that its handler runs at once.
        wait_until(lambda: blocked_in_a_system_call(served.worker), what="recv() to block")
        os.kill(served.worker, signal.SIGTERM)  # a stop: after this connection
        wait_until(lambda: signal_handled(served.worker, signal.SIGTERM), what="the first taken")
        os.kill(served.worker, signal.SIGTERM)  # the connection is cut short
        assert recv_all(client) == b""
        _, status = os.waitpid(served.worker, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    served.worker = 0
    events = [json.loads(line) for line in served.log.read_text().splitlines()]
    assert served.events(events) == []
    assert served.statuses(events) == [1]
