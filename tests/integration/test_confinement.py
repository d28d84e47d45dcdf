"""What the forker and what it runs may reach: import path, modules, environment, privileges."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, exchange, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness import Sockd

# Modules a forker imports at start (by -m) or for a connection: planted in the
# working directory, each would run in the forker, as root under `sudo sockd run`.
PLANTED = ("runpy", "socketserver", "selectors", "contextlib", "select")

# The forker's modules with one handler service, its handler module aside: each
# is in every fork's memory. A change here changes the cost of every connection:
# measure it (README, "Where the time goes"), then update the list.
FORKER_MODULES = """
__future__ __main__ _abc _codecs _collections _collections_abc _frozen_importlib
_frozen_importlib_external _functools _heapq _imp _io _operator _signal _socket _stat
_thread _warnings _weakref _weakrefset abc array builtins codecs collections
collections.abc contextlib encodings encodings.aliases encodings.utf_8 enum errno
functools gc genericpath heapq importlib importlib._abc importlib._bootstrap
importlib._bootstrap_external importlib.machinery importlib.util io itertools keyword
marshal math operator os os.path posix posixpath pwd reprlib resource runpy select
selectors signal sockd sockd._version sockd.errors sockd.exits sockd.forker
sockd.forker.access sockd.forker.caps sockd.forker.childlog sockd.forker.children
sockd.forker.forkhooks sockd.forker.loop sockd.forker.pool sockd.forker.programs
sockd.forker.proxied sockd.forker.service sockd.forker.shared sockd.forker.start
sockd.forker.typecache sockd.forker.waits
sockd.handlers sockd.handlers.builtin sockd.ipc sockd.listeners sockd.privileges sockd.server
sockd.spec sockd.timers socket socketserver stat sys threading time types warnings zipimport
""".split()  # noqa: SIM905 (a paragraph of names reads better than one a line)

MODULES_HANDLER = '''"""Report the modules of the process serving the connection."""

import socketserver
import sys


class Modules(socketserver.BaseRequestHandler):
    """Send the names in sys.modules, one a line."""

    def handle(self) -> None:
        """Send them."""
        self.request.sendall("\\n".join(sorted(sys.modules)).encode())
'''

# systemd's variables for sockd's own unit, and Python's: none may reach a handler.
SYSTEMD_ENV = {
    "JOURNAL_STREAM": "0:0",  # matches no stderr: sockd's own log stays as it is
    "INVOCATION_ID": "5f0e1d2c3b4a",
    "CREDENTIALS_DIRECTORY": "/run/credentials/sockd.service",
    "MANAGERPID": "1",
    "SYSTEMD_EXEC_PID": "1",
    "MONITOR_UNIT": "other.service",
    "TRIGGER_UNIT": "sockd.path",
}
PYTHON_ENV = {"PYTHONSTARTUP": "/nonexistent/startup.py", "PYTHONHASHSEED": "0"}


def modules_config(tmp_path: Path) -> str:
    (tmp_path / "modules_handler.py").write_text(MODULES_HANDLER)
    return write_config(
        tmp_path / "sockd.toml",
        f"""
        [daemon]
        pythonpath = ["{tmp_path}"]

        [[service]]
        name = "modules"
        handler = "modules_handler:Modules"
        listen = ["127.0.0.1:0"]
        """,
    )


class TestImportPath:
    def test_the_working_directory_is_not_on_the_forkers_path(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Started from a directory holding socketserver.py and others: none is imported."""
        planted = tmp_path / "planted"
        planted.mkdir()
        marker = tmp_path / "imported"
        for name in PLANTED:
            code = f"open({str(marker)!r}, 'a').write({name!r} + '\\n')\n"
            (planted / f"{name}.py").write_text(code)
        config = modules_config(tmp_path)
        # The daemon as its console script starts it: its own path does not hold the cwd.
        daemon = sockd("run", "--config", config, wait=False, python_options=["-P"], cwd=planted)
        wait_until(lambda: marker.exists() or daemon.events("ready"), what="ready or a marker")
        imported = marker.read_text().split() if marker.exists() else []
        assert imported == []
        assert "socketserver" in exchange(daemon.address(), b"").decode().split()


