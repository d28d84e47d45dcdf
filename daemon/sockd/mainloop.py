"""The daemon's main loop: signals, sd_notify, reload, stop, and the forker's events logged."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
from typing import TYPE_CHECKING, Any

import structlog

from sockd import config as sockd_config
from sockd import ipc
from sockd.children import closed_fields
from sockd.errors import EX_OK, EX_SOFTWARE, ConfigError

if TYPE_CHECKING:
    from types import FrameType

    from sockd.forker import ForkerProcess
    from sockd.notify import Notifier
    from sockd.server import ServiceServer

log = structlog.get_logger()

DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD)
IDLE_WAKEUP = 5.0  # the longest select() waits with nothing due
# Settings a reload cannot change, because they shaped the listeners or our identity.
_RESTART_ONLY = ("listen", "unix_mode")


class MainLoop:
    """Supervises the forker; signals only record themselves, this loop acts on them."""

    def __init__(
        self,
        config: sockd_config.Config,
        forker: ForkerProcess,
        servers: list[ServiceServer],
        notifier: Notifier,
    ) -> None:
        """Supervise a freshly spawned `forker`; `servers` are our copies of its listeners."""
        self.config = config
        self.forker = forker
        self.servers = servers
        self.notifier = notifier
        self.events = ipc.Reader(forker.events)
        self.selector = selectors.DefaultSelector()
        self.pending: list[int] = []
        self.ready = False
        self.stopping = False
        self.forker_status: int | None = None
        self.failure: tuple[str, int] | None = None
        self.reload_pending = False
        self.next_config = config
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)  # NO LOGGING: the loop acts on it

    def run(self) -> int:
        """Serve until the forker has stopped; return the exit code."""
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        for signum in DAEMON_SIGNALS:
            signal.signal(signum, self._record_signal)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, "wakeup")
        self.selector.register(self.events.fd, selectors.EVENT_READ, "events")
        try:
            while self.forker_status is None or not self.events.eof:
                self._turn()
        finally:
            signal.set_wakeup_fd(-1)
            self.selector.close()
            for fd in (
                self._wakeup_read,
                self._wakeup_write,
                self.forker.control,
                self.forker.events,
            ):
                os.close(fd)
        return self._exit_code()

    def _turn(self) -> None:
        timeout = min(self.notifier.tick(), IDLE_WAKEUP)
        if self.forker_status is not None:
            timeout = 0.05  # draining the forker's last events
        for key, _ in self.selector.select(timeout):
            if key.data == "wakeup":
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wakeup_read, 512):
                        pass
            else:
                for record in self.events.read():
                    self._on_event(record)
                if self.events.eof:
                    self.selector.unregister(self.events.fd)
        while self.pending:
            self._act_on(self.pending.pop(0))
        if self.forker_status is not None and not self.events.eof:
            for record in self.events.read():
                self._on_event(record)

    def _on_event(self, record: ipc.Record) -> None:
        kind = record[0]
        if kind == "closed":
            log.info("connection_closed", **closed_fields(record[1:]))  # type: ignore[arg-type]
        elif kind == "log":
            _, level, event, fields = record
            getattr(log, str(level))(event, **fields)  # type: ignore[arg-type]
        elif kind == "status":
            active, served, denied, errors = record[1:]
            self.notifier.status(
                f"{active} active, {served} served, {denied} denied, {errors} errors"
            )
        elif kind == "ready" and not self.stopping:
            self.ready = True
            log.info("ready", services=[service.name for service in self.config.services])
            self.notifier.ready(self.notifier.last_status_text)
        elif kind in ("reloaded", "reload_failed"):
            self._reload_done(None if kind == "reloaded" else str(record[1]))
        elif kind == "fatal":
            self.failure = (str(record[1]), int(record[2]))  # type: ignore[call-overload]

    def _act_on(self, signum: int) -> None:
        if signum == signal.SIGCHLD:
            self._reap_forker()
        elif signum == signal.SIGHUP and self.ready and not self.stopping:
            self.reload()
        elif signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self._stop(("stop", self.config.daemon.stop_timeout))
        elif signum == signal.SIGQUIT:
            self._stop(("quit",))

    def _stop(self, command: ipc.Record) -> None:
        if not self.stopping:
            log.info("stopping", graceful=command[0] == "stop")
            self.notifier.stopping()
            # Our copies too: new connections are refused, not left in a backlog.
            for server in self.servers:
                server.server_close()
        self.stopping = True
        self.forker.send(command)

    def reload(self) -> None:
        """Validate the config file again and hand it to the forker; a bad one changes nothing."""
        if self.reload_pending:
            return
        self.notifier.reloading()
        try:
            new = sockd_config.load(_reload_path(self.config.path))
            _check_reloadable(self.config, new)
        except ConfigError as exc:
            log.error("reload_failed", config=self.config.path, error=str(exc))
            self.notifier.ready(self.notifier.last_status_text)
            return
        self.reload_pending = True
        self.next_config = new
        self.forker.send(("reload", [sockd_config.service_record(s) for s in new.services]))

    def _reload_done(self, error: str | None) -> None:
        self.reload_pending = False
        if error is None:
            self.config = self.next_config
            log.info("reloaded", config=self.config.path)
        else:
            log.error("reload_failed", config=self.config.path, error=error)
        self.notifier.ready(self.notifier.last_status_text)

    def _reap_forker(self) -> None:
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(self.forker.pid, os.WNOHANG)
            if pid == self.forker.pid:
                self.forker_status = os.waitstatus_to_exitcode(status)

    def _exit_code(self) -> int:
        if self.failure is not None:
            error, code = self.failure
            log.error("startup_failed", error=error, exit_code=code)
            return code
        if not self.stopping or self.forker_status != 0:
            fields: dict[str, Any] = {"exit_status": self.forker_status}
            log.error("forker_died", **fields)
            return EX_SOFTWARE
        log.info("stopped")
        return EX_OK


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
