"""Tests of sockd.access: allow and deny rules."""

from __future__ import annotations

import ipaddress

from sockd.access import AccessRules


def rules(allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> AccessRules:
    return AccessRules(
        tuple(ipaddress.ip_network(n) for n in allow), tuple(ipaddress.ip_network(n) for n in deny)
    )


class TestAccessRules:
    def test_empty_admits_everyone(self) -> None:
        """No rules: every client is admitted."""
        assert rules().refusal(("203.0.113.9", 5)) is None

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
