"""The inetd built-ins: echo, discard, daytime, chargen, time.

Over TCP, each a handler run in a forked child. Over UDP, each is a function
from a datagram to its answer (`DATAGRAM_ANSWERS`), which the forker calls
itself, as inetd answers its internal services: no process per datagram.
"""

from __future__ import annotations

import socketserver
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

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


def echo_datagram(data: bytes) -> bytes:
    """RFC 862: the datagram itself (never more than was received)."""
    return data


def discard_datagram(_data: bytes) -> None:
    """RFC 863: no answer."""


def daytime_datagram(_data: bytes) -> bytes:
    """RFC 867: the date and time as one line."""
    return (time.strftime("%A, %B %d, %Y %H:%M:%S-%Z") + "\r\n").encode("ascii", "replace")


def time_datagram(_data: bytes) -> bytes:
    """RFC 868: four bytes, seconds since 1900."""
    return ((int(time.time()) + _EPOCH_1900) & 0xFFFF_FFFF).to_bytes(4, "big")


class _ChargenLines:
    """RFC 864 over UDP: one 72-character line of the pattern per datagram, rotating.

    The RFC allows 0 to 512 characters an answer: one line (74 bytes), as inetd sends.
    """

    __slots__ = ("lines", "next")

    def __init__(self) -> None:
        rotation = _CHARGEN_CHARS * 2
        self.lines = [
            rotation[start : start + _CHARGEN_LINE] + b"\r\n"
            for start in range(len(_CHARGEN_CHARS))
        ]
        self.next = 0

    def __call__(self, _data: bytes) -> bytes:
        line = self.lines[self.next]
        self.next = (self.next + 1) % len(self.lines)
        return line


chargen_datagram = _ChargenLines()

BUILTINS: dict[str, type[socketserver.BaseRequestHandler]] = {
    "echo": Echo,
    "discard": Discard,
    "daytime": Daytime,
    "chargen": Chargen,
    "time": Time,
}

# Each built-in's answer to a datagram (None: no answer), by its handler class
# itself: a subclass is the user's own handler, served as any other.
DATAGRAM_ANSWERS: dict[type[socketserver.BaseRequestHandler], Callable[[bytes], bytes | None]] = {
    Echo: echo_datagram,
    Discard: discard_datagram,
    Daytime: daytime_datagram,
    Chargen: chargen_datagram,
    Time: time_datagram,
}
