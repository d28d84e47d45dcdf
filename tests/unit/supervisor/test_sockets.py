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

    def test_sockname_matches(self) -> None:
        """Bound names compare equal to the configured address, resolving host names."""
        assert sockets.sockname_matches(("127.0.0.1", 80), parse_listen("localhost:80"))
        assert not sockets.sockname_matches(("127.0.0.1", 81), parse_listen("localhost:80"))
        assert sockets.sockname_matches(("::1", 80, 0, 0), parse_listen("[::1]:80"))
        assert sockets.sockname_matches("/run/a.sock", parse_listen("unix:/run/a.sock"))
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
