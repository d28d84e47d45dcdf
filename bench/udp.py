"""Benchmark sockd's UDP echo built-in against a Python UDP echo and openbsd-inetd's (loopback)."""

# How a cell is measured is described in bench/common.py; here the exchange is datagrams,
# not connections. Each of the N clients is a UDP socket of its own (its own source port),
# connected to the server: it sends one datagram (a sequence number and a line), waits for
# the same bytes back, and sends the next at once; an answer that does not come within the
# timeout is a loss (counted as a timeout error), and the client goes on with the next. A
# stale answer (one that came after its timeout) is ignored. So at most N datagrams are in
# flight, and "conn/s" in the tables is answers per second within the window. Answers
# still due when the window ends may come (or time out) after it: they count for latency
# and losses, not for the rate. A cell lasts at most duration + timeout.
#
# The servers, all answering in the process that reads the datagram (no fork per
# datagram), all pinned to the servers' CPU:
# - sockd: the `echo` built-in on a `udp:` listener, answered in the forker
#   (`udp_reflection = true`: UDP echo is off unless enabled, being an amplification and
#   loop vector). A sockd that refuses the config (no UDP yet) is left out, with the reason.
# - udpserver (the reference): socketserver.UDPServer, no forking, a handler that sends
#   the datagram back; under the same interpreter as sockd (common.servers_python).
# - inetd: openbsd-inetd's internal service, `echo dgram udp6 wait root internal`, in
#   C, in the foreground (-i) with a config of its own. Its internal services are found by
#   service name, so it runs in a mount namespace of its own (unshare) where a services
#   file of ours names the port: the machine's /etc/services, and any system inetd, are
#   left alone. Left out, with the reason, when inetd or unshare is missing.
#
# Why IPv6 loopback (::1): openbsd-inetd drops datagrams from 127.0.0.0/8 (its
# dg_badinput(), against spoofed loops between local services), so every server is
# measured on ::1, the same path for all.
#
# The load generator is the run's (--client): bench/loadgen.c with --udp (the default
# where gcc builds it), or DatagramGenerator below, in a process of its own (the Python
# one saturates its core first). Both pinned to the generator's CPU, both doing the same
# exchange; the generator's busy says when it, not the server, was the limit
# (common.notes).

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Run as a script, Python puts bench/ on sys.path, not the repository root: the shared
# code is the module bench.common, the name mypy knows it by.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PAYLOAD,
    SOCKD_LOG,
    STARTUP_TIMEOUT,
    Bench,
    BenchError,
    Load,
    Pinning,
    Server,
    Settings,
    Sockd,
    _generate_c,
    _percentiles,
    build_parser,
    generate_in_process,
    pin,
    run,
    servers_python,
    settings_from,
    start_reference,
)
from bench.exec import debian_package
from bench.pool import sockd_rejects

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection

HOST = "::1"  # see the top of this file: not 127.0.0.1
REFERENCE = "udpserver"
SOCKD_SERVICE: dict[str, object] = {
    "name": "echo",
    "handler": "echo",
    "listen": [f"udp:[{HOST}]:0"],
    "udp_reflection": True,
}
INETD_LINE = f"[{HOST}]:echo dgram udp6 wait root internal"
# inetd's limit on a service's invocations a minute (-R; 256 by default, then it stops the
# service for ten minutes): far above what a run sends.
INETD_RATE = 1_000_000_000
INSTALL_HINT = "run scripts/setup --tests (it installs openbsd-inetd, its daemon not started)"

