"""Resource faults: descriptors, fork, disk, a stopped daemon, the forker or the daemon killed.

No descriptors left, fork failing, a full disk under the log, the daemon
stopped, the forker or the daemon killed.

Each fault is real (limits set on the running processes with prlimit, a small
tmpfs, SIGSTOP, SIGKILL); a well-behaved client must be answered within 1 s
wherever sockd can still serve, and nothing sockd started may outlive it.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chaoslib import (
    Background,
    answered,
    config,
    descendants,
    events_in,
    session_members,
    well_behaved,
)
from harness import alive, connect, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from chaoslib import Row
    from harness import Sockd

PING = b"ping\n"


def echo_service(name: str = "echo", extra: str = "") -> str:
    """Return an echo service on a port the kernel picks."""
    return f'name = "{name}"\nhandler = "echo"\nlisten = ["127.0.0.1:0"]\n{extra}'


def address_of(sockd: Sockd, name: str) -> str:
    """Return the listening address of service `name`."""
    (listener,) = [x for x in sockd.events("starting")[0]["listeners"] if x["service"] == name]
    return str(listener["address"])


def prlimit(pid: int, resource: str, soft: int | str) -> None:
    """Set the soft limit `resource` (`nofile`, `nproc`) of a running process."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--{resource}={soft}:"], check=True, timeout=10)


def test_no_descriptors_left_pauses_accepting_and_recovers(
    start: Callable[..., Sockd], scenario: Callable[[str], Row], root: None
) -> None:
    """EMFILE in the forker: programs fail one by one, handlers serve, accept waits and recovers."""
    del root
    row = scenario("EMFILE in the forker")
    sockd = start(
        config(
            echo_service(),
            'name = "cat"\nexec = ["/bin/cat"]\nlisten = ["127.0.0.1:0"]',
        )
    )
    echo, cat = address_of(sockd, "echo"), address_of(sockd, "cat")
    forker = sockd.forker()
    base = len(os.listdir(f"/proc/{forker}/fd"))
    seconds = [well_behaved(cat, PING, PING)]
    # One descriptor to spare: enough to accept and fork, not for a program's pipes.
    prlimit(forker, "nofile", base + 1)
    for _ in range(20):
        with contextlib.suppress(OSError), connect(cat, timeout=2.0) as sock:
            sock.settimeout(2.0)
            sock.recv(1)
        row.attempted += 1
    seconds.append(well_behaved(echo, PING, PING))
    # None to spare: nothing can be accepted; accepting pauses, the kernel queues.
    prlimit(forker, "nofile", base)
    waiting = connect(echo, timeout=5.0)
    time.sleep(2)
    prlimit(forker, "nofile", 1024)
    with waiting:
        waiting.sendall(PING)
        waiting.shutdown(socket.SHUT_WR)
        waiting.settimeout(5.0)
        assert waiting.recv(100) == PING
    seconds += [well_behaved(echo, PING, PING), well_behaved(cat, PING, PING)]
    row.log_lines = len(sockd.lines())
    answered(row, seconds)
    assert sockd.process.poll() is None
    accept_failed = sockd.events("accept_failed")
    assert accept_failed, "EMFILE at accept() is logged"
    # Bound: accepting pauses 0.1 s after a failure: at most 10 lines a second of it.
    assert len(accept_failed) <= 2 / 0.1 + 5
    assert row.log_lines <= row.attempted + len(accept_failed) + 20


