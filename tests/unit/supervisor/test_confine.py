"""Tests of sockd.supervisor.confine: the forker's environment, its capabilities as root."""

from __future__ import annotations

import os
import subprocess

import pytest

from sockd.supervisor import confine
from sockd.supervisor.confine import forker_environment

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


def capability_status(text: str) -> dict[str, str]:
    """Return the capability sets and NoNewPrivs of a /proc/PID/status text."""
    fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
    names = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")
    return {name: fields[name].strip() for name in names}


# CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7): the forker's three.
FORKER_CAPABILITIES = {
    "CapInh": "0000000000000000",
    "CapPrm": "00000000000000e0",
    "CapEff": "00000000000000e0",
    "CapBnd": "00000000000000e0",
    "CapAmb": "0000000000000000",
    "NoNewPrivs": "1",
}


class TestForkerCapabilities:
    @pytest.mark.skipif(os.geteuid() != 0, reason="only root has capabilities to drop")
    def test_root_keeps_setuid_setgid_kill_and_no_new_privs(self) -> None:
        """A program run through the prefix as root has those three capabilities, no more."""
        command = [*confine.capabilities_prefix(), "/bin/cat", "/proc/self/status"]
        status = subprocess.run(command, capture_output=True, text=True, check=True, timeout=10)
        assert capability_status(status.stdout) == FORKER_CAPABILITIES

    def test_missing_setpriv_is_named(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without setpriv, an OSError that names it and its package."""
        monkeypatch.setattr(confine, "SETPRIV", "/nonexistent/setpriv")
        with pytest.raises(FileNotFoundError, match=r"/nonexistent/setpriv \(util-linux\)"):
            confine.capabilities_prefix()
