"""Test harness: run sockd as a real process, read its JSON events and notifications."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

TESTS = Path(__file__).parent
WAIT = 10.0


def wait_until(condition: Callable[[], Any], timeout: float = WAIT, what: str = "") -> Any:
    """Poll `condition` until it returns something true; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what or condition}"
            raise AssertionError(msg)
        time.sleep(0.01)


class Notifications:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.setblocking(False)
        self.messages: list[str] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.socket.close()

    def poll(self) -> list[str]:
        """Read every message that has arrived."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.socket.recv(4096).decode())
        return self.messages

    def wait_for(self, line: str, timeout: float = WAIT, after: int = 0) -> int:
        """Wait for a message with `line` among its lines; return its index."""

        def find() -> int | None:
            for index, message in enumerate(self.poll()[after:], after):
                if any(part.startswith(line) for part in message.split("\n")):
                    return index + 1
            return None

        return int(wait_until(find, timeout, f"notification {line!r}")) - 1


class Sockd:
    """sockd running as a real process in its own session, stderr to a file."""

    def __init__(  # noqa: PLR0913 (each a knob of how a real process starts)
        self,
        args: list[str],
        tmp_path: Path,
        *,
        notify: Notifications | None = None,
        env: dict[str, str] | None = None,
        prefix: Iterable[str] = (),
        python_options: Iterable[str] = (),
        cwd: Path | None = None,
        pass_fds: Iterable[int] = (),
    ) -> None:
        self.log_path = tmp_path / f"sockd-{time.monotonic_ns()}.log"
        environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "JOURNAL_STREAM"))
        }
        if notify is not None:
            environ["NOTIFY_SOCKET"] = str(notify.path)
        environ.update(env or {})
        self.notify = notify
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, *python_options, "-m", "sockd", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=environ,
                start_new_session=True,
                cwd=cwd,
                pass_fds=tuple(pass_fds),
            )
        self.pid = self.process.pid

    def lines(self) -> list[str]:
        """Return what sockd wrote so far, line by line."""
        return self.log_path.read_text(errors="replace").splitlines()

    def events(self, event: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Return the JSON events logged so far, optionally only matching ones."""
        found = []
        for line in self.lines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event is not None and record.get("event") != event:
                continue
            if all(record.get(key) == value for key, value in match.items()):
                found.append(record)
        return found

    def wait_event(
        self, event: str, count: int = 1, timeout: float = WAIT, **match: Any
    ) -> list[dict[str, Any]]:
        """Wait until `count` matching events are logged; fail early if sockd exits."""

        def enough() -> list[dict[str, Any]]:
            found = self.events(event, **match)
            if len(found) < count and self.process.poll() is not None:
                log = "\n".join(self.lines()[-20:])
                msg = f"sockd exited {self.process.returncode} before {event!r}:\n{log}"
                raise AssertionError(msg)
            return found if len(found) >= count else []

        return list(wait_until(enough, timeout, f"{count} x {event!r}"))

    def address(self, index: int = 0) -> str:
        """Return a listener's address from the `starting` event."""
        return str(self.events("starting")[0]["listeners"][index]["address"])

    def port(self, index: int = 0) -> int:
        """Return a TCP listener's port."""
        return int(self.address(index).rpartition(":")[2])

    def signal(self, signum: int) -> None:
        """Send `signum` to the daemon process."""
        os.kill(self.pid, signum)

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the daemon to exit; return its exit status."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM and wait."""
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        """Kill the daemon, its forker and their children, whatever state they are in."""
        for pid, _ in children_of(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # the forker leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def forker(self) -> int:
        """Return the pid of the daemon's forker."""
        (pid,) = [pid for pid, _ in children_of(self.pid)]
        return pid

    def children(self) -> list[tuple[int, str]]:
        """Return (pid, state) of the children serving connections, from /proc."""
        return children_of(self.forker())


def run_once(
    *args: str, env: dict[str, str] | None = None, stderr: Any = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    """Run `python -m sockd ARGS` to its end (30 s at most); return what it said and did."""
    return subprocess.run(
        [sys.executable, "-m", "sockd", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def alive(pid: int) -> bool:
    """Tell whether process `pid` exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def children_of(parent: int) -> list[tuple[int, str]]:
    """Return (pid, state) of the children of `parent`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent:
            found.append((int(entry.name), fields[0]))
    return found


def connect(address: str, *, source: str | None = None, timeout: float = WAIT) -> socket.socket:
    """Connect to `host:port`, `[v6]:port` or `unix:/path`."""
    target: str | tuple[str, int]
    if address.startswith("unix:"):
        family, target = socket.AF_UNIX, address.removeprefix("unix:")
    else:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        target = (host, int(port))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(address: str, data: bytes, **kwargs: Any) -> bytes:
    """Send `data`, half-close, and read everything until the server closes.

    A server that closes at once (a refused client) reads as b"", whether the
    client saw the close or a reset.
    """
    with connect(address, **kwargs) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
        try:
            return recv_all(sock)
        except ConnectionResetError:
            return b""


def recv_all(sock: socket.socket) -> bytes:
    """Read until end of file."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def write_config(path: Path, text: str) -> str:
    """Write a config file and return its path as a string."""
    path.write_text(text)
    return str(path)


def in_child(function: Callable[[], Any]) -> Any:
    """Run `function` in a forked child and return its result (or re-raise its error).

    For tests that must change process-wide state, such as file descriptor 3.
    """
    import pickle  # noqa: PLC0415

    read_end, pipe_write = os.pipe()
    # Far from 3 and 4, which tests use as LISTEN_FDS.
    write_end = fcntl.fcntl(pipe_write, fcntl.F_DUPFD_CLOEXEC, 200)
    os.close(pipe_write)
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.close(read_end)
            try:
                payload = pickle.dumps((True, function()))
            except BaseException as exc:  # noqa: BLE001
                payload = pickle.dumps((False, exc))
            os.write(write_end, payload)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)  # noqa: S301 (our own child)
    if not ok:
        raise value
    return value


def inherit(sockets: list[socket.socket], names: list[str] | None = None, pid: int = 0) -> None:
    """Pass `sockets` to this process as systemd does: fds 3, 4... and LISTEN_* (in a child).

    LISTEN_PID names this process, or `pid`. For `in_child`: it changes fds 3
    and up, and the environment, of the process that calls it.
    """
    high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 100) for sock in sockets]
    for offset, fd in enumerate(high):
        os.dup2(fd, 3 + offset)
        os.close(fd)
    os.environ["LISTEN_PID"] = str(pid or os.getpid())
    os.environ["LISTEN_FDS"] = str(len(sockets))
    if names is not None:
        os.environ["LISTEN_FDNAMES"] = ":".join(names)


_AS_LISTENER = """
import os, socket, sys
kind = sys.argv[1]
if kind == "tcp":
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
if kind == "vsock":
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))
if kind in ("tcp", "vsock"):
    sock.listen()
if kind == "udp":
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if kind == "file":
    sock = open(os.devnull, "rb")
if kind != "none":
    os.dup2(sock.fileno(), 3)
    os.set_inheritable(3, True)  # dup2 onto itself (it may be 3) keeps close-on-exec
for name in (b"LISTEN_PID", b"WATCHDOG_PID"):
    if name in os.environb:
        os.environb[name] = os.environb[name].replace(b"$PID", str(os.getpid()).encode())
os.execv(sys.argv[2], sys.argv[2:])
"""


def as_listener(kind: str = "tcp") -> list[str]:
    """Return a prefix that hands sockd a listening socket as systemd would, then execs it.

    `kind` is what descriptor 3 is: "tcp" (listening on 127.0.0.1, a free port),
    "vsock" (listening), "udp", "file" (/dev/null) or "none" (nothing). "$PID" in
    LISTEN_PID and WATCHDOG_PID becomes sockd's pid (exec keeps it).
    """
    return [sys.executable, "-c", _AS_LISTENER, kind]
