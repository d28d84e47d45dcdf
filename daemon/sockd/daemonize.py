"""Detaching from the terminal with python-daemon, when sockd runs without systemd."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
from typing import TYPE_CHECKING

from sockd.errors import OSFailure, UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

UMASK = 0o027


def refuse_under_systemd(environ: Mapping[str, str]) -> None:
    """Refuse to detach when systemd supervises us: it would lose track of the daemon.

    Raises:
        UsageError: NOTIFY_SOCKET is set.
    """
    if environ.get("NOTIFY_SOCKET"):
        msg = "--daemon: NOTIFY_SOCKET is set, so systemd supervises sockd; do not detach"
        raise UsageError(msg)


def detach(pidfile: str, log_file: str, keep_fds: Iterable[int]) -> None:
    """Become a daemon: double fork, new session, umask 027, cwd /, pid file written.

    Standard output and error go to `log_file` (opened for appending before the
    fork, so a path we may not reopen later still works); the descriptors in
    `keep_fds` (the listeners) survive, every other one is closed.

    Raises:
        OSFailure: the log file cannot be opened or another process holds the pid file.
    """
    # python-daemon is only needed here. It is imported by name because type
    # checkers running from the repository would take our source root, also
    # called daemon/, for it.
    python_daemon = importlib.import_module("daemon")
    importlib.import_module("daemon.pidfile")
    import lockfile  # noqa: PLC0415 (python-daemon's own dependency)

    try:
        log = open(log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (kept open)
    except OSError as exc:
        raise OSFailure(f"--log-file {log_file}: cannot open: {exc.strerror}") from None
    lock = python_daemon.pidfile.TimeoutPIDLockFile(os.path.abspath(pidfile), acquire_timeout=0)
    _break_stale_lock(lock, pidfile)
    context = python_daemon.DaemonContext(
        working_directory="/",
        umask=UMASK,
        pidfile=lock,
        files_preserve=[*keep_fds, log.fileno()],
        stdout=log,
        stderr=log,
        signal_map={},  # sockd installs its own handlers after detaching
    )
    try:
        context.open()
    except (lockfile.Error, python_daemon.daemon.DaemonError, OSError) as exc:
        raise OSFailure(f"--pidfile {pidfile}: cannot detach: {exc}") from None
    # python-daemon releases the lock at exit and raises if it cannot: after
    # dropping root, the pid file's directory is usually not ours to change.
    # Remove it if we may; a stale one is replaced at the next start.
    atexit.unregister(context.close)
    atexit.register(_remove_pidfile, os.path.abspath(pidfile), os.getpid())


def _remove_pidfile(path: str, pid: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as file:
            if int(file.read().strip()) != pid:
                return
        os.unlink(path)


def _break_stale_lock(lock: object, pidfile: str) -> None:
    """Remove a pid file left by a process that is gone; refuse if it is alive.

    Raises:
        OSFailure: the process named in the pid file is running.
    """
    from lockfile.pidlockfile import read_pid_from_pidfile  # noqa: PLC0415

    try:
        pid = read_pid_from_pidfile(pidfile)
    except (OSError, ValueError):
        pid = None
    if pid is not None and _alive(pid):
        raise OSFailure(f"--pidfile {pidfile}: sockd is already running as pid {pid}")
    if os.path.exists(pidfile):
        lock.break_lock()  # type: ignore[attr-defined]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, as another user
    return True
