"""The daemon's side: start and supervise the forker, log its events, act on signals.

The forker's side is sockd.forker, the protocol between the two in sockd.forker.start;
renewal of the forker in sockd.supervisor.renewal.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import selectors
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import structlog

from sockd import ipc
from sockd.errors import EX_OK, EX_SOFTWARE, ConfigError, SockdError
from sockd.exits import PEER_GONE, closed_fields, read_entries, served_fields
from sockd.supervisor import config as sockd_config
from sockd.supervisor import inetdserve
from sockd.supervisor import log as sockd_log
from sockd.supervisor.confine import capabilities_prefix, forker_environment
from sockd.supervisor.notify import status_text
from sockd.supervisor.relisten import Relisten
from sockd.supervisor.renewal import Renewal
from sockd.timers import Timers

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from sockd import privileges
    from sockd.exits import RawExit
    from sockd.supervisor.notify import Notifier
    from sockd.supervisor.sockets import Listener

log = structlog.get_logger()

# No SIGCHLD: a pidfd tells when the forker exits.
DAEMON_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
DRAIN_LIMIT = 1.0  # seconds to collect the last events once a forker has exited
# The forker writes at least every HEARTBEAT (2 s); silent this long, it is
# stuck, and WATCHDOG=1 stops, so that systemd restarts us (with WatchdogSec=).
FORKER_SILENCE = 10.0
IDLE_WAKEUP = 5.0  # the longest select() waits with nothing due
RELOAD_LIMIT = 30.0  # seconds the forker may take to answer a reload; then it failed
# Settings a reload cannot change, because they shaped the listeners or our identity.
_RESTART_ONLY = ("listen", "unix_mode", "user", "group", "wait")


class ForkerProcess:
    """The daemon's handle on a forker: pid, channel, and what it last reported."""

    __slots__ = (
        "at_cap",
        "children",
        "closed",
        "control",
        "counts",
        "drain_until",
        "events",
        "exit_fd",
        "failed_standby",
        "failure",
        "pid",
        "status",
        "waits_for",
    )

    def __init__(self, pid: int, control: int, events: int) -> None:
        """Hold the forker's pid, our control and events sockets' descriptors."""
        self.pid = pid
        self.control = ipc.Sender(control)  # never drops: these are our commands
        self.events = ipc.Reader(events)
        self.exit_fd = os.pidfd_open(pid)  # readable once it has exited
        self.counts: tuple[int, ...] = (0, 0, 0, 0)  # active, served, denied, errors
        self.at_cap: tuple[str, ...] = ()  # services that may accept no more now
        self.children: tuple[int, dict[str, int]] = (0, {})  # a retired one's, per service
        self.waits_for: ForkerProcess | None = None  # the one retiring before we take over
        self.failure: tuple[str, int] | None = None  # its "fatal" record: error, exit code
        self.status: int | None = None  # its exit status, once reaped
        self.drain_until = 0.0  # once exited: how long its last events are waited for
        self.failed_standby = False  # exited before taking over: logged once its events are read
        self.closed = False

    def send(self, record: ipc.Record) -> None:
        """Send a control record, queued if the forker does not read now.

        A forker that is gone is noticed by its exit, not here.

        Raises:
            ipc.TooLarge: the record exceeds ipc.MAX_RECORD (nothing was sent).
        """
        if not self.closed:
            self.control.send(record)

    def close(self) -> None:
        """Close our ends of its channel and its pidfd; `send` does nothing from now on."""
        self.closed = True
        for fd in (self.control.fd, self.events.fd, self.exit_fd):
            os.close(fd)


