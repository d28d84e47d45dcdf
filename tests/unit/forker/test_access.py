"""Tests of sockd.forker.access: allow/deny rules, source groups, limits and denial logs."""

from __future__ import annotations

import ipaddress
import random
from typing import TYPE_CHECKING

from sockd.forker import access
from sockd.forker.access import (
    DENIAL_WINDOW,
    MAX_DENIAL_SOURCES,
    AccessRules,
    Admission,
    Bucket,
    Denials,
    source_key,
    source_text,
)
from sockd.spec import Limits

if TYPE_CHECKING:
    import pytest


def rules(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> AccessRules:
    return AccessRules(
        tuple(ipaddress.ip_network(n) for n in allow), tuple(ipaddress.ip_network(n) for n in deny)
    )


class TestAccessRules:
    def test_empty_admits_everyone(self) -> None:
        """No rules: every client is admitted, and the server need not ask (`active`)."""
        assert rules().refusal(("203.0.113.9", 5)) is None
        assert not rules().active
        assert rules(deny=("::1",)).active
        assert rules(allow=("10.0.0.0/8",)).active

    def test_deny_wins_over_allow(self) -> None:
        """An address in both lists is refused, naming the deny rule."""
        both = rules(allow=("127.0.0.0/8",), deny=("127.0.0.2/32",))
        assert both.refusal(("127.0.0.2", 1)) == "deny 127.0.0.2/32"
        assert both.refusal(("127.0.0.3", 1)) is None

    def test_allow_list_excludes_the_rest(self) -> None:
        """With an allow list, other addresses are refused."""
        only = rules(allow=("10.0.0.0/8", "::1"))
        assert only.refusal(("192.0.2.1", 1)) == "not in allow"
        assert only.refusal(("::1", 1, 0, 0)) is None
        assert only.refusal(("10.1.2.3", 1)) is None

    def test_ipv4_mapped_addresses_match_ipv4_rules(self) -> None:
        """A dual-stack socket's ::ffff:a.b.c.d client is judged as a.b.c.d."""
        assert rules(deny=("192.0.2.0/24",)).refusal(("::ffff:192.0.2.7", 1, 0, 0)) is not None

    def test_unix_clients_are_not_filtered(self) -> None:
        """UNIX socket clients have no IP address; the file mode guards them."""
        assert rules(allow=("10.0.0.0/8",)).refusal("") is None

    def test_the_most_specific_deny_network_is_named(self) -> None:
        """Nested deny networks: the refusal names the narrowest that holds the client."""
        nested = rules(deny=("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "2001:db8::/32"))
        assert nested.refusal(("10.1.2.3", 1)) == "deny 10.1.2.0/24"
        assert nested.refusal(("10.1.3.3", 1)) == "deny 10.1.0.0/16"
        assert nested.refusal(("10.2.0.1", 1)) == "deny 10.0.0.0/8"
        assert nested.refusal(("2001:db8:1::1", 1, 0, 0)) == "deny 2001:db8::/32"
        assert nested.refusal(("11.0.0.1", 1)) is None

    def test_long_lists_match_as_ipaddress_does(self) -> None:
        """Networks of every length: the verdict is ipaddress's, and the narrowest is named."""
        rng = random.Random(11)  # noqa: S311 (reproducible test data)
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.IPv4Network((rng.getrandbits(32), rng.randrange(8, 33)), strict=False)
            for _ in range(1000)
        ]
        networks += [
            ipaddress.IPv6Network((rng.getrandbits(128), rng.randrange(16, 129)), strict=False)
            for _ in range(1000)
        ]
        allow = AccessRules(allow=networks)
        deny = AccessRules(deny=networks)
        clients = [network[rng.randrange(network.num_addresses)] for network in networks[::20]]
        clients += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(50)]
        clients += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(50)]
        for client in clients:
            holding = [network for network in networks if client in network]
            address = (str(client), 1) if client.version == 4 else (str(client), 1, 0, 0)
            assert (allow.refusal(address) is None) == bool(holding)
            narrowest = max(holding, key=lambda network: network.prefixlen, default=None)
            assert deny.refusal(address) == (narrowest and f"deny {narrowest}")

    def test_ipv4_mapped_networks_are_ipv4_networks(self) -> None:
        """`::ffff:192.0.2.0/120` in a list is 192.0.2.0/24, for IPv4 and mapped clients alike."""
        mapped = rules(deny=("::ffff:192.0.2.0/120",))
        assert mapped.refusal(("192.0.2.7", 1)) == "deny 192.0.2.0/24"
        assert mapped.refusal(("::ffff:192.0.2.7", 1, 0, 0)) == "deny 192.0.2.0/24"
        assert mapped.refusal(("192.0.3.7", 1)) is None

    def test_a_link_local_client_with_a_scope_is_matched(self) -> None:
        """A client address with its scope (`fe80::1%eth0`) is judged by its address."""
        link_local = rules(deny=("fe80::/10",))
        assert link_local.refusal(("fe80::1%lo", 1, 0, 1)) == "deny fe80::/10"
        assert rules(allow=("fe80::/10",)).refusal(("fe80::1%lo", 1, 0, 1)) is None


