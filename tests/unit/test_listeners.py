"""Tests of sockd.listeners: sd_listen_fds(3) rules, adoption and binding."""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import socket
import stat
from typing import TYPE_CHECKING

import pytest
from harness import in_child, inherit

from sockd import listeners
from sockd.errors import ConfigError, OSFailure
from sockd.supervisor import sockets
from sockd.supervisor.config import parse_listen

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


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


class TestAdopt:
    def test_listening_stream_socket(self) -> None:
        """A listening stream socket is adopted as it is."""
        sock = listening()
        fd = os.dup(sock.fileno())
        adopted = listeners.adopt(listeners.InheritedFd(fd, "x"))
        assert adopted.getsockname() == sock.getsockname()
        adopted.close()
        sock.close()

    def test_not_listening(self) -> None:
        """A bound but not listening socket is refused with a clear reason."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            with pytest.raises(ConfigError, match="not listening"):
                listeners.adopt(listeners.InheritedFd(os.dup(sock.fileno()), "x"))

    def test_vsock_is_refused(self) -> None:
        """A listening AF_VSOCK stream socket is refused, naming its descriptor and family."""
        try:
            sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            sock.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
        except OSError as exc:
            pytest.skip(f"no AF_VSOCK here: {exc.strerror}")
        with sock:
            sock.listen()
            fd = os.dup(sock.fileno())
            with pytest.raises(ConfigError) as caught:
                listeners.adopt(listeners.InheritedFd(fd, "v"))
        expected = f"socket from systemd (fd {fd}, name 'v'): address family AF_VSOCK"
        assert str(caught.value).startswith(expected)
        assert "not supported (AF_INET, AF_INET6, AF_UNIX)" in str(caught.value)
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # closed

    def test_netlink_is_refused(self) -> None:
        """An AF_NETLINK socket is refused for its family."""
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW) as sock:
            fd = os.dup(sock.fileno())
            with pytest.raises(ConfigError, match=f"fd {fd}, .*address family AF_NETLINK"):
                listeners.adopt(listeners.InheritedFd(fd, None))

    def test_datagram(self) -> None:
        """A datagram socket is refused: sockd serves streams."""
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            pytest.raises(ConfigError, match="not a stream socket"),
        ):
            listeners.adopt(listeners.InheritedFd(os.dup(sock.fileno()), "x"))

    def test_not_a_socket(self, tmp_path: Path) -> None:
        """A plain file descriptor is refused."""
        fd = os.open(tmp_path, os.O_RDONLY)
        with pytest.raises(ConfigError, match="not a socket"):
            listeners.adopt(listeners.InheritedFd(fd, None))


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


class Swapped(socket.socket):
    """A UNIX socket whose bind() is followed at once by what an attacker races for.

    Whoever may write the socket's directory moves the new socket file away and
    puts in its name a symlink to `victim` (or, with `hard_link`, a second name
    of the same socket): whatever sockd does to the path after bind() meets it.
    """

    victim: Path | None = None
    hard_link = False

    def bind(self, address: Any) -> None:
        super().bind(address)
        os.rename(address, f"{address}.moved")
        if self.hard_link:
            os.link(f"{address}.moved", address)
        else:
            os.symlink(str(self.victim), address)


class TestBind:
    def endpoint(self, text: str) -> listeners.Endpoint:
        address = parse_listen(text)
        family, sockaddr = sockets.resolve(address, "")[0]
        return listeners.Endpoint("svc", family, sockaddr, address)

    def victim(self, tmp_path: Path) -> Path:
        victim = tmp_path / "shadow"
        victim.write_text("secret")
        victim.chmod(0o600)
        return victim

    def test_mode_is_never_set_through_the_path(self, tmp_path: Path) -> None:
        """The mode comes from the umask at bind(): a symlink swapped in is not chmod()ed."""
        victim = self.victim(tmp_path)
        with Swapped(socket.AF_UNIX) as sock:
            sock.victim = victim
            listeners.bind(sock, self.endpoint(f"unix:{tmp_path}/s.sock"), 0o666)
        assert stat.S_IMODE(victim.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "s.sock.moved").stat().st_mode) == 0o666

    def test_owner_is_never_set_through_a_symlink(self, tmp_path: Path) -> None:
        """A symlink swapped in after bind() is refused, and its target keeps its owner."""
        victim = self.victim(tmp_path)
        before = victim.stat()
        endpoint = self.endpoint(f"unix:{tmp_path}/s.sock")
        endpoint.owner = (65534, 65534)
        with Swapped(socket.AF_UNIX) as sock:
            sock.victim = victim
            with pytest.raises(OSFailure) as caught:
                listeners.bind(sock, endpoint, 0o666)
        assert str(caught.value) == (
            f"service 'svc': listen unix:{tmp_path}/s.sock:"
            f" {tmp_path}/s.sock was replaced after bind(): not changing its owner"
        )
        after = victim.stat()
        assert (after.st_uid, after.st_gid, after.st_mode) == (
            before.st_uid,
            before.st_gid,
            before.st_mode,
        )

    def test_owner_is_never_set_through_a_hard_link(self, tmp_path: Path) -> None:
        """A socket file with a second name (a hard link to another socket) is refused."""
        endpoint = self.endpoint(f"unix:{tmp_path}/s.sock")
        endpoint.owner = (65534, 65534)
        with Swapped(socket.AF_UNIX) as sock:
            sock.hard_link = True
            with pytest.raises(OSFailure, match="was replaced"):
                listeners.bind(sock, endpoint, 0o666)
        assert (tmp_path / "s.sock").stat().st_uid == os.geteuid()

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
    def test_owner_and_mode_of_the_socket_made(self, tmp_path: Path) -> None:
        """As root, the socket file bound is given to the owner, with the configured mode."""
        endpoint = self.endpoint(f"unix:{tmp_path}/s.sock")
        endpoint.owner = (65534, 65533)
        with socket.socket(socket.AF_UNIX) as sock:
            listeners.bind(sock, endpoint, 0o660)
        made = (tmp_path / "s.sock").stat()
        assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (65534, 65533, 0o660)

    def test_ipv6_is_v6only(self) -> None:
        """An IPv6 listener never takes IPv4 too, so [::] and 0.0.0.0 can coexist."""
        with socket.socket(socket.AF_INET6) as sock:
            listeners.bind(sock, self.endpoint("[::1]:0"), 0o666)
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1

    def test_unix_mode_and_stale_socket(self, tmp_path: Path) -> None:
        """A stale socket file is replaced, and the new one gets the configured mode."""
        path = tmp_path / "s.sock"
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(str(path))
        with socket.socket(socket.AF_UNIX) as sock:
            listeners.bind(sock, self.endpoint(f"unix:{path}"), 0o640)
            assert stat.S_IMODE(path.stat().st_mode) == 0o640

    def test_unix_path_is_not_a_socket(self, tmp_path: Path) -> None:
        """A regular file where the socket should be is left alone, with an error."""
        path = tmp_path / "file"
        path.write_text("precious")
        with (
            socket.socket(socket.AF_UNIX) as sock,
            pytest.raises(ConfigError, match="exists and is not a socket"),
        ):
            listeners.bind(sock, self.endpoint(f"unix:{path}"), 0o666)
        assert path.read_text() == "precious"

    def test_unix_socket_in_use(self, tmp_path: Path) -> None:
        """A socket file someone listens on is not stolen."""
        path = tmp_path / "live.sock"
        with socket.socket(socket.AF_UNIX) as live:
            live.bind(str(path))
            live.listen()
            with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSFailure, match="in use"):
                listeners.bind(sock, self.endpoint(f"unix:{path}"), 0o666)

    def test_address_in_use(self) -> None:
        """A taken port is an OS error (exit 71) naming the service and address."""
        taken = listening()
        port = taken.getsockname()[1]
        with socket.socket() as sock, pytest.raises(OSFailure) as caught:
            listeners.bind(sock, self.endpoint(f"127.0.0.1:{port}"), 0o666)
        assert f"service 'svc': listen 127.0.0.1:{port}: cannot bind" in str(caught.value)
        assert caught.value.exit_code == 71
        taken.close()
