"""Pooled services (`workers`): pre-forked workers, their replacement, reload, stop, errors."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from typing import TYPE_CHECKING

from harness import TESTS, connect, exchange, recv_all, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from harness import Notifications, Sockd


def pool_config(tmp_path: Path, handler: str = "echo", extra: str = "", workers: int = 2) -> str:
    return write_config(
        tmp_path / "sockd.toml",
        f"""
        [daemon]
        pythonpath = ["{TESTS}"]
        stop_timeout = 5

        [[service]]
        name = "pool"
        handler = "{handler}"
        listen = ["127.0.0.1:0"]
        workers = {workers}
        {extra}
        """,
    )


def worker_pids(daemon: Sockd) -> set[int]:
    return {pid for pid, _ in daemon.children()}


class TestPool:
    def test_workers_are_forked_at_start_and_serve_one_connection_after_another(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Two workers exist before any connection; they serve many, each logged."""
        daemon = sockd("run", "--config", pool_config(tmp_path))
        workers = wait_until(lambda: worker_pids(daemon) if len(worker_pids(daemon)) == 2 else None)
        for index in range(20):
            assert exchange(daemon.address(), b"%d\n" % index) == b"%d\n" % index
        closed = daemon.wait_event("connection_closed", count=20)
        assert {event["pid"] for event in closed} <= workers
        assert all(event["worker"] and event["exit_code"] == 0 for event in closed)
        assert worker_pids(daemon) == workers  # the same processes, still there

    def test_max_connections_per_child_one_gives_every_connection_a_fresh_process(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """max_connections_per_child = 1: each connection its own process; the pool refills."""
        daemon = sockd(
            "run", "--config", pool_config(tmp_path, extra="max_connections_per_child = 1")
        )
        for index in range(6):
            assert exchange(daemon.address(), b"%d\n" % index) == b"%d\n" % index
        closed = daemon.wait_event("connection_closed", count=6)
        assert len({event["pid"] for event in closed}) == 6
        exits = daemon.wait_event("worker_exited", count=6)
        assert all(event["exit_code"] == 0 and not event["retired"] for event in exits)
        wait_until(lambda: len(worker_pids(daemon)) == 2)

    def test_handler_error_is_logged_and_the_worker_serves_on(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A handler that raises: handler_error, exit_code 1 for that connection, same worker."""
        daemon = sockd("run", "--config", pool_config(tmp_path, "support_handlers:Boom"))
        workers = wait_until(lambda: worker_pids(daemon) if len(worker_pids(daemon)) == 2 else None)
        for _ in range(4):
            assert exchange(daemon.address(), b"x") == b""
        errors = daemon.wait_event("handler_error", count=4)
        assert errors[0]["exception"]["type"] == "ValueError"
        closed = daemon.wait_event("connection_closed", count=4)
        assert [event["exit_code"] for event in closed] == [1] * 4
        assert worker_pids(daemon) == workers
        assert not daemon.events("worker_exited")

    def test_a_killed_worker_is_replaced(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """SIGKILL to a worker: worker_exited names the signal; a new worker takes its place."""
        daemon = sockd("run", "--config", pool_config(tmp_path))
        workers = wait_until(lambda: worker_pids(daemon) if len(worker_pids(daemon)) == 2 else None)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        (exited,) = daemon.wait_event("worker_exited")
        assert (exited["pid"], exited["signal"], exited["exit_code"]) == (victim, "SIGKILL", None)
        wait_until(lambda: len(worker_pids(daemon) - {victim}) == 2, timeout=5)
        assert exchange(daemon.address(), b"again\n") == b"again\n"

    def test_a_connection_is_logged_even_if_its_worker_is_killed_right_after_it(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Killed at once after its connection, a worker has logged it (it batched it: lost)."""
        daemon = sockd("run", "--config", pool_config(tmp_path, workers=1))
        (worker,) = wait_until(lambda: worker_pids(daemon) or None)
        with connect(daemon.address()) as client:
            client.sendall(b"once\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"once\n"
            source = "{}:{}".format(*client.getsockname()[:2])
        os.kill(worker, signal.SIGKILL)
        daemon.wait_event("worker_exited")
        (closed,) = daemon.wait_event("connection_closed")
        # Sent as it ended (exit_code 0), or, if the kill came first, logged from its slot.
        assert (closed["client"], closed["pid"]) == (source, worker)
        assert daemon.stop() == 0
        assert len(daemon.events("connection_closed")) == 1

    def test_the_connection_a_killed_worker_was_serving_is_logged_with_the_signal(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGKILL to a busy worker: its connection is logged once, by the forker, SIGKILL."""
        daemon = sockd("run", "--config", pool_config(tmp_path, workers=1))
        (worker,) = wait_until(lambda: worker_pids(daemon) or None)
        with connect(daemon.address()) as client:
            client.sendall(b"busy\n")
            assert client.recv(10) == b"busy\n"  # the worker is in the middle of it
            source = "{}:{}".format(*client.getsockname()[:2])
            os.kill(worker, signal.SIGKILL)
            assert recv_all(client) == b""
        (closed,) = daemon.wait_event("connection_closed")
        assert (closed["client"], closed["pid"], closed["worker"]) == (source, worker, True)
        assert (closed["signal"], closed["exit_code"]) == ("SIGKILL", None)
        assert closed["duration"] > 0
        assert daemon.stop() == 0
        assert len(daemon.events("connection_closed")) == 1

    def test_reload_replaces_the_workers_and_applies_at_once(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGHUP: new workers with the new handler; the old ones leave (retired)."""
        daemon = sockd("run", "--config", pool_config(tmp_path))
        old = wait_until(lambda: worker_pids(daemon) if len(worker_pids(daemon)) == 2 else None)
        pool_config(tmp_path, "daytime")
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        assert exchange(daemon.address(), b"").endswith(b"\r\n")  # daytime now
        retired = daemon.wait_event("worker_exited", count=2)
        assert {event["pid"] for event in retired} == old
        assert all(event["retired"] for event in retired)
        wait_until(lambda: len(worker_pids(daemon)) == 2 and not worker_pids(daemon) & old)

    def test_stop_lets_the_connection_in_progress_finish(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGTERM: idle workers leave at once; a busy one finishes its connection first."""
        daemon = sockd("run", "--config", pool_config(tmp_path))
        with connect(daemon.address()) as client:
            client.sendall(b"first\n")
            assert client.recv(10) == b"first\n"
            daemon.signal(signal.SIGTERM)
            daemon.wait_event("worker_exited")  # the idle one
            client.sendall(b"last\n")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"last\n"
        assert daemon.wait() == 0
        assert not daemon.events("stop_timeout")

    def test_a_stop_with_a_replacement_due_waits_without_spinning(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A stop while a young worker's replacement waits: the forker waits idle, not spinning.

        Both workers hold a connection; one is killed young (replaced only after 1 s), then
        SIGTERM: the other connection holds the stop while the replacement's time passes.
        """
        daemon = sockd("run", "--config", pool_config(tmp_path))
        workers = wait_until(lambda: worker_pids(daemon) if len(worker_pids(daemon)) == 2 else None)
        clients = [connect(daemon.address()) for _ in workers]
        try:
            for client in clients:
                client.sendall(b"held\n")
                assert client.recv(10) == b"held\n"
            os.kill(min(workers), signal.SIGKILL)
            daemon.wait_event("worker_exited")
            forker = daemon.forker()
            daemon.signal(signal.SIGTERM)
            time.sleep(3)  # the replacement's time passes while the stop waits
            with open(f"/proc/{forker}/stat", encoding="ascii") as stat:
                utime, stime = (int(n) for n in stat.read().rpartition(")")[2].split()[11:13])
            assert utime + stime < os.sysconf("SC_CLK_TCK") // 2  # 0.5 s of CPU in its life
        finally:
            for client in clients:
                client.close()
        assert daemon.wait() == 0

    def test_timeouts_end_the_connection_not_the_worker(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """idle_timeout and max_duration abort one connection; the worker serves the next."""
        config = pool_config(tmp_path, "discard", "idle_timeout = 0.3\nmax_duration = 0.6")
        daemon = sockd("run", "--config", config)
        workers = wait_until(lambda: worker_pids(daemon) if len(worker_pids(daemon)) == 2 else None)
        with connect(daemon.address()) as silent:
            (idle,) = daemon.wait_event("idle_timeout")
            assert silent.recv(10) == b""
        with connect(daemon.address()) as chatty:  # never idle, but too long
            deadline = time.monotonic() + 5
            with contextlib.suppress(OSError):
                while time.monotonic() < deadline and not daemon.events("max_duration_exceeded"):
                    chatty.sendall(b"x")
                    time.sleep(0.1)
            (overtime,) = daemon.wait_event("max_duration_exceeded")
        assert idle["seconds"] == 0.3
        assert overtime["action"] == "abort"
        assert worker_pids(daemon) == workers


class TestPoolStatus:
    def test_status_counts_pooled_connections(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """STATUS= counts what the workers served."""
        daemon = sockd("run", "--config", pool_config(tmp_path), notify=notifications)
        for _ in range(3):
            exchange(daemon.address(), b"x\n")
        notifications.wait_for("STATUS=0 active, 3 served, 0 denied, 0 errors")


class TestPoolListeners:
    def test_a_service_with_two_listeners_has_its_number_of_workers(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Two workers with two listen addresses: two processes, each serving both."""
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [[service]]
            name = "pool"
            handler = "echo"
            listen = ["127.0.0.1:0", "unix:{tmp_path}/pool.sock"]
            workers = 2
            """,
        )
        daemon = sockd("run", "--config", config)
        wait_until(lambda: len(worker_pids(daemon)) == 2)
        for _ in range(5):
            assert exchange(daemon.address(0), b"tcp\n") == b"tcp\n"
            assert exchange(daemon.address(1), b"unix\n") == b"unix\n"
        closed = daemon.wait_event("connection_closed", count=10)
        assert {event["pid"] for event in closed} <= worker_pids(daemon)
        assert any(event["client"].startswith("unix:uid=") for event in closed)
        assert len(worker_pids(daemon)) == 2

    def test_repeated_refusals_are_summed_up_by_workers_too(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A denied address knocking 60 times: one connection_denied, then one summary."""
        config = pool_config(tmp_path, extra='deny = ["127.0.0.2"]')
        daemon = sockd("run", "--config", config)
        for _ in range(60):
            assert exchange(daemon.address(), b"x\n", source="127.0.0.2") == b""
        firsts = daemon.wait_event("connection_denied")
        assert 1 <= len(firsts) <= 2  # the first per worker

        def summed() -> int:
            return sum(event["count"] for event in daemon.events("connections_denied"))

        # Each worker sums up its own window (10 s); both windows have ended within 25 s.
        wait_until(lambda: summed() + len(daemon.events("connection_denied")) == 60, timeout=25)
        assert len(daemon.events("connection_denied")) <= 2
        assert {event["source"] for event in daemon.events("connections_denied")} == {"127.0.0.2"}


WITNESS_HANDLER = '''"""Read until the connection ends; write down what ended it."""

import socketserver


class Witness(socketserver.BaseRequestHandler):
    """Say "ready", read to the end, then append to WITNESS how it ended: eof, or an exception."""

    def handle(self) -> None:
        """Read until the end, and write it down."""
        self.request.sendall(b"ready\\n")
        outcome = "eof"
        try:
            while self.request.recv(1024):
                pass
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            with open(WITNESS, "a") as witness:
                witness.write(outcome + "\\n")
'''


class TestCutShort:
    """A connection cut short in a worker ends by its socket; nothing is raised into the handler."""

    def config(self, tmp_path: Path, extra: str, stop_timeout: float = 5) -> tuple[str, Path]:
        witness = tmp_path / "witness"
        module = WITNESS_HANDLER.replace("WITNESS", repr(str(witness)), 1)
        module = module.replace("open(WITNESS", f"open({str(witness)!r}")
        (tmp_path / "witness_handler.py").write_text(module)
        config = write_config(
            tmp_path / "sockd.toml",
            f"""
            [daemon]
            pythonpath = ["{tmp_path}"]
            stop_timeout = {stop_timeout}

            [[service]]
            name = "pool"
            handler = "witness_handler:Witness"
            listen = ["127.0.0.1:0"]
            workers = 1
            {extra}
            """,
        )
        return config, witness

    def test_max_duration_shuts_the_connection_down(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Past max_duration the handler reads the end of its connection; the worker serves on."""
        config, witness = self.config(tmp_path, "max_duration = 0.5")
        daemon = sockd("run", "--config", config)
        workers = wait_until(lambda: worker_pids(daemon) or None)
        with connect(daemon.address()) as client:
            assert client.recv(10) == b"ready\n"
            (overtime,) = daemon.wait_event("max_duration_exceeded")
            assert client.recv(10) == b""
        wait_until(witness.exists)
        assert witness.read_text().split() == ["eof"]
        assert overtime["action"] == "abort"
        assert not daemon.events("handler_error")
        (closed,) = daemon.wait_event("connection_closed")
        assert closed["exit_code"] == 1
        assert worker_pids(daemon) == workers
        assert exchange(daemon.address(), b"") == b"ready\n"

    def test_a_second_sigterm_shuts_the_connection_down(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """At stop_timeout the busy worker's connection ends by its socket; the worker leaves."""
        # Not much shorter: two SIGTERMs that reach a worker not scheduled in between are one.
        config, witness = self.config(tmp_path, "", stop_timeout=1.0)
        daemon = sockd("run", "--config", config)
        with connect(daemon.address()) as client:
            assert client.recv(10) == b"ready\n"
            daemon.signal(signal.SIGTERM)
            (stop,) = daemon.wait_event("stop_timeout")
            assert client.recv(10) == b""
        assert daemon.wait() == 0
        assert stop["action"] == "SIGTERM"
        assert witness.read_text().split() == ["eof"]
        assert not daemon.events("handler_error")
        (exited,) = daemon.events("worker_exited")
        assert exited["signal"] is None