class TestForkerModules:
    def test_the_forkers_import_set_is_pinned(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A forker started as the daemon starts it has exactly FORKER_MODULES imported."""
        daemon = sockd("run", "--config", modules_config(tmp_path))
        modules = set(exchange(daemon.address(), b"").decode().split())
        modules.discard("modules_handler")
        assert {"appeared": modules - set(FORKER_MODULES)} == {"appeared": set()}
        assert {"disappeared": set(FORKER_MODULES) - modules} == {"disappeared": set()}


class TestHandlerEnvironment:
    def test_systemd_and_python_variables_do_not_reach_handlers(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """JOURNAL_STREAM, INVOCATION_ID, PYTHON*...: not in a handler's environment; others are."""
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [daemon]
            pythonpath = ["{TESTS}"]

            [[service]]
            name = "report"
            handler = "support_handlers:Report"
            listen = ["127.0.0.1:0"]
            """,
        )
        env = {**SYSTEMD_ENV, **PYTHON_ENV, "KEEP_ME": "yes"}
        daemon = sockd("run", "--config", config, env=env)
        environ = set(json.loads(exchange(daemon.address(), b""))["environ"])
        assert "KEEP_ME" in environ
        assert environ & {*SYSTEMD_ENV, *PYTHON_ENV, "PYTHONPATH"} == set()
        forker = Path(f"/proc/{daemon.forker()}/environ").read_bytes().split(b"\0")
        names = {entry.partition(b"=")[0].decode() for entry in forker}
        # PYTHONPATH names sockd's own directory; the forker removes it at start.
        assert names & {*SYSTEMD_ENV, *PYTHON_ENV} == set()


def capabilities(status: str) -> dict[str, str]:
    """Return the capability sets and NoNewPrivs of a /proc/PID/status text."""
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    names = ("CapPrm", "CapEff", "CapBnd", "NoNewPrivs")
    return {name: fields[name].strip() for name in names}


@pytest.mark.skipif(os.geteuid() != 0, reason="a forker keeps root only when sockd runs as root")
class TestForkerPrivileges:
    def test_a_forker_that_keeps_root_has_three_capabilities_and_no_new_privs(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """CAP_SETUID, CAP_SETGID, CAP_KILL only; children still change user and are signalled."""
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [daemon]
            user = "daemon"
            pythonpath = ["{TESTS}"]

            [[service]]
            name = "as-nobody"
            exec = ["/bin/sh", "-c", "id -u; cat /proc/self/status"]
            user = "nobody"
            listen = ["127.0.0.1:0"]

            [[service]]
            name = "handler"
            handler = "support_handlers:Report"
            listen = ["127.0.0.1:0"]

            [[service]]
            name = "sleeper"
            exec = ["/bin/sleep", "60"]
            user = "nobody"
            max_duration = 0.5
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd("run", "--config", config)
        forker = Path(f"/proc/{daemon.forker()}/status").read_text()
        assert "Uid:\t0\t0\t0\t0" in forker  # it keeps root, for the program's user
        # CAP_KILL (5), CAP_SETGID (6), CAP_SETUID (7).
        three = "00000000000000e0"
        assert capabilities(forker) == {
            "CapPrm": three,
            "CapEff": three,
            "CapBnd": three,
            "NoNewPrivs": "1",
        }
        uid, _, status = exchange(daemon.address(0), b"").decode().partition("\n")
        assert int(uid) == pwd.getpwnam("nobody").pw_uid
        assert capabilities(status) == {
            "CapPrm": "0000000000000000",
            "CapEff": "0000000000000000",
            "CapBnd": three,
            "NoNewPrivs": "1",
        }
        report = json.loads(exchange(daemon.address(1), b""))
        assert report["uid"] == pwd.getpwnam("daemon").pw_uid
        # CAP_KILL is enough to end another user's program at max_duration.
        exchange(daemon.address(2), b"")
        (closed,) = daemon.wait_event("connection_closed", service="sleeper")
        assert closed["signal"] == "SIGTERM"
