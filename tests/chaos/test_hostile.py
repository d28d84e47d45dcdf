"""Hostile clients: slowloris, floods of resets and of half-open handshakes, and worse.

Slowloris, connect-and-reset floods, half-open handshakes, clients that never
read, a UNIX peer that forges its name.

In each, a well-behaved client (from another source address) must be answered
within 1 s while the attack goes on, and the log must stay within the bound
the scenario states.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self

import pytest
from chaoslib import answered, config, in_netns
from harness import connect, recv_all, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from chaoslib import Row
    from harness import Sockd

BUILTINS = ("echo", "discard", "daytime", "chargen", "time")
POLITE = "127.0.0.2"  # the well-behaved client's source; attackers use others
ATTACK_SECONDS = 5.0
PROBE_TIMEOUT = 5.0  # a polite client gives up then (far past the 1 s it must be answered in)


def service(name: str, handler: str, listen: str = "127.0.0.1:0", extra: str = "") -> str:
    """Return one `[[service]]` body."""
    return f'name = "{name}"\nhandler = "{handler}"\nlisten = ["{listen}"]\n{extra}'


def addresses(sockd: Sockd) -> dict[str, str]:
    """Return each service's (first) listening address, from the `starting` event."""
    found: dict[str, str] = {}
    for listener in sockd.events("starting")[0]["listeners"]:
        found.setdefault(listener["service"], listener["address"])
    return found


