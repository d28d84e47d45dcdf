"""The pooled benchmark's handler: exactly the reference's work per connection.

bench/prefork_ref.py reads one line, sends it back and closes; sockd's `echo`
built-in (RFC 862) echoes until the client closes, which keeps a worker
waiting a round trip longer per connection. For a like-for-like comparison
the pooled service runs this handler instead.
"""

from __future__ import annotations

import socketserver


class LineEcho(socketserver.BaseRequestHandler):
    """Read one line, send it back; sockd then closes the connection."""

    def handle(self) -> None:
        """Echo the first line."""
        line = b""
        while not line.endswith(b"\n"):
            data = self.request.recv(4096)
            if not data:
                return
            line += data
        self.request.sendall(line)
