"""Pooled Python handlers on datagram sockets (`workers` on udp:): serving, admission, lifecycle."""

from __future__ import annotations

import json
import os
import signal
import socket
from typing import TYPE_CHECKING

from harness import TESTS, WAIT, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path
    from typing import Any

    from harness import Sockd


REPORT = "support_handlers:DatagramReport"


def config(tmp_path: Path, handler: str = REPORT, extra: str = "") -> str:
    return write_config(
        tmp_path / "sockd.toml",
        f"""
        [daemon]
        pythonpath = ["{TESTS}"]
        stop_timeout = 5

        [[service]]
        name = "pool"
        handler = "{handler}"
        listen = ["udp:127.0.0.1:0"]
        workers = 2
        {extra}
        """,
    )


def udp_port(daemon: Sockd) -> int:
    return int(daemon.address().rpartition(":")[2])


def client(source: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, port))
    sock.settimeout(WAIT)
    return sock


def ask(port: int, data: bytes = b"?", source: str = "127.0.0.1") -> dict[str, Any]:
    """Send one datagram from `source`; return the handler's report (see DatagramReport)."""
    with client(source) as sock:
        sock.sendto(data, ("127.0.0.1", port))
        answer, sender = sock.recvfrom(65536)
        assert sender == ("127.0.0.1", port)
        report: dict[str, Any] = json.loads(answer.removesuffix(b" held"))
        assert report["client"] == list(sock.getsockname())
    report["held"] = answer.endswith(b" held")
    return report


def pending(sock: socket.socket) -> int:
    """Return how many answers wait on `sock`, reading them."""
    sock.setblocking(False)
    count = 0
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return count
        count += 1


def workers_of(daemon: Sockd) -> set[int]:
    return {pid for pid, _ in daemon.children()}


def two_workers(daemon: Sockd) -> set[int]:
    pids: set[int] = wait_until(lambda: len(workers_of(daemon)) == 2 and workers_of(daemon))
    return pids


