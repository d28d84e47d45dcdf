"""Forker renewal: past `renew_forker_after` long-lived connections, a fresh forker takes over."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

from harness import (
    Notifications,
    Sockd,
    alive,
    children_of,
    connect,
    exchange,
    wait_until,
    write_config,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

ECHO = '[[service]]\nname = "echo"\nhandler = "{handler}"\nlisten = ["127.0.0.1:0"]\n{extra}\n'


def start(
    sockd: Callable[..., Sockd],
    tmp_path: Path,
    daemon: str,
    *,
    handler: str = "echo",
    extra: str = "",
    **kwargs: object,
) -> Sockd:
    text = f"[daemon]\npythonpath = ['{tmp_path}']\n{daemon}\n" + ECHO.format(
        handler=handler, extra=extra
    )
    return sockd("run", "--config", write_config(tmp_path / "sockd.toml", text), **kwargs)


@contextlib.contextmanager
def held(address: str, count: int) -> Iterator[list[socket.socket]]:
    """Open `count` connections, each answered once (so a child serves it), and keep them."""
    clients = []
    try:
        for index in range(count):
            client = connect(address)
            clients.append(client)
            client.sendall(b"%d\n" % index)
            assert client.recv(100) == b"%d\n" % index
        yield clients
    finally:
        for client in clients:
            client.close()


def echo_module(path: Path, prelude: str = "") -> Path:
    """Write a handler module with a line echo `Echo`, after `prelude` (run at its import)."""
    path.write_text(
        f"{prelude}import socketserver\n"
        "class Echo(socketserver.StreamRequestHandler):\n"
        "    def handle(self):\n"
        "        for line in self.rfile:\n"
        "            self.wfile.write(line)\n"
    )
    return path


def answered_soon(client: socket.socket, line: bytes, timeout: float) -> bool:
    client.settimeout(timeout)
    try:
        return client.recv(100) == line
    except TimeoutError:
        return False


def forkers(daemon: Sockd) -> list[int]:
    return [pid for pid, _ in children_of(daemon.pid)]


class TestRenewal:
    def test_fresh_forker_takes_over_and_caps_span_both(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """The crowded forker retires and serves on; its children count toward the new one's cap."""
        daemon = start(
            sockd,
            tmp_path,
            "renew_forker_after = 4",
            extra="max_children = 7",
            notify=notifications,
        )
        address = daemon.address()
        first = daemon.forker()
        with held(address, 4) as old:
            (renewing,) = daemon.wait_event("forker_renewing")
            assert (renewing["forker"], renewing["long_lived"]) == (first, 4)
            (renewed,) = daemon.wait_event("forker_renewed")
            new = renewed["forker"]
            assert (renewed["retired"], new) == (first, renewing["new"])
            assert sorted(forkers(daemon)) == sorted([first, new])
            with held(address, 3):  # 4 + 3: the service's cap
                assert len(children_of(new)) == 3, "new connections go to the new forker"
                assert len(children_of(first)) == 4
                waiting = connect(address)
                waiting.sendall(b"waiting\n")
                assert not answered_soon(waiting, b"waiting\n", 0.5), "the cap spans forkers"
                old[0].close()  # a child of the retired forker ends: room for one
                assert answered_soon(waiting, b"waiting\n", 5)
                waiting.close()
                old[1].sendall(b"still\n")
                assert old[1].recv(100) == b"still\n", "the retired forker serves on"
                for client in old:
                    client.close()
                (retired,) = daemon.wait_event("forker_retired")
                assert (retired["forker"], retired["exit_status"]) == (first, 0)
                assert forkers(daemon) == [new]
                notifications.wait_for("STATUS=3 active, 8 served", after=0)
        assert exchange(address, b"after\n") == b"after\n"
        assert daemon.stop() == 0
        assert daemon.events("stopped")

    def test_a_fresh_forker_serves_the_reloaded_config(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Renewal after a reload starts the fresh forker with the config in force."""
        daemon = start(sockd, tmp_path, "renew_forker_after = 2")
        text = (tmp_path / "sockd.toml").read_text()
        (tmp_path / "sockd.toml").write_text(
            text.replace('handler = "echo"', 'handler = "discard"')
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        first = daemon.forker()
        clients = [connect(daemon.address()) for _ in range(2)]
        try:
            wait_until(lambda: len(children_of(first)) == 2, what="both served")
            (renewed,) = daemon.wait_event("forker_renewed")
            with connect(daemon.address()) as client:
                client.sendall(b"dropped\n")
                wait_until(lambda: children_of(renewed["forker"]), what="served by the new one")
                client.shutdown(socket.SHUT_WR)
                assert client.recv(100) == b"", "discard, not echo"
        finally:
            for client in clients:
                client.close()
        assert daemon.stop() == 0

    def test_pooled_workers_move_to_the_new_forker(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The retired forker's workers finish and leave; the new forker's serve the pool."""
        pooled = (
            '[[service]]\nname = "pool"\nhandler = "echo"\nlisten = ["127.0.0.1:0"]\nworkers = 2'
        )
        daemon = start(sockd, tmp_path, "renew_forker_after = 2", extra=pooled)
        pool_address = daemon.address(1)
        assert exchange(pool_address, b"before\n") == b"before\n"
        with held(daemon.address(), 2):
            (renewed,) = daemon.wait_event("forker_renewed")
            retired = daemon.wait_event("worker_exited", count=2, retired=True)
            assert {event["service"] for event in retired} == {"pool"}
            wait_until(lambda: len(children_of(renewed["forker"])) == 2, what="new workers")
            assert exchange(pool_address, b"after\n") == b"after\n"
            closed = daemon.wait_event("connection_closed", count=2, service="pool")
            assert closed[-1]["pid"] in [pid for pid, _ in children_of(renewed["forker"])]
        assert daemon.stop() == 0

    def test_the_forker_dying_during_a_renewal_is_noticed(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The current forker dies while a fresh one starts: both go, the daemon exits 70."""
        marker = tmp_path / "slow"
        echo_module(
            tmp_path / "slow_import.py",
            f"import os, time\nif os.path.exists({str(marker)!r}):\n    time.sleep(3)\n",
        )
        daemon = start(sockd, tmp_path, "renew_forker_after = 2", handler="slow_import:Echo")
        marker.touch()
        first = daemon.forker()
        with held(daemon.address(), 2):
            (renewing,) = daemon.wait_event("forker_renewing")
            os.kill(first, signal.SIGKILL)
            assert daemon.wait() == 70
        (died,) = daemon.events("forker_died")
        assert died["exit_status"] == -signal.SIGKILL
        assert not daemon.events("crashed")
        assert not daemon.events("forker_renewed")
        wait_until(lambda: not alive(renewing["new"]), what="the fresh forker gone")

    def test_stop_reaches_the_retired_forker(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A stop ends the retired forker's endless wait: its idle children get SIGTERM."""
        daemon = start(sockd, tmp_path, "renew_forker_after = 3\nstop_timeout = 0.5")
        with held(daemon.address(), 3) as clients:
            daemon.wait_event("forker_renewed")
            started = time.monotonic()
            assert daemon.stop() == 0
            assert time.monotonic() - started < 5
            (timeout,) = daemon.events("stop_timeout")
            assert (timeout["children"], timeout["action"]) == (3, "SIGTERM")
            for client in clients:
                assert client.recv(100) == b"", "its child was ended"

    def test_a_failed_renewal_leaves_the_old_forker_serving(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A fresh forker that cannot start is logged; the crowded one serves on, untouched."""
        module = echo_module(tmp_path / "vanishing.py")
        daemon = start(sockd, tmp_path, "renew_forker_after = 2", handler="vanishing:Echo")
        first = daemon.forker()
        module.unlink()  # a fresh forker cannot import the handler any more
        with held(daemon.address(), 2):
            (failed,) = daemon.wait_event("forker_renewal_failed")
            assert "vanishing" in failed["error"]
            assert failed["retry_in"] == 60
            assert forkers(daemon) == [first]
            assert exchange(daemon.address(), b"served\n") == b"served\n"
        assert daemon.stop() == 0
