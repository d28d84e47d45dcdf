"""Python handlers the chaos scenarios load by `module:Class` (this directory is on pythonpath)."""

from __future__ import annotations

import os
import socketserver
import time

# The body of every full answer, after the request line: big enough to span segments.
FILLER = b"." * 2048


class Answer(socketserver.StreamRequestHandler):
    """Answer one line with itself, a filler and the serving pid; raise on `raise`."""

    def handle(self) -> None:
        """Read the request line, think a little (a child to kill is then in flight), answer."""
        line = self.rfile.readline()
        if line.startswith(b"raise"):
            raise RuntimeError("asked to raise")
        time.sleep(0.02)
        self.wfile.write(line + FILLER + b"pid=%d\n" % os.getpid())


class LineEcho(socketserver.StreamRequestHandler):
    """Echo lines until the client half-closes."""

    def handle(self) -> None:
        """Echo each line."""
        for line in self.rfile:
            self.wfile.write(line)