def spawn(
    servers: list[Listener],
    config: sockd_config.Config,
    who: privileges.Identity | None,
    *,
    standby: bool = False,
) -> ForkerProcess:
    """Start a forker with the daemon's listeners (`posix_spawn`, so no fork of the daemon).

    One on `standby` accepts nothing before it is told to take over.

    Raises:
        OSError: the interpreter could not be started.
    """
    services = [sockd_config.service_spec(service) for service in config.services]
    # One that keeps root for programs' users (see sockd.forker) keeps only what it needs.
    keeps_root = who is not None and any(service.identity for service in services)
    prefix = capabilities_prefix() if keeps_root else []
    control_write, control_read = (sock.detach() for sock in ipc.channel())
    events_read, events_write = (sock.detach() for sock in ipc.channel())
    passed = [control_read, events_write] + [server.fileno() for server in servers]
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environ = forker_environment(os.environ, package_root)
    # The dynamic linker resolves every symbol at start-up: otherwise each child
    # resolved again (and wrote, copying pages) what the forker never called.
    environ.setdefault("LD_BIND_NOW", ipc.BIND_NOW_MARK)
    # -P: the working directory is never on its sys.path (-m would put it first,
    # and a socketserver.py there would run in the forker, maybe as root). -B:
    # it writes bytecode caches only if we do (it never sees PYTHONDONTWRITEBYTECODE).
    argv = [*prefix, sys.executable, "-P", "-S", "-m", "sockd.forker"]
    if sys.flags.dont_write_bytecode:
        argv.insert(-2, "-B")
    argv += [str(fd) for fd in passed]
    pid = 0
    try:
        try:
            for fd in passed:
                os.set_inheritable(fd, True)
            # Its own process group: a Ctrl-C at the terminal reaches the daemon
            # only, which stops the forker gracefully.
            pid = os.posix_spawn(
                argv[0],
                argv,
                environ,
                setpgroup=0,
                setsigmask=(),  # not the daemon's signals blocked while it starts
            )
        finally:
            for fd in passed:
                os.set_inheritable(fd, False)
            os.close(control_read)
            os.close(events_write)
        forker = ForkerProcess(pid, control_write, events_read)
    except OSError:
        if pid:  # started, but cannot be supervised (no pidfd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(control_write)
        os.close(events_read)
        raise
    daemon = config.daemon
    setup = {
        "listeners": [
            [server.fileno(), server.endpoint.service, server.endpoint.fd_name]
            for server in servers
        ],
        "max_children": daemon.max_children,
        "stop_timeout": daemon.stop_timeout,
        "renew_forker_after": daemon.renew_forker_after,
        "standby": standby,
        "identity": list(who) if who else None,
        "sys_path": sys.path,
    }
    try:
        forker.send(("setup", setup, [service.to_wire() for service in services]))
    except ipc.TooLarge as exc:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        forker.close()
        raise ConfigError(f"{config.path or 'command line'}: {exc}") from None
    return forker