class TestSourceGroups:
    def test_ipv6_sources_are_grouped_by_their_prefix(self) -> None:
        """Two addresses of one /64 are one source; the next /64 is another."""
        one = source_key(("2001:db8:1:2::1", 5), 32, 64)
        same = source_key(("2001:db8:1:2:ffff:ffff:ffff:9", 6), 32, 64)
        other = source_key(("2001:db8:1:3::1", 7), 32, 64)
        assert one == same
        assert one != other
        assert one is not None
        assert source_text(one, 32, 64) == "2001:db8:1:2::/64"

    def test_the_ipv6_prefix_is_configurable(self) -> None:
        """With /128, every IPv6 address is its own source; with /48, a whole site is one."""
        assert source_key(("2001:db8::1", 1), 32, 128) != source_key(("2001:db8::2", 1), 32, 128)
        site = source_key(("2001:db8:0:1::1", 1), 32, 48)
        assert site == source_key(("2001:db8:0:ffff::1", 1), 32, 48)

    def test_ipv4_by_address_or_by_prefix_and_mapped_ipv6_counts_as_ipv4(self) -> None:
        """IPv4 is grouped by address by default; ::ffff:a.b.c.d is that IPv4 address."""
        key = source_key(("192.0.2.7", 1), 32, 64)
        assert key is not None
        assert source_text(key, 32, 64) == "192.0.2.7"
        assert source_key(("::ffff:192.0.2.7", 1), 32, 64) == key
        assert source_key(("192.0.2.8", 1), 32, 64) != key
        wide = source_key(("192.0.2.8", 1), 24, 64)
        assert wide == source_key(("192.0.2.200", 1), 24, 64)
        assert wide is not None
        assert source_text(wide, 24, 64) == "192.0.2.0/24"

    def test_unix_peers_have_no_source(self) -> None:
        """Per-source limits do not apply to UNIX peers (their address is not a tuple)."""
        assert source_key("", 32, 64) is None


class TestBucket:
    def test_burst_then_rate(self) -> None:
        """A full bucket admits `burst` at once, then one per 1/rate seconds."""
        bucket = Bucket(3, now=0.0)

        def admit(now: float) -> bool:
            if not bucket.ready(2.0, 3, now):
                return False
            bucket.take()
            return True

        assert [admit(0.0) for _ in range(4)] == [True, True, True, False]
        assert not admit(0.4)
        assert admit(0.6)
        assert bucket.full(2.0, 3, 10.0)


