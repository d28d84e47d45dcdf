"""Exec'd programs (inetd/UCSPI style): the connection on stdin/stdout, environment, stderr."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, connect, exchange, run_once, wait_until, write_config

from sockd.forker.programs import MAX_LINES

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness import Notifications, Sockd

REPORT_SCRIPT = """#!/bin/sh
# Report the UCSPI environment and the variables that must never be passed.
echo "PROTO=$PROTO TCPREMOTEIP=$TCPREMOTEIP TCPREMOTEPORT=$TCPREMOTEPORT"
echo "TCPLOCALIP=$TCPLOCALIP TCPLOCALPORT=$TCPLOCALPORT"
echo "REMOTE_ADDR=$REMOTE_ADDR REMOTE_PORT=$REMOTE_PORT GREETING=$GREETING"
env | grep -E '^(NOTIFY_SOCKET|LISTEN_|WATCHDOG_|LD_BIND_NOW|PYTHONPATH)' | sed 's/^/LEAKED /'
echo "to the log, not the client" >&2
echo "second stderr line" >&2
exit 3
"""


def program_config(tmp_path: Path, exec_line: str, extra: str = "") -> str:
    return write_config(
        tmp_path / "sockd.toml",
        f"""
        [[service]]
        name = "prog"
        exec = {exec_line}
        listen = ["127.0.0.1:0"]
        {extra}
        """,
    )


class TestExec:
    def test_head_echoes_one_line(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """`exec = ["/usr/bin/head", "-n1"]` answers the first line, and its exit is logged."""
        daemon = sockd("run", "--config", program_config(tmp_path, '["head", "-n1"]'))
        address = daemon.address()
        assert exchange(address, b"first line\nsecond line\n") == b"first line\n"
        (closed,) = daemon.wait_event("connection_closed", service="prog")
        assert closed["exit_code"] == 0
        assert closed["signal"] is None
        assert closed["duration"] > 0
        assert "max_rss_kib" in closed  # None: head peaked below the forker (see test_accounting)

    def test_script_sees_ucspi_environment_and_stderr_goes_to_the_log(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """TCPREMOTEIP/PORT, TCPLOCALPORT, env; no systemd variables; stderr logged; exit code.

        Nor what the daemon sets for its forker only (PYTHONPATH, LD_BIND_NOW).
        """
        script = tmp_path / "report.sh"
        script.write_text(REPORT_SCRIPT)
        script.chmod(0o755)
        config = program_config(tmp_path, f'["{script}"]', 'env = { GREETING = "hello" }')
        # systemd's variables for sockd itself, a NOTIFY_SOCKET among them: none may pass.
        env = {"LISTEN_FDS": "1", "LISTEN_PID": "1", "WATCHDOG_USEC": "1000000"}
        daemon = sockd("run", "--config", config, env=env, notify=notifications)
        forker_environ = Path(f"/proc/{daemon.forker()}/environ").read_bytes().split(b"\0")
        assert b"LD_BIND_NOW=sockd-forker" in forker_environ
        port = daemon.port()
        with connect(daemon.address()) as client:
            client.shutdown(socket.SHUT_WR)
            local_port = client.getsockname()[1]
            reply = b"".join(iter(lambda: client.recv(4096), b"")).decode()
        assert reply.splitlines() == [
            f"PROTO=TCP TCPREMOTEIP=127.0.0.1 TCPREMOTEPORT={local_port}",
            f"TCPLOCALIP=127.0.0.1 TCPLOCALPORT={port}",
            f"REMOTE_ADDR=127.0.0.1 REMOTE_PORT={local_port} GREETING=hello",
        ]
        lines = daemon.wait_event("program_stderr", count=2, service="prog")
        assert [line["line"] for line in lines] == [
            "to the log, not the client",
            "second stderr line",
        ]
        assert lines[0]["client"] == f"127.0.0.1:{local_port}"
        (closed,) = daemon.wait_event("connection_closed", service="prog")
        assert closed["exit_code"] == 3
        assert lines[0]["pid"] == closed["pid"]
        # The stderr lines come before the exit, in the log's order.
        events = [event["event"] for event in daemon.events() if event.get("service") == "prog"]
        assert events[-3:] == ["program_stderr", "program_stderr", "connection_closed"]

    def test_program_environment_is_the_documented_one_only(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """PATH, the service's env, the connection's variables: nothing of sockd's environment."""
        config = program_config(tmp_path, '["/usr/bin/env"]', 'env = { GREETING = "hello" }')
        env = {
            "JOURNAL_STREAM": "0:0",
            "INVOCATION_ID": "5f0e1d2c3b4a",
            "CREDENTIALS_DIRECTORY": "/run/credentials/sockd.service",
            "LANG": "de_DE.UTF-8",
            "KEEP_ME": "a shell's variable",
        }
        daemon = sockd("run", "--config", config, env=env)
        lines = exchange(daemon.address(), b"").decode().splitlines()
        environ = dict(line.split("=", 1) for line in lines)
        assert sorted(environ) == [
            "GREETING",
            "PATH",
            "PROTO",
            "REMOTE_ADDR",
            "REMOTE_PORT",
            "TCPLOCALIP",
            "TCPLOCALPORT",
            "TCPREMOTEIP",
            "TCPREMOTEPORT",
        ]
        assert environ["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def test_unix_peer_gets_its_credentials(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Over a UNIX socket: PROTO=UNIX and the peer's pid, uid and gid."""
        script = tmp_path / "who.sh"
        script.write_text(
            '#!/bin/sh\necho "$PROTO $UNIXREMOTEPID $UNIXREMOTEEUID $UNIXREMOTEEGID"\n'
        )
        script.chmod(0o755)
        path = tmp_path / "prog.sock"
        config = write_config(
            tmp_path / "sockd.toml",
            f'[[service]]\nname = "prog"\nexec = ["{script}"]\nlisten = ["unix:{path}"]\n',
        )
        daemon = sockd("run", "--config", config)
        reply = exchange(daemon.address(), b"")
        assert reply.decode().split() == [
            "UNIX",
            str(os.getpid()),
            str(os.getuid()),
            str(os.getgid()),
        ]

    def test_program_killed_by_a_signal_is_logged_by_name(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A program that dies of a signal: `signal` in connection_closed, no exit code."""
        config = program_config(tmp_path, '["/bin/sh", "-c", "kill -USR1 $$"]')
        daemon = sockd("run", "--config", config)
        exchange(daemon.address(), b"")
        (closed,) = daemon.wait_event("connection_closed", service="prog")
        assert (closed["exit_code"], closed["signal"]) == (None, "SIGUSR1")

    @pytest.mark.parametrize(
        ("exec_line", "problem"),
        [
            ('["/nonexistent/program"]', "exec[0]: /nonexistent/program: no such program"),
            ('["no-such-program-anywhere"]', "exec[0]: 'no-such-program-anywhere' is not on PATH"),
            ('["TMP/data.txt"]', "exec[0]: TMP/data.txt: not executable"),
        ],
    )
    def test_missing_or_not_executable_program_is_a_config_error(
        self, tmp_path: Path, exec_line: str, problem: str
    ) -> None:
        """Found out at load time: one line naming the key, exit 78, before serving anything."""
        (tmp_path / "data.txt").write_text("not a program\n")
        exec_line = exec_line.replace("TMP", str(tmp_path))
        problem = problem.replace("TMP", str(tmp_path))
        config = program_config(tmp_path, exec_line)
        result = run_once("run", "--config", config, "--log-format", "json")
        assert result.returncode == 78
        (line,) = result.stderr.splitlines()
        assert problem in json.loads(line)["error"]


@pytest.mark.skipif(os.geteuid() != 0, reason="running programs as another user needs root")
class TestProgramUser:
    def test_program_runs_as_its_user_and_the_rest_as_the_daemon_user(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """User = "nobody" for one program; another program and a handler run as [daemon] user."""
        report_ids = '["/bin/sh", "-c", "echo $(id -u) $(id -g) $(id -G)"]'
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [daemon]
            user = "daemon"
            pythonpath = ["{TESTS}"]

            [[service]]
            name = "as-nobody"
            exec = {report_ids}
            user = "nobody"
            group = "nogroup"
            listen = ["127.0.0.1:0"]

            [[service]]
            name = "as-daemon"
            exec = {report_ids}
            listen = ["127.0.0.1:0"]

            [[service]]
            name = "handler"
            handler = "support_handlers:Report"
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd("run", "--config", config)
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
        user_daemon = pwd.getpwnam("daemon")
        # uid, gid, then the groups: nogroup only (nobody has no supplementary groups).
        assert exchange(daemon.address(0), b"").decode().split() == [
            str(nobody),
            str(nogroup),
            str(nogroup),
        ]
        ids = exchange(daemon.address(1), b"").decode().split()
        assert ids[:2] == [str(user_daemon.pw_uid), str(user_daemon.pw_gid)]
        report = json.loads(exchange(daemon.address(2), b""))
        assert (report["uid"], report["gid"]) == (user_daemon.pw_uid, user_daemon.pw_gid)
        assert daemon.stop() == 0


class TestStderrFlood:
    def test_a_program_flooding_stderr_is_bounded_and_others_are_served(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """`yes >&2`: at most MAX_LINES lines and a count; another service answers meanwhile."""
        config = write_config(
            tmp_path / "sockd.toml",
            """
            [[service]]
            name = "flood"
            exec = ["/bin/sh", "-c", "yes flood >&2"]
            listen = ["127.0.0.1:0"]
            max_duration = 2

            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd("run", "--config", config)
        with connect(daemon.address(0)):
            daemon.wait_event("program_stderr", count=10)
            started = time.monotonic()
            assert exchange(daemon.address(1), b"still here\n") == b"still here\n"
            assert time.monotonic() - started < 1.0
            daemon.wait_event("connection_closed", service="flood", timeout=15)
        lines = daemon.events("program_stderr")
        assert len(lines) == MAX_LINES + 1
        assert lines[-1]["line"].startswith("[sockd: ")
        assert lines[-1]["line"].endswith(" more lines not logged]")
        assert daemon.stop() == 0


class TestMaxDuration:
    def test_program_that_never_exits_gets_sigterm_then_sigkill(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """max_duration: SIGTERM at the deadline, SIGKILL after the grace; both logged."""
        # The shell ignores SIGTERM: only SIGKILL ends it.
        config = program_config(
            tmp_path,
            '["/bin/sh", "-c", "trap \\"\\" TERM; while :; do sleep 0.1; done"]',
            "max_duration = 0.5",
        )
        daemon = sockd("run", "--config", config)
        started = time.monotonic()
        with connect(daemon.address()) as client:
            term, kill = daemon.wait_event("max_duration_exceeded", count=2, timeout=15)
            (closed,) = daemon.wait_event("connection_closed", service="prog")
            assert client.recv(10) == b""  # the connection ended with the program
        assert (term["action"], kill["action"]) == ("SIGTERM", "SIGKILL")
        assert closed["signal"] == "SIGKILL"
        assert 5.0 <= time.monotonic() - started < 10.0  # the 5 s grace between them

    def test_handler_past_max_duration_ends_on_sigterm(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The same deadline for Python handlers: SIGTERM (default action) ends the child."""
        config = write_config(
            tmp_path / "sockd.toml",
            '[[service]]\nname = "slow"\nhandler = "discard"\nlisten = ["127.0.0.1:0"]\n'
            "max_duration = 0.3\n",
        )
        daemon = sockd("run", "--config", config)
        with connect(daemon.address()):
            (event,) = daemon.wait_event("max_duration_exceeded")
            (closed,) = daemon.wait_event("connection_closed", service="slow")
        assert event["action"] == "SIGTERM"
        assert closed["signal"] == "SIGTERM"
        wait_until(lambda: not daemon.children())
