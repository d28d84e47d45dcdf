"""A program's resource limits (`rlimits`): set in its child (TCP, UDP, wait), checked first."""

from __future__ import annotations

import os
import pwd
import resource
import signal
import socket
from typing import TYPE_CHECKING

import pytest
from harness import WAIT, connect, exchange, recv_all, run_once, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from harness import Sockd

CAT_LIMITS = '["/bin/cat", "/proc/self/limits"]'

# A wait service's program: it accepts one connection on its stdin (the
# listening socket) and answers with its own limits.
ACCEPTER = """#!/usr/bin/python3 -I
import socket
listener = socket.socket(fileno=0)
connection, _ = listener.accept()
with open("/proc/self/limits", "rb") as file:
    connection.sendall(file.read())
connection.close()
"""


def limits_of(text: str) -> dict[str, tuple[str, str]]:
    """Parse /proc/PID/limits: each limit's name, and its soft and hard values as written."""
    return {row[:26].strip(): (row[26:47].strip(), row[47:68].strip()) for row in text.splitlines()}


def config(tmp_path: Path, services: str, daemon: str = "") -> str:
    return write_config(tmp_path / "sockd.toml", f"[daemon]\n{daemon}\n{services}")


def service(name: str, exec_line: str, extra: str = "", listen: str = "127.0.0.1:0") -> str:
    return f'[[service]]\nname = "{name}"\nexec = {exec_line}\nlisten = ["{listen}"]\n{extra}\n'


