"""Tests of sockd.handlers: the built-in services over real sockets, and handler lookup."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from harness import recv_all

from sockd.handlers import BUILTINS, builtin, load_handler
from sockd.handlers.builtin import Chargen


def serve(handler: str, data: bytes = b"", *, read: int | None = None) -> bytes:
    """Run a built-in on one end of a socketpair; send `data`, half-close, read the reply."""
    server_end, client_end = socket.socketpair()
    fake_server = SimpleNamespace(service=None)
    cls: Any = BUILTINS[handler]
    thread = threading.Thread(target=lambda: _run(cls, server_end, fake_server))
    thread.start()
    with client_end:
        client_end.settimeout(5)
        if data:
            client_end.sendall(data)
        if read is not None:
            reply = b""
            while len(reply) < read:
                reply += client_end.recv(read - len(reply))
            client_end.close()
            thread.join(5)
            return reply
        client_end.shutdown(socket.SHUT_WR)
        reply = recv_all(client_end)
    thread.join(5)
    return reply


def _run(cls: Any, sock: socket.socket, server: object) -> None:
    with sock:
        cls(sock, ("127.0.0.1", 1), server)


class TestBuiltins:
    def test_echo(self) -> None:
        """RFC 862: everything comes back, in order."""
        data = bytes(range(256)) * 1000
        assert serve("echo", data) == data

    def test_discard(self) -> None:
        """RFC 863: nothing comes back."""
        assert serve("discard", b"x" * 100_000) == b""

    def test_daytime(self) -> None:
        """RFC 867: one readable line with the current year."""
        line = serve("daytime")
        assert line.endswith(b"\r\n")
        assert time.strftime("%Y").encode() in line

    def test_time(self) -> None:
        """RFC 868: four bytes, seconds since 1900."""
        (seconds,) = struct.unpack("!I", serve("time"))
        assert abs(seconds - 2_208_988_800 - time.time()) < 5

    def test_chargen_pattern(self) -> None:
        """RFC 864: 72-character lines, each starting one character further along."""
        data = serve("chargen", read=74 * 96)
        lines = data.split(b"\r\n")
        assert lines[0] == bytes(range(33, 127)).join([b" ", b""])[:72]
        assert lines[1] == bytes(range(33, 127))[:72]
        assert lines[94] == b"~" + bytes(range(32, 103))
        assert lines[95] == lines[0]
        assert all(len(line) == 72 for line in lines[:96])

    def test_chargen_stops_when_client_closes(self) -> None:
        """A client closing ends chargen quietly, not with a handler error."""
        server_end, client_end = socket.socketpair()
        client_end.close()
        Chargen(server_end, ("127.0.0.1", 1), SimpleNamespace())  # type: ignore[arg-type]
        server_end.close()


class TestDatagramAnswers:
    def test_each_builtin_over_udp(self) -> None:
        """RFC 862/863/867/868: echo the datagram, discard it, a daytime line, 4 time bytes."""
        answers = builtin.DATAGRAM_ANSWERS
        assert answers[builtin.Echo](b"x" * 100) == b"x" * 100
        assert answers[builtin.Discard](b"x") is None
        assert (answers[builtin.Daytime](b"") or b"").endswith(b"\r\n")
        seconds = int.from_bytes(answers[builtin.Time](b"") or b"", "big")
        assert abs(seconds - 2_208_988_800 - time.time()) < 5

    def test_chargen_over_udp(self) -> None:
        """RFC 864: a line of at most 512 bytes per datagram, however large, rotating."""
        chargen = builtin.DATAGRAM_ANSWERS[builtin.Chargen]
        lines = [chargen(b"x" * 8192) or b"" for _ in range(96)]
        assert {len(line) for line in lines} == {74}
        assert lines[0][1:72] == lines[1][:71]
        assert lines[95] == lines[0]  # 95 characters: a full turn

    def test_subclasses_are_handlers(self) -> None:
        """Only the built-ins themselves are answered in the forker, not a user's subclass."""

        class MyEcho(builtin.Echo):
            pass

        assert MyEcho not in builtin.DATAGRAM_ANSWERS


class TestLoadHandler:
    def test_builtin_names(self) -> None:
        """Every built-in is found by name."""
        assert sorted(BUILTINS) == ["chargen", "daytime", "discard", "echo", "time"]
        assert load_handler("echo") is BUILTINS["echo"]

    def test_module_class(self) -> None:
        """`module:Class` loads a BaseRequestHandler subclass, StreamRequestHandler included."""
        assert load_handler("support_handlers:Report").__name__ == "Report"
        assert issubclass(
            load_handler("support_handlers:Report"), socketserver.StreamRequestHandler
        )

    @pytest.mark.parametrize(
        ("spec", "error"),
        [
            ("nosuch", ValueError),
            ("module_that_does_not_exist:X", ImportError),
            ("support_handlers:Missing", AttributeError),
            ("support_handlers:explode", TypeError),
        ],
    )
    def test_errors(self, spec: str, error: type[Exception]) -> None:
        """Bad specs raise the error the config turns into a one-line message."""
        with pytest.raises(error):
            load_handler(spec)
