"""The main loop: one selector over every listener, signals, reload, stop, sd_notify."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from collections import deque
from typing import TYPE_CHECKING

import structlog

from sockd import config as sockd_config
from sockd.errors import ConfigError
from sockd.server import HANDLED_SIGNALS

if TYPE_CHECKING:
    from types import FrameType

    from sockd.notify import Notifier
    from sockd.server import ServiceServer, Shared

log = structlog.get_logger()

KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to children at stop
ACCEPT_BATCH = 64  # connections accepted per listener per loop turn
ACCEPT_PAUSE = 0.1  # seconds without accepting after accept(2) fails (EMFILE, ENOBUFS)
IDLE_WAKEUP = 5.0  # the longest select() waits with nothing due
# Settings a reload cannot change, because they shaped the listeners or our identity.
_RESTART_ONLY = ("listen", "unix_mode")


class MainLoop:
    """Serves until stopped; signals only record themselves, this loop acts on them."""

    def __init__(
        self,
        config: sockd_config.Config,
        servers: list[ServiceServer],
        shared: Shared,
        notifier: Notifier,
    ) -> None:
        """Take over the bound and activated `servers`."""
        self.config = config
        self.servers = servers
        self.shared = shared
        self.notifier = notifier
        self.selector = selectors.DefaultSelector()
        self.pending: deque[int] = deque()
        self.accepting: set[ServiceServer] = set()
        self.paused_until = 0.0
        self.stop_phase: str | None = None  # None, "wait", "term", "kill"
        self.phase_deadline = 0.0
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        shared.close_in_child = self._close_in_child

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)  # NO LOGGING: the loop acts on it

    def run(self) -> None:
        """Install signal handlers, send READY=1, and serve until stopped."""
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._record_signal)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, None)
        self._update_accepting()
        log.info("ready", services=[service.name for service in self.config.services])
        self.notifier.ready(self._status())
        try:
            while self.stop_phase is None or len(self.shared.children):
                self._turn()
        finally:
            self._close()
        log.info("stopped")

    def _turn(self) -> None:
        timeout = min(self.notifier.tick(), self._next_deadline() - time.monotonic())
        for key, _ in self.selector.select(max(0.0, timeout)):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wakeup_read, 512):
                        pass
            else:
                self._accept(key.data)
        while self.pending:
            self._act_on(self.pending.popleft())
        if self.shared.reap():
            self._update_accepting()
            self.notifier.status(self._status())
        self._advance_stop()
        if self.paused_until and time.monotonic() >= self.paused_until:
            self.paused_until = 0.0
            self._update_accepting()

    def _accept(self, server: ServiceServer) -> None:
        budget = min(ACCEPT_BATCH, self._room(server))
        try:
            taken = server.accept_ready(budget)
        except OSError as exc:
            log.error("accept_failed", service=server.service.name, error=exc.strerror)
            self.paused_until = time.monotonic() + ACCEPT_PAUSE
            taken = 1
        if taken:
            self._update_accepting()
            self.notifier.status(self._status())

    def _room(self, server: ServiceServer) -> int:
        children = self.shared.children
        room = self.config.daemon.max_children - len(children)
        if server.service.max_children is not None:
            room = min(room, server.service.max_children - children.count(server.service.name))
        return max(0, room)

    def _update_accepting(self) -> None:
        """Select on exactly the listeners that may accept now (below every cap)."""
        for server in self.servers:
            wanted = not self.stop_phase and not self.paused_until and self._room(server) > 0
            if wanted and server not in self.accepting:
                self.selector.register(server, selectors.EVENT_READ, server)
                self.accepting.add(server)
            elif not wanted and server in self.accepting:
                self.selector.unregister(server)
                self.accepting.discard(server)

    def _act_on(self, signum: int) -> None:
        if signum == signal.SIGHUP and self.stop_phase is None:
            self.reload()
        elif signum in (signal.SIGTERM, signal.SIGINT) and self.stop_phase is None:
            self.stop(graceful=True)
        elif signum == signal.SIGQUIT:
            self.stop(graceful=False)

    def reload(self) -> None:
        """Apply the config file again, keeping the listeners; a broken one changes nothing."""
        self.notifier.reloading()
        path = self.config.path
        try:
            new = sockd_config.load(_reload_path(path))
            _check_reloadable(self.config, new)
        except ConfigError as exc:
            log.error("reload_failed", config=path, error=str(exc))
        else:
            by_name = {service.name: service for service in new.services}
            for server in self.servers:
                server.apply(by_name[server.service.name])
            self.config = new
            self._update_accepting()
            log.info("reloaded", config=path)
        self.notifier.ready(self._status())

    def stop(self, *, graceful: bool) -> None:
        """Stop accepting; wait for children (graceful) or kill them at once."""
        first = self.stop_phase is None
        if graceful:
            self.stop_phase = "wait"
            self.phase_deadline = time.monotonic() + self.config.daemon.stop_timeout
        else:
            self.stop_phase = "kill"
        if first:
            log.info("stopping", graceful=graceful, children=len(self.shared.children))
            self.notifier.stopping()
            self._update_accepting()
            for server in self.servers:
                server.server_close()
        if not graceful:
            self.shared.children.signal_all(signal.SIGKILL)

    def _advance_stop(self) -> None:
        if self.stop_phase not in ("wait", "term") or time.monotonic() < self.phase_deadline:
            return
        if self.stop_phase == "wait":
            log.warning("stop_timeout", children=len(self.shared.children), action="SIGTERM")
            self.shared.children.signal_all(signal.SIGTERM)
            self.stop_phase = "term"
            self.phase_deadline = time.monotonic() + KILL_GRACE
        else:
            log.warning("stop_timeout", children=len(self.shared.children), action="SIGKILL")
            self.shared.children.signal_all(signal.SIGKILL)
            self.stop_phase = "kill"

    def _next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [now + IDLE_WAKEUP]
        if self.stop_phase in ("wait", "term"):
            deadlines.append(self.phase_deadline)
        if self.paused_until:
            deadlines.append(self.paused_until)
        return min(deadlines)

    def _status(self) -> str:
        stats = self.shared.stats
        return (
            f"{len(self.shared.children)} active, {stats.served} served,"
            f" {stats.denied} denied, {stats.errors} errors"
        )

    def _close_in_child(self) -> None:
        for server in self.servers:
            server.socket.close()
        self.selector.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)
        self.notifier.close()

    def _close(self) -> None:
        signal.set_wakeup_fd(-1)
        for server in self.servers:
            server.server_close()
        self.selector.close()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)


def _reload_path(path: str | None) -> str:
    """Return the file to reload.

    Raises:
        ConfigError: sockd runs from the command line, with no file.
    """
    if path is None:
        msg = "the service was given on the command line: there is no file to reload"
        raise ConfigError(msg)
    return path


def _check_reloadable(old: sockd_config.Config, new: sockd_config.Config) -> None:
    """Refuse a reload that would need new listeners or another identity.

    Raises:
        ConfigError: naming what changed; restarting applies it.
    """
    where = new.path
    if (old.daemon.user, old.daemon.group) != (new.daemon.user, new.daemon.group):
        raise ConfigError(f"{where}: daemon.user/group: changing them needs a restart")
    old_services = {service.name: service for service in old.services}
    new_services = {service.name: service for service in new.services}
    if old_services.keys() != new_services.keys():
        added = sorted(new_services.keys() - old_services.keys())
        removed = sorted(old_services.keys() - new_services.keys())
        msg = f"{where}: service: adding {added} or removing {removed} needs a restart"
        raise ConfigError(msg)
    for name, service in new_services.items():
        for key in _RESTART_ONLY:
            if getattr(service, key) != getattr(old_services[name], key):
                raise ConfigError(f"{where}: service {name!r}: {key}: changing it needs a restart")
