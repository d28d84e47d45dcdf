"""Tests of sockd.forker.waits: a program on the listening socket itself, and its start limit."""

from __future__ import annotations

import math
import os
import pwd
import socket
import time
from typing import TYPE_CHECKING, Any

import pytest
from harness import recv_all, wait_until

from sockd.forker.service import ServiceServer
from sockd.forker.shared import Service, Shared
from sockd.forker.waits import Waits
from sockd.listeners import Endpoint
from sockd.privileges import group_ids
from sockd.spec import Limits, ServiceSpec

if TYPE_CHECKING:
    from collections.abc import Iterator

# Accept one connection on stdin (the listening socket), answer with the environment.
ACCEPT_ONE = (
    "import os, socket; connection, _ = socket.socket(fileno=0).accept();"
    "connection.sendall(repr(sorted(os.environ)).encode())"
)


Events = list[tuple[str, str, dict[str, Any]]]


@pytest.fixture
def events() -> Events:
    return []


def wait_server(
    shared: Shared, argv: list[str], limits: Limits | None = None, **changes: Any
) -> ServiceServer:
    """Return the server of a wait service running `argv`, on a listening socket of its own."""
    sock = socket.create_server(("127.0.0.1", 0))  # as the daemon passes it
    endpoint = Endpoint("w", sock.family, sock.getsockname(), adopted=sock)
    limits = limits or Limits(rate=2.0, burst=20)
    spec = ServiceSpec("w", None, exec=tuple(argv), program=argv[0], wait=True, limits=limits)
    for name, value in changes.items():
        setattr(spec, name, value)
    return ServiceServer(endpoint, Service(spec), shared)


@pytest.fixture
def shared(events: Events) -> Iterator[Shared]:
    shared = Shared()
    shared.report = lambda level, event, fields: events.append((level, event, fields))
    yield shared
    for pid in shared.children:
        os.kill(pid, 9)
    reap_all(shared)


def reap_all(shared: Shared) -> None:
    """Reap every child of `shared` (bounded in time)."""
    wait_until(lambda: shared.reap() >= 0 and not shared.children, what="every child reaped")


class TestWaits:
    def test_program_takes_the_blocking_listening_socket(self, shared: Shared) -> None:
        """The program's stdin is the listener, left blocking; its environment is the service's."""
        server = wait_server(shared, ["/usr/bin/python3", "-I", "-c", ACCEPT_ONE])
        assert server.socket.getblocking() is True
        waits = Waits(shared, shared.report)
        assert waits.idle(server)
        with socket.create_connection(server.socket.getsockname()) as client:
            waits.start(server)
            (pid,) = list(shared.children)
            assert shared.children.get(pid) == ("w", None)  # no client: the program takes them
            assert not waits.idle(server)
            assert recv_all(client) == b"['LC_CTYPE', 'PATH']"  # (LC_CTYPE: Python's own)
        reap_all(shared)
        assert waits.idle(server)
        assert shared.stats.served == 1
        server.server_close()

    @pytest.mark.skipif(os.geteuid() != 0, reason="a program with a user of its own needs root")
    def test_program_with_a_user_of_its_own_gets_the_socket(self, shared: Shared) -> None:
        """With `user` (fork, switch, exec), the forker's descriptors close, but not this socket."""
        nobody = pwd.getpwnam("nobody")
        identity = group_ids("nobody", nobody.pw_uid, nobody.pw_gid)
        argv = ["/usr/bin/python3", "-I", "-c", ACCEPT_ONE]
        server = wait_server(shared, argv, identity=identity)
        shared.child_fds = (server.fileno(),)  # as the forker's loop sets them: its listeners
        waits = Waits(shared, shared.report)
        with socket.create_connection(server.socket.getsockname(), timeout=10) as client:
            waits.start(server)
            assert recv_all(client) == b"['LC_CTYPE', 'PATH']"
        reap_all(shared)
        server.server_close()

    def test_starts_past_the_bucket_pause_the_service(self, shared: Shared, events: Events) -> None:
        """`burst` starts, then the service pauses until its bucket is full: one warning."""
        server = wait_server(shared, ["/bin/true"], Limits(rate=1.0, burst=2))
        waits = Waits(shared, shared.report)
        for _ in range(2):
            waits.start(server)
        assert len(shared.children) == 2
        assert waits.resumes_at() == math.inf
        before = time.monotonic()
        waits.start(server)  # no token left
        assert len(shared.children) == 2
        assert not waits.idle(server)
        ((level, event, fields),) = events
        assert (level, event) == ("warning", "wait_looping")
        assert fields["service"] == "w"
        assert (fields["rate"], fields["burst"]) == (1.0, 2)
        assert 1.9 < fields["seconds"] <= 2.0
        assert before + 1.9 < waits.resumes_at() <= time.monotonic() + 2.0
        waits.resume(before)  # not due yet
        assert not waits.idle(server)
        waits.resume(waits.resumes_at())
        assert events[-1] == ("info", "wait_resumed", {"service": "w"})
        reap_all(shared)
        assert waits.idle(server)
        server.server_close()

    def test_a_program_that_cannot_start_is_logged_and_takes_a_token(
        self, shared: Shared, events: Events
    ) -> None:
        """A spawn that fails (not for lack of resources): one fork_failed; it counts as a start."""
        server = wait_server(shared, ["/nonexistent/program"], Limits(rate=0.001, burst=1))
        waits = Waits(shared, shared.report)
        waits.start(server)
        assert [event for _, event, _ in events] == ["fork_failed"]
        assert events[0][2]["service"] == "w"
        assert shared.stats.errors == 1
        waits.start(server)
        assert [event for _, event, _ in events] == ["fork_failed", "wait_looping"]
        server.server_close()
