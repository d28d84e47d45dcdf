"""Tests of sockd.forker.caps: each service's share of the cap, its room, and cap_reached."""

from __future__ import annotations

from typing import Any

from sockd.forker.caps import Caps, fair_shares
from sockd.forker.children import Children
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


class TestRoom:
    @staticmethod
    def caps(max_children: int, *services: Service) -> tuple[Caps, list[tuple[str, str]]]:
        reported: list[tuple[str, str]] = []
        caps = Caps(
            Children(),
            max_children,
            services,
            lambda _l, event, f: reported.append((event, f["service"])),
        )
        return caps, reported

    def test_a_service_borrows_only_what_no_other_holds_in_reserve(self) -> None:
        """Two services under 4: git fills its 2, borrows nothing from ssh's unused 2."""
        git, ssh = service("git"), service("ssh")
        caps, _ = self.caps(4, git, ssh)
        assert caps.room(git) == 2
        for pid in (1, 2):
            caps.children.add(pid, "git", ("127.0.0.1", pid))
        assert caps.room(git) == 0
        assert caps.room(ssh) == 2

    def test_children_elsewhere_count_toward_the_caps(self) -> None:
        """A retired forker's children (`elsewhere`) take their service's places."""
        git, ssh = service("git"), service("ssh")
        caps, _ = self.caps(4, git, ssh)
        caps.elsewhere = (1, {"ssh": 1})
        assert caps.room(ssh) == 1
        assert caps.room(git) == 2

    def test_connections_waiting_for_a_proxy_header_count_as_children(self) -> None:
        """A PROXY service's connections not yet forked take their service's places."""
        git, ssh = service("git"), service("ssh", max_children=2)
        caps, _ = self.caps(4, git, ssh)
        caps.waiting["ssh"] = 1
        assert caps.room(ssh) == 1
        assert caps.room(git) == 2
        caps.waiting["git"] = 2
        assert caps.room(ssh) == 1
        assert caps.room(git) == 0

    def test_a_services_own_cap_bounds_its_room(self) -> None:
        """max_children = 1 on one service: one place, whatever the daemon's cap leaves."""
        one = service("one", max_children=1)
        caps, _ = self.caps(128, one)
        caps.children.add(1, "one", ("127.0.0.1", 1))
        assert caps.room(one) == 0

    def test_cap_reached_is_logged_once_per_episode(self) -> None:
        """A service newly at a cap is logged; noted again while at it, it is not."""
        one = service("one", max_children=1)
        caps, reported = self.caps(128, one)
        caps.note([one])
        caps.note([one])
        assert reported == [("cap_reached", "one")]
        assert caps.at_cap == ("one",)
        caps.note([])
        assert not caps.at_cap
