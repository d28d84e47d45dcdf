"""`[daemon] inetd_conf`: a real sockd serves an inetd.conf's lines, re-read on SIGHUP."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
from typing import TYPE_CHECKING

import pytest
from harness import connect, exchange, run_once, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from harness import Notifications, Sockd

CAT = shutil.which("cat")
ME = pwd.getpwuid(os.geteuid()).pw_name  # a program's user: sockd needs root for any


def free_port() -> int:
    """Return a port the kernel had free just now (inetd.conf takes no port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cat_line(port: int) -> str:
    """Return an inetd.conf line serving `cat` on 127.0.0.1:`port`."""
    return f"127.0.0.1:{port}\tstream\ttcp\tnowait\t{ME}\t{CAT}\tcat\n"


def refused(port: int) -> bool:
    """Tell whether a connection to 127.0.0.1:`port` is refused."""
    try:
        connect(f"127.0.0.1:{port}").close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def inetd(tmp_path: Path) -> tuple[Path, str]:
    """Return an inetd.conf path (not written yet) and a sockd.toml serving it."""
    inetd_conf = tmp_path / "inetd.conf"
    text = f'[daemon]\ninetd_conf = "{inetd_conf}"\nstop_timeout = 5\n'
    return inetd_conf, write_config(tmp_path / "sockd.toml", text)


@pytest.mark.skipif(os.geteuid() != 0, reason="an inetd.conf line names a user: needs root")
class TestInetdConf:
    def test_sighup_adds_and_removes_a_line(
        self,
        sockd: Callable[..., Sockd],
        inetd: tuple[Path, str],
        notifications: Notifications,
    ) -> None:
        """A line added is served after SIGHUP; removed, its port refuses; the others serve on."""
        inetd_conf, config = inetd
        first, second = free_port(), free_port()
        inetd_conf.write_text(cat_line(first))
        daemon = sockd("run", "--config", config, notify=notifications)
        notifications.wait_for("READY=1")
        assert exchange(f"127.0.0.1:{first}", b"one") == b"one"
        assert refused(second)
        held = connect(f"127.0.0.1:{first}")
        held.sendall(b"held")
        assert held.recv(10) == b"held"
        inetd_conf.write_text(cat_line(first) + cat_line(second))
        daemon.signal(signal.SIGHUP)
        (reloaded,) = daemon.wait_event("reloaded")
        assert (reloaded["added"], reloaded["removed"]) == ([f"inetd.{second}"], [])
        assert exchange(f"127.0.0.1:{second}", b"two") == b"two"
        assert exchange(f"127.0.0.1:{first}", b"one") == b"one", "kept, same listener"
        held.sendall(b"still")
        assert held.recv(10) == b"still", "an open connection outlives the reload"
        held.close()
        inetd_conf.write_text(cat_line(second))
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_event("reloaded", count=2)[1]
        assert (reloaded["added"], reloaded["removed"]) == ([], [f"inetd.{first}"])
        # The old forker closes its listeners as it retires, just after the take-over
        # (serving what its backlog held): refused from then on.
        wait_until(lambda: refused(first), what=f"port {first} refused")
        assert exchange(f"127.0.0.1:{second}", b"two") == b"two"
        assert daemon.stop() == 0

    def test_missing_file_is_empty_and_a_bad_line_is_skipped(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str]
    ) -> None:
        """No file: sockd serves nothing, and starts; a malformed line: a warning, others serve."""
        inetd_conf, config = inetd
        daemon = sockd("run", "--config", config)
        daemon.wait_event("ready", services=[])
        port, added = free_port(), free_port()
        inetd_conf.write_text(cat_line(port))
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        inetd_conf.write_text(f"# a comment\n{cat_line(port)}finger stream tcp\n{cat_line(added)}")
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded", count=2)
        (warning,) = daemon.events("config_warning")
        assert warning["warning"].startswith(f"{inetd_conf}:3: finger: skipped: 3 fields")
        assert exchange(f"127.0.0.1:{port}", b"y") == b"y"
        assert exchange(f"127.0.0.1:{added}", b"z") == b"z", "the line after it is served"
        assert daemon.stop() == 0

    def test_bad_lines_at_start_stop_nothing_else(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str]
    ) -> None:
        """At start, lines that cannot be served (two on a port, a program missing) are skipped."""
        inetd_conf, config = inetd
        port = free_port()
        inetd_conf.write_text(
            f"{cat_line(port)}{cat_line(port)}"
            f"127.0.0.1:{free_port()}\tstream\ttcp\tnowait\t{ME}\t/nonexistent/prog\tprog\n"
        )
        daemon = sockd("run", "--config", config)
        daemon.wait_event("ready", services=[f"inetd.{port}"])
        warnings = [event["warning"] for event in daemon.events("config_warning")]
        assert [warning.split(": ")[0:3] for warning in warnings] == [
            [f"{inetd_conf}:2", f"inetd.{port}-2", "skipped"],
            [f"{inetd_conf}:3", warnings[1].split(": ")[1], "skipped"],
        ]
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        assert daemon.stop() == 0

    def test_a_line_on_a_port_taken_is_skipped_at_a_reload(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str]
    ) -> None:
        """A line added on the port of a line before it: a warning; a line added with it serves."""
        inetd_conf, config = inetd
        port, added = free_port(), free_port()
        inetd_conf.write_text(cat_line(port))
        daemon = sockd("run", "--config", config)
        daemon.wait_event("ready")
        inetd_conf.write_text(cat_line(port) * 2 + cat_line(added))
        daemon.signal(signal.SIGHUP)
        (reloaded,) = daemon.wait_event("reloaded")
        assert reloaded["added"] == [f"inetd.{added}"]
        (warning,) = daemon.events("config_warning")
        assert warning["warning"].startswith(f"{inetd_conf}:2: inetd.{port}-2: skipped: ")
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        assert exchange(f"127.0.0.1:{added}", b"y") == b"y"
        assert daemon.stop() == 0

    @pytest.mark.parametrize("kind", ["fifo", "directory", "/dev/zero"])
    def test_a_file_not_regular_keeps_the_old_config(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str], kind: str
    ) -> None:
        """inetd_conf made a FIFO (never read: it would block), a directory, a link to /dev/zero."""
        inetd_conf, config = inetd
        port = free_port()
        inetd_conf.write_text(cat_line(port))
        daemon = sockd("run", "--config", config)
        daemon.wait_event("ready")
        inetd_conf.unlink()
        if kind == "fifo":
            os.mkfifo(inetd_conf)
        elif kind == "directory":
            inetd_conf.mkdir()
        else:
            inetd_conf.symlink_to(kind)
        daemon.signal(signal.SIGHUP)
        (failed,) = daemon.wait_event("reload_failed")
        why = "Is a directory" if kind == "directory" else "not a regular file"
        assert failed["error"] == f"{inetd_conf}: cannot read: {why}"
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x", "the old config serves on"
        assert daemon.stop() == 0

    def test_a_port_taken_is_skipped_at_a_reload(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str]
    ) -> None:
        """A line added on a port another process holds: a warning, the others serve on."""
        inetd_conf, config = inetd
        port, added = free_port(), free_port()
        inetd_conf.write_text(cat_line(port))
        daemon = sockd("run", "--config", config)
        daemon.wait_event("ready")
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            taken = other.getsockname()[1]
            inetd_conf.write_text(cat_line(port) + cat_line(taken) + cat_line(added))
            daemon.signal(signal.SIGHUP)
            (reloaded,) = daemon.wait_event("reloaded")
            daemon.signal(signal.SIGHUP)  # still held: tried again, not said again
            daemon.wait_event("reloaded", count=2)
        assert reloaded["added"] == [f"inetd.{added}"]
        (warning,) = daemon.events("config_warning")
        where = f"service 'inetd.{taken}': listen 127.0.0.1:{taken}"
        assert warning["warning"] == (
            f"{inetd_conf}: {where}: cannot bind: Address already in use: skipped"
        )
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        assert exchange(f"127.0.0.1:{added}", b"y") == b"y"
        daemon.signal(signal.SIGHUP)  # the port is free now: the same file applies
        reloaded = daemon.wait_event("reloaded", count=3)[-1]
        assert reloaded["added"] == [f"inetd.{taken}"]
        assert exchange(f"127.0.0.1:{taken}", b"z") == b"z"
        assert daemon.stop() == 0

    def test_a_port_taken_at_start_is_skipped(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str]
    ) -> None:
        """A line on a port another process holds at start: a warning; sockd serves the others."""
        inetd_conf, config = inetd
        port = free_port()
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            taken = other.getsockname()[1]
            inetd_conf.write_text(cat_line(taken) + cat_line(port))
            daemon = sockd("run", "--config", config)
            daemon.wait_event("ready", services=[f"inetd.{port}"])
        (warning,) = daemon.events("config_warning")
        assert warning["warning"].endswith("cannot bind: Address already in use: skipped")
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        assert daemon.stop() == 0

    def test_a_datagram_line_is_skipped_with_one_warning(
        self, sockd: Callable[..., Sockd], inetd: tuple[Path, str]
    ) -> None:
        """An RPC (dgram) line is a warning at start, not again at a reload that changes nothing."""
        inetd_conf, config = inetd
        port = free_port()
        talk = "rstatd/1-3\tdgram\trpc/udp\twait\troot\t/usr/sbin/rpc.rstatd\trpc.rstatd\n"
        inetd_conf.write_text(talk + cat_line(port))
        daemon = sockd("run", "--config", config)
        (warning,) = daemon.wait_event("config_warning")
        assert warning["warning"].startswith(f"{inetd_conf}:1: rstatd/1-3: skipped: rpc/udp")
        assert exchange(f"127.0.0.1:{port}", b"x") == b"x"
        for count in (1, 2):
            daemon.signal(signal.SIGHUP)
            daemon.wait_event("reloaded", count=count)
        assert len(daemon.events("config_warning")) == 1
        assert daemon.stop() == 0


