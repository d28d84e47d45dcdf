"""Allow/deny rules for client addresses."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Iterable

    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AccessRules:
    """A service's `allow` and `deny` networks: deny wins; an empty allow admits everyone.

    Rules apply to TCP clients; who may connect to a UNIX socket is decided by
    the socket file's mode (`unix_mode`).
    """

    __slots__ = ("allow", "deny")

    def __init__(
        self, allow: Iterable[str | IPNetwork] = (), deny: Iterable[str | IPNetwork] = ()
    ) -> None:
        """Take networks, or their text (`10.0.0.0/8`, `::1`)."""
        self.allow = _networks(allow)
        self.deny = _networks(deny)

    def refusal(self, client_address: object) -> str | None:
        """Return why `client_address` is refused, or None to admit it."""
        if not isinstance(client_address, tuple) or not (self.allow or self.deny):
            return None
        import ipaddress  # noqa: PLC0415 (imported by the rules that need it)

        address = ipaddress.ip_address(client_address[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network in self.deny:
            if address in network:
                return f"deny {network}"
        if self.allow and not any(address in network for network in self.allow):
            return "not in allow"
        return None


def _networks(networks: Iterable[str | IPNetwork]) -> tuple[IPNetwork, ...]:
    """Parse networks; ipaddress is imported only when there are some (the forker stays small)."""
    networks = tuple(networks)
    if not networks:
        return ()
    import ipaddress  # noqa: PLC0415

    return tuple(ipaddress.ip_network(network, strict=False) for network in networks)
