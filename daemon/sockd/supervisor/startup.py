"""The daemon's start-up, in its one strict order, then the main loop."""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sockd import listeners, privileges
from sockd._version import __version__
from sockd.errors import OSFailure
from sockd.supervisor import daemonize, relisten, sockets
from sockd.supervisor import log as sockd_log
from sockd.supervisor.loop import MainLoop, spawn
from sockd.supervisor.notify import Notifier

if TYPE_CHECKING:
    from collections.abc import Callable

    from sockd.supervisor.config import Config
    from sockd.supervisor.loop import ForkerProcess
    from sockd.supervisor.sockets import Listener

log = structlog.get_logger()


@dataclass(frozen=True)
class RunOptions:
    """What `sockd run` was asked to do."""

    config: Config
    log_format: sockd_log.LogFormat | None = None
    detach: bool = False
    pidfile: str | None = None
    log_file: str | None = None


def run(options: RunOptions) -> int:
    """Start sockd, serve until it is stopped, and return the exit code.

    The order is strict, and each step says why it comes where it does:

    1. The config is loaded (by the caller: `sockd check` shares it).
    2. Listeners are adopted (LISTEN_PID names this process, so before any
       fork) or bound (perhaps to privileged ports, so while still root; a
       UNIX socket file is given to `[daemon] user` as soon as it exists).
    3. Detach, if asked, keeping the listeners.
    4. Configure logging again: stderr may now be a log file or the journal.
    5. Take systemd's notify variables out of the environment children inherit;
       give systemd the TCP and UDP sockets we bound to keep, if it keeps any for us.
    6. Start the forker with the listeners (as root: it may need to read
       handler modules only root can); it drops privileges before it accepts.
    7. Drop privileges here too, so nothing of sockd's serves as root.
    8. Install signal handlers; READY=1 once the forker reports it accepts;
       serve (`MainLoop.run`).

    Raises:
        SockdError: a step failed; nothing was announced as ready.
    """
    config = options.config
    who = privileges.identity(config.daemon.user, config.daemon.group)
    for service in config.services:
        if service.user or service.group:
            privileges.require_root(f"service {service.name!r}: user/group")
    inherited = listeners.listen_fds(os.environ, os.getpid())
    servers: list[Listener] = []
    try:
        # A line of inetd_conf's whose address cannot be bound is left out, as inetd does.
        owner = (who[1], who[2]) if who is not None else None  # of the UNIX socket files
        servers, failed = relisten.bind(config.services, inherited, owner)
        config = relisten.without(config, failed)
        if options.detach:
            keep = [server.fileno() for server in servers]
            daemonize.detach(str(options.pidfile), str(options.log_file), keep)
        sockd_log.configure(options.log_format)
        notifier = Notifier(os.environ, os.getpid())
        _keep_in_systemd(
            notifier, servers, {str(fd.name) for fd in inherited if sockets.is_stored(fd.name)}
        )
        log.info(
            "starting",
            version=__version__,
            config=config.path,
            listeners=[server.describe() for server in servers],
        )
        for warning in config.warnings:
            log.warning("config_warning", config=config.path, warning=warning)
        try:
            forker = spawn(servers, config, who)
        except OSError as exc:
            raise OSFailure(f"cannot start the forker: {exc.strerror}") from None
        privileges.become(who)
        return MainLoop(config, forker, servers, notifier, _renewal(servers, config, who)).run()
    finally:
        for server in servers:
            server.close()


def _keep_in_systemd(notifier: Notifier, servers: list[Listener], before: set[str]) -> None:
    """Give systemd the TCP and UDP sockets we bound to keep across a restart, one name a service.

    What it kept under a name no service of ours uses any more is dropped.
    A UNIX socket is not given: its file goes when sockd stops.
    """
    if not notifier.fd_store:
        return
    fds: dict[str, list[int]] = {name: [] for name in before}
    for server in servers:
        if server.origin != "adopted" and server.socket.family != socket.AF_UNIX:
            fds.setdefault(sockets.STORED + server.endpoint.service, []).append(server.fileno())
    for name, kept in fds.items():
        notifier.store(name, kept)


def _renewal(
    servers: list[Listener], config: Config, who: privileges.Identity | None
) -> Callable[[Config], ForkerProcess] | None:
    """Return how to start a fresh forker later, or None if it could not equal the first.

    Later ones are started by the daemon once it has become `who`; the first
    keeps root when programs run as users of their own, which no later one could.
    """
    if who is not None and any(service.user or service.group for service in config.services):
        return None
    return functools.partial(spawn, servers, who=None, standby=True)
