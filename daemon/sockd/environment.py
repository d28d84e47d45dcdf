"""The forker's environment, which its handlers inherit: built by the daemon as it spawns it."""

from __future__ import annotations

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