# The reference: socketserver.UDPServer, stock settings, the datagram sent back in-process.
UDPSERVER = f"""\
import socket
import socketserver

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)

class Server(socketserver.UDPServer):
    address_family = socket.AF_INET6

server = Server(({HOST!r}, 0), Echo)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def sockd_config(service: dict[str, object] = SOCKD_SERVICE) -> str:
    """Return sockd's TOML config: one service (the UDP echo) on a free port of ::1."""
    # A JSON string, boolean or list of strings is a TOML one too.
    lines = ["[[service]]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in service.items()]
    return "\n".join(lines) + "\n"


# --- the load generator --------------------------------------------------------------------


class _Client:
    __slots__ = ("deadline", "expected", "sent", "seq", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0
        self.sent = 0.0
        self.deadline = 0.0
        self.expected = b""


class DatagramGenerator:
    """Keeps `clients` datagrams in flight against one UDP port of ::1 for one window."""

    def __init__(self, port: int, clients: int, duration: float, timeout: float) -> None:
        """Prepare a run; nothing is opened yet."""
        self.address = (HOST, port)
        self.clients = clients
        self.duration = duration
        self.timeout = timeout
        self.selector = selectors.DefaultSelector()
        # Clients awaiting an answer, in the order they sent: the first is due first.
        self.waiting: dict[int, _Client] = {}
        self.latencies: list[float] = []
        self.load = Load(window=duration)
        self.window_end = 0.0

    def run(self) -> Load:
        """Run the window, let the answers due come or time out, and report."""
        members = [self._open() for _ in range(self.clients)]
        cpu_start = time.process_time()
        start = time.perf_counter()
        self.window_end = start + self.duration
        for client in members:
            self._send(client)
        window_open = True
        while self.waiting:
            now = time.perf_counter()
            self._expire(now)
            if window_open and now >= self.window_end:
                self.load.in_flight_at_end = len(self.waiting)
                window_open = False
            if not self.waiting:
                break
            wait = next(iter(self.waiting.values())).deadline - now
            if window_open:
                wait = min(wait, self.window_end - now)
            for key, _ in self.selector.select(max(0.0, wait)):
                self._receive(key.data)
        if window_open:  # every client stopped at once (an error on each, say)
            self.load.in_flight_at_end = 0
        self.load.elapsed = time.perf_counter() - start
        self.load.busy = (time.process_time() - cpu_start) / self.load.elapsed
        self.load.latencies_ms = _percentiles(self.latencies)
        for client in members:
            client.sock.close()
        self.selector.close()
        return self.load

    def _open(self) -> _Client:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))  # a source port of its own
        sock.connect(self.address)  # answers from elsewhere are dropped by the kernel
        sock.setblocking(False)
        client = _Client(sock)
        self.selector.register(sock, selectors.EVENT_READ, client)
        return client

    def _send(self, client: _Client) -> None:
        """Send the client's next datagram, unless the window has closed."""
        now = time.perf_counter()
        if now >= self.window_end:
            return
        client.seq += 1
        # An 8-digit hexadecimal sequence number, then the line: 20 bytes (as loadgen --udp).
        client.expected = b"%08x%s" % (client.seq & 0xFFFFFFFF, PAYLOAD)
        client.sent, client.deadline = now, now + self.timeout
        try:
            client.sock.send(client.expected)
        except OSError as exc:
            self._count(exc.errno)
            return  # this client stops: a cell of refusals ends, it does not spin
        self.waiting[client.sock.fileno()] = client

    def _receive(self, client: _Client) -> None:
        while True:
            try:
                data = client.sock.recv(2048)
            except BlockingIOError:
                return
            except OSError as exc:  # ECONNREFUSED: nothing listens (ICMP port unreachable)
                if self.waiting.pop(client.sock.fileno(), None) is not None:
                    self._count(exc.errno)
                return
            if data != client.expected or client.sock.fileno() not in self.waiting:
                continue  # an answer that came after its timeout, or garbage: not this one
            finished = time.perf_counter()
            del self.waiting[client.sock.fileno()]
            self.latencies.append(finished - client.sent)
            self.load.completed += 1
            if finished <= self.window_end:
                self.load.completed_in_window += 1
            self._send(client)
            return

    def _expire(self, now: float) -> None:
        while self.waiting:
            client = next(iter(self.waiting.values()))
            if client.deadline > now:
                return
            del self.waiting[client.sock.fileno()]
            self._count("timeout")  # a loss
            self._send(client)

    def _count(self, error: int | str | None) -> None:
        if error == errno.ECONNREFUSED:
            kind = "refused"
        elif isinstance(error, int):
            kind = errno.errorcode.get(error, str(error))
        else:
            kind = error or "other"
        self.load.errors[kind] = self.load.errors.get(kind, 0) + 1


def _generator_main(
    out: Connection, server: Server, clients: int, settings: Settings, cpu: int | None
) -> None:
    pin(0, cpu)
    out.send(DatagramGenerator(server.port, clients, settings.duration, settings.timeout).run())
    out.close()