class TestCheck:
    def test_check_lists_skipped_lines_and_exits_0(self, inetd: tuple[Path, str]) -> None:
        """`sockd check`: the lines' services in the effective config, skipped ones on stderr."""
        inetd_conf, config = inetd
        talk = "rstatd/1-3\tdgram\trpc/udp\twait\troot\t/usr/sbin/rpc.rstatd\trpc.rstatd\n"
        inetd_conf.write_text(f"{talk}127.0.0.1:7100\tstream\ttcp\tnowait\troot\t{CAT}\tcat\n")
        done = run_once("check", "--config", config)
        assert done.returncode == 0, done.stderr
        assert 'name = "inetd.7100"' in done.stdout
        assert done.stderr.startswith(f"sockd: {inetd_conf}:1: rstatd/1-3: skipped: rpc/udp: ")
        assert done.stderr.count("\n") == 1

    def test_check_names_a_bad_line(self, inetd: tuple[Path, str]) -> None:
        """`sockd check` names a malformed line (FILE:LINE) on stderr, exits 0: it is skipped."""
        inetd_conf, config = inetd
        inetd_conf.write_text("\nfinger stream\n")
        done = run_once("check", "--config", config)
        assert done.returncode == 0, done.stderr
        fields = "expected service, socket type, protocol, wait, user, server"
        assert done.stderr == f"sockd: {inetd_conf}:2: finger: skipped: 2 fields: {fields}\n"
