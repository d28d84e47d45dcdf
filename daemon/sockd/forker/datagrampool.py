"""A pooled worker's server for a datagram socket: the forker's `DatagramServer`, serving in it.

It runs in a pooled worker (`sockd.forker.pool`) of a service with a Python
handler and `workers = N` on `udp:` or `unix-dgram:` addresses. Each worker
reads the shared socket itself (an exclusive epoll wait: one datagram wakes
one worker) through `DatagramServer.accept_ready`, one datagram at a time, so
the loop check, allow/deny and the rate limits apply exactly as in the
forker; `process_request` then serves in process (`_Worker.serve`, through
`serve_connection`), with socketserver's datagram semantics: `request` is
`(data, socket)`, `client_address` the sender.
"""

from __future__ import annotations

import math
import socket

from sockd.forker.access import Admission
from sockd.forker.datagrams import DatagramServer
from sockd.forker.pool import PooledBase
from sockd.listeners import Endpoint
from sockd.spec import Limits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sockd.forker.service import ServiceServer


class PooledDatagramServer(PooledBase, DatagramServer):
    """A worker's copy of the forker's `DatagramServer`, reading the worker's descriptor.

    `worker` is the `sockd.forker.pool._Worker` that serves and counts; it
    admits and serves as `PooledBase` says (before `DatagramServer`'s own).
    """

    def __init__(self, worker: Any, server: ServiceServer, fd: int) -> None:
        """Take over `fd`, the worker's copy of the forker's `server`'s datagram socket."""
        at = server.endpoint
        sock = socket.socket(at.family, socket.SOCK_DGRAM, 0, fileno=fd)
        endpoint = Endpoint(
            at.service, at.family, at.sockaddr, at.address, adopted=sock, type=socket.SOCK_DGRAM
        )
        super().__init__(endpoint, server.service, server.shared)
        self.admission = Admission(worker_share(server.service.limits, server.service.workers))
        self.worker = worker

    def drop(self, reason: str) -> None:
        """Count a datagram dropped by the loop check, in the worker's next batch too."""
        super().drop(reason)
        self.worker.denied += 1


def worker_share(limits: Limits, workers: int | None) -> Limits:
    """Return one worker's share of a service's rate limits: a `workers`-th of each rate and burst.

    Each worker keeps its own buckets (no counts are shared between
    processes), so that together they never admit more than the service's
    limits say; fewer when one worker reads most datagrams. A burst is at
    least one datagram per worker. `per_source` (datagrams served at once)
    does not go with workers (the config refuses it).
    """
    count = workers or 1

    def rate(value: float | None) -> float | None:
        return None if value is None else value / count

    def burst(value: int | None, rate: float | None) -> int | None:
        if rate is None:
            return value
        return max(1, math.floor((value or max(1.0, rate)) / count))

    return Limits(
        source_prefix_v4=limits.source_prefix_v4,
        source_prefix_v6=limits.source_prefix_v6,
        rate=rate(limits.rate),
        burst=burst(limits.burst, limits.rate),
        per_source_rate=rate(limits.per_source_rate),
        per_source_burst=burst(limits.per_source_burst, limits.per_source_rate),
    )
