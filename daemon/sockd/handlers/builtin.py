"""The inetd built-ins, run in the forker's children: echo, discard, daytime, chargen, time."""

from __future__ import annotations

import socketserver
import time

# Bytes asked of each recv(): 64 KiB cost each child a fifth more CPU (glibc
# grows its heap for the buffer and shrinks it again at every read).
_CHUNK = 16384
# RFC 868: seconds from 1900-01-01 to the Unix epoch.
_EPOCH_1900 = 2_208_988_800
_CHARGEN_LINE = 72
_CHARGEN_CHARS = bytes(range(32, 127))


class Echo(socketserver.BaseRequestHandler):
    """RFC 862: send back everything received, until the client closes."""

    def handle(self) -> None:
        """Copy the connection's input to its output."""
        while data := self.request.recv(_CHUNK):
            self.request.sendall(data)


class Discard(socketserver.BaseRequestHandler):
    """RFC 863: read and throw away everything, until the client closes."""

    def handle(self) -> None:
        """Read until end of file."""
        while self.request.recv(_CHUNK):
            pass


class Daytime(socketserver.BaseRequestHandler):
    """RFC 867: send the local date and time as one readable line, then close."""

    def handle(self) -> None:
        """Send e.g. 'Tuesday, November 24, 2026 22:16:56-UTC'."""
        line = time.strftime("%A, %B %d, %Y %H:%M:%S-%Z") + "\r\n"
        self.request.sendall(line.encode("ascii", "replace"))


class Time(socketserver.BaseRequestHandler):
    """RFC 868: send the time as 32-bit seconds since 1900, then close."""

    def handle(self) -> None:
        """Send four bytes, network order."""
        seconds = (int(time.time()) + _EPOCH_1900) & 0xFFFF_FFFF
        self.request.sendall(seconds.to_bytes(4, "big"))


class Chargen(socketserver.BaseRequestHandler):
    """RFC 864: send the rotating 72-character pattern until the client closes.

    The stream is bounded by the service's `max_duration` (60 s unless set),
    which the server enforces on every child.
    """

    def handle(self) -> None:
        """Send lines forever; the client closing or the duration limit ends it."""
        rotation = _CHARGEN_CHARS * 2
        block = b"".join(
            rotation[start : start + _CHARGEN_LINE] + b"\r\n"
            for start in range(len(_CHARGEN_CHARS))
        )
        try:
            while True:
                self.request.sendall(block)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client closed: the normal end of chargen


BUILTINS: dict[str, type[socketserver.BaseRequestHandler]] = {
    "echo": Echo,
    "discard": Discard,
    "daytime": Daytime,
    "chargen": Chargen,
    "time": Time,
}
