"""Scaling past one machine: sockd hosts, HAProxy and a client, each in a network namespace.

The test makes its own network (10.231.0.0/16, namespaces and veth links named
after its pid, so parallel runs never meet): a namespace per sockd "host", one
for HAProxy, one for the client, each host and the client on a point-to-point
link to the proxy. Client, proxy and hosts have different addresses, as on
real machines; nothing is routed (HAProxy ends every TCP connection).

    client 10.231.100.2 -- 10.231.100.1  proxy  10.231.N.1 -- 10.231.N.2 host sN

Root only (namespaces, links); CI runs as root: without it the test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any, Self

import pytest
from chaoslib import in_netns
from haproxylib import server
from harness import Sockd, recv_all, wait_until, write_config

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from haproxylib import HAProxy

HOSTS = 3
PORT = 7000  # every host's own: each is alone in its namespace
CLIENT_ADDRESS = "10.231.100.2"
PROXY_ADDRESS = "10.231.100.1"  # the frontend, on the client's link


def host_address(n: int) -> str:
    """Return host `n`'s address (1-based)."""
    return f"10.231.{n}.2"


class Network:
    """The namespaces and links of the test's network; `names` maps role to namespace."""

    def __init__(self) -> None:
        stem = f"sockd-scale-{os.getpid()}"
        self.proxy = f"{stem}-proxy"
        self.client = f"{stem}-client"
        self.hosts = [f"{stem}-s{n}" for n in range(1, HOSTS + 1)]
        self.made: list[str] = []

    def __enter__(self) -> Self:
        try:
            for name in (self.proxy, self.client, *self.hosts):
                self._ip("netns", "add", name)
                self.made.append(name)
                self._ip("-n", name, "link", "set", "lo", "up")
            links = [(self.client, "client", "10.231.100")]
            links += [(host, f"s{n}", f"10.231.{n}") for n, host in enumerate(self.hosts, 1)]
            for namespace, link, subnet in links:
                # Made in the proxy's namespace, its peer moved into the other at once:
                # neither name ever exists in the caller's namespace.
                self._ip("-n", self.proxy, "link", "add", link, "type", "veth",
                         "peer", "name", "eth0", "netns", namespace)  # fmt: skip
                self._ip("-n", self.proxy, "addr", "add", f"{subnet}.1/24", "dev", link)
                self._ip("-n", namespace, "addr", "add", f"{subnet}.2/24", "dev", "eth0")
                self._ip("-n", self.proxy, "link", "set", link, "up")
                self._ip("-n", namespace, "link", "set", "eth0", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        # A namespace's links go with it.
        for name in self.made:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        self.made = []

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def network() -> Iterator[Network]:
    """Make the test's network (root only); it is removed at teardown, even after a failure."""
    if os.geteuid() != 0:
        pytest.fail("this test makes network namespaces: it needs root (CI runs as root)")
    with Network() as made:
        yield made


class Clients:
    """Client threads in the client's namespace, one exchange after another, until stopped."""

    def __init__(self, network: Network, address: str, threads: int = 2) -> None:
        self.network = network
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)
        self.served = 0
        self.phase = "start"  # what the test is doing, recorded with each failure
        self.failures: list[str] = []
        self.failed_ports: list[int] = []  # the failed exchanges' own ports
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join()

    def _run(self) -> None:
        with in_netns(self.network.client):  # this thread only; its sockets stay there
            while not self.stopping.is_set():
                self._exchange()

    def _exchange(self) -> None:
        data = b"request %d\n" % threading.get_ident()
        port = 0
        try:
            with socket.create_connection((self.host, self.port), timeout=10) as sock:
                port = sock.getsockname()[1]
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                answer = recv_all(sock)
        except OSError as exc:
            answer = repr(exc).encode()
        with self.lock:
            if answer == data:
                self.served += 1
            else:
                self.failures.append(f"{self.phase}: {answer.decode(errors='replace')!r}")
                self.failed_ports.append(port)

    def wait_served(self, more: int) -> None:
        """Wait until `more` exchanges more have been served."""
        target = self.served + more
        wait_until(lambda: self.served >= target, what=f"{more} exchanges served")


