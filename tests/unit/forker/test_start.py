"""Tests of sockd.forker.start: the forker's process, started as the daemon starts it.

`python -P -S -m sockd.forker CONTROL EVENTS LISTENER...`, set up and stopped
over its two channels by the test, as the daemon would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import recv_all

import sockd
from sockd import ipc
from sockd.spec import ServiceSpec
from unit.forker.test_loop import events_until

if TYPE_CHECKING:
    from collections.abc import Sequence

SOURCE_ROOT = Path(sockd.__file__).parent.parent
# Every warning an error in the forker, but 3.12+'s warning that a process
# forks with threads: CPython raises it inside os.fork() and clears it there,
# so as an error it would vanish; printed, it is seen on the forker's stderr.
WARNINGS_AS_ERRORS = ("-W", "error", "-W", "always:This process:DeprecationWarning")
FORK_WARNING = "is multi-threaded, use of fork() may lead to deadlocks"
# A handler module that starts a thread at import, as some libraries do.
THREADED_HANDLER = """
import socketserver
import threading

threading.Thread(target=threading.Event().wait, daemon=True).start()


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline())
"""


def serve(
    options: Sequence[str], specs: Sequence[ServiceSpec], tmp_path: Path, connections: int = 4
) -> str:
    """Run a forker with interpreter `options`, one listener a service; return its stderr.

    Each service answers `connections` clients, then the forker quits (exit 0).
    Its stderr is what it wrote before its fd 2 became its children's (see
    sockd.forker.childlog), then its own lines logged as `handler_stderr`.
    """
    control, control_end = ipc.channel()
    events, events_end = ipc.channel()
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in specs]
    fds = [control_end.fileno(), events_end.fileno(), *(sock.fileno() for sock in listeners)]
    stderr_path = tmp_path / "forker.stderr"
    with stderr_path.open("wb") as stderr:
        forker = subprocess.Popen(
            [sys.executable, *options, "-P", "-S", "-m", "sockd.forker", *map(str, fds)],
            env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
            pass_fds=fds,
            stderr=stderr,
        )
    control_end.close()
    events_end.close()
    try:
        setup = {
            "sys_path": [str(tmp_path)],
            "identity": None,
            "listeners": [(fd, spec.name, None) for fd, spec in zip(fds[2:], specs, strict=True)],
            "max_children": 8,
            "stop_timeout": 1.0,
            "renew_forker_after": 0,
            "standby": False,
        }
        ipc.send(control.fileno(), ("setup", setup, [spec.to_wire() for spec in specs]))
        reader = ipc.Reader(events.fileno())
        events_until(reader, "ready")
        for sock in listeners:
            for number in range(connections):
                with socket.create_connection(sock.getsockname(), timeout=10) as client:
                    client.sendall(b"%d\n" % number)
                    client.shutdown(socket.SHUT_WR)
                    assert recv_all(client) == b"%d\n" % number
        ipc.send(control.fileno(), ("quit",))
        assert forker.wait(10) == 0, stderr_path.read_text()
        lines = [stderr_path.read_text()]
        while (record := reader.read_blocking()) is not None:  # the rest, to the end
            if record[:3] == ("log", "info", "handler_stderr"):
                lines.append(record[3]["line"])  # type: ignore[index]
    finally:
        forker.kill()
        forker.wait()
        control.close()
        events.close()
        for sock in listeners:
            sock.close()
    return "\n".join(lines)


class TestForkWarning:
    """3.12+ warns when a process with threads forks: the forker never does."""

    def test_forks_and_pooled_workers_without_the_warning(self, tmp_path: Path) -> None:
        """A child per connection, and pooled workers, with warnings errors: none is raised."""
        specs = [ServiceSpec("fork", "echo"), ServiceSpec("pool", "echo", workers=2)]
        stderr = serve(WARNINGS_AS_ERRORS, specs, tmp_path)
        assert "Warning" not in stderr

    @pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.11 never warns")
    def test_a_thread_in_the_forker_is_warned_of(self, tmp_path: Path) -> None:
        """The check can fail: with a thread (started by a handler module), each fork warns."""
        (tmp_path / "threaded_handler.py").write_text(THREADED_HANDLER)
        specs = [
            ServiceSpec("fork", "threaded_handler:Echo"),
            ServiceSpec("pool", "threaded_handler:Echo", workers=2),
        ]
        stderr = serve(WARNINGS_AS_ERRORS, specs, tmp_path, connections=3)
        assert stderr.count(FORK_WARNING) == 3 + 2, stderr  # each connection, each worker
