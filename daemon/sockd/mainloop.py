"""The daemon's side: start and supervise the forker, log its events, act on signals.

The forker's side, and the protocol between the two, are in sockd.forker.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from sockd import config as sockd_config
from sockd import ipc
from sockd import log as sockd_log
from sockd.children import closed_fields
from sockd.errors import EX_OK, EX_SOFTWARE, ConfigError
from sockd.listeners import client_label
from sockd.notify import status_text

if TYPE_CHECKING:
    from types import FrameType

    from sockd import privileges
    from sockd.config import DaemonConfig
    from sockd.notify import Notifier
    from sockd.server import ServiceServer

log = structlog.get_logger()

# No SIGCHLD: a pidfd tells when the forker exits.
DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
DRAIN_LIMIT = 1.0  # seconds to collect the last events once the forker has exited
# The forker writes at least every HEARTBEAT (2 s); silent this long, it is
# stuck, and WATCHDOG=1 stops, so that systemd restarts us (with WatchdogSec=).
FORKER_SILENCE = 10.0
IDLE_WAKEUP = 5.0  # the longest select() waits with nothing due
# Settings a reload cannot change, because they shaped the listeners or our identity.
_RESTART_ONLY = ("listen", "unix_mode", "user", "group")


class ForkerProcess:
    """The daemon's handle on its forker: pid and both pipe ends."""

    __slots__ = ("control", "events", "pid")

    def __init__(self, pid: int, control: int, events: int) -> None:
        """Hold the forker's pid, our control write end and events read end."""
        self.pid = pid
        self.control = control
        self.events = events

    def send(self, record: ipc.Record) -> None:
        """Send a control record; a forker that is gone is noticed by its exit, not here."""
        with contextlib.suppress(BrokenPipeError):
            ipc.send(self.control, record)


