"""Wait services (`wait = true`): the program gets the listening socket itself, one at a time."""

from __future__ import annotations

import datetime as dt
import grp
import os
import pwd
import shutil
import signal
import socket
import struct
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import connect, recv_all, wait_until, write_config

import sockd as sockd_package

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness import Notifications, Sockd

ACTIVATE = shutil.which("systemd-socket-activate")
TFTPD = "/usr/sbin/in.tftpd"  # tftpd-hpa's (scripts/setup --tests installs it) or atftpd's
ATFTPD = Path(TFTPD).resolve().name == "atftpd"  # atftpd's is a link to atftpd
TFTP = shutil.which("tftp")  # tftp-hpa's client

# A program of a wait service: it notes its start (pid and wall-clock time) in a
# file, waits DELAY seconds, then accepts COUNT connections on its stdin (the
# listening socket), answering each with its pid; then it sleeps HOLD seconds.
ACCEPTER = """#!/usr/bin/python3 -I
import os, socket, sys, time
starts, count, delay, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
with open(starts, "a") as file:
    file.write(f"{os.getpid()} {time.time()}\\n")
time.sleep(delay)
listener = socket.socket(fileno=0)
for _ in range(count):
    connection, _ = listener.accept()
    connection.sendall(b"%d\\n" % os.getpid())
    connection.close()
print("served", count, file=sys.stderr, flush=True)
time.sleep(hold)
"""


def wait_config(
    tmp_path: Path, count: int = 1, *, delay: float = 0, hold: float = 0, extra: str = ""
) -> str:
    """Write a config whose wait service runs ACCEPTER; its starts go to tmp_path/starts."""
    program = tmp_path / "accepter.py"
    program.write_text(ACCEPTER)
    program.chmod(0o755)
    argv = [str(program), str(tmp_path / "starts"), str(count), str(delay), str(hold)]
    exec_line = "[" + ", ".join(f'"{arg}"' for arg in argv) + "]"
    return write_config(
        tmp_path / "sockd.toml",
        f"""
        [[service]]
        name = "w"
        exec = {exec_line}
        listen = ["127.0.0.1:0"]
        wait = true
        {extra}
        """,
    )


def starts(tmp_path: Path) -> list[tuple[int, float]]:
    """Return each start of the program so far: its pid, and when (wall clock)."""
    path = tmp_path / "starts"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [(int(pid), float(when)) for pid, when in (line.split() for line in lines)]


def answer(address: str) -> int:
    """Connect, and return the pid the program answers with."""
    with connect(address) as client:
        return int(recv_all(client))


def when(event: dict[str, object]) -> float:
    """Return an event's timestamp as seconds since the epoch."""
    text = str(event["timestamp"]).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text).timestamp()


