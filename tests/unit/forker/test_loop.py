"""Tests of sockd.forker.loop's pure parts: each service's share of the cap; when it is crowded."""

from __future__ import annotations

import time
from typing import Any

from sockd.forker.loop import LONG_LIVED, crowd, fair_shares
from sockd.forker.shared import Service, Shared
from sockd.spec import Limits, ServiceSpec


def service(name: str, **changes: Any) -> Service:
    return Service(ServiceSpec(name, "echo", **changes))


class TestFairShares:
    def test_the_cap_is_split_evenly(self) -> None:
        """Three services under 128: 42 each; the 2 left over are anyone's to borrow."""
        shares = fair_shares(128, [service("a"), service("b"), service("c")])
        assert shares == {"a": 42, "b": 42, "c": 42}

    def test_a_service_with_several_listeners_counts_once(self) -> None:
        """A service is one share, however many listeners (servers) it has."""
        echo = service("echo")
        assert fair_shares(10, [echo, echo, service("git")]) == {"echo": 5, "git": 5}

    def test_a_smaller_own_cap_is_the_share(self) -> None:
        """A service capped below its part holds only its cap in reserve."""
        shares = fair_shares(128, [service("chargen", max_children=4), service("echo")])
        assert shares == {"chargen": 4, "echo": 64}

    def test_pooled_workers_are_their_service_share(self) -> None:
        """A pooled service holds its workers; the others split the rest."""
        shares = fair_shares(20, [service("pool", workers=4), service("a"), service("b")])
        assert shares == {"pool": 4, "a": 8, "b": 8}

    def test_every_service_gets_at_least_one(self) -> None:
        """More services than places: each is still guaranteed one."""
        shares = fair_shares(2, [service(name) for name in "abc"])
        assert shares == {"a": 1, "b": 1, "c": 1}


def with_children(count: int) -> Shared:
    """Return the forker's shared state with `count` children just started (pids 1, 2...)."""
    shared = Shared()
    for pid in range(1, count + 1):
        shared.children.add(pid, "echo", ("127.0.0.1", 40000 + pid))
    return shared


class TestCrowd:
    def test_renew_after_long_lived_children_make_a_crowd(self) -> None:
        """`renew_after` children open over LONG_LIVED s: crowded (their count); fewer: not."""
        shared, now = with_children(3), time.monotonic()
        assert crowd(shared, {}, 3, now) == 0, "none is long-lived yet"
        later = now + LONG_LIVED + 0.1
        assert crowd(shared, {}, 3, later) == 3
        assert crowd(shared, {}, 2, later) == 3
        assert crowd(shared, {}, 4, later) == 0

    def test_never_when_off(self) -> None:
        """renew_forker_after = 0: never crowded, however many children and however old."""
        assert crowd(with_children(5), {}, 0, time.monotonic() + 3600) == 0

    def test_pooled_workers_do_not_count(self) -> None:
        """Pooled workers are not connections: they neither count nor are long-lived ones."""
        shared, later = with_children(3), time.monotonic() + LONG_LIVED + 0.1
        assert crowd(shared, {3: ("echo", 0.0)}, 3, later) == 0
        assert crowd(shared, {3: ("echo", 0.0)}, 2, later) == 2

    def test_never_under_per_source_or_rate_limits(self) -> None:
        """A service with admission limits keeps its counts in this forker: no renewal."""
        shared, later = with_children(3), time.monotonic() + LONG_LIVED + 0.1
        shared.admission(Service(ServiceSpec("echo", "echo", limits=Limits(per_source=10))))
        assert crowd(shared, {}, 3, later) == 0
