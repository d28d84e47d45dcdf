"""Handlers for the tests of the channel between daemon, forker and children (on `pythonpath`)."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import sys

from sockd.exits import entry


class Raise(socketserver.BaseRequestHandler):
    """Raise with a long message: each connection logs a large `handler_error`."""

    def handle(self) -> None:
        """Fail."""
        raise ValueError("x" * 3000)


class Stderr(socketserver.StreamRequestHandler):
    """Write to stderr as http.server does (an access log line), and a line too long to keep."""

    def handle(self) -> None:
        """Log two lines on stderr, then answer."""
        sys.stderr.write(f'{self.client_address[0]} - - "GET / HTTP/1.0" 200 -\n')
        sys.stderr.write("y" * 5000 + "\n")
        sys.stderr.flush()
        self.wfile.write(b"ok\n")


class Forge(socketserver.StreamRequestHandler):
    """Behave as a compromised handler: forge records; answer with the sockets it holds."""

    def handle(self) -> None:
        """Forge through every way a child has, then list each socket descriptor's type."""
        shared = self.server.shared  # type: ignore[attr-defined]
        fields = {"service": "evil", "pid": 1, "client": "forged"}
        shared.report("error", "handler_error", {**fields, "exception": "forged"})
        shared.report("info", "connection_closed", fields)
        shared.report("info", "reloaded", {})
        shared.emit(entry(1, "forged", 0, 0.1), 1, 0, 0)  # a pooled worker's batch
        kinds = {}
        for name in os.listdir("/proc/self/fd"):
            try:
                sock = socket.socket(fileno=os.dup(int(name)))
            except OSError:
                continue
            with sock:
                kinds[name] = int(sock.type)
        self.wfile.write(json.dumps(kinds).encode() + b"\n")
