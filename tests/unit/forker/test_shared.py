"""Tests of sockd.forker.shared: services from records, admission state across reloads, reaping."""

from __future__ import annotations

import os
import socket
from typing import Any

from harness import wait_until

from sockd.exits import PEER_GONE, client_fields
from sockd.forker.shared import (
    MAX_PEER_PATH,
    ForkBackoff,
    Service,
    Shared,
    client_text,
    peer_path,
    unix_client,
)
from sockd.spec import Limits, ServiceSpec


def service(**limits: Any) -> Service:
    return Service(ServiceSpec("svc", "echo", limits=Limits(**limits)))


class TestService:
    def test_takes_the_spec_in_typed_attributes(self) -> None:
        """The handler is loaded, the rules and the refusal made, the rest copied as it is."""
        spec = ServiceSpec(
            "svc", "echo", deny=("10.0.0.0/8",), refusal="busy\n", workers=2, idle_timeout=1.5
        )
        service = Service(spec)
        assert service.handler is not None
        assert service.handler.__name__ == "Echo"
        assert service.program is None
        assert service.rules.refusal(("10.1.2.3", 5)) == "deny 10.0.0.0/8"
        assert service.refusal == b"busy\n"
        assert (service.workers, service.idle_timeout) == (2, 1.5)
        assert service.limits is spec.limits

    def test_a_program_without_a_user_of_its_own_runs_as_the_children(self) -> None:
        """A program's own identity wins; without one it takes the children's identity."""
        children, own = [65534, 65534, [65534]], [1, 1, [1]]
        for identity, runs_as in ((None, children), (own, own)):
            spec = ServiceSpec("p", None, exec=("/bin/cat",), program="/bin/cat", identity=identity)
            program = Service(spec, children).program
            assert program is not None
            assert program.identity == runs_as


class TestShared:
    def test_admission_state_is_kept_across_reloads_and_regrouped(self) -> None:
        """A reloaded service keeps its open counts; a new source prefix regroups them."""
        shared = Shared()
        admission = shared.admission(service(per_source=5))
        for pid, host in ((101, "2001:db8::1"), (102, "2001:db8::2")):
            shared.children.add(pid, "svc", (host, 1))
            key = admission.key((host, 1))
            admission.opened(key)
            shared.sources[pid] = (admission, key, (host, 1))
        shared.children.add(103, "other", ("2001:db8::3", 1))
        assert list(admission.open.values()) == [2]  # one /64
        assert shared.admission(service(per_source=1)) is admission
        assert list(admission.open.values()) == [2]
        shared.admission(service(per_source=1, source_prefix_v6=128))
        assert sorted(admission.open.values()) == [1, 1]  # one per address now
        assert sorted(shared.sources) == [101, 102]

    def test_without_limits_nothing_is_counted_and_a_new_limit_counts_what_is_open(self) -> None:
        """No limit: admission is skipped; limits added by a reload count the open connections."""
        shared = Shared()
        admission = shared.admission(service(per_source=2))
        assert admission.limited
        shared.children.add(101, "svc", ("127.0.0.2", 1))
        admission.opened(admission.key(("127.0.0.2", 1)))
        shared.sources[101] = (admission, admission.key(("127.0.0.2", 1)), ("127.0.0.2", 1))
        shared.admission(service())
        assert not admission.limited
        assert (admission.open, shared.sources) == ({}, {})
        shared.children.add(102, "svc", ("127.0.0.2", 2))  # served while nothing was counted
        shared.admission(service(per_source=2))
        assert list(admission.open.values()) == [2]
        assert admission.refusal(admission.key(("127.0.0.2", 3)), 0.0) == "per_source"
        assert sorted(shared.sources) == [101, 102]

    def test_reap_releases_the_source_of_an_ended_connection(self) -> None:
        """An exit gives its source's slot back, and is reported as connection_closed."""
        shared = Shared()
        events: list[tuple[str, str, dict[str, object]]] = []
        shared.report = lambda level, event, fields: events.append((level, event, fields))
        admission = shared.admission(service(per_source=1))
        key = admission.key(("127.0.0.2", 9))
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os._exit(0)
        shared.children.add(pid, "svc", ("127.0.0.2", 9))
        admission.opened(key)
        shared.sources[pid] = (admission, key, ("127.0.0.2", 9))
        assert admission.refusal(key, 0.0) == "per_source"
        wait_until(shared.reap)
        assert admission.refusal(key, 0.0) is None
        assert [event for _, event, _ in events] == ["connection_closed"]

    def test_what_the_reaped_sent_is_read_before_their_exits_go_on(self) -> None:
        """`after_reap` gets the exits reaped, before any is reported."""
        shared = Shared()
        order: list[object] = []
        shared.report = lambda _level, event, _fields: order.append(event)
        shared.after_reap = lambda exits: order.append([raw[0] for raw in exits])
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os._exit(0)
        shared.children.add(pid, "svc", ("127.0.0.2", 9))
        wait_until(shared.reap)
        assert order == [[pid], "connection_closed"]
        assert shared.reap() == 0
        assert order == [[pid], "connection_closed"], "nothing reaped: nothing read"


