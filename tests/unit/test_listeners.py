"""Tests of sockd.listeners: sd_listen_fds(3) rules, claiming, ASCII numbers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socket
from typing import TYPE_CHECKING

import pytest
from harness import in_child, inherit

from sockd import listeners
from sockd.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path


def listening(address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen()
    return sock


class TestListenFds:
    def test_absent(self) -> None:
        """Without LISTEN_PID/LISTEN_FDS nothing is inherited."""
        assert listeners.listen_fds({}, 123) == []

    def test_other_pid_is_ignored_and_variables_removed(self) -> None:
        """Variables meant for another process are ignored, and removed all the same."""
        environ = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "KEEP": "x"}
        assert listeners.listen_fds(environ, 123) == []
        assert environ == {"KEEP": "x"}

    @pytest.mark.parametrize(
        ("environ", "problem"),
        [
            ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc' is not a process id"),
            ({"LISTEN_PID": "0", "LISTEN_FDS": "1"}, "LISTEN_PID='0' is not a process id"),
            ({"LISTEN_PID": "123", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' is not a count"),
            ({"LISTEN_PID": "123", "LISTEN_FDS": "x"}, "LISTEN_FDS='x' is not a count"),
            (
                {"LISTEN_PID": "123", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"},
                "LISTEN_FDNAMES has 2 names for LISTEN_FDS=1",
            ),
            # str.isdigit() takes them, int() does not (or does: another script's digits).
            ({"LISTEN_PID": "\u00b2", "LISTEN_FDS": "1"}, "LISTEN_PID='\u00b2' is not"),
            ({"LISTEN_PID": "\u0661\u0662\u0663", "LISTEN_FDS": "1"}, "is not a process id"),
            ({"LISTEN_PID": "123", "LISTEN_FDS": "\u00b2"}, "LISTEN_FDS='\u00b2' is not a count"),
            ({"LISTEN_PID": "+123", "LISTEN_FDS": "1"}, "is not a process id"),
            # int() refuses more than 4300 digits.
            ({"LISTEN_PID": "9" * 5000, "LISTEN_FDS": "1"}, "is not a process id"),
            ({"LISTEN_PID": "123", "LISTEN_FDS": "9" * 5000}, "is not a count"),
        ],
    )
    def test_garbage_is_rejected(self, environ: dict[str, str], problem: str) -> None:
        """Malformed variables are a config error (exit 78), and are removed."""
        with pytest.raises(ConfigError, match=problem) as caught:
            listeners.listen_fds(environ, 123)
        assert caught.value.exit_code == 78
        assert environ == {}

    def test_count_is_bounded_before_anything_is_allocated(self) -> None:
        """A count past RLIMIT_NOFILE is refused at once (it was a MemoryError)."""
        environ = {"LISTEN_PID": "123", "LISTEN_FDS": "300000000", "LISTEN_FDNAMES": "x"}
        with pytest.raises(ConfigError) as caught:
            listeners.listen_fds(environ, 123)
        most = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 3
        expected = f"LISTEN_FDS=300000000 is more than the {most} descriptors allowed"
        assert expected in str(caught.value)

    def test_names_mapped_and_cloexec_set(self) -> None:
        """Descriptors start at 3, carry their names in order, and get FD_CLOEXEC."""

        def child() -> list[tuple[int, str | None, bool]]:
            first, second = listening(), listening()
            os.dup2(first.fileno(), 3, inheritable=True)
            os.dup2(second.fileno(), 4, inheritable=True)
            environ = {
                "LISTEN_PID": str(os.getpid()),
                "LISTEN_FDS": "2",
                "LISTEN_FDNAMES": "echo:daytime",
            }
            found = listeners.listen_fds(environ, os.getpid())
            return [
                (fd.fd, fd.name, bool(fcntl.fcntl(fd.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
                for fd in found
            ]

        assert in_child(child) == [(3, "echo", True), (4, "daytime", True)]

    def test_no_descriptor_whatever_the_names(self) -> None:
        """LISTEN_FDS=0 means none, even with LISTEN_FDNAMES="" (which splits into one name)."""
        environ = {"LISTEN_PID": "123", "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""}
        assert listeners.listen_fds(environ, 123) == []
        assert environ == {}

    def test_closed_descriptor(self) -> None:
        """LISTEN_FDS counting a descriptor that is not open is an error."""

        def child() -> None:
            with contextlib.suppress(OSError):
                os.close(3)
            listeners.listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "1"}, 7)

        with pytest.raises(ConfigError, match="file descriptor 3 is not open"):
            in_child(child)


class TestClaim:
    def test_datagram_sockets_when_asked(self, tmp_path: Path) -> None:
        """Asked for SOCK_DGRAM, only datagram sockets count: by name, address, or the only one."""

        def child() -> list[object]:
            tcp = listening()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(tcp.getsockname())  # one port, one name: ListenStream= and ListenDatagram=
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.bind(("127.0.0.1", 0))
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            unix.bind(str(tmp_path / "d"))
            inherit([tcp, udp, other, unix], ["dns", "dns", "", ""])
            dgram = socket.SOCK_DGRAM
            claims = [
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), "dns", dgram),
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), None, dgram),  # the only one
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), None, dgram),  # none left
                listeners.claim(socket.AF_UNIX, "elsewhere"),  # a stream one: none
                listeners.claim(socket.AF_UNIX, "elsewhere", None, dgram),
                listeners.claim(socket.AF_INET, tcp.getsockname()),  # stream by default
            ]
            return [claim and claim.fd for claim in claims]

        assert in_child(child) == [4, 5, None, None, 6, 3]

    def test_port_zero_matches_no_address(self) -> None:
        """A request for port 0 matches no inherited socket's address, not even an unbound one's."""

        def child() -> list[object]:
            unbound, bound = socket.socket(), listening()
            inherit([unbound, bound])
            taken = [listeners.claim(socket.AF_INET, (host, 0)) for host in ("", "0.0.0.0")]
            wanted = listeners.claim(socket.AF_INET, bound.getsockname())
            return [*taken, wanted and wanted.fd]

        assert in_child(child) == [None, None, 4]

    def test_names_and_paths(self, tmp_path: Path) -> None:
        """Claims by name, then by path (a relative one too); each socket is claimed once."""
        path = tmp_path / "s"

        def child() -> list[object]:
            unix = socket.socket(socket.AF_UNIX)
            unix.bind(str(path))
            inherit([listening(), unix], ["a", "b"])
            os.chdir(tmp_path)
            claims = [
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), "a"),
                listeners.claim(socket.AF_UNIX, "s"),
                listeners.claim(socket.AF_UNIX, str(path), "b"),
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), "a"),
            ]
            return [claim and claim.fd for claim in claims]

        assert in_child(child) == [3, 4, None, None]

    def test_only_untaken_stream_sockets_of_the_family(self, tmp_path: Path) -> None:
        """Datagram sockets, other families, closed or taken descriptors count for nothing."""

        def child() -> list[object]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            unix = socket.socket(socket.AF_UNIX)
            unix.bind(str(tmp_path / "s"))
            first, second = listening(), listening()
            third = listening()
            inherit([udp, unix, first, second, third], ["x", "x", "x", "y", "z"])
            claims = [listeners.claim(socket.AF_INET, ("127.0.0.1", 0), "x")]
            os.close(7)  # by the program, after the variables were read
            claims += [
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), "z"),  # closed: none
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0)),  # 6, the only one left
                listeners.claim(socket.AF_UNIX, "elsewhere"),
            ]
            return [claim and claim.fd for claim in claims]

        assert in_child(child) == [5, None, 6, 4]


class TestDatagrams:
    def test_claim_by_type(self) -> None:
        """A datagram claim takes a datagram socket (by address, else the only one)."""

        def child() -> list[object]:
            first = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            first.bind(("127.0.0.1", 0))
            second = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            second.bind(("127.0.0.1", 0))
            inherit([listening(), first, second])
            dgram = socket.SOCK_DGRAM
            claims = [
                listeners.claim(socket.AF_INET, second.getsockname(), type=dgram),
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0)),  # the stream one
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0)),  # none left
                listeners.claim(socket.AF_INET, ("127.0.0.1", 0), type=dgram),  # the only one
            ]
            return [claim and claim.fd for claim in claims]

        assert in_child(child) == [5, 3, None, 4]

    def test_check_listening(self) -> None:
        """A datagram socket passes where one is expected; each type's error names its directive."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram, listening() as stream:
            with pytest.raises(ConfigError, match="x: a datagram socket not bound"):
                listeners.check_listening(dgram, "x", socket.SOCK_DGRAM)
            dgram.bind(("127.0.0.1", 0))
            listeners.check_listening(dgram, "x", socket.SOCK_DGRAM)
            with pytest.raises(ConfigError, match=r"x: not a stream socket \(use ListenStream=\)"):
                listeners.check_listening(dgram, "x")
            with pytest.raises(ConfigError, match=r"not a datagram socket \(use ListenDatagram=\)"):
                listeners.check_listening(stream, "x", socket.SOCK_DGRAM)

    def test_describe(self) -> None:
        """Datagram addresses are written as the config writes them."""
        dgram = socket.SOCK_DGRAM
        assert listeners.describe(("127.0.0.1", 37), dgram) == "udp:127.0.0.1:37"
        assert listeners.describe(("::1", 7, 0, 0), dgram) == "udp:[::1]:7"
        assert listeners.describe("/run/d", dgram) == "unix-dgram:/run/d"
        assert listeners.describe(("127.0.0.1", 37)) == "127.0.0.1:37"


class TestAsciiNumber:
    @pytest.mark.parametrize(
        ("text", "number"),
        [("0", 0), ("0042", 42), ("1234567890", 1234567890), ("12345678901", None)],
    )
    def test_ascii_digits(self, text: str, number: int | None) -> None:
        """Up to `digits` ASCII digits make a number; more make none."""
        assert listeners.ascii_number(text) == number

    @pytest.mark.parametrize("text", ["", " 1", "1 ", "+1", "-1", "1_0", "\u00b2", "\u0663", "0x1"])
    def test_anything_else_is_none(self, text: str) -> None:
        """Signs, blanks, underscores and other digits than ASCII's are not numbers."""
        assert listeners.ascii_number(text) is None