def test_fork_failing_for_the_service_user_is_logged_bounded_and_recovers(
    start: Callable[..., Sockd], scenario: Callable[[str], Row], root: None
) -> None:
    """RLIMIT_NPROC reached by `nobody`: the log summarises failed forks, serving resumes.

    The limit is set when sockd starts (prlimit on a running process of another
    user needs CAP_SYS_RESOURCE, which not every test machine grants root).
    """
    del root
    row = scenario("fork failing (RLIMIT_NPROC)")
    # Room for what runs as nobody now, the daemon and its forker, and two connections.
    running = subprocess.run(
        ["ps", "-U", "nobody", "-o", "pid="], capture_output=True, text=True, check=False
    ).stdout.split()
    room = len(running) + 2 + 2
    sockd = start(
        config(echo_service(), daemon='user = "nobody"'), prefix=["prlimit", f"--nproc={room}"]
    )
    echo = address_of(sockd, "echo")
    held = [connect(echo) for _ in range(2)]
    for sock in held:  # each has its child, as nobody, once it answers
        sock.sendall(PING)
        assert sock.recv(100) == PING
    host, _, port = echo.rpartition(":")
    flood = []
    for _ in range(200):  # not waiting: sockd may leave them in the backlog until there is room
        row.attempted += 1
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex((host, int(port)))
        flood.append(sock)
    time.sleep(2)  # sockd tries to serve them (or waits for room: both are fine)
    refused = 0
    for sock in flood:
        with contextlib.suppress(OSError):
            refused += sock.recv(100, socket.MSG_DONTWAIT) == b""
        sock.close()
    began = time.monotonic()
    for sock in held:
        sock.close()

    def drained() -> bool:
        # The flood, queued meanwhile, is served first (its clients are gone by then).
        queued = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        return queued[1] == "0" and not sockd.children()

    wait_until(drained, timeout=30, what="the flood drained")
    fault = time.monotonic() - began + 2
    seconds = [well_behaved(echo, PING, PING) for _ in range(2)]
    row.log_lines = len(sockd.lines())
    row.note = f"{refused} closed unserved"
    answered(row, seconds)
    assert sockd.process.poll() is None
    failed = sockd.events("fork_failed")
    assert failed, "fork failing is logged"
    # Bound: per time, not per failure (forks fail and work in turn while children
    # exit one by one): lines 0.1 s, 0.2 s... apart, then every 5 s; one recovery.
    bound = 6 + fault / 5
    assert len(failed) <= bound, f"{len(failed)} fork_failed lines in {fault:.1f} s"
    assert len(sockd.events("fork_recovered")) <= 1


