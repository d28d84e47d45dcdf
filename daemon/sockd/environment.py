"""What sockd passes on in the environment: to the forker and its handlers, and to programs."""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# What every program starts from, before its service's `env` and the connection's
# variables: a fixed PATH, as systemd gives services and xinetd its servers. No
# LANG: a program speaks its protocol in the C locale unless `env` says otherwise
# (not in the administrator's shell's). No TZ: the C library then reads
# /etc/localtime, the system's time zone, which is what TZ would say anyway.
PROGRAM_BASE = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

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


def program_environment(env: Mapping[str, str]) -> dict[bytes, bytes]:
    """Return a program's base environment: PROGRAM_BASE, then its service's `env`.

    Encoded once: posix_spawn then only joins each pair, per connection.
    """
    environ = {**PROGRAM_BASE, **env}
    return {os.fsencode(key): os.fsencode(value) for key, value in environ.items()}