# Hands sockd a listening socket as systemd does (as descriptor 3, LISTEN_FDS, LISTEN_PID).
ADOPT = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def start_host(  # noqa: PLR0913 (what a host is, and how it gets its socket)
    sockd: Callable[..., Sockd],
    tmp_path: Path,
    network: Network,
    n: int,
    header: str,
    *,
    held: socket.socket | None = None,
) -> Sockd:
    """Start host `n`'s sockd in its namespace: echo, PROXY headers (unless `header` is "").

    With `held` (a listening socket the test keeps, as sockd.socket keeps its
    own), sockd adopts it instead of binding.
    """
    proxy = f'proxy_protocol = true\nproxy_trusted = ["10.231.{n}.1/32"]\n' if header else ""
    config = write_config(
        tmp_path / f"s{n}.toml",
        f'[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["{host_address(n)}:{PORT}"]\n'
        + proxy,
    )
    prefix = ["ip", "netns", "exec", network.hosts[n - 1]]
    if held is None:
        return sockd("run", "--config", config, prefix=prefix)
    adopt = [sys.executable, "-c", ADOPT, str(held.fileno())]
    return sockd("run", "--config", config, prefix=[*prefix, *adopt], pass_fds=[held.fileno()])


def held_listener(network: Network, n: int) -> socket.socket:
    """Return a socket listening on host `n`'s address, made in its namespace."""
    with in_netns(network.hosts[n - 1]):
        sock = socket.socket()
    sock.bind((host_address(n), PORT))
    sock.listen(128)
    return sock


def start_all(  # noqa: PLR0913 (the fixtures, and what the hosts are)
    sockd: Callable[..., Sockd],
    haproxy: Callable[..., HAProxy],
    tmp_path: Path,
    network: Network,
    header: str,
    *,
    held: dict[int, socket.socket] | None = None,
) -> tuple[list[Sockd], HAProxy]:
    """Start every host (`held`: the sockets some adopt) and HAProxy; wait until all are UP."""
    held = held or {}
    hosts = [
        start_host(sockd, tmp_path, network, n, header, held=held.get(n))
        for n in range(1, HOSTS + 1)
    ]
    servers = [server(f"s{n}", f"{host_address(n)}:{PORT}", header) for n in range(1, HOSTS + 1)]
    proxy = haproxy(servers, bind=PROXY_ADDRESS, netns=network.proxy)
    proxy.wait_states(s1="UP", s2="UP", s3="UP")
    return hosts, proxy


def wait_serving(proxy: HAProxy, name: str) -> None:
    """Wait until HAProxy has sent server `name` a client's connection more."""

    def sessions() -> int:
        return int(proxy.servers()[name]["stot"])

    before = sessions()
    wait_until(lambda: sessions() > before, what=f"{name} serving clients")


def assert_real_client_logged(hosts: list[Sockd], but: int = 0) -> None:
    """Each host (but host `but`) logged clients as the client's address, via the proxy's."""
    for n, host in enumerate(hosts, 1):
        if n == but:
            continue

        def served(host: Sockd = host) -> list[dict[str, Any]]:
            return [
                event
                for event in host.events("connection_closed")
                if str(event["client"]).startswith(f"{CLIENT_ADDRESS}:")
            ]

        for event in wait_until(served, what=f"s{n} logging a client"):
            assert str(event["via"]).startswith(f"10.231.{n}.1:"), event


