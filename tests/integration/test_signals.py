"""Signals acted on by the main loop (stop, reload; status and watchdog), and the forker's own."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, Notifications, Sockd, connect, exchange, wait_until, write_config

from sockd.supervisor.loop import FORKER_SILENCE

if TYPE_CHECKING:
    from collections.abc import Callable

ECHO = """
[daemon]
stop_timeout = {stop_timeout}
pythonpath = ["{tests}"]
[[service]]
name = "echo"
handler = "{handler}"
listen = ["127.0.0.1:0"]
deny = [{deny}]
"""


def refused(address: str) -> bool:
    try:
        connect(address).close()
    except ConnectionRefusedError:
        return True
    return False


def echo_config(
    path: Path, *, stop_timeout: float = 10, handler: str = "echo", deny: str = ""
) -> str:
    text = ECHO.format(stop_timeout=stop_timeout, tests=TESTS, handler=handler, deny=deny)
    return write_config(path / "sockd.toml", text)


class TestStop:
    def test_graceful_stop_lets_a_connection_finish(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """SIGTERM: STOPPING=1, no new connections, the one in progress completes, exit 0."""
        daemon = sockd("run", "--config", echo_config(tmp_path), notify=notifications)
        address = daemon.address()
        with connect(address) as client:
            ours = f"127.0.0.1:{client.getsockname()[1]}"
            client.sendall(b"before\n")
            assert client.recv(100) == b"before\n"
            daemon.signal(signal.SIGTERM)
            notifications.wait_for("STOPPING=1")
            daemon.wait_event("stopping")
            # Refused once the daemon and the forker have both closed the listener.
            wait_until(lambda: refused(address), what="new connections refused")
            client.sendall(b"during\n")
            assert client.recv(100) == b"during\n"
            assert daemon.process.poll() is None, "sockd waits for the connection"
        assert daemon.wait() == 0
        # (A probe that connected just before the forker heard of the stop is served too.)
        (closed,) = daemon.events("connection_closed", client=ours)
        assert closed["exit_code"] == 0
        assert daemon.events("stopped")

    def test_graceful_stop_serves_the_connections_already_queued(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Connected before SIGTERM, not accepted yet: taken from the backlog and served."""
        daemon = sockd("run", "--config", echo_config(tmp_path))
        address = daemon.address()
        forker = daemon.forker()
        os.kill(forker, signal.SIGSTOP)  # the connections wait in the kernel's backlog
        try:
            queued = [connect(address) for _ in range(3)]
            for number, client in enumerate(queued):
                client.sendall(b"queued %d\n" % number)
            daemon.signal(signal.SIGTERM)
            daemon.wait_event("stopping")
        finally:
            os.kill(forker, signal.SIGCONT)
        for number, client in enumerate(queued):
            with client:
                client.settimeout(10)
                assert client.recv(100) == b"queued %d\n" % number
        assert daemon.wait() == 0

    def test_stop_timeout_terminates_children(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A child still running at stop_timeout gets SIGTERM; sockd still exits 0."""
        config = echo_config(tmp_path, stop_timeout=0.3, handler="support_handlers:Sleep")
        daemon = sockd("run", "--config", config)
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"
            daemon.signal(signal.SIGTERM)
            assert daemon.wait() == 0
        (timeout,) = daemon.events("stop_timeout")
        assert timeout["action"] == "SIGTERM"
        (closed,) = daemon.events("connection_closed")
        assert closed["signal"] == "SIGTERM"

    @pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
    def test_a_child_takes_the_default_action(
        self, sockd: Callable[..., Sockd], tmp_path: Path, signum: signal.Signals
    ) -> None:
        """A child inherits the forker's handlers; there they act as the defaults do.

        SIGCHLD is ignored; SIGHUP, SIGINT and SIGTERM end the child, and the
        forker neither reloads nor stops.
        """
        daemon = sockd("run", "--config", echo_config(tmp_path, handler="support_handlers:Sleep"))
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"
            ((child, _),) = daemon.children()
            os.kill(child, signal.SIGCHLD)
            time.sleep(0.2)
            assert daemon.children() == [(child, "S")]
            os.kill(child, signum)
            (closed,) = daemon.wait_event("connection_closed")
        assert closed["signal"] == signum.name
        assert daemon.process.poll() is None
        assert not daemon.events("reloaded")
        assert not daemon.events("stopping")
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"

    def test_sigquit_stops_at_once(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """SIGQUIT kills children and exits without waiting for stop_timeout."""
        config = echo_config(tmp_path, stop_timeout=60, handler="support_handlers:Sleep")
        daemon = sockd("run", "--config", config)
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"
            started = time.monotonic()
            daemon.signal(signal.SIGQUIT)
            assert daemon.wait() == 0
            assert time.monotonic() - started < 30
        (closed,) = daemon.events("connection_closed")
        assert closed["signal"] == "SIGKILL"

    def test_sigint_is_a_graceful_stop(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """SIGINT (Ctrl-C in the foreground) stops like SIGTERM, without a traceback."""
        daemon = sockd("run", "--config", echo_config(tmp_path))
        daemon.signal(signal.SIGINT)
        assert daemon.wait() == 0
        assert "Traceback" not in "\n".join(daemon.lines())
        assert daemon.events("stopped")


class TestForkerSignals:
    def test_sigterm_to_the_forker_stops_it_gracefully_then_the_daemon_exits_70(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGTERM to the forker alone: its connection is served to its end, then it exits 0.

        The daemon did not ask for that stop: it logs `forker_died` and exits
        70, for systemd to restart the service.
        """
        daemon = sockd("run", "--config", echo_config(tmp_path))
        forker = daemon.forker()
        with connect(daemon.address()) as client:
            client.sendall(b"before\n")
            assert client.recv(100) == b"before\n"
            os.kill(forker, signal.SIGTERM)
            client.sendall(b"during\n")
            assert client.recv(100) == b"during\n"
            assert daemon.process.poll() is None, "the forker waits for its connection"
        assert daemon.wait() == 70
        (closed,) = daemon.events("connection_closed")
        assert closed["exit_code"] == 0
        (died,) = daemon.events("forker_died")
        assert died["exit_status"] == 0
        assert not daemon.events("stop_timeout")
        assert not daemon.events("stopped")

    def test_sigterm_to_the_forker_ends_its_children_at_stop_timeout(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGTERM to the forker: a child still running at stop_timeout gets SIGTERM; exit 70."""
        config = echo_config(tmp_path, stop_timeout=0.3, handler="support_handlers:Sleep")
        daemon = sockd("run", "--config", config)
        with connect(daemon.address()) as client:
            assert client.recv(100) == b"sleeping\n"
            os.kill(daemon.forker(), signal.SIGTERM)
            assert daemon.wait() == 70
            assert client.recv(100) == b"", "its child was ended"
        (timeout,) = daemon.events("stop_timeout")
        assert (timeout["children"], timeout["action"]) == (1, "SIGTERM")
        (closed,) = daemon.events("connection_closed")
        assert closed["signal"] == "SIGTERM"
        (died,) = daemon.events("forker_died")
        assert died["exit_status"] == 0

    @pytest.mark.slow
    def test_a_silent_forker_stops_the_watchdog(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """A forker silent past FORKER_SILENCE (SIGSTOP): WATCHDOG=1 stops, for systemd's restart.

        The daemon neither kills nor replaces it: heard from again, it is
        healthy, WATCHDOG=1 comes again, and it serves.
        """
        daemon = sockd(
            "run",
            "--config",
            echo_config(tmp_path),
            notify=notifications,
            env={"WATCHDOG_USEC": "200000"},  # WATCHDOG=1 every 0.1 s
        )
        forker = daemon.forker()
        notifications.wait_for("WATCHDOG=1")
        os.kill(forker, signal.SIGSTOP)
        try:
            last = [time.monotonic(), notifications.poll().count("WATCHDOG=1")]

            def withheld() -> bool:
                """Whether no WATCHDOG=1 came for a second (ten of its intervals)."""
                count = notifications.poll().count("WATCHDOG=1")
                if count != last[1]:
                    last[:] = [time.monotonic(), count]
                return time.monotonic() - last[0] > 1.0

            wait_until(withheld, timeout=FORKER_SILENCE + 10, what="WATCHDOG=1 withheld")
            assert daemon.process.poll() is None
            assert daemon.forker() == forker, "neither killed nor replaced"
        finally:
            os.kill(forker, signal.SIGCONT)
        notifications.wait_for("WATCHDOG=1", after=len(notifications.poll()))
        assert exchange(daemon.address(), b"again") == b"again"
        assert daemon.stop() == 0
        assert not daemon.events("forker_died")


class TestReload:
    def test_reload_applies_and_keeps_the_listener(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """SIGHUP applies a new rule to new connections; the listener and open ones stay."""
        daemon = sockd("run", "--config", echo_config(tmp_path), notify=notifications)
        address = daemon.address()
        held = connect(address)
        held.sendall(b"1")
        assert held.recv(10) == b"1"
        echo_config(tmp_path, deny='"127.0.0.1"')
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        reloading = notifications.wait_for("RELOADING=1")
        assert notifications.messages[reloading].split("\n")[1].startswith("MONOTONIC_USEC=")
        notifications.wait_for("READY=1", after=reloading)
        assert exchange(address, b"x") == b"", "the new deny rule refuses 127.0.0.1"
        daemon.wait_event("connection_denied")
        assert exchange(address, b"x", source="127.0.0.2") == b"x", "same listener"
        held.sendall(b"2")
        assert held.recv(10) == b"2"
        held.close()
        assert daemon.stop() == 0

    def test_broken_config_keeps_the_old_one(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """A reload with a broken file logs why and the old config goes on serving."""
        config = echo_config(tmp_path)
        daemon = sockd("run", "--config", config, notify=notifications)
        (tmp_path / "sockd.toml").write_text("[[service]]\nname = 'echo'\nhandler = 42\n")
        daemon.signal(signal.SIGHUP)
        (failed,) = daemon.wait_event("reload_failed")
        assert failed["level"] == "error"
        assert "service 'echo': handler: expected a string, got int" in failed["error"]
        reloading = notifications.wait_for("RELOADING=1")
        notifications.wait_for("READY=1", after=reloading)
        assert exchange(daemon.address(), b"still") == b"still"
        assert daemon.stop() == 0

    def test_reload_applies_daemon_caps(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A reloaded [daemon] max_children takes effect for new connections at once."""
        path = tmp_path / "sockd.toml"
        config = echo_config(tmp_path)
        path.write_text(path.read_text().replace("[daemon]", "[daemon]\nmax_children = 1"))
        daemon = sockd("run", "--config", config)
        address = daemon.address()
        first = connect(address)
        first.sendall(b"1")
        assert first.recv(10) == b"1"
        second = connect(address, timeout=0.5)
        second.sendall(b"2")
        with pytest.raises(TimeoutError):
            second.recv(10)
        path.write_text(path.read_text().replace("max_children = 1", "max_children = 5"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        second.settimeout(10)
        assert second.recv(10) == b"2"
        first.close()
        second.close()
        assert daemon.stop() == 0

    def test_listener_change_needs_restart(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Changing `listen` is refused on reload, naming the key."""
        daemon = sockd("run", "--config", echo_config(tmp_path))
        text = (tmp_path / "sockd.toml").read_text().replace("127.0.0.1:0", "127.0.0.1:1")
        (tmp_path / "sockd.toml").write_text(text)
        daemon.signal(signal.SIGHUP)
        (failed,) = daemon.wait_event("reload_failed")
        assert "service 'echo': listen: changing it needs a restart" in failed["error"]
        assert daemon.stop() == 0


class TestNotify:
    def test_ready_status_and_watchdog(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """READY=1 follows `starting`; STATUS= counts connections; WATCHDOG=1 keeps coming."""
        daemon = sockd(
            "run",
            "--config",
            echo_config(tmp_path, deny='"127.0.0.9"'),
            notify=notifications,
            env={"WATCHDOG_USEC": "200000"},
        )
        ready = notifications.wait_for("READY=1")
        assert notifications.messages[ready] == (
            "READY=1\nSTATUS=0 active, 0 served, 0 denied, 0 errors"
        )
        assert exchange(daemon.address(), b"a") == b"a"
        assert exchange(daemon.address(), b"b", source="127.0.0.9") == b""
        daemon.wait_event("connection_closed")
        notifications.wait_for("STATUS=0 active, 1 served, 1 denied, 0 errors", timeout=5)
        first = notifications.wait_for("WATCHDOG=1")
        notifications.wait_for("WATCHDOG=1", after=first + 1)
        assert daemon.stop() == 0


def blocked_signals(pid: int) -> int:
    """Return the mask of signals process `pid` blocks (its SigBlk), 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    return int(status.split("SigBlk:")[1].split()[0], 16)


def blocks(mask: int, signum: int) -> bool:
    return bool(mask & (1 << (signum - 1)))


def while_starting(daemon: Sockd) -> None:
    """Return once sockd blocks SIGHUP, as it does from its first line until its main loop runs.

    Polled tightly: the window lasts as long as sockd's imports and start-up
    (about 100 ms), so a signal sent now comes before the main loop's handlers.
    """
    deadline = time.monotonic() + 10
    while not blocks(blocked_signals(daemon.pid), signal.SIGHUP):
        assert daemon.process.poll() is None, "\n".join(daemon.lines())
        assert not daemon.events("ready"), "sockd never blocked SIGHUP while it started"
        assert time.monotonic() < deadline, "sockd never blocked SIGHUP while it started"
        time.sleep(0.001)


class TestEarlySignals:
    def test_sighup_while_starting_is_a_reload_once_ready(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A SIGHUP during start-up waits, and is a reload at READY (it killed sockd: exit 129)."""
        daemon = sockd("run", "--config", echo_config(tmp_path), wait=False)
        while_starting(daemon)
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        events = [event["event"] for event in daemon.events()]
        assert events.index("ready") < events.index("reloaded")
        assert exchange(daemon.address(), b"x") == b"x"
        assert daemon.stop() == 0

    def test_sigterm_while_starting_is_a_clean_stop(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A SIGTERM during start-up waits for the main loop, which stops cleanly (exit 0)."""
        daemon = sockd("run", "--config", echo_config(tmp_path), wait=False)
        while_starting(daemon)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0, "\n".join(daemon.lines())
        assert daemon.events("stopping")
        assert daemon.events("stopped")

    def test_nothing_blocked_once_serving(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Once ready, the daemon, its forker and a program it runs block no signal."""
        config = write_config(
            tmp_path / "sockd.toml",
            """
            [[service]]
            name = "mask"
            exec = ["/bin/grep", "SigBlk", "/proc/self/status"]
            listen = ["127.0.0.1:0"]
            """,
        )
        daemon = sockd("run", "--config", config)
        assert blocked_signals(daemon.pid) == 0
        assert blocked_signals(daemon.forker()) == 0
        assert exchange(daemon.address(), b"").split() == [b"SigBlk:", b"0" * 16]
        assert daemon.stop() == 0