class TestClientText:
    def test_tcp_and_unix(self) -> None:
        """TCP clients read as host:port; UNIX clients by their peer credentials."""
        assert client_text(None, ("::1", 5, 0, 0)) == "[::1]:5"
        left, right = socket.socketpair()
        with left, right:
            assert client_text(left, "") == f"unix:uid={os.getuid()},pid={os.getpid()}"


class TestUnixClient:
    def test_bound_path_is_kept_apart_and_escaped(self) -> None:
        """A peer's bound path never names it: credentials do; the path is an escaped field."""
        left, right = socket.socketpair()
        with left, right:
            real = f"unix:uid={os.getuid()},pid={os.getpid()}"
            assert unix_client(left, "") == real
            client = unix_client(left, "unix:uid=0,pid=1")
            assert client_fields(client) == {"client": real, "peer_path": "unix:uid=0,pid=1"}

    def test_escapes(self) -> None:
        """Undecodable bytes, controls and backslashes are escaped; UTF-8 and @abstract kept."""
        assert peer_path(b"a\xff\n\x7f\\b") == "a\\xff\\x0a\\x7f\\\\b"
        assert peer_path(os.fsdecode(b"/srv/\xe9t\xc3\xa9")) == "/srv/\\xe9t\u00e9"
        assert peer_path(b"\0hidden") == "@hidden"
        assert len(peer_path(b"\x01" * 108)) <= MAX_PEER_PATH + 3


class TestForkBackoff:
    def test_pauses_double_to_a_bound_and_logs_once_per_pause(self) -> None:
        """Pauses double from 0.1 s to 5 s; failures within a pause are counted, not logged."""
        backoff = ForkBackoff()
        assert backoff.failed(100.0) == (0.1, True)
        assert backoff.failed(100.05) == (0.2, False)  # within the pause: counted
        assert backoff.failed(100.3) == (0.4, True)
        delays = [backoff.failed(1000.0 + 10 * step)[0] for step in range(10)]
        assert delays[-1] == ForkBackoff.LONGEST
        assert backoff.failures == 13
        backoff.succeeded()
        assert backoff.quiet(1090.0 + ForkBackoff.QUIET)
        assert backoff.recovered() == {"failures": 13, "seconds": 990.0}
        assert backoff.failed(2000.0) == (0.1, True)  # afresh

    def test_alternating_failures_and_successes_log_per_time_not_per_alternation(self) -> None:
        """Fork failing and working 10 times a second for 20 s: a few lines, one recovery."""
        backoff = ForkBackoff()
        logged = 0
        for step in range(200):
            now = 100.0 + step / 10
            delay, log = backoff.failed(now)
            assert delay == ForkBackoff.FIRST  # a success in between starts the pause over
            logged += log
            backoff.succeeded()  # a child exited: the next fork works
            assert not backoff.quiet(now + 0.05)
        # 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, then every 5 s: 6 + 20 / 5 at most.
        assert logged <= 6 + 20 / ForkBackoff.LONGEST
        assert not backoff.quiet(119.9 + ForkBackoff.QUIET - 0.1)
        assert backoff.quiet(119.9 + ForkBackoff.QUIET)
        assert backoff.recovered() == {"failures": 200, "seconds": 19.9}

    def test_no_recovery_without_a_fork_that_worked(self) -> None:
        """Quiet because nothing was tried is not a recovery: a fork must have worked."""
        backoff = ForkBackoff()
        backoff.failed(100.0)
        assert not backoff.quiet(200.0)
        backoff.succeeded()
        assert backoff.quiet(200.0)

    def test_peer_gone_exits_are_not_errors(self) -> None:
        """A child whose peer reset (exit 141) is not counted as an error; one that exits 1 is."""
        shared = Shared()
        for status in (PEER_GONE, 1):
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                os._exit(status)
            shared.children.add(pid, "echo", ("127.0.0.1", status))

        def both_reaped() -> bool:
            shared.reap()
            return shared.reaped == 2

        wait_until(both_reaped)
        assert shared.stats.errors == 1
