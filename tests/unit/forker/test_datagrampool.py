"""Tests of sockd.forker.datagrampool: pooled workers serving datagrams, with real forks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
from typing import TYPE_CHECKING

import pytest

from sockd.forker.datagrampool import worker_share
from sockd.forker.datagrams import DatagramServer, problem
from sockd.forker.pool import Pools
from sockd.forker.shared import Service, Shared
from sockd.listeners import Endpoint
from sockd.spec import Limits, ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class Pid(socketserver.DatagramRequestHandler):
    """Answer a datagram with it and the pid of the process that served it."""

    def handle(self) -> None:
        self.wfile.write(self.rfile.read() + b" %d" % os.getpid())


def bound(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(10)
    return sock


@pytest.fixture
def pooled() -> Iterator[Callable[..., tuple[DatagramServer, Pools]]]:
    """Make a pooled datagram service's server and its started Pools; kill the workers after."""
    made: list[tuple[DatagramServer, Pools]] = []

    def make(**settings: object) -> tuple[DatagramServer, Pools]:
        sock = bound()
        endpoint = Endpoint("svc", sock.family, sock.getsockname(), adopted=sock, type=sock.type)
        spec = ServiceSpec("svc", f"{__name__}:Pid", **settings)  # type: ignore[arg-type]
        server = DatagramServer(endpoint, Service(spec), Shared())
        pools = Pools([server], lambda *_: None)
        pools.fill()
        made.append((server, pools))
        return server, pools

    yield make
    for server, pools in made:
        for pid in pools.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        server.server_close()


class TestWorkers:
    def test_workers_serve_datagrams_in_process(
        self, pooled: Callable[..., tuple[DatagramServer, Pools]]
    ) -> None:
        """Two workers read the socket; each datagram is answered by one of them, not a child."""
        server, pools = pooled(workers=2)
        assert not server.inline
        with bound() as client:
            pids = set()
            for index in range(10):
                client.sendto(b"%d" % index, server.server_address)
                answer, sender = client.recvfrom(100)
                data, _, pid = answer.partition(b" ")
                assert (data, sender) == (b"%d" % index, server.server_address)
                pids.add(int(pid))
        assert pids <= set(pools.workers)

    def test_the_loop_check_applies_in_a_worker(
        self, pooled: Callable[..., tuple[DatagramServer, Pools]]
    ) -> None:
        """A datagram from the service's own port is dropped by the worker, unanswered."""
        server, pools = pooled(workers=1)
        port = server.server_address[1]
        with bound("127.0.0.2", port) as looped, bound() as client:
            looped.sendto(b"loop", server.server_address)
            client.sendto(b"after", server.server_address)
            assert client.recv(100).startswith(b"after ")  # one worker: read after the loop
            looped.setblocking(False)
            with pytest.raises(BlockingIOError):
                looped.recv(100)
        assert len(pools.workers) == 1


class TestShare:
    def test_each_worker_keeps_its_share_of_the_rates(self) -> None:
        """A rate and a burst are split among the workers; the prefixes stay."""
        limits = Limits(
            rate=10.0, burst=6, per_source_rate=4.0, per_source_burst=None, source_prefix_v4=24
        )
        share = worker_share(limits, 2)
        assert (share.rate, share.burst) == (5.0, 3)
        assert (share.per_source_rate, share.per_source_burst) == (2.0, 2)  # 4 (the rate) / 2
        assert share.source_prefix_v4 == 24
        assert share.per_source is None

    def test_a_burst_is_at_least_one(self) -> None:
        """A burst smaller than the number of workers leaves each worker one datagram."""
        share = worker_share(Limits(per_source_rate=0.001, per_source_burst=1), 4)
        assert share.per_source_burst == 1
        assert worker_share(Limits(), 4).rate is None


class TestProblem:
    def test_a_handler_is_pooled_a_builtin_or_program_is_not(self) -> None:
        """Workers go with a Python handler on a datagram socket, not with a built-in or exec."""
        handler = Service(ServiceSpec("svc", f"{__name__}:Pid", workers=2))
        assert problem(handler, socket.AF_INET) is None
        builtin = problem(Service(ServiceSpec("svc", "time", workers=2)), socket.AF_INET)
        assert builtin is not None
        assert "built-in" in builtin