def polite(
    kind: str, address: str, source: str | None = POLITE, timeout: float = PROBE_TIMEOUT
) -> float:
    """Be a well-behaved client of a `kind` of service; return how long its answer took."""
    started = time.monotonic()
    with connect(address, source=source, timeout=timeout) as sock:
        if kind in ("echo", "lines"):
            sock.sendall(b"ping\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b"ping\n"
        elif kind == "discard":
            sock.sendall(b"gone\n")
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        elif kind == "chargen":
            line = b""
            while not line.endswith(b"\r\n"):
                line += sock.recv(1)
            assert len(line) == 74, line
        else:
            answer = recv_all(sock)
            assert answer.endswith(b"\r\n") if kind == "daytime" else len(answer) == 4, answer
    return time.monotonic() - started


class Slowloris:
    """Connections that send one byte per second and never finish."""

    def __init__(self, targets: Sequence[tuple[str, str | None]]) -> None:
        self.sockets: list[socket.socket] = []
        for address, source in targets:
            with contextlib.suppress(OSError):
                self.sockets.append(connect(address, source=source, timeout=5.0))
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._drip, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()
        for sock in self.sockets:
            sock.close()

    def _drip(self) -> None:
        while not self.stopping.is_set():
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.send(b"x", socket.MSG_DONTWAIT)
            self.stopping.wait(1.0)


def test_slowloris_from_one_source_leaves_every_service_answering(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """32 slowloris connections to each built-in and a handler; `per_source` holds them at 8."""
    row = scenario("slowloris, 1 source, every service")
    limits = "per_source = 8\nidle_timeout = 30"
    kinds = {**{name: name for name in BUILTINS}, "lines": "lines"}
    sockd = start(
        config(
            *(service(name, name, extra=limits) for name in BUILTINS),
            service("lines", "chaos_handlers:LineEcho", extra=limits),
        )
    )
    where = addresses(sockd)
    targets = [(where[name], "127.0.0.1") for name in kinds for _ in range(32)]
    with Slowloris(targets):
        time.sleep(ATTACK_SECONDS / 2)
        seconds = {name: polite(kind, where[name]) for name, kind in kinds.items()}
        time.sleep(ATTACK_SECONDS / 2)
    row.attempted += len(targets)
    row.log_lines = len(sockd.lines())
    answered(row, seconds)
    # Bound: a line per connection, and per (service, reason, source) a refusal and a summary.
    assert row.log_lines <= len(targets) + len(seconds) + 2 * len(kinds) + 10


def test_slowloris_from_many_sources_against_one_service_leaves_the_others_answering(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """160 slowloris connections from 80 sources to a handler: the built-ins still answer."""
    row = scenario("slowloris, 80 sources, 1 service")
    sockd = start(
        config(
            *(service(name, name) for name in BUILTINS),
            service("lines", "chaos_handlers:LineEcho"),
        )
    )
    where = addresses(sockd)
    targets = [(where["lines"], f"127.3.0.{1 + n % 80}") for n in range(160)]
    with Slowloris(targets):
        time.sleep(ATTACK_SECONDS / 2)
        seconds = {}
        with contextlib.suppress(OSError, AssertionError):
            for name in BUILTINS:
                seconds[name] = math.inf  # until answered
                seconds[name] = polite(name, where[name])
    row.attempted += len(targets)
    row.log_lines = len(sockd.lines())
    answered(row, seconds)
    assert sockd.events("connection_denied") or any(
        "max_children" in line for line in sockd.lines()
    ), "reaching a cap is logged"
    assert row.log_lines <= len(targets) + len(seconds) + 20


def test_ten_thousand_connect_and_reset_log_no_error_and_stay_bounded(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """10,000 clients connect to echo and reset at once: no error logged, a polite client served."""
    row = scenario("10,000 connect-and-reset")
    sockd = start(config(service("echo", "echo")))
    address = addresses(sockd)["echo"]
    host, _, port = address.rpartition(":")
    total, threads = 10_000, 4

    def attack(part: int) -> None:
        # Each connection established (connect() waits while the backlog is full), then reset.
        for n in range(total // threads):
            sock = socket.socket()
            sock.settimeout(PROBE_TIMEOUT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.bind((f"127.4.{part}.{1 + n % 250}", 0))
                sock.connect((host, int(port)))
            sock.close()  # linger 0: a reset

    attackers = [threading.Thread(target=attack, args=(part,)) for part in range(threads)]
    for thread in attackers:
        thread.start()
    seconds: list[float] = []
    began = time.monotonic()
    while any(thread.is_alive() for thread in attackers):
        try:
            seconds.append(polite("echo", address, timeout=PROBE_TIMEOUT))
        except OSError:
            seconds.append(math.inf)
        time.sleep(0.5)
    attack_seconds = time.monotonic() - began
    row.attempted = total
    row.log_lines = len(sockd.lines())
    row.note = f"{attack_seconds:.0f} s"
    errors = [line for line in sockd.events() if line["level"] in ("error", "critical")]
    answered(row, seconds)
    assert errors == [], f"{len(errors)} error lines, the first: {errors[:1]}"
    # Bound: one connection_closed per connection served (a reset one waiting in the
    # backlog is dropped unforked, and counted in a connections_denied summary with
    # reason peer_reset: one line per 10 s) and a few lines of start-up.
    assert row.log_lines <= row.attempted + 10


NETNS_ADDRESS = "10.88.0.1"  # sockd's address in the namespace (on its loopback)
HOLE = ["dev", "hole0", "nud", "permanent"]
SPOOFED = "10.77"  # half-open clients' /16: routed to a peer that never answers


@pytest.fixture
def netns(root: None) -> Iterator[str]:
    """Make a network namespace where SYN-ACKs to 10.77.0.0/16 vanish (no RST comes back)."""
    del root
    name = f"sockd-chaos-{os.getpid()}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "-n", name, "addr", "add", f"{NETNS_ADDRESS}/32", "dev", "lo"],
        # A veth pair whose far end drops what is sent to a MAC nobody has.
        ["ip", "-n", name, "link", "add", "hole0", "type", "veth", "peer", "name", "hole1"],
        ["ip", "-n", name, "link", "set", "hole0", "up"],
        ["ip", "-n", name, "link", "set", "hole1", "up"],
        ["ip", "-n", name, "addr", "add", "10.99.0.1/24", "dev", "hole0"],
        ["ip", "-n", name, "neigh", "add", "10.99.0.2", "lladdr", "02:00:00:00:00:02", *HOLE],
        ["ip", "-n", name, "route", "add", f"{SPOOFED}.0.0/16", "via", "10.99.0.2"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=10)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def syn(source: str, destination: str, port: int, sequence: int) -> bytes:
    """Return an IPv4 packet carrying a bare TCP SYN (the kernel fills in the IP checksum)."""
    tcp = struct.pack(
        "!HHIIBBHHH", 40000 + sequence % 20000, port, sequence, 0, 0x50, 0x02, 65535, 0, 0
    )
    pseudo = (
        socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!BBH", 0, 6, 20)
    )
    total = sum(struct.unpack("!16H", pseudo + tcp))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    tcp = tcp[:16] + struct.pack("!H", ~total & 0xFFFF) + tcp[18:]
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        40,
        sequence & 0xFFFF,
        0,
        64,
        6,
        0,
        socket.inet_aton(source),
        socket.inet_aton(destination),
    )
    return header + tcp


def test_two_thousand_half_open_connections_leave_the_service_answering(
    start: Callable[..., Sockd], scenario: Callable[[str], Row], netns: str
) -> None:
    """2,000 SYNs that never complete (from spoofed sources): a real client is still served."""
    row = scenario("2,000 half-open (SYN only)")
    sockd = start(
        config(service("echo", "echo", listen=f"{NETNS_ADDRESS}:0")),
        prefix=["ip", "netns", "exec", netns],
    )
    address = addresses(sockd)["echo"]
    port = int(address.rpartition(":")[2])
    before = len(sockd.lines())
    with in_netns(netns):
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        first = socket.socket()
    with raw:
        for n in range(2000):
            source = f"{SPOOFED}.{n // 250}.{1 + n % 250}"
            raw.sendto(syn(source, NETNS_ADDRESS, port, n), (NETNS_ADDRESS, 0))
    with in_netns(netns):
        half_open = subprocess.run(
            ["ss", "-Htn", "state", "syn-recv"], capture_output=True, text=True, check=True
        ).stdout.count("\n")
    seconds = {}
    with first:
        started = time.monotonic()
        first.settimeout(10)
        first.connect((NETNS_ADDRESS, port))
        first.sendall(b"ping\n")
        first.shutdown(socket.SHUT_WR)
        assert recv_all(first) == b"ping\n"
        seconds["probe"] = time.monotonic() - started
    row.attempted = 2000
    row.log_lines = len(sockd.lines()) - before
    row.note = f"{half_open} in SYN-RECV"
    assert half_open >= 1000, "the attack did not hold handshakes open"
    answered(row, seconds)
    wait_until(lambda: sockd.events("connection_closed"), what="the probe logged")
    # Bound: nothing is logged for a handshake that never completes.
    assert len(sockd.lines()) - before <= 2


def test_clients_that_never_read_leave_chargen_and_echo_answering(
    start: Callable[..., Sockd], scenario: Callable[[str], Row]
) -> None:
    """20 chargen clients and 20 echo clients writing 10 MB, none reading: both still answer."""
    row = scenario("never read: chargen, echo 10 MB")
    sockd = start(config(service("chargen", "chargen"), service("echo", "echo")))
    where = addresses(sockd)
    hogs = [connect(where["chargen"], source="127.5.0.1") for _ in range(20)]
    writers: list[threading.Thread] = []

    def write_10mb(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(b"x" * 10_000_000)  # stops when neither side's buffers take more

    for _ in range(20):
        sock = connect(where["echo"], source="127.5.0.2", timeout=ATTACK_SECONDS)
        hogs.append(sock)
        writers.append(threading.Thread(target=write_10mb, args=(sock,), daemon=True))
        writers[-1].start()
    try:
        time.sleep(ATTACK_SECONDS / 2)
        seconds = {name: polite(name, where[name]) for name in ("chargen", "echo")}
    finally:
        for thread in writers:
            thread.join()
        for sock in hogs:
            sock.close()
    wait_until(lambda: len(sockd.events("connection_closed")) >= 42, what="all logged")
    row.attempted = len(hogs)
    row.log_lines = len(sockd.lines())
    answered(row, seconds)
    errors = [line for line in sockd.events() if line["level"] in ("error", "critical")]
    assert errors == [], f"{len(errors)} error lines, the first: {errors[:1]}"
    # Bound: one line per connection, a few at start; never one per blocked write.
    assert row.log_lines <= row.attempted + 10


def test_a_unix_peer_cannot_pick_its_logged_identity(
    start: Callable[..., Sockd], scenario: Callable[[str], Row], root: None
) -> None:
    """A peer of uid 65534 bound to `unix:uid=0,pid=1` is logged by its kernel credentials."""
    del root
    row = scenario("UNIX peer with a forged path")
    with tempfile.TemporaryDirectory(prefix="sockd-chaos-") as directory:
        place = Path(directory)
        place.chmod(0o755)
        (place / "peer").mkdir(mode=0o777)
        (place / "peer").chmod(0o777)
        sockd = start(config(service("echo", "echo", listen=f"unix:{place}/echo.sock")))
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child: the forging peer, as nobody)
            status = 1
            try:
                os.close(read_end)
                os.setgid(65534)
                os.setuid(65534)
                os.chdir(place / "peer")
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.bind("unix:uid=0,pid=1")  # relative: the whole label is the name
                    sock.connect(f"{place}/echo.sock")
                    sock.sendall(b"forged\n")
                    sock.shutdown(socket.SHUT_WR)
                    os.write(write_end, recv_all(sock))
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            answer = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert answer == b"forged\n"
        seconds = {"probe": polite("echo", f"unix:{place}/echo.sock", source=None)}
        (record, probe) = sockd.wait_event("connection_closed", count=2)
    row.attempted = row.served = 1
    row.log_lines = len(sockd.lines())
    answered(row, seconds)
    assert record["client"] == f"unix:uid=65534,pid={pid}", record
    assert probe["client"] == f"unix:uid=0,pid={os.getpid()}", probe
