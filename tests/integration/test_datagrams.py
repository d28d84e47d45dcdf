"""UDP and UNIX datagram services end to end: real clients, the loop check, limits, adoption."""

from __future__ import annotations

import calendar
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
from harness import TESTS, WAIT, Notifications, Sockd, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

RDATE = shutil.which("rdate") or shutil.which("rdate", path="/usr/sbin")
SOCAT = shutil.which("socat")
ACTIVATE = shutil.which("systemd-socket-activate")
EPOCH_1900 = 2_208_988_800


def udp_config(tmp_path: Path, services: str) -> str:
    return write_config(tmp_path / "sockd.toml", f'[daemon]\npythonpath = ["{TESTS}"]\n{services}')


def service(name: str, handler: str, extra: str = "", listen: str = "udp:127.0.0.1:0") -> str:
    return f'[[service]]\nname = "{name}"\nhandler = "{handler}"\nlisten = ["{listen}"]\n{extra}\n'


def udp_port(daemon: Sockd, index: int = 0) -> int:
    address = daemon.address(index)
    assert address.startswith("udp:127.0.0.1:"), address
    return int(address.rpartition(":")[2])


def client(source: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((source, port))
    sock.settimeout(WAIT)
    return sock


def ask(port: int, data: bytes = b"?\n", source: str = "127.0.0.1") -> bytes:
    """Send one datagram to 127.0.0.1:`port` from `source`; return the answer."""
    with client(source) as sock:
        sock.sendto(data, ("127.0.0.1", port))
        answer, sender = sock.recvfrom(65536)
    assert sender == ("127.0.0.1", port)  # from the service's own address and port
    return answer


def unanswered(sock: socket.socket, port: int) -> bool:
    """Tell whether `sock` got no answer, once a later datagram to `port` was answered.

    The forker reads a socket's datagrams in order and answers each at once:
    when a later one has its answer, an earlier one's would be there too.
    """
    assert ask(port, b"after\n")
    sock.setblocking(False)
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    return False


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summaries(daemon: Sockd, reason: str) -> int:
    """Stop the daemon; return how many datagrams its summaries say were dropped for `reason`."""
    assert daemon.stop() == 0
    return sum(event["count"] for event in daemon.events("connections_denied", reason=reason))


class TestBuiltins:
    @pytest.mark.skipif(RDATE is None, reason="rdate is missing (scripts/setup --tests)")
    def test_rdate_reads_the_udp_time_service(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """`rdate -u -p -o PORT` (RFC 868 over UDP) prints the time the forker answered."""
        daemon = sockd("run", "--config", udp_config(tmp_path, service("time", "time")))
        port = udp_port(daemon)
        before = int(time.time())
        done = subprocess.run(
            [str(RDATE), "-u", "-p", "-o", str(port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        # Its own format: "Fri Dec  4 05:50:19 UTC 2026".
        printed = calendar.timegm(time.strptime(done.stdout.strip(), "%a %b %d %H:%M:%S %Z %Y"))
        assert before <= printed <= time.time()
        assert not daemon.children()  # answered in the forker: nothing forked

    def test_time_and_daytime_answers(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """time: 4 bytes, seconds since 1900; daytime: one line; discard: nothing."""
        services = service("time", "time") + service("daytime", "daytime")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        before = int(time.time()) + EPOCH_1900
        seconds = int.from_bytes(ask(udp_port(daemon, 0)), "big")
        assert before <= seconds <= int(time.time()) + EPOCH_1900
        assert ask(udp_port(daemon, 1)).endswith(b"\r\n")

    @pytest.mark.skipif(SOCAT is None, reason="socat is missing (scripts/setup --tests)")
    def test_socat_echo_and_daytime(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A socat client gets its line echoed (udp_reflection = true), and the daytime line."""
        services = service("echo", "echo", "udp_reflection = true") + service("daytime", "daytime")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        for index, data, expected in ((0, "hello\n", "hello\n"), (1, "\n", time.strftime("%Y"))):
            done = subprocess.run(
                [str(SOCAT), "-T", str(WAIT), "-", f"UDP:127.0.0.1:{udp_port(daemon, index)}"],
                input=data,
                capture_output=True,
                text=True,
                timeout=2 * WAIT,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert expected in done.stdout

    def test_chargen_answers_one_line_per_datagram(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """chargen: a 74-byte line per datagram (at most 512: RFC 864), rotating."""
        services = service("chargen", "chargen", "udp_reflection = true")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        first, second = ask(udp_port(daemon)), ask(udp_port(daemon))
        assert len(first) == len(second) == 74
        assert first[1:72] == second[:71]
        assert first.endswith(b"\r\n")

    def test_unix_datagram(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """A unix-dgram: daytime answers a bound sender at its path."""
        path = tmp_path / "daytime.sock"
        services = service("daytime", "daytime", listen=f"unix-dgram:{path}")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        assert daemon.address() == f"unix-dgram:{path}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(tmp_path / "me.sock"))
            sock.settimeout(WAIT)
            sock.sendto(b"\n", str(path))
            assert sock.recv(100).endswith(b"\r\n")


class TestLoopsAndReflection:
    @pytest.mark.skipif(os.geteuid() != 0, reason="binding a port below 1024 needs root")
    def test_no_answer_to_a_low_source_port(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A datagram from a port below 1024 (a forged one's, aimed at a system port) is dropped."""
        daemon = sockd("run", "--config", udp_config(tmp_path, service("daytime", "daytime")))
        port = udp_port(daemon)
        low = next(p for p in range(1023, 600, -1) if _bindable(p))
        with client(port=low) as sock:
            sock.sendto(b"\n", ("127.0.0.1", port))
            assert unanswered(sock, port)
        assert summaries(daemon, "source_port") == 1

    def test_no_answer_to_the_services_own_port(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A datagram from the service's own port (another UDP server's echo of it) is dropped."""
        services = service("echo", "echo", "udp_reflection = true")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        port = udp_port(daemon)
        with client("127.0.0.2", port) as sock:
            sock.sendto(b"loop\n", ("127.0.0.1", port))
            assert unanswered(sock, port)
        assert summaries(daemon, "source_port") == 1

    def test_no_answer_to_another_datagram_services_port(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """From time's port to daytime: dropped, or the two would answer each other forever."""
        services = service("daytime", "daytime") + service("time", "time")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        daytime, time_port = udp_port(daemon, 0), udp_port(daemon, 1)
        with client("127.0.0.2", time_port) as sock:  # time's port, as a forged source has it
            sock.sendto(b"\n", ("127.0.0.1", daytime))
            assert unanswered(sock, daytime)
        assert summaries(daemon, "source_port") == 1

    def test_no_answer_to_another_unix_datagram_service(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A sender's path swapped for a symlink to time's socket: time drops daytime's answer."""
        day, tick = tmp_path / "daytime.sock", tmp_path / "time.sock"
        services = service("daytime", "daytime", listen=f"unix-dgram:{day}")
        services += service("time", "time", listen=f"unix-dgram:{tick}")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        forker, sender = daemon.forker(), tmp_path / "sender.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sender))
            os.kill(forker, signal.SIGSTOP)  # so that the path is swapped before the answer
            try:
                sock.sendto(b"\n", str(day))
                sender.unlink()
                sender.symlink_to(tick)  # sendto() follows it: daytime answers time
            finally:
                os.kill(forker, signal.SIGCONT)
        assert summaries(daemon, "source_port") == 1  # else the two answer each other forever

    def test_echo_needs_udp_reflection(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """UDP echo without udp_reflection: sockd does not start (exit 78), and says why."""
        daemon = sockd("run", "--config", udp_config(tmp_path, service("echo", "echo")), wait=False)
        assert daemon.wait() == 78
        assert "set udp_reflection = true to serve it anyway" in "\n".join(daemon.lines())

    def test_echo_answers_at_most_what_it_received(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A datagram larger than the forker reads is echoed cut to what it read."""
        services = service("echo", "echo", "udp_reflection = true")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        assert ask(udp_port(daemon), b"x" * 20000) == b"x" * 8192


class TestPortTheft:
    def test_no_other_socket_can_bind_a_builtins_port(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """No socket can bind a built-in's UDP port again, even with SO_REUSEADDR, to take it."""
        daemon = sockd("run", "--config", udp_config(tmp_path, service("time", "time")))
        port = udp_port(daemon)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="in use"):
                thief.bind(("127.0.0.1", port))
        assert len(ask(port)) == 4

    def test_a_reload_turns_a_builtin_into_a_program(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGHUP from time to an exec of cat: the program's socket to the sender can be bound."""
        config = udp_config(tmp_path, service("svc", "time"))
        daemon = sockd("run", "--config", config)
        port = udp_port(daemon)
        assert len(ask(port)) == 4
        # The same listen: the socket is kept.
        udp_config(
            tmp_path, '[[service]]\nname = "svc"\nexec = ["cat"]\nlisten = ["udp:127.0.0.1:0"]\n'
        )
        daemon.signal(signal.SIGHUP)
        daemon.wait_event("reloaded")
        assert ask(port, b"cat") == b"cat"
        assert not daemon.events("fork_failed")


class TestAdmission:
    def test_a_flood_from_one_source_is_throttled_another_is_served(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """per_source_rate: 127.0.0.2's flood gets its burst of answers; 127.0.0.3 is served."""
        # A rate so low that no token comes back during the test: the burst is all it gets.
        limits = "per_source_rate = 0.001\nper_source_burst = 3"
        daemon = sockd("run", "--config", udp_config(tmp_path, service("time", "time", limits)))
        port = udp_port(daemon)
        with client("127.0.0.2") as flood:
            for _ in range(200):
                flood.sendto(b"?", ("127.0.0.1", port))
            assert ask(port, source="127.0.0.3")  # after the flood: read after it
            answers = 0
            flood.setblocking(False)
            while True:
                try:
                    flood.recv(100)
                except BlockingIOError:
                    break
                answers += 1
        (denied,) = daemon.wait_event("connection_denied", reason="per_source_rate")
        assert denied["client"].startswith("127.0.0.2:")
        dropped = summaries(daemon, "per_source_rate")
        # The socket's receive buffer may have dropped some of the 200 before the forker read.
        assert answers == 3
        assert 0 < dropped <= 200 - 3 - 1  # the first denial is its own line
        assert len(daemon.events("connection_denied")) == 1  # not a line per datagram

    def test_a_global_rate_applies_to_datagrams(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """rate/burst: past the burst, no source is answered."""
        limits = "rate = 0.001\nburst = 2"
        daemon = sockd("run", "--config", udp_config(tmp_path, service("time", "time", limits)))
        port = udp_port(daemon)
        assert ask(port, source="127.0.0.2")
        assert ask(port, source="127.0.0.3")
        with client("127.0.0.4") as sock:
            sock.sendto(b"?", ("127.0.0.1", port))
            daemon.wait_event("connection_denied", reason="rate")
            assert summaries(daemon, "rate") == 0  # the one refusal: its own line
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(100)

    def test_deny_applies_to_datagrams(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """deny: a denied source gets nothing; others are answered."""
        rules = 'deny = ["127.0.0.2"]'
        daemon = sockd("run", "--config", udp_config(tmp_path, service("time", "time", rules)))
        port = udp_port(daemon)
        with client("127.0.0.2") as sock:
            sock.sendto(b"?", ("127.0.0.1", port))
            assert unanswered(sock, port)
        (denied,) = daemon.wait_event("connection_denied")
        assert denied["reason"] == "deny 127.0.0.2/32"


class TestForked:
    def test_python_handler_forks_a_child_per_datagram(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """A handler gets (data, socket) and the sender, in a child that answers with sendto."""
        services = service("report", "support_handlers:DatagramReport")
        daemon = sockd("run", "--config", udp_config(tmp_path, services))
        port = udp_port(daemon)
        with client() as sock:
            sock.sendto(b"one", ("127.0.0.1", port))
            first = json.loads(sock.recv(1000))
            sock.sendto(b"two", ("127.0.0.1", port))
            second = json.loads(sock.recv(1000))
            me = list(sock.getsockname())
        assert (first["data"], second["data"]) == ("one", "two")
        assert first["client"] == second["client"] == me
        assert first["type"] == socket.SOCK_DGRAM
        assert len({first["pid"], second["pid"], daemon.forker()}) == 3
        closed = daemon.wait_event("connection_closed", count=2)
        assert {event["pid"] for event in closed} == {first["pid"], second["pid"]}
        assert all(event["exit_code"] == 0 for event in closed)

    def test_a_reload_turns_a_builtin_into_a_handler_and_back(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """SIGHUP: the socket goes from the built-in answered in the forker to a forked handler."""
        config = udp_config(tmp_path, service("svc", "time"))
        daemon = sockd("run", "--config", config)
        port = udp_port(daemon)
        assert len(ask(port)) == 4
        for count, handler in enumerate(("support_handlers:DatagramReport", "daytime"), 1):
            udp_config(tmp_path, service("svc", handler))  # the same listen: kept
            daemon.signal(signal.SIGHUP)
            daemon.wait_event("reloaded", count=count)
            answer = ask(port, b"x")
            if count == 1:
                assert json.loads(answer)["data"] == "x"
            else:
                assert answer.endswith(b"\r\n")

    def test_program_reads_the_datagram_and_answers_the_sender(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """exec: a shell's `read` gets the datagram on stdin; what it prints goes to the sender."""
        script = 'read line; echo "$PROTO $line $UDPREMOTEIP:$UDPREMOTEPORT $UDPLOCALPORT"'
        text = (
            f'[[service]]\nname = "sh"\nexec = ["/bin/sh", "-c", {json.dumps(script)}]\n'
            'listen = ["udp:127.0.0.1:0"]\n'
        )
        daemon = sockd("run", "--config", udp_config(tmp_path, text))
        port = udp_port(daemon)
        with client() as sock:
            sock.connect(("127.0.0.1", port))  # as nc -u does: only its peer's answers count
            sock.send(b"hello there\n")
            answer = sock.recv(1000).decode()
            mine = sock.getsockname()[1]
        assert answer == f"UDP hello there 127.0.0.1:{mine} {port}\n"
        (closed,) = daemon.wait_event("connection_closed")
        assert closed["exit_code"] == 0

    def test_cat_echoes_a_datagram_whole(self, sockd: Callable[..., Sockd], tmp_path: Path) -> None:
        """An exec of cat: the datagram, then end of file on stdin; one write, one datagram back."""
        text = '[[service]]\nname = "cat"\nexec = ["cat"]\nlisten = ["udp:127.0.0.1:0"]\n'
        daemon = sockd("run", "--config", udp_config(tmp_path, text))
        assert ask(udp_port(daemon), b"no newline") == b"no newline"
        daemon.wait_event("connection_closed", exit_code=0)


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is missing")
class TestActivation:
    def test_adopts_a_listen_datagram_socket(
        self, sockd: Callable[..., Sockd], notifications: Notifications, tmp_path: Path
    ) -> None:
        """systemd-socket-activate --datagram: the UDP socket is adopted, its datagrams answered."""
        port = free_port()
        text = service("time", "time", listen=f"udp:127.0.0.1:{port}") + service(
            "tcp", "daytime", listen=f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
        )
        prefix = [
            str(ACTIVATE),
            "--datagram",
            "-l",
            f"127.0.0.1:{port}",
            "-E",
            f"NOTIFY_SOCKET={notifications.path}",
        ]
        if "PYTHONPATH" in os.environ:  # it passes only PATH and -E variables
            prefix += ["-E", "PYTHONPATH"]
        daemon = sockd("run", "--config", udp_config(tmp_path, text), prefix=prefix, wait=False)
        with client() as sock:
            # systemd-socket-activate binds, then starts sockd at the first datagram.
            def sent() -> bool:
                sock.sendto(b"?", ("127.0.0.1", port))
                try:
                    return len(sock.recv(100)) == 4
                except TimeoutError:
                    return False

            sock.settimeout(0.5)
            wait_until(sent, what="an answer from the adopted socket")
        (starting,) = daemon.events("starting")
        origins = {entry["service"]: entry["origin"] for entry in starting["listeners"]}
        assert origins == {"time": "adopted", "tcp": "bound"}
        assert starting["listeners"][0]["address"] == f"udp:127.0.0.1:{port}"

    def test_a_program_answers_ipv4_on_a_dual_stack_socket(
        self, sockd: Callable[..., Sockd], notifications: Notifications, tmp_path: Path
    ) -> None:
        """A program on systemd's dual-stack [::] socket answers an IPv4 sender."""
        port = free_port()
        text = f'[[service]]\nname = "cat"\nexec = ["cat"]\nlisten = ["udp:[::]:{port}"]\n'
        prefix = [str(ACTIVATE), "--datagram", "-l", f"[::]:{port}"]
        prefix += ["-E", f"NOTIFY_SOCKET={notifications.path}"]
        if "PYTHONPATH" in os.environ:
            prefix += ["-E", "PYTHONPATH"]
        daemon = sockd("run", "--config", udp_config(tmp_path, text), prefix=prefix, wait=False)
        with client() as sock:

            def answered() -> bool:
                sock.sendto(b"v4", ("127.0.0.1", port))
                try:
                    return sock.recv(100) == b"v4"
                except TimeoutError:
                    return bool(daemon.events("fork_failed"))  # ends the wait: it failed

            sock.settimeout(0.5)
            wait_until(answered, what="an answer, or a fork_failed event")
        assert not daemon.events("fork_failed")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