class DatagramServer(Server):
    """A UDP echo server: measured with the datagram generator; it forks nothing to reap."""

    pooled = True  # nothing forked per datagram: no child to wait for between cells

    def generate(self, clients: int, settings: Settings, cpu: int | None) -> Load:
        """Run the datagram generator of settings.client against this server for one cell.

        Raises:
            BenchError: the generator failed, died or overran duration + timeout.

        """
        if settings.client == "c":
            return _generate_c(self, clients, settings, cpu, ["--udp", "--host", HOST])
        return generate_in_process(self, clients, settings, cpu, _generator_main)


def wait_echo(process: subprocess.Popen[bytes], name: str, port: int, err_path: Path) -> None:
    """Wait until a datagram sent to `port` of ::1 comes back.

    Raises:
        BenchError: the server exited, or nothing came back in time.

    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(0.2)
        while time.monotonic() < deadline and process.poll() is None:
            try:
                sock.sendto(b"ready?", (HOST, port))
                if sock.recv(64) == b"ready?":
                    return
            except OSError:
                pass
    tail = err_path.read_text(errors="replace")[-2000:] if err_path.exists() else ""
    raise BenchError(f"{name} did not echo a datagram (status {process.poll()}):\n{tail}")


class SockdUDP(Sockd, DatagramServer):
    """sockd serving UDP echo: the daemon and its forker, which answers each datagram."""

    pooled = False  # its forker is one of its own processes (Sockd.own_pids)

    def settle(self) -> None:
        """Nothing to wait for: the forker answers datagrams without forking."""

    @classmethod
    def start_udp(cls, workdir: Path, cpu: int | None) -> SockdUDP:
        """Write the config into `workdir`, start sockd on it, wait until it echoes.

        Raises:
            BenchError: sockd exited, did not get ready, or echoed nothing in time.

        """
        config = workdir / "sockd.toml"
        config.write_text(sockd_config())
        log = workdir / SOCKD_LOG
        sockd = cls.start(log, cpu, ["--config", str(config)])
        assert isinstance(sockd, SockdUDP)  # noqa: S101 (Sockd.start makes a cls)
        try:
            wait_echo(sockd.process, "sockd", sockd.port, log)
        except BaseException:
            sockd.stop()
            raise
        return sockd


class UDPServer(DatagramServer):
    """socketserver.UDPServer answering in-process, under sockd's interpreter."""

    name = REFERENCE

    @classmethod
    def start(cls, workdir: Path, cpu: int | None) -> UDPServer:
        """Start the reference, pin it, read its port, wait until it echoes.

        Raises:
            BenchError: it exited, or did not print its port or echo in time.

        """
        err_path = workdir / "udpserver.stderr"
        argv = [servers_python().executable, "-c", UDPSERVER]
        server = cls(*start_reference(argv, "the UDPServer reference", err_path, cpu))
        try:
            wait_echo(server.process, server.name, server.port, err_path)
        except BaseException:
            server.stop()
            raise
        return server


class Inetd(DatagramServer):
    """openbsd-inetd's internal UDP echo, in the foreground, in a mount namespace of its own."""

    name = "inetd"

    @classmethod
    def start(cls, inetd: str, workdir: Path, cpu: int | None) -> Inetd:
        """Start inetd on a free port of ::1, pin it, wait until it echoes.

        The port is the kernel's choice (bound on port 0, then let go for inetd).

        Raises:
            BenchError: it exited, or echoed nothing in time.

        """
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        services = workdir / "inetd.services"
        services.write_text(f"echo\t\t{port}/udp\n")
        config = workdir / "inetd.conf"
        config.write_text(INETD_LINE + "\n")
        err_path = workdir / "inetd.stderr"
        # sh execs inetd: the process started is inetd itself (unshare does not fork here).
        script = 'mount --bind "$1" /etc/services && exec "$2" -i -R "$3" "$4"'
        argv = [*unshare_command(), "sh", "-c", script, "sh", str(services), inetd]
        argv += [str(INETD_RATE), str(config)]
        with err_path.open("wb") as err:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, process_group=0
            )
        server = cls(process, port)
        try:
            pin(process.pid, cpu)
            wait_echo(process, cls.name, port, err_path)
        except BaseException:
            server.stop()
            raise
        return server


def unshare_command() -> list[str]:
    """Return how to enter a mount namespace of our own (a user namespace too, if not root)."""
    command = ["unshare", "--mount"]
    if os.geteuid() != 0:
        command.append("--map-root-user")
    return command


