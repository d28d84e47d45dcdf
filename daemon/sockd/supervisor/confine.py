"""The forker's environment and capabilities, set as the daemon starts it (never in the forker)."""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# systemd's variables about sockd's own unit, its invocation or the unit that
# triggered it (systemd.exec(5)): meaningless or misleading for what sockd runs,
# and CREDENTIALS_DIRECTORY names secrets meant for sockd only.
SYSTEMD_VARIABLES = frozenset(
    (
        "CREDENTIALS_DIRECTORY",
        "EXIT_CODE",
        "EXIT_STATUS",
        "FDSTORE",
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "LOG_NAMESPACE",
        "MAINPID",
        "MANAGERPID",
        "MEMORY_PRESSURE_WATCH",
        "MEMORY_PRESSURE_WRITE",
        "NOTIFY_SOCKET",
        "PIDFILE",
        "REMOTE_ADDR",
        "REMOTE_PORT",
        "SERVICE_RESULT",
        "SYSTEMD_EXEC_PID",
    )
)
SYSTEMD_PREFIXES = ("LISTEN_", "MONITOR_", "TRIGGER_", "WATCHDOG_")


def forker_environment(environ: Mapping[str, str], package_root: str) -> dict[str, str]:
    """Return the forker's environment: `environ` without systemd's or Python's variables.

    Python's (PYTHON*) would configure the forker's interpreter (PYTHONSTARTUP,
    PYTHONINSPECT, PYTHONWARNINGS, PYTHONHASHSEED, PYTHONHOME...): none passes,
    but PYTHONPATH set to `package_root` to find sockd, which the forker removes
    at start. Its sys.path comes from the daemon's, with the set-up record.
    """
    forker = {
        key: value
        for key, value in environ.items()
        if key not in SYSTEMD_VARIABLES
        and not key.startswith(SYSTEMD_PREFIXES)
        and not key.startswith("PYTHON")
    }
    forker["PYTHONPATH"] = package_root
    return forker


# util-linux's setpriv (util-linux is essential in Debian) limits the forker
# that keeps root, from the daemon's posix_spawn: no fork of the daemon, and no
# ctypes (prctl) in the forker.
SETPRIV = "/usr/bin/setpriv"
# What that forker needs: give a child its user's groups, group and user
# (CAP_SETGID covers setgroups), and signal programs running as other users
# (max_duration, stop). Nothing else: no file access beyond what the permission
# bits give uid 0, and the listeners are bound already.
FORKER_CAPABILITIES = ("setuid", "setgid", "kill")


def capabilities_prefix() -> list[str]:
    """Return the command that runs the next with FORKER_CAPABILITIES only and no_new_privs.

    Root's bounding set shrinks to them before exec, so the program's permitted
    and effective sets are them too; no_new_privs keeps them from growing again
    through a setuid or file-capability program, in what it starts as well.

    Raises:
        OSError: setpriv is not installed.
    """
    if not os.access(SETPRIV, os.X_OK):
        msg = f"{SETPRIV} (util-linux) is needed to limit the capabilities of a forker run as root"
        raise FileNotFoundError(errno.ENOENT, msg)
    capabilities = ",".join(f"+{name}" for name in FORKER_CAPABILITIES)
    bounding = f"--bounding-set=-all,{capabilities}"
    return [SETPRIV, "--no-new-privs", bounding, "--inh-caps=-all", "--"]
