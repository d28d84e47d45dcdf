"""Python handlers the tests load by `module:Class` (this directory is on `pythonpath`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import time


def explode(secret: str) -> None:
    """Raise, with a local variable that must never reach the log."""
    raise ValueError("boom " + secret[:2])


class Boom(socketserver.BaseRequestHandler):
    """Raise on every connection."""

    def handle(self) -> None:
        """Fail."""
        explode("42-local-secret")


class Quick(socketserver.BaseRequestHandler):
    """Send one byte and exit at once."""

    def handle(self) -> None:
        """Send b'.'."""
        self.request.sendall(b".")


class Report(socketserver.StreamRequestHandler):
    """Report the child's identity and environment as one JSON line."""

    def handle(self) -> None:
        """Write uid, gid, pid and environment variable names."""
        report = {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "pid": os.getpid(),
            "environ": sorted(os.environ),
        }
        self.wfile.write(json.dumps(report).encode() + b"\n")


class Sleep(socketserver.BaseRequestHandler):
    """Sleep for ever (until a signal or the duration limit)."""

    def handle(self) -> None:
        """Sleep."""
        self.request.sendall(b"sleeping\n")
        time.sleep(3600)


class RealTimeSignal(socketserver.BaseRequestHandler):
    """End the child with a real-time signal (SIGRTMIN+6)."""

    def handle(self) -> None:
        """Kill ourselves."""
        os.kill(os.getpid(), signal.SIGRTMIN + 6)


class ProxyReport(socketserver.StreamRequestHandler):
    """Report the client, the proxy and the PROXY header's TLVs as one JSON line."""

    def handle(self) -> None:
        """Write client_address, server.proxy_address and the header's fields."""
        header = getattr(self.server, "proxy_header", None)
        report = {
            "client": list(self.client_address),
            "proxy": list(getattr(self.server, "proxy_address", None) or ()),
            "version": header and header.version,
            "local": header and header.local,
            "destination": header and header.destination and list(header.destination),
            "authority": header and header.authority,
            "cn": header and header.ssl and header.ssl.cn,
            "payload": self.rfile.read1(100).decode(),
        }
        self.wfile.write(json.dumps(report).encode() + b"\n")


class PeerFds(socketserver.BaseRequestHandler):
    """Report the peers of every connected socket the child has, as one JSON line."""

    def handle(self) -> None:
        """Write [host, port] of each TCP peer found among the process's descriptors."""
        peers = []
        for name in os.listdir("/proc/self/fd"):
            try:
                sock = socket.socket(fileno=os.dup(int(name)))
            except OSError:
                continue  # not a socket
            with sock:
                try:
                    peer = sock.getpeername()
                except OSError:
                    continue
            if isinstance(peer, tuple):
                peers.append(list(peer[:2]))
        self.request.sendall(json.dumps(peers).encode() + b"\n")


class DatagramReport(socketserver.DatagramRequestHandler):
    """Answer a datagram with JSON: what it held, the sender, the child's pid, the socket's type."""

    def handle(self) -> None:
        """Write the report; DatagramRequestHandler sends it with sendto on the listening socket."""
        data, sock = self.request
        report = {
            "data": data.decode(),
            "client": list(self.client_address),
            "pid": os.getpid(),
            "type": int(sock.type),
        }
        self.wfile.write(json.dumps(report).encode())


class DatagramHold(DatagramReport):
    """DatagramReport; on `hold:PATH` it first creates PATH.busy, then waits for PATH (10 s)."""

    def handle(self) -> None:
        """Hold the datagram until PATH exists, if asked; then report it, marked `held`."""
        data = self.request[0].decode()
        if data.startswith("hold:"):
            path = data.removeprefix("hold:")
            with open(path + ".busy", "w"):
                pass
            deadline = time.monotonic() + 10
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
        super().handle()
        self.wfile.write(b" held")
