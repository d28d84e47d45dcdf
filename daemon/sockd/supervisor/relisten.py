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

import dataclasses
import time
from typing import TYPE_CHECKING

from sockd.errors import ConfigError, SockdError
from sockd.supervisor import sockets
from sockd.supervisor.inetdserve import PREFIX
from sockd.supervisor.renewal import STANDBY_LIMIT
from sockd.supervisor.tables import one_line

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sockd import privileges
    from sockd.listeners import InheritedFd
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

    def start(self, new: Config, rebind: set[str]) -> Config:
        """Bind what `rebind` names, start a fresh forker on standby with `new`; return its config.

        A service of inetd_conf's that cannot be bound is left out (`bind`).

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
        bound, failed = bind([service for service in new.services if service.name in rebind])
        new = without(new, failed)
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
        return new

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


def bind(
    services: Sequence[ServiceConfig],
    inherited: Sequence[InheritedFd] = (),
    owner: tuple[int, int] | None = None,
) -> tuple[list[Listener], dict[str, str]]:
    """Bind the listeners of `services`; return them, and those of inetd_conf's services not bound.

    As inetd leaves out a line whose address it cannot bind (a port another
    program holds), a service of inetd_conf's (`PREFIX`) whose address cannot
    be bound is left out whole: the second value maps its name to the error.
    Anything else that cannot be bound fails. `owner` gets the UNIX socket files.

    Raises:
        SockdError: an address does not resolve, or one not inetd_conf's cannot
            be bound (none is left open).
    """
    bound: list[Listener] = []
    failed: dict[str, str] = {}
    unix_modes = {service.name: service.unix_mode for service in services}
    try:
        for endpoint in sockets.plan(services, inherited):
            if endpoint.service in failed:
                continue
            if owner is not None:
                endpoint.owner = owner
            # One at a time, so the ones made are closed if a later one fails.
            try:
                bound.append(sockets.Listener(endpoint, unix_modes[endpoint.service]))
            except SockdError as exc:
                if not endpoint.service.startswith(PREFIX) or endpoint.adopted is not None:
                    raise
                failed[endpoint.service] = str(exc)
    except BaseException:
        for server in bound:
            server.close()
        raise
    for server in bound:
        if server.endpoint.service in failed:
            server.close()
    return [server for server in bound if server.endpoint.service not in failed], failed


def without(config: Config, failed: dict[str, str]) -> Config:
    """Return `config` without the services not bound, each one said in a warning."""
    if not failed:
        return config
    where = one_line(config.daemon.inetd_conf or "", 4096)
    return dataclasses.replace(
        config,
        services=tuple(service for service in config.services if service.name not in failed),
        warnings=(*config.warnings, *(f"{where}: {error}: skipped" for error in failed.values())),
    )