def inetd_missing(inetd: str | None) -> str | None:
    """Return why inetd cannot run here, or None."""
    if inetd is None:
        return f"openbsd-inetd's /usr/sbin/inetd not found: {INSTALL_HINT}"
    if shutil.which("unshare") is None:
        return "unshare not found (util-linux): inetd needs a mount namespace of its own"
    return None


def find_inetd(name: str | None) -> str | None:
    """Return the inetd named (default: /usr/sbin/inetd), if it is there."""
    if name is not None:
        return shutil.which(name)
    return "/usr/sbin/inetd" if os.access("/usr/sbin/inetd", os.X_OK) else None


@contextlib.contextmanager
def running_servers(
    names: list[str], inetd: str | None, workdir: Path, pinning: Pinning
) -> Iterator[list[Server]]:
    """Start the servers named; stop them all however the run ends."""
    cpu = pinning.server_cpu
    with contextlib.ExitStack() as stack:
        servers: list[Server] = []
        for name in names:
            server: Server
            if name == "sockd":
                server = SockdUDP.start_udp(workdir, cpu)
            elif name == "inetd":
                assert inetd is not None  # noqa: S101 (left out by make_bench otherwise)
                server = Inetd.start(inetd, workdir, cpu)
            else:
                server = UDPServer.start(workdir, cpu)
            stack.callback(server.stop)
            servers.append(server)
        yield servers


def sockd_lacks_udp() -> str | None:
    """Return why the installed sockd refuses a `udp:` listen address, or None if it takes one."""
    probe: dict[str, object] = {"name": "probe", "handler": "discard", "listen": ["udp:[::1]:0"]}
    reason = sockd_rejects(sockd_config(probe))
    if reason is None:
        return None
    return f"this sockd refuses a udp listen address (it serves no UDP): {reason}"


def sockd_refuses() -> str | None:
    """Return why the installed sockd cannot serve the UDP echo config, or None."""
    reason = sockd_lacks_udp()
    if reason is None:
        reason = sockd_rejects(sockd_config())
        if reason is not None:
            reason = f"this sockd takes UDP but refuses the UDP echo config: {reason}"
    return reason


def make_bench(inetd_name: str | None = None) -> Bench:
    """Return the UDP benchmark; what cannot run here (sockd without UDP, no inetd) is left out."""
    inetd = find_inetd(inetd_name)
    not_run = {"sockd": sockd_refuses(), "inetd": inetd_missing(inetd)}
    not_run_now = {name: why for name, why in not_run.items() if why}
    names = [name for name in ("sockd", REFERENCE, "inetd") if name not in not_run_now]
    settings = ", ".join(f"{key} = {json.dumps(value)}" for key, value in SOCKD_SERVICE.items())
    header = [
        f"sockd: [[service]] {settings}: the echo built-in, answered in the forker",
        f"{REFERENCE}: socketserver.UDPServer (no fork), a handler sending the datagram back",
    ]
    if inetd is not None:
        header.append(
            f"inetd: {inetd} ({debian_package(str(Path(inetd).resolve()))}) -i -R {INETD_RATE},"
            f" `{INETD_LINE}`, the port named in a services file of its own (mount namespace)"
        )
    header.append(
        f"every server on {HOST} (openbsd-inetd drops datagrams from 127.0.0.0/8); clients:"
        " one UDP socket each, one datagram in flight; a timeout is a loss; conn/s ="
        " answers/s"
    )
    for name, why in not_run_now.items():
        header.append(f"{name}: not run: {why}")
    meta = {
        "sockd_config": sockd_config(),
        "udpserver": UDPSERVER,
        "inetd": inetd,
        "inetd_config": INETD_LINE,
        "host": HOST,
    }
    return Bench(
        "udp.py",
        REFERENCE,
        lambda workdir, pinning: running_servers(names, inetd, workdir, pinning),
        header=tuple(header),
        meta=meta,
        not_run=not_run_now,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON if asked; return the exit status."""
    parser = build_parser(__doc__, "bench/udp.py")
    parser.add_argument(
        "--inetd", metavar="PATH", help="the openbsd-inetd to run (default: /usr/sbin/inetd)"
    )
    args = parser.parse_args(argv)
    settings = settings_from(args, parser)
    return run(make_bench(args.inetd), args, settings)


if __name__ == "__main__":
    sys.exit(main())
