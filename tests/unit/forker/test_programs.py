"""Tests of sockd.forker.programs: environment, spawning on a connection, stderr lines."""

from __future__ import annotations

import math
import os
import resource
import select
import signal
import socket
from typing import TYPE_CHECKING

from harness import recv_all, wait_until

from sockd.forker.programs import (
    MAX_LINE,
    PROGRAM_BASE,
    STDERR_BURST,
    LineBudget,
    Program,
    StderrLines,
    StderrWatch,
    base_environment,
    connection_environment,
)

if TYPE_CHECKING:
    import pytest


def lines_of(chunks: list[bytes]) -> list[str]:
    """Feed `chunks` through a real pipe; return the lines emitted, end of file included."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    emitted: list[str] = []
    reader = StderrLines(read_end, lambda _fields, line: emitted.append(line), {})
    for chunk in chunks:
        os.write(write_end, chunk)
        assert reader.read()
    os.close(write_end)
    assert not reader.read()
    os.close(read_end)
    return emitted


class TestStderrLines:
    def test_whole_lines_partial_ones_wait(self) -> None:
        """A line is emitted when its newline comes; the last one at end of file."""
        assert lines_of([b"one\ntw", b"o\r\nthree"]) == ["one", "two", "three"]

    def test_long_lines_are_cut(self) -> None:
        """A line longer than MAX_LINE bytes arrives in pieces, nothing lost."""
        line = b"x" * (MAX_LINE * 2 + 5)
        assert [len(piece) for piece in lines_of([line + b"\n"])] == [MAX_LINE, MAX_LINE, 5]

    def test_invalid_utf8_is_replaced(self) -> None:
        """Bytes that are not UTF-8 do not break the log."""
        assert lines_of([b"caf\xe9\n"]) == ["caf\N{REPLACEMENT CHARACTER}"]


class TestStderrWatch:
    def test_a_pipe_at_its_end_leaves_epoll_though_another_process_holds_it(self) -> None:
        """At end of file the pipe is unregistered, then closed, and epoll reports it no more.

        Closing alone left it registered while a copy of the descriptor lived on
        (as in a program just spawned, until its exec finishes), and epoll
        reported the closed pipe at every poll.
        """
        poller = select.epoll()
        lines: list[str] = []
        changes: list[tuple[int, ...]] = []

        def changed() -> None:
            changes.append(tuple(watch.pipes))

        watch = StderrWatch(poller, lambda _fields, line: lines.append(line), changed)
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        elsewhere = os.dup(read_end)  # the same pipe, held by someone else
        try:
            watch.watch(read_end, 1234, "svc", "client")
            os.write(write_end, b"last words\n")
            os.close(write_end)
            for fd, _ in poller.poll(1):
                watch.read(fd)
            for fd, _ in poller.poll(1):
                watch.read(fd)
            assert lines == ["last words"]
            assert watch.pipes == {}
            assert changes == [(read_end,), ()]
            assert poller.poll(0) == []
            assert os.read(elsewhere, 10) == b""  # still open there, at its end
        finally:
            os.close(elsewhere)
            poller.close()


class TestEnvironment:
    def test_a_fixed_base_then_the_service_env(self) -> None:
        """Nothing of sockd's own environment: PATH, then `env`, which may replace it."""
        assert base_environment({}) == {b"PATH": PROGRAM_BASE["PATH"].encode()}
        assert base_environment({"PATH": "/opt/bin", "GREETING": "hé"}) == {
            b"PATH": b"/opt/bin",
            b"GREETING": "hé".encode(),
        }

    def test_the_callers_environment_does_not_reach_programs(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """JOURNAL_STREAM, INVOCATION_ID, a shell's variables: none is in a program's base."""
        for key, value in {
            "JOURNAL_STREAM": "8:1234",
            "INVOCATION_ID": "0123",
            "LANG": "de_DE.UTF-8",
            "HOME": "/root",
        }.items():
            monkeypatch.setenv(key, value)
        assert set(base_environment({"A": "1"})) == {b"PATH", b"A"}

    def test_tcp_connection(self) -> None:
        """UCSPI and systemd variables describe both ends of a TCP connection."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)) as client:
                accepted, address = server.accept()
                with accepted:
                    environ = connection_environment({b"A": b"1"}, accepted, address)
                    given = connection_environment({}, accepted, address, ("127.0.0.9", 7))
                client_port = str(client.getsockname()[1]).encode()
        assert environ == {
            b"A": b"1",
            b"PROTO": b"TCP",
            b"TCPREMOTEIP": b"127.0.0.1",
            b"TCPREMOTEPORT": client_port,
            b"REMOTE_ADDR": b"127.0.0.1",
            b"REMOTE_PORT": client_port,
            b"TCPLOCALIP": b"127.0.0.1",
            b"TCPLOCALPORT": str(port).encode(),
        }
        # The listener's own address, when given, is not asked of the kernel again.
        assert (given[b"TCPLOCALIP"], given[b"TCPLOCALPORT"]) == (b"127.0.0.9", b"7")

    def test_unix_connection(self) -> None:
        """A UNIX peer is described by its credentials."""
        ours, theirs = socket.socketpair()
        with ours, theirs:
            environ = connection_environment({}, ours, "")
        assert environ == {
            b"PROTO": b"UNIX",
            b"UNIXREMOTEPID": str(os.getpid()).encode(),
            b"UNIXREMOTEEUID": str(os.getuid()).encode(),
            b"UNIXREMOTEEGID": str(os.getgid()).encode(),
        }


class TestProgram:
    def test_start_puts_the_connection_on_stdin_stdout_and_stderr_on_a_pipe(self) -> None:
        """posix_spawn: the program reads and writes the socket; stderr comes back apart."""
        script = 'read line; echo "got $line"; echo oops >&2; kill -0 $$'
        program = Program("/bin/sh", ["sh", "-c", script], {}, None)
        ours, theirs = socket.socketpair()
        with ours:
            pid, stderr = program.start(theirs, "", None, lambda: None)
            theirs.close()
            ours.sendall(b"hello\n")
            ours.shutdown(socket.SHUT_WR)
            assert recv_all(ours) == b"got hello\n"
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        emitted: list[str] = []
        reader = StderrLines(stderr, lambda _fields, line: emitted.append(line), {})
        wait_until(lambda: not reader.read())
        os.close(stderr)
        assert emitted == ["oops"]

    def test_signals_python_ignores_are_at_their_default_in_the_program(self) -> None:
        """SIGPIPE is ignored by Python, but a program gets it at its default action."""
        program = Program("/bin/sh", ["sh", "-c", "grep SigIgn /proc/self/status"], {}, None)
        ours, theirs = socket.socketpair()
        with ours:
            pid, stderr = program.start(theirs, "", None, lambda: None)
            theirs.close()
            ours.shutdown(socket.SHUT_WR)
            ignored = int(recv_all(ours).split()[1], 16)
        os.waitpid(pid, 0)
        os.close(stderr)
        for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # both ignored by Python
            assert not ignored & (1 << (signum - 1)), hex(ignored)


def limits_of(text: str) -> dict[str, tuple[str, str]]:
    """Parse /proc/PID/limits: each limit's name, and its soft and hard values as written."""
    return {row[:26].strip(): (row[26:47].strip(), row[47:68].strip()) for row in text.splitlines()}


class TestRlimits:
    def test_limits_are_set_soft_and_hard_in_a_forked_child(self) -> None:
        """With rlimits the program is forked (posix_spawn cannot set them); without, spawned."""
        limits = (("as", 1 << 30), ("files", 64))
        program = Program("/bin/cat", ["cat", "/proc/self/limits"], {}, None, limits)
        assert program.forks
        assert program.rlimits == (
            ("set rlimits.as = 1073741824", resource.RLIMIT_AS, 1 << 30),
            ("set rlimits.files = 64", resource.RLIMIT_NOFILE, 64),
        )
        unlimited = Program("/bin/cat", ["cat"], {}, None, (("core", None),))
        assert unlimited.rlimits == (
            ("set rlimits.core = unlimited", resource.RLIMIT_CORE, resource.RLIM_INFINITY),
        )
        assert not Program("/bin/cat", ["cat"], {}, None).forks
        ours, theirs = socket.socketpair()
        with ours:
            pid, stderr = program.start(theirs, "", None, lambda: None)
            theirs.close()
            ours.shutdown(socket.SHUT_WR)
            text = recv_all(ours).decode()
        _, status = os.waitpid(pid, 0)
        os.close(stderr)
        assert os.waitstatus_to_exitcode(status) == 0
        found = limits_of(text)
        assert found["Max open files"] == ("64", "64")
        assert found["Max address space"] == (str(1 << 30), str(1 << 30))

    def test_a_child_that_cannot_exec_says_why_in_one_line(self) -> None:
        """No traceback: one line on its stderr (the forker logs it), exit 127 as a shell's."""
        program = Program("/nonexistent/program", ["program"], {}, None, (("files", 64),))
        ours, theirs = socket.socketpair()
        with ours:
            pid, stderr = program.start(theirs, "", None, lambda: None)
            theirs.close()
            assert recv_all(ours) == b""
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 127
        emitted: list[str] = []
        reader = StderrLines(stderr, lambda _fields, line: emitted.append(line), {})
        wait_until(lambda: not reader.read())
        os.close(stderr)
        assert emitted == ["sockd: cannot execute /nonexistent/program: No such file or directory"]


class TestLineBudget:
    def test_lines_past_the_burst_are_counted_per_service_and_summed_up(self) -> None:
        """The burst is logged; the rest are counted per service, summed once, then afresh."""
        budget = LineBudget()
        taken = sum(budget.take("a") for _ in range(STDERR_BURST))
        assert taken == STDERR_BURST
        dropped = [budget.take(service) for service in ("a", "b", "b")]
        assert dropped.count(False) >= 2  # a token or so may have refilled meanwhile
        assert budget.window_end
        assert budget.due(0.0) == []  # the window has not ended
        summaries = {summary["service"]: summary["lines"] for summary in budget.due(math.inf)}
        assert sum(summaries.values()) == dropped.count(False)
        assert budget.window_end == 0.0
        assert budget.due(math.inf) == []
