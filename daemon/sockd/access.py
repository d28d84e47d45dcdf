"""Allow/deny rules for client addresses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sockd.config import IPNetwork, ServiceConfig


@dataclass(frozen=True)
class AccessRules:
    """A service's `allow` and `deny` networks: deny wins; an empty allow admits everyone.

    Rules apply to TCP clients; who may connect to a UNIX socket is decided by
    the socket file's mode (`unix_mode`).
    """

    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, service: ServiceConfig) -> AccessRules:
        """Return the rules configured for `service`."""
        return cls(service.allow, service.deny)

    def refusal(self, client_address: object) -> str | None:
        """Return why `client_address` is refused, or None to admit it."""
        if not isinstance(client_address, tuple) or not (self.allow or self.deny):
            return None
        address = ipaddress.ip_address(client_address[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        for network in self.deny:
            if address in network:
                return f"deny {network}"
        if self.allow and not any(address in network for network in self.allow):
            return "not in allow"
        return None