class TestLimitsArrive:
    def test_a_tcp_program_gets_its_limits_and_another_sockds_own(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Soft and hard both set to the value; a service without rlimits keeps the forker's."""
        limited = service(
            "limited",
            CAT_LIMITS,
            'rlimits = { files = 64, as = "512M", cpu = 7, core = 0, fsize = "1G" }',
        )
        daemon = sockd("run", "--config", config(tmp_path, limited + service("plain", CAT_LIMITS)))
        found = limits_of(exchange(daemon.address(0), b"").decode())
        assert found["Max open files"] == ("64", "64")
        assert found["Max address space"] == (str(512 << 20), str(512 << 20))
        assert found["Max cpu time"] == ("7", "7")
        assert found["Max core file size"] == ("0", "0")
        assert found["Max file size"] == (str(1 << 30), str(1 << 30))
        (closed,) = daemon.wait_event("connection_closed", service="limited")
        assert closed["exit_code"] == 0
        with open(f"/proc/{daemon.forker()}/limits") as file:
            forker = limits_of(file.read())
        plain = limits_of(exchange(daemon.address(1), b"").decode())
        assert plain["Max open files"] == forker["Max open files"] != ("64", "64")
        assert plain["Max address space"] == forker["Max address space"]

    def test_a_udp_program_gets_them(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A datagram's program (nowait over UDP) starts through the same path."""
        udp = service("udp", CAT_LIMITS, "rlimits = { files = 32 }", listen="udp:127.0.0.1:0")
        daemon = sockd("run", "--config", config(tmp_path, udp))
        port = int(daemon.address().rpartition(":")[2])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(WAIT)
            client.sendto(b"?", ("127.0.0.1", port))
            answer = client.recv(65536)
        assert limits_of(answer.decode())["Max open files"] == ("32", "32")

    def test_a_wait_program_gets_them(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A wait service's program, started on the listening socket, has its limits too."""
        program = tmp_path / "accepter.py"
        program.write_text(ACCEPTER)
        program.chmod(0o755)
        wait = service("w", f'["{program}"]', 'wait = true\nrlimits = { files = 48, stack = "4M" }')
        daemon = sockd("run", "--config", config(tmp_path, wait))
        with connect(daemon.address()) as client:
            found = limits_of(recv_all(client).decode())
        assert found["Max open files"] == ("48", "48")
        assert found["Max stack size"] == (str(4 << 20), str(4 << 20))

    def test_a_reload_changes_them(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """SIGHUP with new rlimits: the next program gets them; taking them away too."""
        daemon = sockd(
            "run",
            "--config",
            config(tmp_path, service("p", CAT_LIMITS, "rlimits = { files = 64 }")),
        )
        address = daemon.address()
        assert limits_of(exchange(address, b"").decode())["Max open files"] == ("64", "64")
        config(tmp_path, service("p", CAT_LIMITS, "rlimits = { files = 40 }"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        assert limits_of(exchange(address, b"").decode())["Max open files"] == ("40", "40")
        config(tmp_path, service("p", CAT_LIMITS))
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded", count=2)
        assert limits_of(exchange(address, b"").decode())["Max open files"] != ("40", "40")

    @pytest.mark.skipif(os.geteuid() != 0, reason="running programs as another user needs root")
    def test_a_program_run_as_another_user_gets_them(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Set before the switch of identity: the program runs as nobody, with its limits."""
        report = '["/bin/sh", "-c", "id -u; cat /proc/self/limits"]'
        extra = 'user = "nobody"\nrlimits = { files = 64, nproc = 50 }'
        daemon = sockd("run", "--config", config(tmp_path, service("p", report, extra)))
        uid, _, text = exchange(daemon.address(), b"").decode().partition("\n")
        assert int(uid) == pwd.getpwnam("nobody").pw_uid
        found = limits_of(text)
        assert found["Max open files"] == ("64", "64")
        assert found["Max processes"] == ("50", "50")


class TestRefused:
    def test_a_limit_above_sockds_hard_limit_fails_check(self, tmp_path: Path) -> None:
        """`sockd check`: one line naming the service, the key, the value and the hard limit."""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        path = config(tmp_path, service("p", CAT_LIMITS, f"rlimits = {{ files = {hard + 1} }}"))
        done = run_once("check", "--config", path)
        assert (done.returncode, done.stdout) == (78, "")
        where = f"sockd: {path}: service 'p': rlimits.files: {hard + 1} is above sockd's hard limit"
        assert done.stderr.startswith(f"{where} of {hard} (RLIMIT_NOFILE); sockd cannot raise it")
        assert done.stderr.count("\n") == 1
        path = config(tmp_path, service("p", CAT_LIMITS, f"rlimits = {{ files = {hard} }}"))
        done = run_once("check", "--config", path)
        assert done.returncode == 0, done.stderr
        assert f"rlimits = {{ files = {hard} }}" in done.stdout

    def test_a_limit_the_child_cannot_set_is_one_line_and_exit_127(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The forker's hard limit lowered under the value after start: logged, no traceback.

        The forker lacks CAP_SYS_RESOURCE (as root: one that keeps root for a
        program's user keeps CAP_SETUID, CAP_SETGID and CAP_KILL only), so its
        child cannot raise the limit back: it says so on its stderr and exits
        127, as for a program that cannot be executed.
        """
        daemon_user, extra = ("", "")
        if os.geteuid() == 0:
            daemon_user, extra = ('user = "daemon"', 'user = "nobody"\n')
        limited = service("p", CAT_LIMITS, f"{extra}rlimits = {{ files = 256 }}")
        path = config(tmp_path, limited, daemon_user)
        daemon = sockd("run", "--config", path)
        resource.prlimit(daemon.forker(), resource.RLIMIT_NOFILE, (200, 200))
        assert exchange(daemon.address(), b"") == b""
        (line,) = daemon.wait_event("program_stderr", service="p")
        # (Python's setrlimit says EPERM so.)
        assert (
            line["line"]
            == "sockd: cannot set rlimits.files = 256: not allowed to raise maximum limit"
        )
        (closed,) = daemon.wait_event("connection_closed", service="p")
        assert (closed["exit_code"], closed["pid"]) == (127, line["pid"])
        assert not [text for text in daemon.lines() if "Traceback" in text]
        assert daemon.stop() == 0