@pytest.fixture
def small_disk(root: None) -> Iterator[Path]:
    """Mount a 256 KiB tmpfs; unmount it afterwards."""
    del root
    place = Path(tempfile.mkdtemp(prefix="sockd-chaos-disk-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(place)], check=True)
    try:
        yield place
    finally:
        subprocess.run(["umount", "-l", str(place)], check=False)
        place.rmdir()


def test_a_full_disk_under_the_log_file_never_stops_serving(
    scenario: Callable[[str], Row], small_disk: Path, tmp_path: Path
) -> None:
    """`--daemon --log-file` on a full tmpfs: connections are served; logging resumes with space."""
    row = scenario("full disk under --log-file")
    log = small_disk / "sockd.log"
    pidfile = tmp_path / "sockd.pid"
    config_path = tmp_path / "sockd.toml"
    config_path.write_text(config(echo_service()))
    command = [sys.executable, "-m", "sockd", "run", "--config", str(config_path)]
    command += [
        "--log-format",
        "json",
        "--daemon",
        "--pidfile",
        str(pidfile),
        "--log-file",
        str(log),
    ]
    subprocess.run(command, check=True, timeout=30)
    daemon = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip()))
    try:
        wait_until(lambda: events_in(log, "ready"), timeout=30, what="ready in the log file")
        (listener,) = events_in(log, "starting")[0]["listeners"]
        echo = str(listener["address"])
        filler = small_disk / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as full:
            while True:
                full.write(b"\0" * 4096)
                full.flush()
        seconds = [well_behaved(echo, PING, PING) for _ in range(100)]
        time.sleep(1)
        assert alive(daemon)
        filler.unlink()
        seconds.append(well_behaved(echo, PING, PING))
        wait_until(lambda: events_in(log, "connection_closed"), what="logging resumed")
        row.log_lines = len(log.read_text().splitlines())
        answered(row, seconds)
    finally:
        for pid in [daemon, *descendants(daemon)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_stopped_daemon_never_stops_serving_and_loses_no_record_uncounted(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """The daemon SIGSTOPped 5 s under load: clients are answered meanwhile, all is logged after."""
    row = scenario("events reader stopped 5 s")
    sockd = start(
        config(
            echo_service(),
            'name = "pool"\nhandler = "chaos_handlers:LineEcho"\nlisten = ["127.0.0.1:0"]\n'
            "workers = 2",
        )
    )
    targets = [address_of(sockd, "echo"), address_of(sockd, "pool")]
    seconds = []
    with Background(targets, timeout=2.0) as load:
        time.sleep(0.5)
        sockd.signal(signal.SIGSTOP)
        try:
            for _ in range(10):
                time.sleep(0.5)
                for target in targets:
                    try:
                        seconds.append(well_behaved(target, PING, PING, timeout=2.0))
                    except (OSError, AssertionError):
                        seconds.append(math.inf)
        finally:
            sockd.signal(signal.SIGCONT)
        time.sleep(0.5)
    made = load.attempted + len(seconds)
    sockd.stop(timeout=30)
    logged = len(sockd.events("connection_closed"))
    dropped = sum(
        int(str(event.get("count", 0)))
        for event in sockd.events()
        if "dropped" in str(event["event"])
    )
    row.attempted = load.attempted
    row.served = load.served
    row.lost = len(load.failures)
    row.log_lines = len(sockd.lines())
    answered(row, seconds)
    assert load.failures == []
    # Every connection is in the log, or counted in a line saying how many were dropped.
    assert logged + dropped == made, f"{logged} logged + {dropped} dropped, {made} made"


def start_serving_three(
    start: Callable[..., Sockd],
) -> tuple[Sockd, list[str], list[socket.socket]]:
    """Start echo, a program and a pool; hold three connections open to each of the first two."""
    sockd = start(
        config(
            echo_service(),
            'name = "cat"\nexec = ["/bin/cat"]\nlisten = ["127.0.0.1:0"]',
            'name = "pool"\nhandler = "chaos_handlers:LineEcho"\nlisten = ["127.0.0.1:0"]\n'
            "workers = 2",
        )
    )
    targets = [address_of(sockd, name) for name in ("echo", "cat", "pool")]
    held = [connect(target) for target in targets[:2] for _ in range(3)]
    for sock in held:
        sock.sendall(PING)
        assert sock.recv(100) == PING
    return sockd, targets, held


def test_the_forker_killed_under_load_ends_sockd_with_70_leaving_nothing(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """SIGKILL to the forker: the daemon exits 70 and no connection's process outlives it."""
    row = scenario("forker SIGKILLed")
    sockd, targets, held = start_serving_three(start)
    with Background(targets) as load:
        time.sleep(0.5)
        processes = descendants(sockd.pid)
        os.kill(sockd.forker(), signal.SIGKILL)
        status = sockd.wait(timeout=10)
    row.attempted, row.served = load.attempted + len(held), load.served
    row.note = f"{len(processes)} processes, exit {status}"
    try:
        wait_until(lambda: not session_members(sockd.pid), timeout=5, what="nothing left")
    finally:
        for sock in held:
            sock.close()
    assert status == 70
    row.log_lines = len(sockd.lines())


def can_listen(target: str) -> bool:
    """Tell whether a new socket may listen on HOST:PORT (SO_REUSEADDR, as sockd binds)."""
    host, _, port = target.rpartition(":")
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            again.bind((host, int(port)))
        except OSError:
            return False
        again.listen()
    return True


def test_the_daemon_killed_ends_the_forker_and_children_and_frees_the_port(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """SIGKILL to the daemon: the forker, workers and children end; the port can be bound again."""
    row = scenario("daemon SIGKILLed")
    sockd, targets, held = start_serving_three(start)
    with Background(targets) as load:
        time.sleep(0.5)
        processes = descendants(sockd.pid)
        os.kill(sockd.pid, signal.SIGKILL)
        sockd.wait(timeout=10)
    row.attempted, row.served = load.attempted + len(held), load.served
    row.note = f"{len(processes)} processes"
    try:
        wait_until(lambda: not session_members(sockd.pid), timeout=5, what="nothing left")
    finally:
        for sock in held:
            sock.close()
    # The kernel tears the dead processes' sockets down just after they are gone:
    # every port is free within a few seconds, or something still holds it.
    wait_until(lambda: all(can_listen(target) for target in targets), timeout=5, what="ports free")
    row.log_lines = len(sockd.lines())