def spawn(
    servers: list[ServiceServer], daemon: DaemonConfig, who: privileges.Identity | None
) -> ForkerProcess:
    """Start the forker with the daemon's listeners (`posix_spawn`, so no fork of the daemon).

    Raises:
        OSError: the interpreter could not be started.
    """
    control_read, control_write = os.pipe2(os.O_CLOEXEC)
    events_read, events_write = os.pipe2(os.O_CLOEXEC)
    passed = [control_read, events_write] + [server.fileno() for server in servers]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environ = dict(os.environ, PYTHONPATH=package_root)
    # The dynamic linker resolves every symbol at start-up: otherwise each child
    # resolved again (and wrote, copying pages) what the forker never called.
    environ.setdefault("LD_BIND_NOW", ipc.BIND_NOW_MARK)
    argv = [sys.executable, "-S", "-m", "sockd.forker", *(str(fd) for fd in passed)]
    try:
        for fd in passed:
            os.set_inheritable(fd, True)
        # Its own process group: a Ctrl-C at the terminal reaches the daemon
        # only, which stops the forker gracefully.
        pid = os.posix_spawn(sys.executable, argv, environ, setpgroup=0)
    finally:
        for fd in passed:
            os.set_inheritable(fd, False)
        os.close(control_read)
        os.close(events_write)
    os.set_blocking(events_read, False)
    setup = {
        "listeners": [
            [server.fileno(), server.service.name, server.endpoint.fd_name] for server in servers
        ],
        "services": [server.service.record for server in servers],
        "max_children": daemon.max_children,
        "stop_timeout": daemon.stop_timeout,
        "identity": list(who) if who else None,
        "sys_path": sys.path,
    }
    forker = ForkerProcess(pid, control_write, events_read)
    forker.send(("setup", setup))
    return forker


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
        # A logger bound once, for the events of every connection: the module's
        # lazy proxy would rebuild one on each call (about half the cost of an event).
        self.connection_log = structlog.get_logger().bind()
        self.forker_counts: tuple[int, ...] = (0, 0, 0, 0)  # active, served, denied, errors
        self.pooled = [0, 0, 0]  # served, denied, errors by pooled workers (not in the above)
        self.selector = selectors.DefaultSelector()
        self.pending: list[int] = []
        self.ready = False
        self.stopping = False
        self.forker_status: int | None = None
        self.failure: tuple[str, int] | None = None
        self.reload_pending = False
        self.reload_requested = False
        self.next_config = config
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)  # NO LOGGING: the loop acts on it

    def run(self) -> int:
        """Serve until the forker has stopped; return the exit code."""
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        for signum in DAEMON_SIGNALS:
            signal.signal(signum, self._record_signal)
        # Readable once the forker has exited, even if that happened already.
        forker_exit = os.pidfd_open(self.forker.pid)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, "wakeup")
        self.selector.register(self.events.fd, selectors.EVENT_READ, "events")
        self.selector.register(forker_exit, selectors.EVENT_READ, "forker")
        try:
            while self.forker_status is None:
                self._turn()
            self._drain()
        finally:
            signal.set_wakeup_fd(-1)
            self.selector.close()
            for fd in (
                forker_exit,
                self._wakeup_read,
                self._wakeup_write,
                self.forker.control,
                self.forker.events,
            ):
                os.close(fd)
        return self._exit_code()

    def _turn(self) -> None:
        forker_alive = time.monotonic() - self.events.last_read < FORKER_SILENCE
        timeout = min(self.notifier.tick(healthy=forker_alive), IDLE_WAKEUP)
        for key, _ in self.selector.select(timeout):
            if key.data == "wakeup":
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup_read, 4096)
            elif key.data == "events":
                self._read_events()
            else:
                self._reap_forker()
        while self.pending:
            self._act_on(self.pending.pop(0))

    def _read_events(self) -> None:
        try:
            for record in self.events.read():
                self._on_event(record)
        except ipc.GarbledError as exc:
            log.error("events_garbled", error=str(exc))
        if self.events.eof:
            self.selector.unregister(self.events.fd)

    def _drain(self) -> None:
        """Log what the forker and its children sent last, waiting a bounded time.

        A child may outlive the forker and hold the pipe open (a handler's own
        child, say), so the end of file may never come.
        """
        deadline = time.monotonic() + DRAIN_LIMIT
        while not self.events.eof and time.monotonic() < deadline:
            if self.selector.select(max(0.0, deadline - time.monotonic())):
                self._read_events()

    def _on_event(self, record: ipc.Record) -> None:
        kind = record[0]
        if kind == "closed":
            info = self.connection_log.info
            with sockd_log.batched():
                for raw in record[1]:  # type: ignore[attr-defined]
                    info("connection_closed", **closed_fields(raw))
        elif kind == "served":
            self._served(record[1], record[2])  # type: ignore[arg-type]
        elif kind == "log":
            _, level, event, fields = record
            getattr(self.connection_log, str(level))(event, **fields)  # type: ignore[arg-type]
        elif kind == "status":
            self.forker_counts = tuple(int(count) for count in record[1:])  # type: ignore[call-overload]
            self._status()
        elif kind == "ready" and not self.stopping:
            self.ready = True
            log.info("ready", services=[service.name for service in self.config.services])
            self.notifier.ready(self.notifier.last_status_text)
            if self.reload_requested:
                self.reload()
        elif kind in ("reloaded", "reload_failed"):
            self._reload_done(None if kind == "reloaded" else str(record[1]))
        elif kind == "fatal":
            self.failure = (str(record[1]), int(record[2]))  # type: ignore[call-overload]

    def _served(self, records: list[tuple[Any, ...]], denied: int) -> None:
        """Log the connections pooled workers served, and count them for STATUS=."""
        info = self.connection_log.info
        with sockd_log.batched():
            for pid, service, client, code, duration in records:
                info(
                    "connection_closed",
                    service=service,
                    client=client_label(client),
                    pid=pid,
                    exit_code=code,
                    signal=None,
                    duration=round(duration, 6),
                    worker=True,
                )
        self.pooled[0] += len(records)
        self.pooled[1] += denied
        self.pooled[2] += sum(1 for record in records if record[3])
        self._status()

    def _status(self) -> None:
        active, served, denied, errors = self.forker_counts
        served, denied, errors = (
            served + self.pooled[0],
            denied + self.pooled[1],
            errors + self.pooled[2],
        )
        self.notifier.status(status_text(active, served, denied, errors))

    def _act_on(self, signum: int) -> None:
        if signum == signal.SIGHUP and not self.stopping:
            if self.ready:
                self.reload()
            else:
                self.reload_requested = True  # acted on at READY
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
            self._reload_done(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 (whatever goes wrong, the old config serves on)
            self._reload_done(f"{type(exc).__name__}: {exc}")
            return
        self.reload_pending = True
        self.next_config = new
        services = [sockd_config.service_record(service) for service in new.services]
        daemon = new.daemon
        self.forker.send(("reload", services, daemon.max_children, daemon.stop_timeout))

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
        if self.forker_status is not None:
            # Its children are in its process group: none may serve on unsupervised.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.forker.pid, signal.SIGKILL)

    def _exit_code(self) -> int:
        if self.failure is not None:
            error, code = self.failure
            log.error("startup_failed", error=error, exit_code=code)
            return code
        if not self.stopping or self.forker_status != 0:
            log.error("forker_died", exit_status=self.forker_status)
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
    if old.daemon.pythonpath != new.daemon.pythonpath:
        raise ConfigError(f"{where}: daemon.pythonpath: changing it needs a restart")
    old_services = {service.name: service for service in old.services}
    new_services = {service.name: service for service in new.services}
    if old_services.keys() != new_services.keys():
        added = sorted(new_services.keys() - old_services.keys())
        removed = sorted(old_services.keys() - new_services.keys())
        msg = f"{where}: service: adding {added} or removing {removed} needs a restart"
        raise ConfigError(msg)
    for name, service in new_services.items():
        if (service.workers is None) != (old_services[name].workers is None):
            msg = f"{where}: service {name!r}: workers: pooling or not needs a restart"
            raise ConfigError(msg)
        for key in _RESTART_ONLY:
            if getattr(service, key) != getattr(old_services[name], key):
                raise ConfigError(f"{where}: service {name!r}: {key}: changing it needs a restart")