class TestServing:
    def test_two_workers_serve_datagrams_from_several_sources(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Each datagram: (data, socket) and its sender, answered by one of the 2 workers."""
        daemon = sockd("run", "--config", config(tmp_path))
        workers = two_workers(daemon)
        port = udp_port(daemon)
        reports = [ask(port, b"%d" % n, f"127.0.0.{2 + n % 5}") for n in range(20)]
        assert [report["data"] for report in reports] == [str(n) for n in range(20)]
        assert all(report["type"] == socket.SOCK_DGRAM for report in reports)
        pids = {report["pid"] for report in reports}
        assert pids <= workers
        assert 1 <= len(pids) <= 2
        closed = daemon.wait_event("connection_closed", count=20)
        assert all(event["worker"] and event["exit_code"] == 0 for event in closed)
        assert {event["pid"] for event in closed} == pids
        assert {event["client"].partition(":")[0] for event in closed} == {
            f"127.0.0.{n}" for n in range(2, 7)
        }
        assert workers_of(daemon) == workers  # the same processes: nothing forked per datagram

    def test_a_unix_datagram_socket_is_pooled_too(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """unix-dgram: a worker answers the sender's bound path; logged as unix:PATH."""
        path = config(tmp_path)
        text = (tmp_path / "sockd.toml").read_text()
        (tmp_path / "sockd.toml").write_text(
            text.replace("udp:127.0.0.1:0", f"unix-dgram:{tmp_path}/pool.d")
        )
        daemon = sockd("run", "--config", path)
        workers = two_workers(daemon)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(tmp_path / "client.d"))
            sock.settimeout(WAIT)
            sock.sendto(b"unix", str(tmp_path / "pool.d"))
            report = json.loads(sock.recv(65536))
        assert (report["data"], report["client"]) == ("unix", list(str(tmp_path / "client.d")))
        assert report["pid"] in workers
        (closed,) = daemon.wait_event("connection_closed")
        assert closed["pid"] == report["pid"]
        assert closed["client"] == "unix"
        assert closed["peer_path"] == str(tmp_path / "client.d")

    def test_max_connections_per_child_counts_datagrams(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """max_connections_per_child = 1: each datagram is served by a fresh worker."""
        daemon = sockd("run", "--config", config(tmp_path, extra="max_connections_per_child = 1"))
        port = udp_port(daemon)
        pids = {ask(port)["pid"] for _ in range(4)}
        assert len(pids) == 4
        exits = daemon.wait_event("worker_exited", count=4)
        assert all(event["exit_code"] == 0 and not event["retired"] for event in exits)
        wait_until(lambda: len(workers_of(daemon)) == 2)

    def test_a_killed_worker_is_replaced(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """SIGKILL to a worker: worker_exited names it; a new one reads the socket too."""
        daemon = sockd("run", "--config", config(tmp_path))
        workers = two_workers(daemon)
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        (exited,) = daemon.wait_event("worker_exited")
        assert (exited["pid"], exited["signal"]) == (victim, "SIGKILL")
        wait_until(lambda: len(workers_of(daemon) - {victim}) == 2, timeout=5)
        port = udp_port(daemon)
        assert {ask(port)["pid"] for _ in range(4)} <= workers_of(daemon) - {victim}

    def test_max_duration_kills_a_handler_that_does_not_return(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Past max_duration (a datagram has nothing to cut), then 5 s: the worker is killed."""
        extra = "max_duration = 0.2"
        daemon = sockd("run", "--config", config(tmp_path, "support_handlers:DatagramHold", extra))
        workers = two_workers(daemon)
        port = udp_port(daemon)
        with client() as sock:
            sock.sendto(f"hold:{tmp_path / 'never'}".encode(), ("127.0.0.1", port))
            (exited,) = daemon.wait_event("worker_exited", timeout=15)
        assert exited["pid"] in workers
        assert exited["signal"] == "SIGALRM"
        (closed,) = daemon.wait_event("connection_closed")
        assert (closed["pid"], closed["signal"]) == (exited["pid"], "SIGALRM")
        wait_until(lambda: len(workers_of(daemon) - {exited["pid"]}) == 2, timeout=5)
        assert ask(port)["data"] == "?"

    def test_builtin_and_program_are_not_pooled(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A pool of a built-in, or of a program, over udp: sockd does not start (exit 78): why."""
        daemon = sockd("run", "--config", config(tmp_path, "daytime"), wait=False)
        assert daemon.wait() == 78
        assert "not with a built-in over udp: (answered in the forker" in "\n".join(daemon.lines())
        text = (
            (tmp_path / "sockd.toml").read_text().replace('handler = "daytime"', 'exec = ["cat"]')
        )
        (tmp_path / "sockd.toml").write_text(text)
        daemon = sockd("run", "--config", str(tmp_path / "sockd.toml"), wait=False)
        assert daemon.wait() == 78
        assert "workers: applies to handlers; a program runs" in "\n".join(daemon.lines())


class TestAdmission:
    def test_deny_and_the_loop_check_apply_in_workers(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A denied source, and the service's own port as source, get no answer; others do."""
        daemon = sockd("run", "--config", config(tmp_path, extra='deny = ["127.0.0.2"]'))
        port = udp_port(daemon)
        with client("127.0.0.2") as denied, client("127.0.0.3", port) as looped:
            denied.sendto(b"denied", ("127.0.0.1", port))
            looped.sendto(b"looped", ("127.0.0.1", port))
            assert ask(port, source="127.0.0.4")["data"] == "?"
            (refused,) = daemon.wait_event("connection_denied")
            assert refused["reason"] == "deny 127.0.0.2/32"
            assert daemon.stop() == 0  # the workers sum up their drops as they leave
            assert pending(denied) == pending(looped) == 0
        (loop,) = daemon.events("connections_denied", reason="source_port")
        assert loop["count"] == 1
        assert len(daemon.events("connection_closed")) == 1

    def test_a_source_rate_is_shared_among_the_workers(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """per_source_rate: a flood gets at most its burst (half each worker); others are served."""
        limits = "per_source_rate = 0.001\nper_source_burst = 4"
        daemon = sockd("run", "--config", config(tmp_path, extra=limits))
        two_workers(daemon)
        port = udp_port(daemon)
        with client("127.0.0.2") as flood:
            for _ in range(100):
                flood.sendto(b"flood", ("127.0.0.1", port))
            assert ask(port, source="127.0.0.3")["data"] == "?"
            daemon.wait_event("connection_denied", reason="per_source_rate")
            assert daemon.stop() == 0
            answers = pending(flood)
        assert 2 <= answers <= 4


class TestLifecycle:
    def test_reload_replaces_the_workers(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """SIGHUP: new workers with the new handler; the old ones leave, retired."""
        daemon = sockd("run", "--config", config(tmp_path))
        old = two_workers(daemon)
        port = udp_port(daemon)
        assert not ask(port)["held"]
        config(tmp_path, "support_handlers:DatagramHold")
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        retired = daemon.wait_event("worker_exited", count=2)
        assert {event["pid"] for event in retired} == old
        assert all(event["retired"] for event in retired)
        report = ask(port)
        assert report["held"]
        assert report["pid"] not in old

    def test_stop_lets_the_datagram_in_progress_finish(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGTERM: the idle worker leaves at once; the busy one answers its datagram first."""
        daemon = sockd("run", "--config", config(tmp_path, "support_handlers:DatagramHold"))
        two_workers(daemon)
        port = udp_port(daemon)
        release = tmp_path / "release"
        with client() as sock:
            sock.sendto(f"hold:{release}".encode(), ("127.0.0.1", port))
            wait_until((tmp_path / "release.busy").exists)
            daemon.signal(signal.SIGTERM)
            daemon.wait_event("worker_exited")  # the idle one
            release.touch()
            answer = sock.recv(65536)
        assert answer.endswith(b" held")
        assert daemon.wait() == 0
        assert not daemon.events("stop_timeout")
        (closed,) = daemon.events("connection_closed")
        assert closed["exit_code"] == 0
