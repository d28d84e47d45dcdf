"""The forker's caps on children: [daemon] max_children in fair shares, and services' own.

Runs in the forker. The caps are starvation-free: each fork-per-connection
service is guaranteed its share of [daemon] max_children (see `fair_shares`),
and may borrow beyond it, up to its own max_children, only what no other
service holds in reserve (the unused part of their shares). So idle
connections to one service never keep another from its share. Pooled workers
and the children of retired forkers (`elsewhere`) count as their service's.
"""

from __future__ import annotations

import time

from sockd.forker.access import Denials

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from sockd.forker.children import Children
    from sockd.forker.shared import Service


class Caps:
    """How many more children each service may have now; `cap_reached`, logged when met."""

    def __init__(
        self,
        children: Children,
        max_children: int,
        services: Iterable[Service],
        report: Callable[[str, str, dict[str, Any]], None],
    ) -> None:
        """Cap `children` (the forker's) at `max_children`, shared by `services`."""
        self.children = children
        self.report = report
        self.max_children = max_children
        self.shares = fair_shares(max_children, services)
        # Children of retired forkers, which count toward our caps: all, and per service.
        self.elsewhere: tuple[int, dict[str, int]] = (0, {})
        self.at_cap: tuple[str, ...] = ()  # services that may accept no more now (STATUS=)
        # Connections waiting for their PROXY header, per service: they count as children.
        self.waiting: dict[str, int] = {}
        self.log = Denials()  # cap_reached, bounded as refusals are

    def set(self, max_children: int, services: Iterable[Service]) -> None:
        """Take a reloaded [daemon] max_children, and the reloaded services' shares."""
        self.max_children = max_children
        self.shares = fair_shares(max_children, services)

    def unused(self) -> int:
        """Return the places services are guaranteed and do not use now, all together."""
        children = self.children
        per_service = self.elsewhere[1]
        waiting = self.waiting
        total = 0
        for name, share in self.shares.items():
            left = share - children.count(name) - per_service.get(name, 0) - waiting.get(name, 0)
            if left > 0:
                total += left
        return total

    def room(self, service: Service, unused: int | None = None) -> int:
        """Return how many more children `service` may have now (0: it is at a cap).

        `unused` is `unused()`, if the caller has it (one pass over the
        services, not one per listener). Borrowing the last free place leaves
        the borrower no room either: so the forker looks at every listener
        again when a service's room runs out.
        """
        children = self.children
        elsewhere, per_service = self.elsewhere
        waiting = self.waiting
        name = service.name
        used = children.count(name) + per_service.get(name, 0) + waiting.get(name, 0)
        if unused is None:
            unused = self.unused()
        # What the other services are guaranteed and do not use: not ours to take.
        reserved = unused - max(0, self.shares.get(name, 0) - used)
        room = self.max_children - len(children) - elsewhere - reserved
        if waiting:
            room -= sum(waiting.values())
        cap = service.max_children
        if cap is not None:
            room = min(room, cap - used)
        return max(0, room)

    def note(self, services: list[Service]) -> None:
        """Take `services` as those at a cap now; log `cap_reached` for each new one (bounded)."""
        if not services and not self.at_cap:
            return
        by_name = {service.name: service for service in services}
        for name, service in by_name.items():
            if name not in self.at_cap:
                fields = self._fields(service)
                if self.log.first(name, fields["cap"], "", time.monotonic()):
                    self.report("warning", "cap_reached", fields)
        self.at_cap = tuple(sorted(by_name))

    def _fields(self, service: Service) -> dict[str, Any]:
        """Say which cap keeps a service from accepting: its own, or the daemon's."""
        elsewhere, per_service = self.elsewhere
        count = self.children.count(service.name) + per_service.get(service.name, 0)
        fields = {"service": service.name, "count": count}
        if service.max_children is not None and count >= service.max_children:
            return fields | {"cap": "max_children", "limit": service.max_children}
        total = len(self.children) + elsewhere
        return fields | {
            "cap": "daemon.max_children",
            "limit": self.max_children,
            "total": total,
            "reserved": max(0, self.max_children - total),  # for the other services
        }


def fair_shares(max_children: int, services: Iterable[Service]) -> dict[str, int]:
    """Return the part of `max_children` each service is guaranteed (see `Caps.room`).

    A pooled service's share is its workers. The fork-per-connection services
    split the rest evenly, each at least 1 (more services than places
    overcommit); a service's own smaller `max_children` is its share, and
    what it leaves is free for any service to borrow.
    """
    by_name = {service.name: service for service in services}  # a service per listener
    shares = {name: s.workers for name, s in by_name.items() if s.workers}
    forking = [service for service in by_name.values() if not service.workers]
    if forking:
        part = max(1, (max_children - sum(shares.values())) // len(forking))
        for service in forking:
            cap = service.max_children
            shares[service.name] = part if cap is None else min(part, cap)
    return shares
