"""Tests of sockd.environment: the forker's environment, which its handlers inherit."""

from __future__ import annotations

from sockd.environment import forker_environment

# What systemd sets for sockd's own unit (systemd.exec(5)), and what an administrator's
# shell or the unit may add: the first two groups never pass, the last does.
SYSTEMD = {
    "INVOCATION_ID": "0123",
    "JOURNAL_STREAM": "8:1234",
    "CREDENTIALS_DIRECTORY": "/run/credentials/sockd.service",
    "MANAGERPID": "1",
    "MAINPID": "2",
    "SYSTEMD_EXEC_PID": "3",
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "LISTEN_FDS": "1",
    "LISTEN_PID": "4",
    "WATCHDOG_USEC": "1000000",
    "MONITOR_UNIT": "other.service",
    "TRIGGER_UNIT": "sockd.path",
    "MEMORY_PRESSURE_WATCH": "/sys/fs/cgroup/x/memory.pressure",
}
PYTHON = {
    "PYTHONPATH": "/elsewhere",
    "PYTHONSTARTUP": "/nonexistent/startup.py",
    "PYTHONINSPECT": "1",
    "PYTHONWARNINGS": "error",
    "PYTHONHASHSEED": "0",
    "PYTHONHOME": "/nonexistent",
}
KEPT = {"PATH": "/opt/bin:/usr/bin", "LANG": "de_DE.UTF-8", "STATE_DIRECTORY": "/var/lib/sockd"}


class TestForkerEnvironment:
    def test_systemd_and_python_variables_are_dropped_and_the_rest_kept(self) -> None:
        """No per-unit systemd variable, no PYTHON* one but sockd's PYTHONPATH; the rest kept."""
        environ = forker_environment({**SYSTEMD, **PYTHON, **KEPT}, "/usr/lib/sockd-root")
        assert environ == {**KEPT, "PYTHONPATH": "/usr/lib/sockd-root"}
