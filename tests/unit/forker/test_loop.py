"""Tests of sockd.forker.loop's pure parts: each service's guaranteed share of the daemon's cap."""

from __future__ import annotations

from typing import Any

from sockd.forker.loop import fair_shares
from sockd.forker.shared import Service
from sockd.spec import ServiceSpec


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
