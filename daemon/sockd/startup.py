"""sockd's start-up, in its one strict order, then the main loop."""

from __future__ import annotations

import grp
import os
import pwd
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from sockd import daemonize, listeners
from sockd import log as sockd_log
from sockd._version import __version__
from sockd.errors import PermissionFailure
from sockd.mainloop import MainLoop
from sockd.notify import Notifier
from sockd.server import ServiceServer, Shared

if TYPE_CHECKING:
    from sockd.config import Config, DaemonConfig

log = structlog.get_logger()


@dataclass(frozen=True)
class RunOptions:
    """What `sockd run` was asked to do."""

    config: Config
    log_format: sockd_log.LogFormat | None = None
    detach: bool = False
    pidfile: str | None = None
    log_file: str | None = None


def run(options: RunOptions) -> None:
    """Start sockd and serve until it is stopped.

    The order is strict, and each step says why it comes where it does:

    1. The config is loaded (by the caller: `sockd check` shares it).
    2. Listeners are adopted (LISTEN_PID names this process, so before any
       fork) or bound (perhaps to privileged ports, so while still root).
    3. Detach, if asked, keeping the listeners.
    4. Drop privileges, so no child ever runs as root.
    5. Configure logging again: stderr may now be a log file or the journal.
    6. Take systemd's notify variables out of the environment children inherit.
    7. Install signal handlers, send READY=1, serve (`MainLoop.run`).

    Raises:
        SockdError: a step failed; nothing was announced as ready.
    """
    config = options.config
    inherited = listeners.listen_fds(os.environ, os.getpid())
    shared = Shared()
    servers: list[ServiceServer] = []
    try:
        by_name = {service.name: service for service in config.services}
        for endpoint in listeners.plan(config.services, inherited):
            # One at a time, so the ones made are closed if a later one fails.
            servers.append(ServiceServer(endpoint, by_name[endpoint.service], shared))  # noqa: PERF401
        if options.detach:
            keep = [server.fileno() for server in servers]
            daemonize.detach(str(options.pidfile), str(options.log_file), keep)
        drop_privileges(config.daemon, servers)
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    sockd_log.configure(options.log_format)
    notifier = Notifier(os.environ, os.getpid())
    log.info(
        "starting",
        version=__version__,
        config=config.path,
        listeners=[server.describe() for server in servers],
    )
    MainLoop(config, servers, shared, notifier).run()


def drop_privileges(daemon: DaemonConfig, servers: list[ServiceServer]) -> None:
    """Become `daemon.user`/`daemon.group`; our UNIX socket files change owner with us.

    Raises:
        PermissionFailure: not root, and asked to become someone else.
    """
    if daemon.user is None and daemon.group is None:
        return
    user = pwd.getpwnam(daemon.user) if daemon.user else pwd.getpwuid(os.getuid())
    gid = grp.getgrnam(daemon.group).gr_gid if daemon.group else user.pw_gid
    if os.geteuid() != 0:
        if (os.geteuid(), os.getegid()) == (user.pw_uid, gid):
            return
        msg = (
            f"daemon.user/group: running as uid {os.geteuid()}, cannot become"
            f" {user.pw_name}:{gid}; start sockd as root to drop privileges"
        )
        raise PermissionFailure(msg)
    for server in servers:
        if server.socket.family == socket.AF_UNIX and not server.adopted:
            os.chown(str(server.endpoint.sockaddr), user.pw_uid, gid)
    os.initgroups(user.pw_name, gid)
    os.setgid(gid)
    os.setuid(user.pw_uid)
