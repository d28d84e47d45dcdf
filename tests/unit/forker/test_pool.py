"""Tests of sockd.forker.pool: the forker's side of pooled workers, with real forks."""

from __future__ import annotations

import contextlib
import errno
import marshal
import mmap
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

import pytest
from harness import alive

from sockd.forker import pool
from sockd.forker.pool import RESPAWN_DELAY, Pools
from sockd.forker.service import ServiceServer
from sockd.forker.shared import Service, Shared
from sockd.listeners import Endpoint
from sockd.spec import ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Iterator


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


class TestMirroredBatch:
    """A worker's unsent batch in its shared slot, as the forker reads it after a SIGKILL."""

    def worker(self) -> pool._Worker:
        worker = pool._Worker.__new__(pool._Worker)
        worker.slot = mmap.mmap(-1, pool.SLOT_SIZE)
        worker.mirrored = 0
        return worker

    def test_records_appended_one_by_one_read_back_in_order(self) -> None:
        """Each connection's record, appended as it ends, is read back whole and in order."""
        worker = self.worker()
        records = [(n, "pool", ("127.0.0.1", 40000 + n), 0, 0.5) for n in range(1, 6)]
        for record in records:
            assert worker._mirror(record)
        assert pool.mirrored_batch(worker.slot) == (records, 0)

    def test_an_entry_that_does_not_decode_ends_the_reading_counted(self) -> None:
        """Garbage in the slot (a handler wrote there): what came before it, and one counted."""
        worker = self.worker()
        good = (1, "pool", "unix:uid=0,pid=1", 0, 0.1)
        assert worker._mirror(good)
        start = pool._BATCH + worker.mirrored
        worker.slot[start : start + 6] = (4).to_bytes(2, sys.byteorder) + b"\xff\xfe\xfd\xfc"
        worker.slot[pool._BATCH_LENGTH] = (worker.mirrored + 6).to_bytes(4, sys.byteorder)
        assert pool.mirrored_batch(worker.slot) == ([good], 1)

    def test_a_length_past_the_slot_is_bounded(self) -> None:
        """A batch length larger than the slot reads no further than the slot."""
        worker = self.worker()
        worker.slot[pool._BATCH_LENGTH] = (1 << 31).to_bytes(4, sys.byteorder)
        batch, torn = pool.mirrored_batch(worker.slot)
        assert batch == []
        assert torn == 1

    def test_a_full_slot_refuses_the_record(self) -> None:
        """A record that does not fit is refused (the worker then sends its batch)."""
        worker = self.worker()
        big = (1, "pool", "x" * 3000, 0, 0.1)
        fitted = 0
        while worker._mirror(big):
            fitted += 1
        assert fitted == (pool.SLOT_SIZE - pool._BATCH) // (2 + len(marshal.dumps(big)))
        assert pool.mirrored_batch(worker.slot) == ([big] * fitted, 0)

    def test_a_record_of_the_wrong_types_ends_the_reading(self) -> None:
        """Five values, but not a record's types (a handler scribbled): not passed on, counted."""
        worker = self.worker()
        good = (1, "pool", "unix:uid=0,pid=1", 0, 0.1)
        assert worker._mirror(good)
        assert worker._mirror((2, "pool", "x", "0", 0.1))  # the status a string
        assert worker._mirror((3, "pool", "x", 0, 0.1))
        assert pool.mirrored_batch(worker.slot) == ([good], 1)


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

    def test_after_a_cut_a_timeout_is_the_cut_not_an_idle_peer(self) -> None:
        """A read that times out after the cut ends with status 1, and no idle_timeout is told."""
        ours, theirs = socket.socketpair()
        worker = self.worker(ours, "")
        worker.cut = "overtime"
        assert worker._timed_out(None, ours, "") == 1  # type: ignore[arg-type]  # never used
        ours.close()
        theirs.close()
