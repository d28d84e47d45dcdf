"""Programs the forker execs per connection, inetd/UCSPI style: environment, spawn, stderr lines.

The connection becomes the program's stdin and stdout; its stderr is a pipe
the forker reads, so that each line becomes one log event and never reaches
the client. A program that runs as sockd's own user is started with
`posix_spawn` (vfork and exec: the forker's size costs nothing); one that
runs as another user, or with resource limits (`rlimits`, which posix_spawn
cannot set), needs fork, the limits, the switch of identity, then exec.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import time

from sockd.listeners import peer_credentials
from sockd.privileges import become_ids
from sockd.spec import RLIMITS

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterable
    from typing import Any

    from sockd.proxy import Header

# What every program starts from, before its service's `env` and the connection's
# variables: a fixed PATH, as systemd gives services and xinetd its servers. No
# LANG: a program speaks its protocol in the C locale unless `env` says otherwise
# (not in the administrator's shell's). No TZ: the C library then reads
# /etc/localtime, the system's time zone, which is what TZ would say anyway.
PROGRAM_BASE = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

# Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: a
# program gets every signal at its default action.
DEFAULT_SIGNALS = tuple(
    int(signum)
    for signum in signal.valid_signals()
    if signum not in (signal.SIGKILL, signal.SIGSTOP)
)
MAX_LINE = 2000  # longer stderr lines are cut into pieces of this many bytes
MAX_LINES = 1000  # lines a program may log; the rest are counted
DRAIN_READS = 16  # reads of a reaped program's stderr before its exit is logged
# All programs together: stderr lines logged per second, and in one burst, at most
# (a token bucket); past it, lines are counted per service and summed up once per
# STDERR_SUMMARY seconds as `program_stderr_dropped`.
STDERR_RATE = 200
STDERR_BURST = 2000
STDERR_SUMMARY = 10.0
_EXEC_FAILED = 127  # like a shell, for a program that could not be executed


def base_environment(env: dict[str, str]) -> dict[bytes, bytes]:
    """Return a program's environment before the connection's: PROGRAM_BASE, then `env`.

    Encoded once: posix_spawn then only joins each pair, per connection.
    """
    environ = {**PROGRAM_BASE, **env}
    return {os.fsencode(key): os.fsencode(value) for key, value in environ.items()}


def connection_environment(
    base: dict[bytes, bytes], request: Any, client: Any, local: Any = None, proto: bytes = b"TCP"
) -> dict[bytes, bytes]:
    """Add UCSPI's and systemd's variables describing this connection to `base`.

    TCP (IPv4 and IPv6 alike, as s6-tcpserver does): PROTO=TCP, TCPREMOTEIP,
    TCPREMOTEPORT, TCPLOCALIP, TCPLOCALPORT, and systemd's REMOTE_ADDR and
    REMOTE_PORT. UNIX (as ucspi-unix does): PROTO=UNIX, UNIXREMOTEPID,
    UNIXREMOTEEUID, UNIXREMOTEEGID from the peer's credentials. No DNS lookups:
    TCPREMOTEHOST and TCPLOCALHOST are never set. `local` is the listener's
    address when it is the connection's too (not a wildcard address). A UDP
    datagram's (`proto` b"UDP"): PROTO=UDP, UDPREMOTEIP, UDPREMOTEPORT,
    UDPLOCALIP, UDPLOCALPORT, REMOTE_ADDR and REMOTE_PORT.
    """
    environ = base.copy()
    if isinstance(client, tuple):
        if local is None:
            local = request.getsockname()
        remote_ip, remote_port = client[0].encode(), b"%d" % client[1]
        environ[b"PROTO"] = proto
        environ[proto + b"REMOTEIP"] = environ[b"REMOTE_ADDR"] = remote_ip
        environ[proto + b"REMOTEPORT"] = environ[b"REMOTE_PORT"] = remote_port
        environ[proto + b"LOCALIP"] = local[0].encode()
        environ[proto + b"LOCALPORT"] = b"%d" % local[1]
    else:
        pid, uid, gid = peer_credentials(request)
        environ[b"PROTO"] = b"UNIX"
        environ[b"UNIXREMOTEPID"] = b"%d" % pid
        environ[b"UNIXREMOTEEUID"] = b"%d" % uid
        environ[b"UNIXREMOTEEGID"] = b"%d" % gid
    return environ


class Program:
    """The program of an exec service: its path, argv, environment, identity and limits.

    `identity` is [uid, gid, groups] to switch to, or None to run as the forker;
    `rlimits` its resource limits by name (`sockd.spec.RLIMITS`). With either,
    it is forked (`forks`), else started with posix_spawn.
    """

    __slots__ = ("argv", "environ", "forks", "identity", "ignored_signals", "path", "rlimits")

    def __init__(
        self,
        path: str,
        argv: list[str],
        env: dict[str, str],
        identity: list[Any] | None,
        rlimits: tuple[tuple[str, int | None], ...] = (),
    ) -> None:
        self.path = path
        self.argv = argv
        self.environ = base_environment(env)
        self.identity = identity
        self.ignored_signals = tuple(
            signum for signum in DEFAULT_SIGNALS if signal.getsignal(signum) == signal.SIG_IGN
        )
        # What the child sets, made once: (what it says if refused, resource, soft = hard).
        self.rlimits = tuple(
            (
                f"set rlimits.{name} = {'unlimited' if value is None else value}",
                getattr(resource, RLIMITS[name]),
                resource.RLIM_INFINITY if value is None else value,
            )
            for name, value in rlimits
        )
        self.forks = identity is not None or bool(rlimits)

    def start(  # noqa: PLR0913, PLR0917 (the connection, and how it came)
        self,
        request: socket.socket,
        client: Any,
        local: Any,
        in_child: Callable[[], None],
        proxied: tuple[Header, Any] | None = None,
        datagram: int | None = None,
    ) -> tuple[int, int]:
        """Start the program on the connection; return its pid and the read end of its stderr.

        Args:
            request: the connected socket, the program's stdin and stdout (with
                `datagram`: its stdout, a UDP socket connected to the sender).
            client: the client's address ("" for a UNIX peer).
            local: the listener's address, if not a wildcard (see connection_environment).
            in_child: what a forked child does first (close the forker's descriptors).
            proxied: the connection's PROXY header and the proxy's address, if it had one
                (`client` is then the header's; see `sockd.forker.proxied.proxy_environment`).
            datagram: for a UDP datagram, the program's stdin: a pipe that holds
                it (see `sockd.forker.datagrams`).

        Raises:
            OSError: the pipe or the process could not be made.
        """
        stdin = connection = request.fileno()
        if datagram is not None:
            environ = connection_environment(self.environ, request, client, local, b"UDP")
            stdin = datagram
        elif proxied is None:
            environ = connection_environment(self.environ, request, client, local)
        else:
            from sockd.forker.proxied import proxy_environment  # noqa: PLC0415

            header, proxy_address = proxied
            if isinstance(client, tuple) and not header.local:
                local = header.destination
            else:  # a UNIX client (v2's AF_UNIX) has no UCSPI variables: the connection's own
                client = proxy_address
            environ = connection_environment(self.environ, request, client, local)
            proxy_environment(environ, header, request, proxy_address)
        return self.spawn(environ, (stdin, connection), in_child)

    def start_on_listener(
        self, listener: socket.socket, in_child: Callable[[], None]
    ) -> tuple[int, int]:
        """Start a wait service's program on the listening socket itself (see `sockd.forker.waits`).

        Its environment is the service's (no connection, no variables of one).

        Raises:
            OSError: the pipe or the process could not be made.
        """
        fd = listener.fileno()
        return self.spawn(self.environ, (fd, fd), in_child)

    def spawn(
        self, environ: dict[bytes, bytes], stdio: tuple[int, int], in_child: Callable[[], None]
    ) -> tuple[int, int]:
        """Start the program with `stdio` as its stdin and stdout; return its pid and stderr.

        Raises:
            OSError: the pipe or the process could not be made.
        """
        stdin, connection = stdio
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        try:
            if not self.forks:
                pid = os.posix_spawn(
                    self.path,
                    self.argv,
                    environ,
                    file_actions=[
                        (os.POSIX_SPAWN_DUP2, stdin, 0),
                        (os.POSIX_SPAWN_DUP2, connection, 1),
                        (os.POSIX_SPAWN_DUP2, write_end, 2),
                    ],
                    setsigmask=(),
                    # exec resets caught signals itself; ignored ones it keeps.
                    setsigdef=self.ignored_signals,
                    # Its own process group: max_duration and stop reach what it starts.
                    setpgroup=0,
                )
            else:
                pid = self._fork(environ, (stdin, connection, write_end), in_child)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        return pid, read_end

    def _fork(
        self, environ: dict[bytes, bytes], fds: tuple[int, int, int], in_child: Callable[[], None]
    ) -> int:
        # Signals stay blocked across fork(): one aimed at the forker must not run
        # the forker's handler in the child before it execs.
        everything = signal.valid_signals()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, everything)
        try:
            pid = os.fork()
            if not pid:
                self._exec_in_child(environ, fds, in_child)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        return pid

    def _exec_in_child(
        self, environ: dict[bytes, bytes], fds: tuple[int, int, int], in_child: Callable[[], None]
    ) -> None:
        """In the forked child: signals, stdio, descriptors, limits, identity, then exec.

        What fails after stderr is the program's pipe is one line there (a
        `program_stderr` event), and the child exits _EXEC_FAILED, as a shell
        that cannot execute a command does.
        """
        step = ""  # what the child is doing, once its stderr is the pipe
        try:  # nothing may escape a forked child
            for signum in DEFAULT_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            os.setpgid(0, 0)  # its own process group, as posix_spawn's setpgroup gives
            stdin, connection, stderr = fds
            os.dup2(stdin, 0)
            os.dup2(connection, 1)
            os.dup2(stderr, 2)
            step = "close the forker's descriptors"
            # Then the forker's descriptors: a wait service's socket is one of them.
            in_child()
            # Before the identity (xinetd sets them after): a hard limit may still be raised
            # by a privileged forker, and setuid() then counts nproc for the program's user.
            for step, which, value in self.rlimits:  # noqa: B007 (step: said if it fails)
                resource.setrlimit(which, (value, value))
            if self.identity is not None:
                step = f"become uid {self.identity[0]}"
                become_ids(self.identity)
            step = "execute " + self.path
            os.execve(self.path, self.argv, environ)  # noqa: S606 (argv from the config)
        except BaseException as exc:  # noqa: BLE001 (said in one line, never a traceback)
            if step:
                _say_failed(step, exc)
        finally:
            os._exit(_EXEC_FAILED)


def _say_failed(step: str, exc: BaseException) -> None:
    """In a forked child: say in one line on its stderr (the program's pipe) why it cannot exec."""
    try:
        # setrlimit says EPERM as a ValueError: "not allowed to raise maximum limit".
        reason = exc.strerror if isinstance(exc, OSError) else " ".join(str(exc).split())
        reason = reason or type(exc).__name__
        os.write(2, f"sockd: cannot {step}: {reason}\n".encode(errors="replace"))
    except BaseException:  # noqa: BLE001 (out of memory, say: the exit status tells the rest)
        with contextlib.suppress(BaseException):
            os.write(2, b"sockd: cannot start the program\n")


class StderrLines:
    """The stderr pipe of one program: whole lines go to `emit(fields, line)`, the last at EOF.

    `fields` (service, client, pid) tag each line. A program may log at most
    MAX_LINES lines; past that its lines are counted, not logged, and the count
    goes to `emit` at the end as a line of its own (so a program that floods
    its stderr costs the forker one read per poll, and the log a bounded size).
    """

    __slots__ = ("buffer", "dropped", "emit", "empty", "fd", "fields", "lines")

    def __init__(
        self, fd: int, emit: Callable[[dict[str, Any], str], None], fields: dict[str, Any]
    ) -> None:
        self.fd = fd
        self.emit = emit
        self.fields = fields
        self.buffer = b""
        self.lines = 0
        self.dropped = 0
        self.empty = False  # the last read found nothing (the pipe is still open)

    def read(self) -> bool:
        """Read once (polling says when there is more); False at end of file (the owner closes)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            self.empty = True
            return True
        except OSError:
            data = b""
        if data:
            self.empty = False
            self.buffer += data
            self._emit_lines(final=False)
            return True
        self._emit_lines(final=True)
        if self.dropped:
            self.emit(self.fields, f"[sockd: {self.dropped} more lines not logged]")
        return False

    def _emit_lines(self, *, final: bool) -> None:
        if not self.buffer:
            return
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop()
        if final and self.buffer:
            lines.append(self.buffer)
            self.buffer = b""
        while len(self.buffer) > MAX_LINE:
            lines.append(self.buffer[:MAX_LINE])
            self.buffer = self.buffer[MAX_LINE:]
        for piece in _pieces(lines):
            if self.lines >= MAX_LINES:
                self.dropped += 1
                continue
            self.lines += 1
            text = piece.decode(errors="replace").rstrip("\r")
            # Replacement characters take 3 bytes: cut to MAX_LINE bytes of UTF-8,
            # so the event fits one atomic write to the daemon.
            self.emit(self.fields, text.encode()[:MAX_LINE].decode(errors="ignore"))


def _pieces(lines: Iterable[bytes]) -> Iterable[bytes]:
    for line in lines:
        for start in range(0, max(len(line), 1), MAX_LINE):
            yield line[start : start + MAX_LINE]


class LineBudget:
    """The stderr lines all programs together may log: a token bucket, with drops counted.

    STDERR_RATE lines a second, STDERR_BURST at once; a line past the budget
    is counted for its service, and the counts are summed up (`due`) at the
    end of a window of STDERR_SUMMARY seconds from the first drop.
    """

    __slots__ = ("dropped", "tokens", "updated", "window_end")

    def __init__(self) -> None:
        self.tokens = float(STDERR_BURST)
        self.updated = time.monotonic()
        self.dropped: dict[str, int] = {}  # service -> lines not logged in this window
        self.window_end = 0.0

    def take(self, service: str) -> bool:
        """Take a line's token; False (the line is counted, not logged) when there is none."""
        now = time.monotonic()
        self.tokens = min(STDERR_BURST, self.tokens + (now - self.updated) * STDERR_RATE)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if not self.window_end:
            self.window_end = now + STDERR_SUMMARY
        self.dropped[service] = self.dropped.get(service, 0) + 1
        return False

    def due(self, now: float) -> list[dict[str, Any]]:
        """At the end of a window (now=inf: at once), return the summaries to log."""
        if not self.window_end or now < self.window_end:
            return []
        seconds = round(STDERR_SUMMARY - max(0.0, self.window_end - time.monotonic()), 3)
        summaries = [
            {"service": service, "lines": lines, "seconds": seconds}
            for service, lines in self.dropped.items()
        ]
        self.dropped.clear()
        self.window_end = 0.0
        return summaries


class StderrWatch:
    """The stderr pipes of every running program, polled with the forker's other descriptors.

    Each line goes to `emit(fields, line)`, with `fields` naming the service,
    the client and the program's pid, within the `budget` of all programs;
    `changed()` is called when a pipe is added or closed.
    """

    def __init__(
        self,
        poller: select.epoll,
        emit: Callable[[dict[str, Any], str], None],
        changed: Callable[[], None],
    ) -> None:
        self.poller = poller
        self.emit = emit
        self.changed = changed
        self.budget = LineBudget()
        self.pipes: dict[int, StderrLines] = {}  # by descriptor
        self.of_pid: dict[int, int] = {}  # pid -> its stderr descriptor, while open

    def watch(self, fd: int, pid: int, service: str, client: object) -> None:
        """Start reading the stderr pipe `fd` of program `pid`."""
        fields = {"service": service, "client": client, "pid": pid}
        self.pipes[fd] = StderrLines(fd, self._emit, fields)
        self.of_pid[pid] = fd
        self.poller.register(fd, select.EPOLLIN)
        self.changed()

    def _emit(self, fields: dict[str, Any], line: str) -> None:
        if self.budget.take(fields["service"]):
            self.emit(fields, line)

    def read(self, fd: int) -> None:
        """Read a pipe that polled readable; at its end it leaves epoll and is closed.

        Closing alone is not enough: epoll was seen to keep reporting a closed
        pipe (at end of file, so at every poll), which spun the forker.
        """
        if not self.pipes[fd].read():
            del self.pipes[fd]
            self.poller.unregister(fd)
            os.close(fd)
            self.changed()

    def drain(self, pid: int) -> None:
        """Read what a reaped program left, so that its lines come before its exit.

        A bounded number of reads: what a descendant still writes comes later.
        """
        fd = self.of_pid.pop(pid, None)
        for _ in range(DRAIN_READS):
            if fd is None or fd not in self.pipes or self.pipes[fd].empty:
                return
            self.read(fd)
