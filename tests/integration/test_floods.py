"""The log stays bounded when forking fails or programs flood their stderr."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import connect, recv_all, write_config

from sockd.forker.programs import MAX_LINES, STDERR_BURST, STDERR_RATE

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness import Sockd


NOBODY = 65534
HELD = 3  # connections that hold the last processes RLIMIT_NPROC allows
FLOOD = 20  # connections that find no process to serve them
FLOODING_PROGRAMS = 12


def tasks_of(uid: int) -> int:
    """Count the tasks (threads included, as RLIMIT_NPROC does) whose real uid is `uid`."""
    count = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for task in (proc / "task").iterdir():
                status = (task / "status").read_text()
                uids = next(line for line in status.splitlines() if line.startswith("Uid:"))
                count += int(uids.split()[1]) == uid
        except (OSError, StopIteration):
            continue
    return count


@pytest.mark.skipif(os.geteuid() != 0, reason="RLIMIT_NPROC binds only a user without privileges")
class TestForkFailures:
    def test_fork_failing_pauses_with_back_off_and_serves_again(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """RLIMIT_NPROC reached: few fork_failed lines, the backlog waits, then it serves again."""
        config = write_config(
            tmp_path / "sockd.toml",
            """
            [daemon]
            user = "nobody"

            [[service]]
            name = "echo"
            handler = "echo"
            listen = ["127.0.0.1:0"]

            [[service]]
            name = "daytime"
            handler = "daytime"
            listen = ["127.0.0.1:0"]
            """,
        )
        # Room for the daemon, the forker and HELD children, as nobody.
        limit = tasks_of(NOBODY) + 2 + HELD
        daemon = sockd("run", "--config", config, prefix=["prlimit", f"--nproc={limit}"])
        held = []
        for _ in range(HELD):
            sock = connect(daemon.address())
            sock.sendall(b"held\n")
            assert sock.recv(10) == b"held\n"
            held.append(sock)
        clients = [connect(daemon.address(1)) for _ in range(FLOOD)]
        daemon.wait_event("fork_failed")
        time.sleep(2.0)
        failed = daemon.events("fork_failed")
        # Lines 0.1, 0.2, 0.4, 0.8 s... apart: a handful, not one per connection.
        assert 1 <= len(failed) <= 6
        assert failed[0]["error"] == "Resource temporarily unavailable"
        assert failed[0]["failures"] == 1
        for sock in held:
            sock.close()
        # Once forking worked and 10 s passed without a failure: one line, the totals.
        (recovered,) = daemon.wait_event("fork_recovered", timeout=30)
        assert recovered["failures"] >= len(failed)
        answers = []
        for sock in clients:
            with sock, contextlib.suppress(ConnectionResetError):
                answers.append(recv_all(sock))  # b"": closed, its fork failed
        served = sum(1 for answer in answers if answer.endswith(b"\r\n"))
        assert served >= FLOOD // 2, "the waiting connections are served"
        assert daemon.stop() == 0
        assert not daemon.events("handler_error")
        assert len(daemon.events("fork_recovered")) == 1


class TestStderrBudget:
    def test_many_programs_flooding_stderr_are_bounded_together(
        self, sockd: Callable[..., Sockd], tmp_path: Path
    ) -> None:
        """12 programs at MAX_LINES each: the log takes a burst and a rate, and sums up the rest."""
        config = write_config(
            tmp_path / "sockd.toml",
            """
            [[service]]
            name = "flood"
            exec = ["/bin/sh", "-c", "yes flood >&2"]
            listen = ["127.0.0.1:0"]
            max_duration = 1
            """,
        )
        daemon = sockd("run", "--config", config)
        started = time.monotonic()
        floods = [connect(daemon.address()) for _ in range(FLOODING_PROGRAMS)]
        daemon.wait_event("connection_closed", FLOODING_PROGRAMS, timeout=30)
        elapsed = time.monotonic() - started
        for sock in floods:
            sock.close()
        assert daemon.stop() == 0
        logged = len(daemon.events("program_stderr"))
        dropped = sum(event["lines"] for event in daemon.events("program_stderr_dropped"))
        assert logged <= STDERR_BURST + STDERR_RATE * (elapsed + 1)
        assert dropped > 0
        # Each program logs MAX_LINES and one count of the rest: all accounted for.
        assert logged + dropped == FLOODING_PROGRAMS * (MAX_LINES + 1)