@pytest.mark.parametrize("header", ["send-proxy-v2", ""], ids=["proxy-v2", "no-proxy-protocol"])
def test_a_host_stopped_gracefully_goes_down_and_up_while_no_request_fails(
    sockd: Callable[..., Sockd],
    haproxy: Callable[..., HAProxy],
    tmp_path: Path,
    network: Network,
    header: str,
) -> None:
    """Stop s2 (SIGTERM), start it again, under load: DOWN, then UP; none fails but on s2.

    Between the stop and the checks saying DOWN, a connection to s2 is refused:
    HAProxy's `retries 3` + `option redispatch` (haproxylib's defaults) send it
    to another server (without them such clients fail). A graceful stop serves
    what s2 accepted and what its backlog held; a connection that completes its
    handshake in the microseconds between that last accept and the listener's
    close is reset by the kernel (a restart with the socket held loses none:
    see the last test), after HAProxy sent it its request: only such a request
    may fail, and only on s2.
    """
    hosts, proxy = start_all(sockd, haproxy, tmp_path, network, header)
    with Clients(network, proxy.address) as clients:
        for name in ("s1", "s2", "s3"):
            wait_serving(proxy, name)
        clients.phase = "stopping s2"
        assert hosts[1].stop() == 0
        clients.phase = "s2 stopped"
        proxy.wait_states(s2="DOWN")
        clients.phase = "s2 down"
        clients.wait_served(30)
        clients.phase = "starting s2"
        hosts[1] = start_host(sockd, tmp_path, network, 2, header)
        clients.phase = "s2 started"
        proxy.wait_states(s2="UP")
        clients.phase = "s2 up"
        wait_serving(proxy, "s2")
        clients.wait_served(30)
    on = proxy.sessions_until({f"{CLIENT_ADDRESS}:{port}" for port in clients.failed_ports})
    failed = [
        (failure, on.get(f"{CLIENT_ADDRESS}:{port}"))
        for failure, port in zip(clients.failures, clients.failed_ports, strict=True)
    ]
    assert all(server is not None and server[0] == "s2" for _, server in failed), failed
    if header:
        assert_real_client_logged(hosts)


def test_a_host_killed_fails_only_the_requests_it_had_in_flight(
    sockd: Callable[..., Sockd],
    haproxy: Callable[..., HAProxy],
    tmp_path: Path,
    network: Network,
) -> None:
    """SIGKILL s1 and its children under load (PROXY v1): DOWN; only requests on s1 fail.

    HAProxy's log names the server each failed request was on: s1, the killed
    host, which reset the connections it was serving or had queued.
    """
    hosts, proxy = start_all(sockd, haproxy, tmp_path, network, "send-proxy")
    with Clients(network, proxy.address) as clients:
        for name in ("s1", "s2", "s3"):
            wait_serving(proxy, name)
        clients.phase = "s1 killed"
        hosts[0].kill()
        proxy.wait_states(s1="DOWN")
        clients.phase = "s1 down"
        clients.wait_served(30)
    on = proxy.sessions_until({f"{CLIENT_ADDRESS}:{port}" for port in clients.failed_ports})
    assert {on[f"{CLIENT_ADDRESS}:{port}"][0] for port in clients.failed_ports} <= {"s1"}
    assert_real_client_logged(hosts, but=1)


def test_a_host_restarted_with_its_socket_held_fails_no_request(
    sockd: Callable[..., Sockd],
    haproxy: Callable[..., HAProxy],
    tmp_path: Path,
    network: Network,
) -> None:
    """`systemctl restart` of a socket-activated s2 under load: 0 failed requests.

    The listening socket outlives sockd (the test holds it, as sockd.socket
    does): connections that come while s2 restarts wait in its backlog, and the
    new sockd adopts the socket and serves them.
    """
    with held_listener(network, 2) as held:
        hosts, proxy = start_all(sockd, haproxy, tmp_path, network, "send-proxy-v2", held={2: held})
        with Clients(network, proxy.address) as clients:
            wait_serving(proxy, "s2")
            clients.phase = "restarting s2"
            assert hosts[1].stop() == 0
            hosts[1] = start_host(sockd, tmp_path, network, 2, "send-proxy-v2", held=held)
            clients.phase = "s2 restarted"
            wait_serving(proxy, "s2")
            clients.wait_served(30)
        assert clients.failures == []
        assert hosts[1].events("starting")[0]["listeners"][0]["origin"] == "adopted"
        assert_real_client_logged(hosts)