class TestAdmission:
    def test_limited_only_with_a_limit(self) -> None:
        """Without per_source, per_source_rate or rate there is nothing to count."""
        assert not Admission(Limits()).limited
        assert not Admission(Limits(source_prefix_v4=24)).limited
        for name in ("per_source", "per_source_rate", "rate"):
            assert Admission(Limits(**{name: 1})).limited

    def test_per_source_counts_open_connections(self) -> None:
        """At `per_source` open connections a source is refused until one closes."""
        admission = Admission(Limits(per_source=2))
        key = admission.key(("127.0.0.2", 1))
        for _ in range(2):
            assert admission.refusal(key, 0.0) is None
            admission.opened(key)
        assert admission.refusal(key, 0.0) == "per_source"
        assert admission.refusal(admission.key(("127.0.0.3", 1)), 0.0) is None
        admission.closed(key)
        assert admission.refusal(key, 0.0) is None
        admission.closed(key)
        assert admission.open == {}

    def test_rates_per_source_and_per_service(self) -> None:
        """per_source_rate throttles one source only; rate throttles the service."""
        admission = Admission(Limits(per_source_rate=1.0, per_source_burst=2))
        flood, other = admission.key(("127.0.0.2", 1)), admission.key(("127.0.0.3", 1))
        assert [admission.refusal(flood, 0.0) for _ in range(3)] == [None, None, "per_source_rate"]
        assert admission.refusal(other, 0.0) is None
        admission.apply(Limits(rate=1.0))
        assert [admission.refusal(other, 5.0) for _ in range(2)] == [None, "rate"]

    def test_a_refused_connection_takes_no_token(self) -> None:
        """Refused by the service's rate, a connection leaves its source's bucket as it was."""
        admission = Admission(Limits(per_source_rate=1.0, per_source_burst=1, rate=1.0, burst=1))
        first, second = admission.key(("127.0.0.2", 1)), admission.key(("127.0.0.3", 1))
        assert admission.refusal(first, 0.0) is None  # takes the service's only token
        assert admission.refusal(second, 0.0) == "rate"
        assert admission.refusal(second, 1.0) is None  # its own token was never spent

    def test_refilled_source_buckets_are_forgotten(self) -> None:
        """forget_full() drops buckets that have refilled, and keeps the others."""
        admission = Admission(Limits(per_source_rate=1.0, per_source_burst=2))
        for host in ("10.0.0.1", "10.0.0.2"):
            admission.refusal(admission.key((host, 1)), 0.0)
        admission.refusal(admission.key(("10.0.0.2", 1)), 1.5)
        admission.forget_full(2.0)
        assert list(admission.source_buckets) == [admission.key(("10.0.0.2", 1))]

    def test_source_buckets_stay_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A flood from ever new sources cannot grow the table past its bound."""
        monkeypatch.setattr(access, "MAX_SOURCE_BUCKETS", 8)
        admission = Admission(Limits(per_source_rate=1.0))
        for index in range(100):
            admission.refusal(admission.key((f"10.0.0.{index}", 1)), 0.0)
        assert len(admission.source_buckets) <= 8

    def test_at_the_bound_the_least_recently_seen_source_goes(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A new source past the bound forgets one bucket: the least recently used, not the oldest.

        A flooding source that keeps coming stays throttled.
        """
        monkeypatch.setattr(access, "MAX_SOURCE_BUCKETS", 4)
        admission = Admission(Limits(per_source_rate=0.001, per_source_burst=1))
        keys = [admission.key((f"10.0.0.{index}", 1)) for index in range(6)]
        for key in keys[:4]:
            assert admission.refusal(key, 0.0) is None
        assert admission.refusal(keys[0], 1.0) == "per_source_rate"  # the flood goes on
        assert admission.refusal(keys[4], 2.0) is None
        assert list(admission.source_buckets) == [keys[2], keys[3], keys[0], keys[4]]
        assert admission.refusal(keys[0], 3.0) == "per_source_rate"
        assert admission.refusal(keys[5], 4.0) is None
        assert list(admission.source_buckets) == [keys[3], keys[4], keys[0], keys[5]]

    def test_refilled_buckets_go_as_new_sources_come(self) -> None:
        """Sources that came once, long ago, are dropped as new ones come, before any bound."""
        admission = Admission(Limits(per_source_rate=1.0, per_source_burst=1))
        for index in range(1000):  # one new source every half second
            admission.refusal(admission.key((f"10.0.{index // 256}.{index % 256}", 1)), index / 2)
        assert len(admission.source_buckets) <= 4  # the last second's, refilling

    def test_a_pruned_table_is_rebuilt_small(self) -> None:
        """Once most buckets have refilled and gone, the table is a new, small one."""
        admission = Admission(Limits(per_source_rate=1.0, per_source_burst=1))
        for index in range(1000):
            admission.refusal(admission.key((f"10.0.{index // 256}.{index % 256}", 1)), 0.0)
        table = admission.source_buckets
        admission.refusal(admission.key(("10.9.9.9", 1)), 5.0)  # refilling at 5.0
        admission.forget_full(5.5)
        assert list(admission.source_buckets) == [admission.key(("10.9.9.9", 1))]
        assert admission.source_buckets is not table


class TestDenials:
    def test_first_is_logged_the_rest_summed_per_window(self) -> None:
        """The first refusal of a source is logged; repeats come as one summary per window."""
        denials = Denials()
        assert denials.first("echo", "rate", "10.0.0.1", 0.0)
        assert not any(denials.first("echo", "rate", "10.0.0.1", 0.1) for _ in range(500))
        assert denials.due(1.0) == []
        (summary,) = denials.due(DENIAL_WINDOW)
        assert summary == {
            "service": "echo",
            "reason": "rate",
            "source": "10.0.0.1",
            "count": 500,
            "seconds": DENIAL_WINDOW,
        }
        assert denials.first("echo", "rate", "10.0.0.1", DENIAL_WINDOW + 1)  # a new window

    def test_many_sources_are_summed_beyond_the_bound(self) -> None:
        """However many sources, a window logs a bounded number of lines."""
        denials = Denials()
        logged = sum(
            denials.first("echo", "rate", f"10.0.{n // 256}.{n % 256}", 0.0) for n in range(5000)
        )
        assert logged == MAX_DENIAL_SOURCES
        summaries = denials.due(DENIAL_WINDOW)
        assert summaries == [
            {
                "service": "echo",
                "reason": "rate",
                "source": "others",
                "count": 5000 - MAX_DENIAL_SOURCES,
                "seconds": DENIAL_WINDOW,
            }
        ]

    def test_counted_drops_come_only_as_one_summary_per_window(self) -> None:
        """Drops that are only counted (peers that reset) log no line each, one summary."""
        denials = Denials()
        for n in range(5000):
            denials.count("echo", "peer_reset", n / 1000)
        assert denials.due(DENIAL_WINDOW - 0.1) == []
        assert denials.due(DENIAL_WINDOW) == [
            {
                "service": "echo",
                "reason": "peer_reset",
                "source": "all",
                "count": 5000,
                "seconds": DENIAL_WINDOW,
            }
        ]
