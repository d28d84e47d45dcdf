"""Tests of sockd.supervisor.notify: what reaches a real NOTIFY_SOCKET, and when."""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING

import pytest
import structlog
from harness import Notifications

from sockd.supervisor.notify import Notifier, status_text

if TYPE_CHECKING:
    from pathlib import Path


class TestNotifier:
    def test_no_socket_is_a_no_op(self) -> None:
        """Without NOTIFY_SOCKET nothing is sent and nothing fails."""
        notifier = Notifier({}, os.getpid())
        assert not notifier.enabled
        notifier.ready("x")
        notifier.stopping()
        assert notifier.tick() > 0

    def test_variables_are_removed(self, notifications: Notifications) -> None:
        """Children never inherit NOTIFY_SOCKET or WATCHDOG_*."""
        environ = {
            "NOTIFY_SOCKET": str(notifications.path),
            "WATCHDOG_USEC": "1000000",
            "WATCHDOG_PID": str(os.getpid()),
            "OTHER": "1",
        }
        Notifier(environ, os.getpid()).close()
        assert environ == {"OTHER": "1"}
        assert "NOTIFY_SOCKET" not in os.environ

    def test_ready_reload_stop(self, notifications: Notifications) -> None:
        """READY=1 carries STATUS=; RELOADING=1 carries MONOTONIC_USEC= of CLOCK_MONOTONIC."""
        notifier = Notifier({"NOTIFY_SOCKET": str(notifications.path)}, os.getpid())
        notifier.ready("0 active")
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        notifier.stopping()
        notifications.wait_for("STOPPING=1")
        ready, reloading, stopping = notifications.messages
        assert ready == "READY=1\nSTATUS=0 active"
        first, usec = reloading.split("\n")
        assert first == "RELOADING=1"
        assert before <= int(usec.removeprefix("MONOTONIC_USEC=")) <= before + 5_000_000
        assert stopping == "STOPPING=1"
        notifier.close()

    def test_store_gives_systemd_the_descriptors_under_their_name(
        self, notifications: Notifications
    ) -> None:
        """FDSTORE set: what was kept under the name is dropped, then the descriptors are sent."""
        environ = {"NOTIFY_SOCKET": str(notifications.path), "FDSTORE": "128"}
        notifier = Notifier(environ, os.getpid())
        assert environ == {}
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            notifier.store("sockd-bound/a", [listener.fileno()])
            notifier.store("sockd-bound/gone", [])
            remove = notifications.socket.recv(4096)
            message, fds, _, _ = socket.recv_fds(notifications.socket, 4096, 4)
            assert (remove, message) == (
                b"FDSTOREREMOVE=1\nFDNAME=sockd-bound/a",
                b"FDSTORE=1\nFDNAME=sockd-bound/a",
            )
            (fd,) = fds
            with socket.socket(fileno=fd) as received:
                assert received.getsockname() == listener.getsockname()
        assert notifications.poll() == ["FDSTOREREMOVE=1\nFDNAME=sockd-bound/gone"]
        notifier.close()

    def test_store_without_fdstore_sends_nothing(self, notifications: Notifications) -> None:
        """Without FDSTORE (systemd keeps nothing for us, or is older than 254) nothing is sent."""
        notifier = Notifier({"NOTIFY_SOCKET": str(notifications.path)}, os.getpid())
        with socket.socket() as listener:
            notifier.store("sockd-bound/a", [listener.fileno()])
        notifier.stopping()
        assert notifications.poll() == ["STOPPING=1"]
        notifier.close()

    def test_status_at_most_once_a_second(self, notifications: Notifications) -> None:
        """Queued STATUS= updates are coalesced: the newest is sent when a second has passed."""
        notifier = Notifier({"NOTIFY_SOCKET": str(notifications.path)}, os.getpid())
        notifier.ready("first")
        for index in range(5):
            notifier.status(f"update {index}")
            notifier.tick()
        notifications.wait_for("READY=1")
        assert notifications.poll() == ["READY=1\nSTATUS=first"]
        now = time.monotonic()
        wait = notifier.tick(now=now)
        assert 0 < wait <= 1.0
        assert notifier.tick(now=now + wait - 0.01) > 0  # not yet
        assert notifications.poll() == ["READY=1\nSTATUS=first"]
        notifier.tick(now=now + 1.0)  # a second after `now`, which came after READY=1
        notifications.wait_for("STATUS=update 4", after=1)
        assert notifications.poll()[1:] == ["STATUS=update 4"]
        notifier.close()

    def test_watchdog_at_half_the_interval(self, notifications: Notifications) -> None:
        """WATCHDOG=1 goes out at once, then every WATCHDOG_USEC/2."""
        environ = {"NOTIFY_SOCKET": str(notifications.path), "WATCHDOG_USEC": "400000"}
        notifier = Notifier(environ, os.getpid())
        assert notifier.watchdog_interval == pytest.approx(0.2)
        assert notifier.tick() == pytest.approx(0.2, abs=0.05)
        notifications.wait_for("WATCHDOG=1")
        notifier.close()

    @pytest.mark.parametrize(
        ("usec", "pid", "interval"),
        [
            ("400000", "{pid}", 0.2),
            ("400000", "0{pid}", 0.2),  # leading zeros: the same number
            ("1", "", 0.01),  # no busy loop: at most 100 a second
            ("\u00b2", "", None),  # a digit to str.isdigit(), not to int()
            ("9" * 5000, "", None),  # more digits than int() takes
            (" 400000", "", None),
            ("400000", "\u00b2", None),
            ("400000", "9" * 5000, None),
        ],
    )
    def test_watchdog_variables_are_ascii_numbers(
        self, notifications: Notifications, usec: str, pid: str, interval: float | None
    ) -> None:
        """WATCHDOG_USEC and WATCHDOG_PID are read as ASCII digits; garbage is no watchdog."""
        environ = {"NOTIFY_SOCKET": str(notifications.path), "WATCHDOG_USEC": usec}
        if pid:
            environ["WATCHDOG_PID"] = pid.format(pid=os.getpid())
        notifier = Notifier(environ, os.getpid())
        assert notifier.watchdog_interval == (pytest.approx(interval) if interval else None)
        notifier.close()

    def test_watchdog_withheld_when_unhealthy(self, notifications: Notifications) -> None:
        """While the daemon is not healthy (a silent forker), WATCHDOG=1 is not sent."""
        environ = {"NOTIFY_SOCKET": str(notifications.path), "WATCHDOG_USEC": "100000"}
        notifier = Notifier(environ, os.getpid())
        now = time.monotonic()
        notifier.tick(healthy=False, now=now)
        notifier.tick(healthy=False, now=now + 0.06)  # each past the 0.05 s interval
        notifier.ready("x")
        notifications.wait_for("READY=1")
        assert not [m for m in notifications.poll() if "WATCHDOG" in m]
        notifier.tick(healthy=True, now=now + 0.12)
        notifications.wait_for("WATCHDOG=1")
        notifier.close()

    def test_watchdog_for_another_pid(self, notifications: Notifications) -> None:
        """WATCHDOG_PID naming another process disables the watchdog."""
        environ = {
            "NOTIFY_SOCKET": str(notifications.path),
            "WATCHDOG_USEC": "400000",
            "WATCHDOG_PID": "1",
        }
        notifier = Notifier(environ, os.getpid())
        assert notifier.watchdog_interval is None
        notifier.close()

    def test_failed_send_is_logged_not_raised(self, tmp_path: Path) -> None:
        """When systemd's socket goes away, sending logs `notify_failed` and goes on."""
        with Notifications(tmp_path / "gone.sock") as notifications:
            notifier = Notifier({"NOTIFY_SOCKET": str(notifications.path)}, os.getpid())
        with structlog.testing.capture_logs() as logs:
            notifier.ready("x")
        assert [entry["event"] for entry in logs] == ["notify_failed"]
        notifier.close()

    def test_a_full_socket_neither_blocks_nor_floods_the_log(
        self, notifications: Notifications
    ) -> None:
        """A reader that never reads: sends fail at once, and notify_failed is logged once."""
        notifier = Notifier({"NOTIFY_SOCKET": str(notifications.path)}, os.getpid())
        with structlog.testing.capture_logs() as logs:
            for number in range(200):  # far more than the socket's queue holds
                notifier.send(f"STATUS={number}")
        failed = [entry for entry in logs if entry["event"] == "notify_failed"]
        assert len(failed) == 1
        assert failed[0]["count"] == 1
        assert notifier._failures.unlogged > 100
        notifier.close()

    def test_a_state_that_finds_the_socket_full_is_sent_later(
        self, notifications: Notifications
    ) -> None:
        """READY=1 and STOPPING=1 are kept while the socket is full, then sent in order."""
        notifier = Notifier({"NOTIFY_SOCKET": str(notifications.path)}, os.getpid())
        with structlog.testing.capture_logs():
            number = 0
            while notifier.send(f"STATUS={number}"):  # fill it
                number += 1
            notifier.ready("serving")
            notifier.stopping()
            assert notifier.tick() < 0.2  # a retry is due soon
        notifications.poll()  # the reader catches up
        notifier.tick()
        states = [m.split("\n")[0] for m in notifications.poll() if not m.startswith("STATUS")]
        assert states == ["READY=1", "STOPPING=1"]
        notifier.close()


class TestStatusText:
    def test_services_at_a_cap_are_named(self) -> None:
        """STATUS= names the services that accept no more now, after the counters."""
        assert status_text(3, 120, 2, 1) == "3 active, 120 served, 2 denied, 1 errors"
        assert status_text(64, 9, 0, 0, ["git", "ssh"]) == (
            "64 active, 9 served, 0 denied, 0 errors, at cap: git, ssh"
        )
