"""Tests of sockd.supervisor.sockets: which socket serves which service; the daemon's listeners."""

from __future__ import annotations

import os
import socket
import stat
from typing import TYPE_CHECKING

import pytest

from sockd import listeners
from sockd.errors import ConfigError, OSFailure
from sockd.supervisor import sockets
from sockd.supervisor.config import ServiceConfig, parse_listen

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


def service(name: str, *listen: str) -> ServiceConfig:
    return ServiceConfig(name, "echo", tuple(parse_listen(text) for text in listen))


def listening(address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen()
    return sock


class TestPlan:
    def inherit(self, sock: socket.socket, name: str | None) -> listeners.InheritedFd:
        return listeners.InheritedFd(os.dup(sock.fileno()), name)

    def test_by_name_then_address_then_bind(self) -> None:
        """Names map first, then addresses; a service with no inherited socket binds its own."""
        named, by_address = listening(), listening()
        port = by_address.getsockname()[1]
        services = [
            service("echo", "127.0.0.1:1"),
            service("daytime", f"127.0.0.1:{port}"),
            service("time", "127.0.0.1:0"),
        ]
        plan = sockets.plan(
            services, [self.inherit(named, "echo"), self.inherit(by_address, "sockd.socket")]
        )
        assert [(e.service, e.adopted is not None) for e in plan] == [
            ("echo", True),
            ("daytime", True),
            ("time", False),
        ]
        assert plan[2].sockaddr == ("127.0.0.1", 0)
        for endpoint in plan[:2]:
            assert endpoint.adopted is not None
            endpoint.adopted.close()
        named.close()
        by_address.close()

    def test_single_service_takes_all(self) -> None:
        """With one service, unnamed sockets that match nothing are its own."""
        with listening() as sock:
            plan = sockets.plan([service("only")], [self.inherit(sock, None)])
        assert [e.service for e in plan] == ["only"]
        assert plan[0].adopted is not None
        plan[0].adopted.close()

    def test_unmatched_socket_is_a_config_error(self) -> None:
        """With several services, a socket that matches none stops start-up (exit 78)."""
        services = [service("a", "127.0.0.1:1"), service("b", "127.0.0.1:2")]
        with (
            listening() as sock,
            pytest.raises(ConfigError, match=r"name 'zzz', 127\.0\.0\.1:\d+\) matches no service"),
        ):
            sockets.plan(services, [self.inherit(sock, "zzz")])

    def test_nowhere_to_listen(self) -> None:
        """A service with no listen address needs a socket from systemd."""
        with pytest.raises(ConfigError, match="no listen address and no socket from systemd"):
            sockets.plan([service("a"), service("b", "127.0.0.1:0")], [])

    def test_unresolvable_host(self) -> None:
        """A host name that does not resolve names the service and entry."""
        with pytest.raises(ConfigError, match=r"service 'a': listen\[0\]: cannot resolve"):
            sockets.plan([service("a", "no-such-host.invalid:80")], [])

    def test_a_kept_socket_is_taken_back_for_its_address(self) -> None:
        """A socket systemd kept for a service serves its address again; others are bound."""
        kept = listening()
        port = kept.getsockname()[1]
        services = [service("a", f"127.0.0.1:{port}", "127.0.0.1:0"), service("b", "127.0.0.1:0")]
        plan = sockets.plan(services, [self.inherit(kept, "sockd-bound/a")])
        assert [(e.service, e.fd_name) for e in plan] == [
            ("a", "sockd-bound/a"),
            ("a", None),
            ("b", None),
        ]
        assert plan[0].adopted is not None
        assert plan[0].adopted.getsockname() == kept.getsockname()
        listener = sockets.Listener(plan[0], 0o666)
        assert listener.describe()["origin"] == "stored"
        listener.close()
        kept.close()

    def test_a_kept_socket_nothing_listens_on_any_more_is_closed(self) -> None:
        """Kept for an address or a service no longer configured: closed, not given to a service."""
        old_address, old_service = listening(), listening()
        inherited = [
            self.inherit(old_address, "sockd-bound/only"),
            self.inherit(old_service, "sockd-bound/gone"),
        ]
        plan = sockets.plan([service("only", "127.0.0.1:0")], inherited)
        assert [(e.service, e.adopted) for e in plan] == [("only", None)]
        for fd in inherited:
            with pytest.raises(OSError, match="Bad file descriptor"):
                os.fstat(fd.fd)
        old_address.close()
        old_service.close()

    def test_a_service_with_sockets_from_a_unit_gets_no_kept_socket(self) -> None:
        """Sockets from a socket unit are the service's only ones: a kept one is closed."""
        from_unit, kept = listening(), listening()
        services = [service("a", f"127.0.0.1:{kept.getsockname()[1]}")]
        inherited = [self.inherit(from_unit, "a"), self.inherit(kept, "sockd-bound/a")]
        plan = sockets.plan(services, inherited)
        assert [(e.fd_name, e.sockaddr) for e in plan] == [("a", from_unit.getsockname())]
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(inherited[1].fd)
        assert plan[0].adopted is not None
        plan[0].adopted.close()
        from_unit.close()
        kept.close()

    def test_datagram_sockets_by_address_and_type(self) -> None:
        """A datagram socket goes to the service of its udp: address, not to a TCP one's."""
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        services = [
            service("tcp", f"127.0.0.1:{port}"),
            service("udp", f"udp:127.0.0.1:{port}"),
        ]
        plan = sockets.plan(services, [self.inherit(udp, None)])
        assert [(e.service, e.type, e.adopted is not None) for e in plan] == [
            ("udp", socket.SOCK_DGRAM, True),
            ("tcp", socket.SOCK_STREAM, False),
        ]
        assert plan[0].adopted is not None
        plan[0].adopted.close()
        udp.close()

    def test_a_kept_udp_socket_is_taken_back_by_its_type(self) -> None:
        """A kept UDP socket serves its udp: address again; a TCP entry on its port is bound."""
        kept = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        kept.bind(("127.0.0.1", 0))
        port = kept.getsockname()[1]
        services = [service("a", f"127.0.0.1:{port}", f"udp:127.0.0.1:{port}")]
        plan = sockets.plan(services, [self.inherit(kept, "sockd-bound/a")])
        assert [(e.type, e.fd_name) for e in plan] == [
            (socket.SOCK_STREAM, None),
            (socket.SOCK_DGRAM, "sockd-bound/a"),
        ]
        assert plan[1].adopted is not None
        plan[1].adopted.close()
        kept.close()

    def test_sockname_matches(self) -> None:
        """Bound names compare equal to the configured address, resolving host names."""
        assert sockets.sockname_matches(("127.0.0.1", 80), parse_listen("localhost:80"))
        assert not sockets.sockname_matches(("127.0.0.1", 81), parse_listen("localhost:80"))
        assert sockets.sockname_matches(("::1", 80, 0, 0), parse_listen("[::1]:80"))
        assert sockets.sockname_matches("/run/a.sock", parse_listen("unix:/run/a.sock"))
        dgram = socket.SOCK_DGRAM
        assert sockets.sockname_matches(("127.0.0.1", 80), parse_listen("udp:localhost:80"), dgram)
        assert not sockets.sockname_matches(("127.0.0.1", 80), parse_listen("udp:localhost:80"))
        assert not sockets.sockname_matches(("127.0.0.1", 80), parse_listen("127.0.0.1:80"), dgram)
        assert sockets.sockname_matches("/a", parse_listen("unix-dgram:/a"), dgram)
        assert not sockets.sockname_matches("/run/a.sock", parse_listen("127.0.0.1:80"))


class TestListener:
    def test_bound_socket_listens_and_its_file_goes_at_close(self, tmp_path: Path) -> None:
        """A UNIX socket we bind listens with the mode asked; closing removes its file."""
        path = tmp_path / "s.sock"
        endpoint = listeners.Endpoint("svc", socket.AF_UNIX, str(path), "unix:s.sock")
        listener = sockets.Listener(endpoint, 0o600)
        assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert listener.describe()["origin"] == "bound"
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
        listener.close()
        assert not path.exists()
        assert listener.fileno() == -1

    def test_adopted_socket_must_listen(self) -> None:
        """An adopted socket that does not listen is refused, and closed."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        endpoint = listeners.Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
        with pytest.raises(ConfigError, match="not listening"):
            sockets.Listener(endpoint, 0o666)
        assert sock.fileno() == -1

    def test_adopted_socket_is_kept_as_it_is(self) -> None:
        """A listening adopted socket is used as is; closing it removes no file."""
        sock = listening()
        endpoint = listeners.Endpoint("svc", sock.family, sock.getsockname(), adopted=sock)
        listener = sockets.Listener(endpoint, 0o666)
        assert listener.socket is sock
        assert listener.describe()["origin"] == "adopted"
        listener.close()

    def test_address_in_use_names_the_service(self) -> None:
        """Binding a taken address fails with the service and address named."""
        taken = listening()
        address = parse_listen(f"127.0.0.1:{taken.getsockname()[1]}")
        endpoint = listeners.Endpoint("svc", socket.AF_INET, taken.getsockname(), address)
        with pytest.raises(
            OSFailure, match=r"service 'svc': listen 127\.0\.0\.1:[0-9]+: cannot bind"
        ):
            sockets.Listener(endpoint, 0o666)
        taken.close()

    def test_descriptor_is_inherited_by_nothing(self) -> None:
        """The daemon's copy is close-on-exec: only spawn() passes it on, on purpose."""
        endpoint = listeners.Endpoint("svc", socket.AF_INET, ("127.0.0.1", 0), "127.0.0.1:0")
        listener = sockets.Listener(endpoint, 0o666)
        assert not os.get_inheritable(listener.fileno())
        listener.close()


class TestDatagramListener:
    def test_udp_is_bound_not_listening(self) -> None:
        """A udp: address is a bound datagram socket, described with its prefix."""
        endpoint = sockets.plan([service("u", "udp:127.0.0.1:0")], [])[0]
        listener = sockets.Listener(endpoint, 0o666)
        try:
            assert listener.socket.type == socket.SOCK_DGRAM
            assert listener.describe()["address"].startswith("udp:127.0.0.1:")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"x", listener.socket.getsockname())
                assert listener.socket.recv(10) == b"x"
        finally:
            listener.close()

    def test_unix_dgram_replaces_a_stale_file_not_a_live_socket(self, tmp_path: Path) -> None:
        """A unix-dgram: path: a stale socket file is replaced, one in use (any type) is not."""
        path = str(tmp_path / "d.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stale:
            stale.bind(path)
        endpoint = sockets.plan([service("u", f"unix-dgram:{path}")], [])[0]
        listener = sockets.Listener(endpoint, 0o600)
        try:
            assert listener.describe()["address"] == f"unix-dgram:{path}"
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            with pytest.raises(OSFailure, match="in use by another process"):
                sockets.Listener(endpoint, 0o600)
        finally:
            listener.close()
        assert not os.path.exists(path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
            live.bind(path)
            live.listen()
            with pytest.raises(OSFailure, match="in use by another process"):
                sockets.Listener(endpoint, 0o600)


class TestAdopt:
    def test_listening_stream_socket(self) -> None:
        """A listening stream socket is adopted as it is."""
        sock = listening()
        fd = os.dup(sock.fileno())
        adopted = sockets.adopt(listeners.InheritedFd(fd, "x"))
        assert adopted.getsockname() == sock.getsockname()
        adopted.close()
        sock.close()

    def test_not_listening(self) -> None:
        """A bound but not listening socket is refused with a clear reason."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            with pytest.raises(ConfigError, match="not listening"):
                sockets.adopt(listeners.InheritedFd(os.dup(sock.fileno()), "x"))

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
                sockets.adopt(listeners.InheritedFd(fd, "v"))
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
                sockets.adopt(listeners.InheritedFd(fd, None))

    def test_unbound_datagram(self) -> None:
        """A datagram socket bound to no address is refused: it has nothing to serve."""
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
            pytest.raises(ConfigError, match="a datagram socket not bound to any address"),
        ):
            sockets.adopt(listeners.InheritedFd(os.dup(sock.fileno()), "x"))

    def test_bound_datagram(self) -> None:
        """A bound datagram socket (ListenDatagram=) is adopted, its type the kernel's."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            adopted = sockets.adopt(listeners.InheritedFd(os.dup(sock.fileno()), "x"))
            assert (adopted.type, adopted.getsockname()) == (socket.SOCK_DGRAM, sock.getsockname())
            adopted.close()

    def test_seqpacket_is_refused(self) -> None:
        """A socket neither stream nor datagram is refused as a stream one would be."""
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock,
            pytest.raises(ConfigError, match=r"not a stream socket \(use ListenStream=\)"),
        ):
            sockets.adopt(listeners.InheritedFd(os.dup(sock.fileno()), "x"))

    def test_not_a_socket(self, tmp_path: Path) -> None:
        """A plain file descriptor is refused."""
        fd = os.open(tmp_path, os.O_RDONLY)
        with pytest.raises(ConfigError, match="not a socket"):
            sockets.adopt(listeners.InheritedFd(fd, None))


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
            sockets.bind(sock, self.endpoint(f"unix:{tmp_path}/s.sock"), 0o666)
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
                sockets.bind(sock, endpoint, 0o666)
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
                sockets.bind(sock, endpoint, 0o666)
        assert (tmp_path / "s.sock").stat().st_uid == os.geteuid()

    @pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
    def test_owner_and_mode_of_the_socket_made(self, tmp_path: Path) -> None:
        """As root, the socket file bound is given to the owner, with the configured mode."""
        endpoint = self.endpoint(f"unix:{tmp_path}/s.sock")
        endpoint.owner = (65534, 65533)
        with socket.socket(socket.AF_UNIX) as sock:
            sockets.bind(sock, endpoint, 0o660)
        made = (tmp_path / "s.sock").stat()
        assert (made.st_uid, made.st_gid, stat.S_IMODE(made.st_mode)) == (65534, 65533, 0o660)

    def test_ipv6_is_v6only(self) -> None:
        """An IPv6 listener never takes IPv4 too, so [::] and 0.0.0.0 can coexist."""
        with socket.socket(socket.AF_INET6) as sock:
            sockets.bind(sock, self.endpoint("[::1]:0"), 0o666)
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1

    def test_unix_mode_and_stale_socket(self, tmp_path: Path) -> None:
        """A stale socket file is replaced, and the new one gets the configured mode."""
        path = tmp_path / "s.sock"
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(str(path))
        with socket.socket(socket.AF_UNIX) as sock:
            sockets.bind(sock, self.endpoint(f"unix:{path}"), 0o640)
            assert stat.S_IMODE(path.stat().st_mode) == 0o640

    def test_unix_path_is_not_a_socket(self, tmp_path: Path) -> None:
        """A regular file where the socket should be is left alone, with an error."""
        path = tmp_path / "file"
        path.write_text("precious")
        with (
            socket.socket(socket.AF_UNIX) as sock,
            pytest.raises(ConfigError, match="exists and is not a socket"),
        ):
            sockets.bind(sock, self.endpoint(f"unix:{path}"), 0o666)
        assert path.read_text() == "precious"

    def test_unix_socket_in_use(self, tmp_path: Path) -> None:
        """A socket file someone listens on is not stolen."""
        path = tmp_path / "live.sock"
        with socket.socket(socket.AF_UNIX) as live:
            live.bind(str(path))
            live.listen()
            with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSFailure, match="in use"):
                sockets.bind(sock, self.endpoint(f"unix:{path}"), 0o666)

    def test_address_in_use(self) -> None:
        """A taken port is an OS error (exit 71) naming the service and address."""
        taken = listening()
        port = taken.getsockname()[1]
        with socket.socket() as sock, pytest.raises(OSFailure) as caught:
            sockets.bind(sock, self.endpoint(f"127.0.0.1:{port}"), 0o666)
        assert f"service 'svc': listen 127.0.0.1:{port}: cannot bind" in str(caught.value)
        assert caught.value.exit_code == 71
        taken.close()