class TestWaitTCP:
    def test_program_accepts_several_then_is_started_again(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """The program accepts on the socket itself; after it exits, a connection starts another."""
        daemon = sockd("run", "--config", wait_config(tmp_path, count=2))
        address = daemon.address()
        pids = [answer(address) for _ in range(4)]
        assert pids[0] == pids[1] != pids[2] == pids[3]
        assert [pid for pid, _ in starts(tmp_path)] == [pids[0], pids[2]]
        closed = daemon.wait_event("connection_closed", count=2, service="w")
        exits = [(event["pid"], event["exit_code"]) for event in closed]
        assert exits == [(pids[0], 0), (pids[2], 0)]
        assert closed[0]["client"] is None  # sockd never saw the program's clients
        (line, _) = daemon.wait_event("program_stderr", count=2, service="w")
        assert (line["line"], line["pid"], line["client"]) == ("served 2", pids[0], None)
        assert daemon.stop() == 0

    def test_socket_is_not_polled_while_the_program_runs(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """Connections wait in the backlog for the one program running: sockd starts no other."""
        daemon = sockd("run", "--config", wait_config(tmp_path, count=3, delay=1.0))
        address = daemon.address()
        clients = [connect(address) for _ in range(3)]  # queued while the program sleeps
        try:
            pids = {int(recv_all(client)) for client in clients}
        finally:
            for client in clients:
                client.close()
        daemon.wait_event("connection_closed", service="w")
        assert len(pids) == 1
        assert [pid for pid, _ in starts(tmp_path)] == list(pids)

    def test_program_exiting_at_once_is_paused_with_one_warning(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A program taking nothing (the socket stays readable) starts `burst` times, then rests.

        rate 1 a second, burst 2: two starts in quick succession (a third if
        they took over a second), then one `wait_looping` and a pause without
        starts until the bucket is full again (`wait_resumed`); then again.
        """
        config = wait_config(tmp_path, count=0, extra="rate = 1\nburst = 2")
        daemon = sockd("run", "--config", config)
        with connect(daemon.address()):  # never accepted: the socket stays readable
            first, second = daemon.wait_event("wait_looping", count=2, timeout=20, service="w")
            resumed = daemon.wait_event("wait_resumed", service="w")[0]
        assert 0 < first["seconds"] <= 2.0
        assert (first["rate"], first["burst"]) == (1.0, 2)
        # One warning per pause: looping, resumed, looping (the forker's order, kept by the log).
        order = [e["event"] for e in daemon.events() if e["event"].startswith("wait_")]
        assert order[:3] == ["wait_looping", "wait_resumed", "wait_looping"]
        assert when(first) < when(resumed) < when(second)
        # Each program notes its start before it exits, and so before the next start or
        # pause; the daemon stamps the warning later still: the starts before it are the
        # first burst. The next start comes once the pause is over, `seconds` after it began.
        times = sorted(start for _, start in starts(tmp_path))
        before = [start for start in times if start < when(first)]
        assert 2 <= len(before) <= 3
        after = [start for start in times if start > when(first)]
        assert after
        assert min(after) >= before[-1] + first["seconds"] - 0.001  # (seconds: rounded)

    def test_max_duration_ends_the_program_and_the_socket_is_polled_again(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A program past max_duration gets SIGTERM; then the next connection starts another."""
        config = wait_config(tmp_path, count=1, hold=600, extra="max_duration = 0.5")
        daemon = sockd("run", "--config", config)
        address = daemon.address()
        first = answer(address)
        (exceeded,) = daemon.wait_event("max_duration_exceeded", service="w")
        assert (exceeded["pid"], exceeded["action"]) == (first, "SIGTERM")
        (closed,) = daemon.wait_event("connection_closed", service="w")
        assert (closed["pid"], closed["signal"]) == (first, "SIGTERM")
        assert answer(address) != first

    def test_graceful_stop_waits_for_the_program(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A stop waits (within stop_timeout) for the program, which still serves what it took."""
        daemon = sockd("run", "--config", wait_config(tmp_path, count=1, delay=1.0))
        with connect(daemon.address()) as client:
            wait_until(lambda: starts(tmp_path), what="the program's start")
            daemon.signal(signal.SIGTERM)
            pid = int(recv_all(client))
        assert daemon.wait() == 0
        assert [start for start, _ in starts(tmp_path)] == [pid]
        (closed,) = daemon.events("connection_closed", service="w")
        assert (closed["pid"], closed["exit_code"]) == (pid, 0)
        assert not daemon.events("stop_timeout")

    @pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")
    def test_socket_from_systemd(
        self, sockd: Callable[..., Sockd], tmp_path: Path, notifications: Notifications
    ) -> None:
        """A wait service adopts its listening socket from systemd (systemd-socket-activate)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config = Path(wait_config(tmp_path, count=1))
        config.write_text(config.read_text().replace('listen = ["127.0.0.1:0"]', ""))
        # This tree's sockd, not the one installed (systemd-socket-activate passes only PATH).
        here = os.path.dirname(os.path.dirname(sockd_package.__file__))
        prefix = [str(ACTIVATE), "-l", f"127.0.0.1:{port}", "-E", f"PYTHONPATH={here}"]
        prefix += ["-E", f"NOTIFY_SOCKET={notifications.path}"]
        daemon = sockd("run", "--config", str(config), prefix=prefix, wait=False)
        address = f"127.0.0.1:{port}"
        client = wait_until(lambda: _try_connect(address), what="systemd-socket-activate")
        with client:
            first = int(recv_all(client))
        notifications.wait_for("READY=1")
        (starting,) = daemon.events("starting")
        assert starting["listeners"][0]["origin"] == "adopted"
        assert answer(address) != first  # the program exited after one: another one
        assert daemon.stop() == 0


def _try_connect(address: str) -> socket.socket | None:
    try:
        return connect(address)
    except ConnectionRefusedError:
        return None


# A program of a wait service on a UNIX datagram socket: it receives one datagram on
# its stdin (the listening socket itself) and answers the sender's path from it.
ANSWERER = """#!/usr/bin/python3 -I
import os, socket
listener = socket.socket(fileno=0)
data, sender = listener.recvfrom(512)
listener.sendto(data.upper() + b" %d" % os.getpid(), sender)
"""


def answerer_config(tmp_path: Path, listen: str) -> str:
    """Write a config whose wait service runs ANSWERER (`listen`: its line, or none)."""
    program = tmp_path / "answerer.py"
    program.write_text(ANSWERER)
    program.chmod(0o755)
    text = f'[[service]]\nname = "w"\nexec = ["{program}"]\n{listen}\nwait = true\n'
    return write_config(tmp_path / "sockd.toml", text)


def ask_unix(sender: socket.socket, path: Path, data: bytes) -> int:
    """Send `data` to `path`; check the answer comes from it, in capitals; return the pid in it."""
    sender.sendto(data, str(path))
    answer, source = sender.recvfrom(512)
    assert source == str(path)  # sent by the program on the listening socket itself
    word, pid = answer.split()
    assert word == data.upper()
    return int(pid)


class TestWaitUnixDatagram:
    def test_program_receives_on_the_socket_and_is_started_again(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A wait program on unix-dgram: receives a datagram itself, answers it; then another."""
        path = tmp_path / "w.d"
        daemon = sockd(
            "run", "--config", answerer_config(tmp_path, f'listen = ["unix-dgram:{path}"]')
        )
        assert daemon.address() == f"unix-dgram:{path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.bind(str(tmp_path / "sender.d"))
            sender.settimeout(10)
            first = ask_unix(sender, path, b"one")
            (closed,) = daemon.wait_event("connection_closed", service="w")
            assert (closed["pid"], closed["exit_code"], closed["client"]) == (first, 0, None)
            second = ask_unix(sender, path, b"two")
        assert second != first
        both = daemon.wait_event("connection_closed", count=2, service="w")
        assert [event["pid"] for event in both] == [first, second]
        assert daemon.stop() == 0

    @pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")
    def test_unix_datagram_socket_from_systemd(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A UNIX datagram socket from systemd (ListenDatagram=/path) serves a wait program."""
        path = tmp_path / "w.d"
        config = answerer_config(tmp_path, "")
        here = os.path.dirname(os.path.dirname(sockd_package.__file__))
        prefix = [str(ACTIVATE), "--datagram", "-l", str(path), "-E", f"PYTHONPATH={here}"]
        daemon = sockd("run", "--config", config, prefix=prefix, wait=False)
        wait_until(path.exists, what="systemd-socket-activate's socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.bind(str(tmp_path / "sender.d"))
            sender.settimeout(10)
            ask_unix(sender, path, b"one")  # it starts sockd, then waits for the program
        (starting,) = daemon.wait_event("starting")
        assert starting["listeners"][0]["origin"] == "adopted"
        assert starting["listeners"][0]["address"] == f"unix-dgram:{path}"
        assert daemon.stop() == 0


PAYLOAD = os.urandom(300_000)  # 586 blocks of 512 bytes, and a short last one


def tftpd_problem() -> str | None:
    """Why /usr/sbin/in.tftpd cannot serve the TFTP tests here; None if it can."""
    if not os.access(TFTPD, os.X_OK) or TFTP is None:
        return "in.tftpd or tftp is missing: run scripts/setup --tests (tftpd-hpa, tftp-hpa)"
    if not ATFTPD and b"\0recvmsg\0" not in Path(TFTPD).read_bytes():
        # Shown without sockd too: a socket handed to it by any inetd gets no answer.
        # scripts/test-trixie's root has atftpd's in.tftpd instead.
        return (
            "this in.tftpd is built without recvmsg (Debian 13's tftpd-hpa 5.2+20240610-3):"
            " given its socket by an inetd, it makes its reply socket of family AF_UNSPEC"
            " (EAFNOSUPPORT) and never answers"
        )
    return None


def tftp_config(tmp_path: Path, listen: str) -> tuple[str, str]:
    """Write a config serving tmp_path/srv/boot.img with in.tftpd; return it and the file's name.

    tftpd-hpa's or atftpd's, it runs as the test's user and waits a second for
    more requests, then exits. As root, tftpd-hpa's is chrooted (--secure) into
    the directory; atftpd's always serves names relative to it.
    """
    served = tmp_path / "srv"
    served.mkdir()
    served.chmod(0o755)
    (served / "boot.img").write_bytes(PAYLOAD)
    (served / "boot.img").chmod(0o644)
    me = pwd.getpwuid(os.getuid()).pw_name
    relative = ATFTPD or os.getuid() == 0
    if ATFTPD:
        group = grp.getgrgid(os.getgid()).gr_name
        argv = [TFTPD, "--tftpd-timeout", "1", "--user", f"{me}.{group}", str(served)]
    else:
        secure = ["--secure"] if relative else []
        argv = [TFTPD, *secure, "-t", "1", "-u", me, str(served)]
    exec_line = ", ".join(f'"{arg}"' for arg in argv)
    text = f'[[service]]\nname = "tftp"\nexec = [{exec_line}]\n{listen}\nwait = true\n'
    config = write_config(tmp_path / "sockd.toml", text)
    return config, "boot.img" if relative else str(served / "boot.img")


def fetch(tmp_path: Path, port: int | str, name: str, copy: str) -> bytes:
    """Fetch `name` with the tftp client, in binary mode; return what arrived."""
    done = subprocess.run(
        [str(TFTP), "127.0.0.1", str(port), "-m", "binary", "-c", "get", name, copy],
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done
    assert not done.stdout.strip(), done  # tftp-hpa says errors there ("Error code 1: ...")
    return (tmp_path / copy).read_bytes()


@pytest.mark.skipif(tftpd_problem() is not None, reason=str(tftpd_problem()))
class TestWaitUDP:
    def test_tftp_client_fetches_from_in_tftpd(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """in.tftpd as a UDP wait service: the real tftp client fetches whole files, twice.

        The server receives the request on the socket itself, serves it from a
        process or thread of its own, waits a second for more, then exits; sockd
        starts it again for the next request.
        """
        config, name = tftp_config(tmp_path, 'listen = ["udp:127.0.0.1:0"]')
        daemon = sockd("run", "--config", config)
        address = daemon.address()
        assert address.startswith("udp:127.0.0.1:")
        port = address.rpartition(":")[2]
        for round_ in (1, 2):
            assert fetch(tmp_path, port, name, f"copy{round_}") == PAYLOAD
            # The server waits a second for another request, then exits: sockd watches again.
            (closed,) = daemon.wait_event("connection_closed", count=round_, service="tftp")[-1:]
            assert (closed["exit_code"], closed["client"]) == (0, None)
        assert len({event["pid"] for event in daemon.events("connection_closed")}) == 2
        assert daemon.stop() == 0

    @pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")
    def test_udp_socket_from_systemd(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A UDP socket from systemd (ListenDatagram=; systemd-socket-activate --datagram).

        The first request starts sockd; it waits in the socket until the server takes it.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        config, name = tftp_config(tmp_path, "")
        here = os.path.dirname(os.path.dirname(sockd_package.__file__))
        prefix = [str(ACTIVATE), "--datagram", "-l", f"127.0.0.1:{port}"]
        daemon = sockd(
            "run", "--config", config, prefix=[*prefix, "-E", f"PYTHONPATH={here}"], wait=False
        )
        assert fetch(tmp_path, port, name, "copy") == PAYLOAD
        (starting,) = daemon.events("starting")
        assert starting["listeners"][0]["origin"] == "adopted"
        assert starting["listeners"][0]["address"] == f"udp:127.0.0.1:{port}"
        assert daemon.stop() == 0


TALKD = "/usr/sbin/in.talkd"  # Debian's talkd, netkit-ntalk's (scripts/setup --tests installs it)
# <protocols/talkd.h>: a CTL_MSG (84 bytes) and a CTL_RESPONSE (24), in network order.
# A talk_addr is a 4.3BSD sockaddr: family, port, IPv4 address, 8 bytes of padding.
TALK_ADDR = "HH4s8x"
CTL_MSG = struct.Struct(f"!BBBxI{TALK_ADDR}{TALK_ADDR}I12s12s16s")
CTL_RESPONSE = struct.Struct(f"!BBBxI{TALK_ADDR}")
TALK_VERSION, LOOK_UP, ANNOUNCE = 1, 1, 3
NOT_HERE = 1  # the answer: the callee is not logged in


def talk_request(kind: int, sender: tuple[str, int], callee: bytes) -> bytes:
    """Return a CTL_MSG from `sender` (its ctl_addr: where a talk client reads answers)."""
    host, port = sender
    ctl_addr = (socket.AF_INET, port, socket.inet_aton(host))
    no_addr = (0, 0, bytes(4))  # the TCP address to talk on: none (no LEAVE_INVITE)
    return CTL_MSG.pack(
        TALK_VERSION, kind, 0, 7, *no_addr, *ctl_addr, os.getpid(), b"tester", callee, b""
    )


@pytest.mark.skipif(
    not os.access(TALKD, os.X_OK),
    reason="in.talkd is missing: run scripts/setup --tests (talkd)",
)
class TestWaitTalkd:
    def test_in_talkd_answers_through_sockd(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """in.talkd as a UDP wait service answers a talk client's requests on the service's port.

        It serves both requests in one run (it reads its socket until idle
        for two minutes), until max_duration ends it; the next request
        starts another. The answers come from the service's address (in.talkd
        sends on its stdout, the listening socket), to the request's source:
        netkit-ntalk's talkd overwrites the request's ctl_addr with it (a
        ctl_addr naming another socket gets nothing there; a talk client sends
        from its ctl_addr anyway).
        """
        # As root, as Debian's inetd.conf line runs it: nobody, group tty (to write on ttys).
        who = 'user = "nobody"\ngroup = "tty"\n' if os.getuid() == 0 else ""
        text = (
            f'[[service]]\nname = "talk"\nexec = ["{TALKD}"]\nlisten = ["udp:127.0.0.1:0"]\n'
            f"wait = true\nmax_duration = 2\n{who}"
        )
        daemon = sockd("run", "--config", write_config(tmp_path / "sockd.toml", text))
        host, _, port = daemon.address().removeprefix("udp:").rpartition(":")
        service = (host, int(port))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            client.settimeout(10)
            me = client.getsockname()
            for kind in (LOOK_UP, ANNOUNCE, LOOK_UP):
                # No invitation waits for the caller (LOOK_UP), and nobody of that name is
                # logged in (ANNOUNCE: talkd looks in utmp): NOT_HERE, either way.
                client.sendto(talk_request(kind, me, b"nosuchuser"), service)
                answer, source = client.recvfrom(100)
                assert source == service  # from the listening socket itself
                assert len(answer) == CTL_RESPONSE.size
                vers, type_, code, _, *_ = CTL_RESPONSE.unpack(answer)
                assert (vers, type_, code) == (TALK_VERSION, kind, NOT_HERE)
                if kind == ANNOUNCE:  # the first run served both: max_duration ends it
                    (ended,) = daemon.wait_event("connection_closed", service="talk")
                    assert (ended["signal"], ended["client"]) == ("SIGTERM", None)
        closed = daemon.wait_event("connection_closed", count=2, service="talk")
        assert closed[0]["pid"] != closed[1]["pid"]
        assert daemon.stop() == 0