class MainLoop:
    """Supervises the forkers; signals only record themselves, this loop acts on them."""

    def __init__(
        self,
        config: sockd_config.Config,
        forker: ForkerProcess,
        servers: list[Listener],
        notifier: Notifier,
        renew: Callable[[sockd_config.Config], ForkerProcess] | None = None,
    ) -> None:
        """Supervise a freshly spawned `forker`; `servers` are our copies of its listeners.

        `renew` starts a fresh forker on standby; None when one could not be
        the first's equal (it stayed root for programs' own users).
        """
        self.config = config
        self.forker = forker  # the one that accepts
        self.forkers: list[ForkerProcess] = []  # all not yet forgotten, retired ones too
        self.servers = servers
        self.notifier = notifier
        # A logger bound once, for the events forkers and children send: the module's
        # lazy proxy would rebuild one on each call (about half the cost of an event).
        self.connection_log = structlog.get_logger().bind()
        self.finished = [0, 0, 0]  # served, denied, errors of forkers gone
        self.pooled = [0, 0, 0]  # served, denied, errors by pooled workers (not in counts)
        self.selector = selectors.DefaultSelector()
        self.pending: list[int] = []
        self.ready = False
        self.stopping = False
        self.failed = False  # the current forker died: the others are told to quit
        self.forker_status: int | None = None  # the current forker's, once it has exited
        self.reload_pending = False
        self.reload_requested = False
        self.reload_seq = 0  # the number of the last reload sent to the forker
        self.late_reload: tuple[int, sockd_config.Config] | None = None  # timed out, maybe applied
        self.next_config = config
        self.warned = set(config.warnings)  # logged at start-up; a reload logs only new ones
        self.malformed = ipc.Tally()
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # What the loop does at given times (see sockd.timers), renewal's own timers too;
        # the notifier keeps its own (watchdog, STATUS= pace), ticked each turn.
        self.timers = Timers()
        self.timers.add("reload_limit", self._reload_timed_out)  # the forker answers by then
        self.timers.follow("drain", self._drain_at)  # an exited forker's last events: wake up
        self.renewal = Renewal(self, renew)
        # A reload that changes inetd_conf's services: a fresh forker with new listeners.
        self.relisten = Relisten(self, spawn)

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)  # NO LOGGING: the loop acts on it

    def run(self) -> int:
        """Serve until every forker has stopped; return the exit code."""
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        for signum in DAEMON_SIGNALS:
            signal.signal(signum, self._record_signal)
        # Blocked since `sockd run` began (sockd.__main__): one that came meanwhile runs now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, DAEMON_SIGNALS)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, None)
        self.watch(self.forker)
        try:
            while self.forkers:
                self._turn()
        finally:
            signal.set_wakeup_fd(-1)
            self.selector.close()
            for forker in self.forkers:
                forker.close()
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
        return self._exit_code()

    def watch(self, forker: ForkerProcess) -> None:
        """Supervise a forker just started: read its events, notice its exit."""
        self.forkers.append(forker)
        self.selector.register(forker.events.fd, selectors.EVENT_READ, ("events", forker))
        self.selector.register(forker.exit_fd, selectors.EVENT_READ, ("exit", forker))
        forker.events.malformed = self._malformed
        forker.control.watch = functools.partial(self._watch_control, forker)
        if forker.control.queue:  # the set-up record, say, did not all go at once
            self._watch_control(forker, True)

    def _watch_control(self, forker: ForkerProcess, wanted: bool) -> None:
        """Poll a forker's control socket for writing exactly while commands wait for it."""
        if wanted:
            self.selector.register(forker.control.fd, selectors.EVENT_WRITE, ("control", forker))
        else:
            with contextlib.suppress(KeyError):
                self.selector.unregister(forker.control.fd)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        """Log an event a forker or child sent; one the renderer cannot take is skipped."""
        try:
            getattr(self.connection_log, level)(event, **fields)
        except Exception as exc:  # noqa: BLE001 (a bad record must not end the daemon)
            self._malformed(f"log {event!r}: {type(exc).__name__}: {exc}")

    def _malformed(self, error: str, count: int = 1) -> None:
        """Log a malformed event record (or `count`), within the bounds of `ipc.Tally`."""
        fields = self.malformed.add(error, count)
        if fields is not None:
            log.error("event_malformed", **fields)

    def _timeout(self, now: float) -> float:
        """Do what is due at `now` (the timers', the watchdog's); return how long to wait."""
        self.timers.run(now)
        notify = self.notifier.tick(healthy=self._healthy(now))
        return max(0.0, min(self.timers.next_due() - now, notify, IDLE_WAKEUP))

    def _healthy(self, now: float) -> bool:
        """Tell whether every forker was heard from within FORKER_SILENCE (else: no WATCHDOG=1)."""
        standby = self.renewal.standby  # not heard from while it starts: it has STANDBY_LIMIT
        alive = (f for f in self.forkers if f.status is None and f is not standby)
        return all(now - forker.events.last_read < FORKER_SILENCE for forker in alive)

    def _drain_at(self) -> float:
        """Return when the first exited forker's last events were waited for long enough."""
        exited = (forker.drain_until for forker in self.forkers if forker.status is not None)
        return min(exited, default=math.inf)

    def _turn(self) -> None:
        for key, _ in self.selector.select(self._timeout(time.monotonic())):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup_read, 4096)
            elif key.data[0] == "events":
                self._read_events(key.data[1])
            elif key.data[0] == "control":
                key.data[1].control.flush()
            else:
                self._reap(key.data[1])
        while self.pending:
            self._act_on(self.pending.pop(0))
        now = time.monotonic()
        for forker in list(self.forkers):
            if forker.status is not None and (forker.events.eof or now >= forker.drain_until):
                self._forget(forker)

    def _read_events(self, forker: ForkerProcess) -> None:
        for record in forker.events.read():
            problem = ipc.problem(record, ipc.EVENTS)
            if problem is None:
                self._on_event(forker, record)
            else:
                self._malformed(problem)
        if forker.events.eof:
            self.selector.unregister(forker.events.fd)

    def _on_event(self, forker: ForkerProcess, record: ipc.Record) -> None:  # noqa: C901
        """Act on an event record whose shape `ipc.problem` checked (items of batches: here)."""
        kind = record[0]
        if kind == "closed":
            raws: list[RawExit] = self._valid(record[1], ipc.RAW_EXIT)  # type: ignore[arg-type]
            sockd_log.info_many("connection_closed", (closed_fields(raw) for raw in raws))
        elif kind == "served":
            self._served(self._valid(record[1], ipc.SERVED), record[2])  # type: ignore[arg-type]
        elif kind == "log":
            self._log(*record[1:])  # type: ignore[arg-type]
        elif kind == "status":
            forker.counts = tuple(int(count) for count in record[1:5])  # type: ignore[call-overload]
            forker.at_cap = tuple(str(name) for name in record[5])  # type: ignore[attr-defined]
            self._status()
        elif kind == "ready" and not self.stopping and not self.failed:
            self._ready(forker)
        elif kind in ("reloaded", "reload_failed"):
            self._reload_answered(int(record[1]), None if kind == "reloaded" else str(record[2]))  # type: ignore[call-overload]
        elif kind == "events_dropped":
            log.warning("events_dropped", forker=forker.pid, counts=record[1])
        elif kind == "fatal":
            forker.failure = (str(record[1]), int(record[2]))  # type: ignore[call-overload]
        elif kind == "crowded" and forker is self.forker and not self.failed:
            self.renewal.crowded(int(record[1]), time.monotonic())  # type: ignore[call-overload]
        elif kind == "children":
            forker.children = (int(record[1]), dict(record[2]))  # type: ignore[call-overload]
            self.renewal.tell_elsewhere(forker)

    def _ready(self, forker: ForkerProcess) -> None:
        """Act on a forker ready to serve: the first, or a fresh one taking over."""
        if forker is self.renewal.standby:
            self.renewal.hand_over(forker)
            if forker is self.relisten.forker:
                added, removed = self.relisten.taken_over()
                self._reload_done(None, added=added, removed=removed)
        elif not self.ready:
            self.ready = True
            log.info("ready", services=[service.name for service in self.config.services])
            self.notifier.ready(self.notifier.last_status_text)
            self.reload_if_requested()

    def _valid(self, items: list[object], shape: tuple[Any, ...]) -> list[Any]:
        """Return the items of a batch that have `shape`; the others are logged as malformed."""
        valid = [item for item in items if isinstance(item, tuple) and ipc.fits(item, shape)]
        for _ in range(len(items) - len(valid)):
            self._malformed("an item of a batch of the wrong shape")
        return valid

    def _served(self, batches: list[tuple[int, str, bytes]], denied: int) -> None:
        """Log the connections pooled workers served, and count them for STATUS=.

        Their entries are decoded here, once (a worker encoded them, the
        forker passed them on unread); one that does not decode or has the
        wrong shape is logged as malformed, and skipped.
        """
        served = []
        errors = 0
        for pid, service, data in batches:
            entries, bad = read_entries(data)
            if bad:
                self._malformed("a pooled connection's entry torn or of the wrong shape", bad)
            for _, client, code, seconds in entries:
                served.append(served_fields(pid, service, client, code, seconds))
                errors += code not in (0, PEER_GONE)
        sockd_log.info_many("connection_closed", served)
        self.pooled[0] += len(served)
        self.pooled[1] += denied
        self.pooled[2] += errors
        self._status()

    def _status(self) -> None:
        active, served, denied, errors = 0, *self.finished
        for forker in self.forkers:
            active += forker.counts[0]
            served += forker.counts[1]
            denied += forker.counts[2]
            errors += forker.counts[3]
        served, denied, errors = (
            served + self.pooled[0],
            denied + self.pooled[1],
            errors + self.pooled[2],
        )
        at_cap = sorted({name for forker in self.forkers for name in forker.at_cap})
        self.notifier.status(status_text(active, served, denied, errors, at_cap))

    def _act_on(self, signum: int) -> None:
        if signum == signal.SIGHUP and not self.stopping and not self.failed:
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
                server.close()
        self.stopping = True
        for forker in self.forkers:
            if forker.status is None:
                forker.send(command)

    def reload(self) -> None:
        """Validate the config file again and hand it to the forker; a bad one changes nothing.

        Validation here has no side effects (no `sys.path` change, no handler
        imported in the daemon): the forker imports the handlers and answers
        `reload_failed` if one does not load. A reload asked for while one
        is pending (or a standby starts) is done after it.
        """
        if self.reload_pending or self.renewal.standby is not None:
            self.reload_requested = True  # a standby was started with the config in force
            return
        self.notifier.reloading()
        try:
            new = sockd_config.load(_reload_path(self.config.path), import_handlers=False)
            warned = self.warned
            self._warn(new)
            _check_reloadable(self.config, new)
            rebind, renew = inetdserve.changes(self.config.services, new.services)
            if renew:
                new = self.relisten.start(new, rebind)
                self.warned |= warned  # a line left out (not bound) again is not said again
                self._warn(new)
                self.reload_pending = True
                self.next_config = new
                return
            services = [sockd_config.service_spec(service).to_wire() for service in new.services]
            daemon = new.daemon
            record = (
                "reload",
                self.reload_seq + 1,
                services,
                daemon.max_children,
                daemon.stop_timeout,
                daemon.renew_forker_after,
            )
            self.forker.send(record)
        except SockdError as exc:  # ConfigError, or an address of inetd_conf's not bound
            self._reload_done(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 (whatever goes wrong, the old config serves on)
            self._reload_done(f"{type(exc).__name__}: {exc}")  # ipc.TooLarge among them
            return
        self.reload_seq += 1
        self.reload_pending = True
        self.timers.set("reload_limit", time.monotonic() + RELOAD_LIMIT)
        self.next_config = new

    def _warn(self, new: sockd_config.Config) -> None:
        """Log the warnings of a config loaded again that were not said at the last load."""
        for warning in new.warnings:
            if warning not in self.warned:
                log.warning("config_warning", config=new.path, warning=warning)
        self.warned = set(new.warnings)

    def _reload_answered(self, seq: int, error: str | None) -> None:
        """Take the forker's answer to reload `seq`: the pending one, or one that timed out."""
        if self.reload_pending and seq == self.reload_seq:
            self._reload_done(error)
        elif self.late_reload is not None and seq == self.late_reload[0]:
            if error is None:  # refused as timed out, yet applied since: the forker serves it
                self.config = self.late_reload[1]
                log.warning("reloaded", config=self.config.path, late=True)
            self.late_reload = None
        else:
            self._malformed(f"an answer to reload {seq}, not pending")

    def _reload_timed_out(self, _now: float) -> None:
        if self.reload_pending:
            self.late_reload = (self.reload_seq, self.next_config)
            self._reload_done(f"the forker did not answer within {RELOAD_LIMIT:g} s")

    def reload_if_requested(self) -> None:
        """Reload now if a reload was asked for while it could not be done."""
        if self.reload_requested and not self.stopping:
            self.reload_requested = False
            self.reload()

    def _reload_done(self, error: str | None, **changed: list[str]) -> None:
        self.reload_pending = False
        self.timers.clear("reload_limit")
        if error is None:
            self.config = self.next_config
            log.info("reloaded", config=self.config.path, **changed)
        else:
            log.error("reload_failed", config=self.config.path, error=error)
        self.notifier.ready(self.notifier.last_status_text)
        self.reload_if_requested()

    def _reap(self, forker: ForkerProcess) -> None:
        """Reap a forker that exited, kill what is left of its children, act on who it was."""
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(forker.pid, os.WNOHANG)
            if pid == forker.pid:
                forker.status = os.waitstatus_to_exitcode(status)
        if forker.status is None:
            return
        self.selector.unregister(forker.exit_fd)
        forker.drain_until = time.monotonic() + DRAIN_LIMIT
        # Its children are in its process group: none may serve on unsupervised.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(forker.pid, signal.SIGKILL)
        if forker is self.forker:
            self.forker_status = forker.status
            if not self.stopping:  # it died: the others are stopped at once
                self.failed = True
                for other in self.forkers:
                    if other.status is None:
                        other.send(("quit",))
        elif forker is self.relisten.forker:
            self.relisten.exited(forker)
        else:
            self.renewal.exited(forker)

    def _forget(self, forker: ForkerProcess) -> None:
        """Its last events are read (or waited for long enough): close, and keep its totals."""
        if not forker.events.eof:
            self.selector.unregister(forker.events.fd)
        self._watch_control(forker, False)
        forker.close()
        self.forkers.remove(forker)
        if forker is self.relisten.forker:
            error = self.relisten.failed(forker)
            if self.stopping:
                self.reload_pending = False
            else:
                self._reload_done(error)
        else:
            self.renewal.forgotten(forker, time.monotonic())
        for index, count in enumerate(forker.counts[1:]):
            self.finished[index] += count

    def _exit_code(self) -> int:
        if self.forker.failure is not None:
            error, code = self.forker.failure
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

    inetd_conf's services are left out: a fresh forker serves their changes
    (sockd.supervisor.relisten).

    Raises:
        ConfigError: naming what changed; restarting applies it.
    """
    where = new.path
    if (old.daemon.user, old.daemon.group) != (new.daemon.user, new.daemon.group):
        raise ConfigError(f"{where}: daemon.user/group: changing them needs a restart")
    if old.daemon.pythonpath != new.daemon.pythonpath:
        raise ConfigError(f"{where}: daemon.pythonpath: changing it needs a restart")
    prefix = inetdserve.PREFIX
    old_services = {s.name: s for s in old.services if not s.name.startswith(prefix)}
    new_services = {s.name: s for s in new.services if not s.name.startswith(prefix)}
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
