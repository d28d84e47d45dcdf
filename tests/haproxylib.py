"""The real HAProxy for the tests: a config written by the test, run in the foreground.

HAProxy (Debian's package: 2.6 on Debian 12, 3.0 on Debian 13) runs as
`haproxy -db -f CONFIG`, its frontend on a listening socket the test made and
passed to it (`bind fd@N`: no port guessed, and a socket made in a network
namespace stays in it), and its `stats socket` under the test's tmp_path, which
tells each server's state (`show stat`). Timeouts are short (health checks
every 0.2 s, DOWN after 2 failures, UP after 2 successes) so that tests are fast
and bounded. scripts/setup --tests installs it; a missing haproxy fails the
test (CI runs it), it is not skipped.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
from typing import TYPE_CHECKING, Self

import pytest
from chaoslib import in_netns
from harness import WAIT, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

# Health checks every 0.2 s, DOWN after 2 failed, UP after 2 passed.
CHECK = "check inter 200ms fall 2 rise 2"
# The servers echo: a check sends "check" and passes only when it comes back, so only
# once sockd has taken its PROXY header (LOCAL from v2; v1 names the check's own
# connection) and served it. A bare tcp check would pass on the connect alone.
ECHO_CHECK = """\
    option tcp-check
    tcp-check send-binary 636865636b0a
    tcp-check expect string check
"""
DEFAULTS = """\
defaults
    mode tcp
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    timeout check 1s
    # A connection refused by a host that stopped (before its checks say DOWN) is
    # tried again, the last time on another server: its client does not see it.
    retries 3
    option redispatch
    # A line per session to stdout (-db): the client, the server it ended on, how it ended.
    log stdout format raw local0
    log-format "session %ci:%cp %s %ts"
"""


def haproxy_path() -> str:
    """Return where haproxy is (/usr/sbin, also when not on PATH); fail the test without it."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail("haproxy is missing: scripts/setup --tests installs it (Debian's haproxy)")
    return found


def server(name: str, address: str, header: str = "send-proxy-v2", extra: str = "") -> str:
    """Return a backend's `server` line for `address` (host:port), with health checks.

    `header`: `send-proxy-v2`, `send-proxy` (v1) or "" (none). With a header,
    checks send one too (v2: LOCAL; v1: a TCP4 line naming the check's own
    connection). HAProxy 2.6 and 3.0 do so by default unless a check goes to
    another `port` or `addr`; `check-send-proxy` says it (on a server without
    `send-proxy` it would send a v1 header).
    """
    checks = f"{CHECK} check-send-proxy" if header else CHECK
    return " ".join(part for part in ("server", name, address, header, checks, extra) if part)


def listener(address: str, netns: str | None) -> socket.socket:
    """Return a TCP socket listening on `address` (in `netns`), a port the kernel chose."""
    with in_netns(netns) if netns else contextlib.nullcontext():
        sock = socket.socket()
    try:
        sock.bind((address, 0))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class HAProxy:
    """A real HAProxy in front of `servers`, in tcp mode, until `stop()`.

    Args:
        tmp_path: where its config, stats socket and output go.
        servers: the backend's `server` lines (see `server()`).
        bind: the frontend's address; the port is the kernel's choice (`self.address`).
        netns: the network namespace it runs in (the frontend's too), by name.
    """

    def __init__(
        self,
        tmp_path: Path,
        servers: Iterable[str],
        *,
        bind: str = "127.0.0.1",
        netns: str | None = None,
    ) -> None:
        stamp = len(list(tmp_path.glob("haproxy-*.cfg")))
        self.config = tmp_path / f"haproxy-{stamp}.cfg"
        self.stats = tmp_path / f"haproxy-{stamp}.sock"
        self.output = tmp_path / f"haproxy-{stamp}.log"
        frontend = listener(bind, netns)
        host, port = frontend.getsockname()[:2]
        self.address = f"{host}:{port}"
        lines = "\n".join(f"    {line}" for line in servers)
        self.config.write_text(
            f"global\n    stats socket {self.stats} level admin\n\n{DEFAULTS}\n"
            f"frontend fe\n    bind fd@{frontend.fileno()}\n    default_backend be\n\n"
            f"backend be\n    balance roundrobin\n{ECHO_CHECK}{lines}\n"
        )
        os.set_inheritable(frontend.fileno(), True)
        prefix = ["ip", "netns", "exec", netns] if netns else []
        with frontend, self.output.open("wb") as output:
            self.process = subprocess.Popen(
                [*prefix, haproxy_path(), "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                pass_fds=[frontend.fileno()],
                start_new_session=True,
            )
        try:
            wait_until(self._answers, what="haproxy's stats socket")
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _said(self) -> str:
        return self.output.read_text(errors="replace")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            msg = f"haproxy exited {self.process.returncode}:\n{self._said()}"
            raise AssertionError(msg)
        with contextlib.suppress(OSError):
            self.command("show info")
            return True
        return False

    def command(self, line: str) -> str:
        """Send one command to the stats socket; return its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(WAIT)
            sock.connect(str(self.stats))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """Return the backend's servers' statistics (`show stat`), by server name."""
        text = self.command("show stat").removeprefix("# ")
        return {
            row["svname"]: row
            for row in csv.DictReader(text.splitlines())
            if row["pxname"] == "be" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def states(self) -> dict[str, str]:
        """Return each server's status: UP, DOWN, or on its way ("UP 1/2", "DOWN 1/2")."""
        return {name: row["status"] for name, row in self.servers().items()}

    def wait_states(self, timeout: float = WAIT, **wanted: str) -> None:
        """Wait until the named servers have these statuses (such as `s1="UP"`)."""

        def reached() -> bool:
            states = self.states()
            return all(states[name] == state for name, state in wanted.items())

        wait_until(reached, timeout, f"servers {wanted} (now {self.states()})")

    def sessions(self) -> dict[str, tuple[str, str]]:
        """Return the sessions logged so far: by client "ip:port", (server, termination state)."""
        found = {}
        for line in self._said().splitlines():
            words = line.split()
            if len(words) == 4 and words[0] == "session":
                found[words[1]] = (words[2], words[3])
        return found

    def sessions_until(self, clients: set[str]) -> dict[str, tuple[str, str]]:
        """Wait until the sessions of `clients` ("ip:port") are logged; return every session."""
        return dict(
            wait_until(
                lambda: (found := self.sessions()).keys() >= clients and found,
                what=f"haproxy's log of {sorted(clients)}",
            )
        )

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM, then SIGKILL), whatever state it is in."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
