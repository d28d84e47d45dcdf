"""A reload that changes inetd_conf's services, run by the daemon's loop: a fresh forker takes over.

A reload applies most changes in place (the forker gets the new services),
but cannot give the forker new listening sockets. When the services of
`[daemon] inetd_conf` change (sockd.supervisor.inetdserve), the daemon binds
the addresses of those added (or moved), and starts a fresh forker on standby
with every listener of the new config, as a renewal (sockd.supervisor.renewal)
does. Once it is ready, the current one retires, closing its listeners; the
daemon closes its own copies of those no longer served: a removed service's
port then refuses connections. Connections open on the old forker finish
there.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sockd.errors import ConfigError
from sockd.supervisor import sockets
from sockd.supervisor.renewal import STANDBY_LIMIT

if TYPE_CHECKING:
    from collections.abc import Callable

    from sockd import privileges
    from sockd.supervisor.config import Config, ServiceConfig
    from sockd.supervisor.loop import ForkerProcess, MainLoop
    from sockd.supervisor.sockets import Listener

    Spawn = Callable[..., ForkerProcess]


class Relisten:
    """The daemon's reload with new listeners: its fresh forker, and the listeners it serves."""

    def __init__(self, loop: MainLoop, spawn: Spawn) -> None:
        """Serve changes of inetd_conf's services for `loop`; `spawn` starts a forker."""
        self.loop = loop
        self.spawn = spawn
        self.forker: ForkerProcess | None = None  # the fresh one, until it took over or failed
        self.servers: list[Listener] = []  # every listener it serves
        self.bound: list[Listener] = []  # those bound for it: closed if it fails

    def start(self, new: Config, rebind: set[str]) -> None:
        """Bind what `rebind` names, and start a fresh forker on standby with `new`.

        Raises:
            SockdError: sockd cannot start forkers any more, or an address cannot be bound.
            OSError: the forker could not be started.
        """
        loop = self.loop
        if loop.renewal.start is None:
            msg = f"{new.path}: daemon.inetd_conf: its services changed, which needs a restart"
            raise ConfigError(f"{msg} (programs run as their own users, and sockd as daemon.user)")
        names = {service.name for service in new.services}
        kept = [
            server
            for server in loop.servers
            if server.endpoint.service in names and server.endpoint.service not in rebind
        ]
        bound = bind([service for service in new.services if service.name in rebind])
        who: privileges.Identity | None = None  # the daemon's own: it is `who` by now
        try:
            forker = self.spawn([*kept, *bound], new, who, standby=True)
        except BaseException:
            for server in bound:
                server.close()
            raise
        loop.renewal.standby = forker  # no renewal, and no reload, until it took over
        loop.timers.set("standby_limit", time.monotonic() + STANDBY_LIMIT)
        loop.watch(forker)
        self.forker, self.servers, self.bound = forker, [*kept, *bound], bound

    def taken_over(self) -> tuple[list[str], list[str]]:
        """Close our copies of the listeners no longer served; return the services added, removed.

        The fresh forker took over (the loop made it current).
        """
        loop = self.loop
        for server in loop.servers:
            if server not in self.servers:
                server.close()
        loop.servers[:] = self.servers  # startup closes this list at exit
        self.forker, self.servers, self.bound = None, [], []
        old = {service.name for service in loop.config.services}
        new = {service.name for service in loop.next_config.services}
        return sorted(new - old), sorted(old - new)

    def exited(self, forker: ForkerProcess) -> None:
        """Stop counting the fresh forker as the standby: it exited before it took over."""
        renewal = self.loop.renewal
        if renewal.standby is forker:  # else: killed by the standby limit
            renewal.standby = None
            self.loop.timers.clear("standby_limit")

    def failed(self, forker: ForkerProcess) -> str:
        """Close the listeners bound for it, once its last events are read; return the error."""
        for server in self.bound:
            server.close()
        self.forker, self.servers, self.bound = None, [], []
        error = forker.failure[0] if forker.failure else None
        return error or f"the new forker exited with status {forker.status}"


def bind(services: list[ServiceConfig]) -> list[Listener]:
    """Bind the listeners of `services` (inetd_conf's, added at a reload).

    Raises:
        SockdError: an address does not resolve or cannot be bound (none is left open).
    """
    bound: list[Listener] = []
    try:
        for endpoint in sockets.plan(services, []):
            unix_mode = next(s.unix_mode for s in services if s.name == endpoint.service)
            bound.append(sockets.Listener(endpoint, unix_mode))
    except BaseException:
        for server in bound:
            server.close()
        raise
    return bound
