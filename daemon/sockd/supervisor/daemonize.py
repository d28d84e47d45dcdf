"""Detaching the daemon from the terminal with python-daemon, when sockd runs without systemd."""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib
import os
import stat
from typing import TYPE_CHECKING, TextIO

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

    log = open_log_file(log_file)
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


def open_log_file(path: str) -> TextIO:
    """Open `path` to append to, as root may: never through a symlink, only a regular file.

    Whoever may write its directory could otherwise point it at any file (a
    symlink; a FIFO, which would block the open; a hard link to another file).
    A new file gets mode 0640.

    Raises:
        OSFailure: it is a symlink, not a regular file, or cannot be opened.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o640)
    except OSError as exc:
        reason = "is a symbolic link (not followed)" if exc.errno == errno.ELOOP else exc.strerror
        raise OSFailure(f"--log-file {path}: cannot open: {reason}") from None
    found = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(found.st_mode):
        problem = "not a regular file"
    elif found.st_nlink != 1:
        problem = f"has {found.st_nlink} hard links (one expected)"
    if problem:
        os.close(fd)
        raise OSFailure(f"--log-file {path}: cannot open: {problem}")
    os.set_blocking(fd, True)
    return open(fd, "a", buffering=1, encoding="utf-8")


def _remove_pidfile(path: str, pid: int) -> None:
    if _read_pid(path) == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _read_pid(path: str) -> int | None:
    """Return the pid a pid file holds, read as root may: never through a symlink.

    None when there is no such regular file, or it holds no pid.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        line = file.read(64).split(b"\n", 1)[0].strip()
    return int(line) if line.isdigit() and len(line) <= 10 else None  # bytes: ASCII digits


def _break_stale_lock(lock: object, pidfile: str) -> None:
    """Remove a pid file left by a process that is gone; refuse if it is alive.

    Whatever else is at that name (a symlink, say) is removed too: unlink()
    follows nothing, and the new pid file is made with O_EXCL.

    Raises:
        OSFailure: the process named in the pid file is running.
    """
    pid = _read_pid(pidfile)
    if pid is not None and _alive(pid):
        raise OSFailure(f"--pidfile {pidfile}: sockd is already running as pid {pid}")
    if os.path.lexists(pidfile):
        lock.break_lock()  # type: ignore[attr-defined]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, as another user
    return True
