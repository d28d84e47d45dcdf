"""What the benchmarks share: servers, the load generator, cells, summaries, and the run."""

# How a cell is measured, and why:
#
# - The servers run as their own processes, started once and kept for the whole
#   run; sockd and every Python reference run under one interpreter (this one, or
#   --python's, see servers_python), which the header names.
# - The servers are pinned to one CPU and the load generator to another (when
#   there are two), so the generator never steals the server's CPU. Forked
#   children inherit the pinning.
# - The load generator is single-threaded, with non-blocking sockets: it keeps
#   C connections in flight, each one connect, send a line, read it back, close
#   (or, reading to EOF: connect, send a line, half-close, read until the server
#   closes, close). Connections finishing inside the window count for conn/s;
#   those still in flight when it ends may finish (or time out) and count for
#   latency, errors and CPU per connection. A cell therefore never lasts more
#   than duration + timeout. There are two, doing the same exchange: bench/loadgen.c
#   (epoll), built here with the machine's gcc, the default when gcc works; and a
#   forked Python process (`selectors`), which saturates its own core at about
#   12,000-13,000 connections/s on the test machines, below what a pre-forked
#   server reaches.
# - Server CPU is utime+stime+cutime+cstime of every process in the server's
#   tree, from /proc/PID/stat: children's CPU arrives in their parent's
#   cutime/cstime when they are reaped, so for a server forking per connection
#   each reading waits until it has reaped them all. "Server busy" is that CPU
#   time over the cell's elapsed time: near 100% (of the one CPU it is pinned
#   to), the server is the bottleneck; the generator's own busy says the same of
#   the client.
# - Within a repetition, the order of the servers flips from cell to cell
#   and from repetition to repetition, so slow drifts hit both alike.

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import errno
import fcntl
import hashlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from contextlib import AbstractContextManager
    from multiprocessing.connection import Connection

HOST = "127.0.0.1"
PAYLOAD = b"hello sockd\n"
ERROR_KINDS = ("refused", "reset", "timeout")
STARTUP_TIMEOUT = 20.0  # seconds for a server to say it is ready
OVERRUN_MARGIN = 10.0  # seconds a load generator may take beyond duration + timeout
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL at the end
SETTLE_LIMIT = 3.0  # longest wait for a server to reap its children between cells
WARMUP_SECONDS = 0.2
CLK_TCK = os.sysconf("SC_CLK_TCK")
SOCKD_LOG = "sockd.stderr.jsonl"  # sockd's JSON log, in the run's temporary directory
BENCH_DIR = Path(__file__).resolve().parent
LOADGEN_SOURCE = BENCH_DIR / "loadgen.c"
DEFAULT_BUILD_DIR = BENCH_DIR / "build"
GCC_FLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")
CLIENTS = ("auto", "c", "python")  # --client: auto is c when gcc builds it, else python


class BenchError(Exception):
    """The benchmark cannot go on (a server failed to start or died)."""


# --- the servers' interpreter --------------------------------------------------------------

ROOT = BENCH_DIR.parent
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
# What a version check prints: version, implementation, executable's real path.
ABOUT = (
    "import os, platform, sys; print(platform.python_version(),"
    " platform.python_implementation(), os.path.realpath(sys.executable))"
)


@dataclass(frozen=True)
class Interpreter:
    """The Python that runs sockd and every Python reference server."""

    executable: str  # what the servers are started with
    realpath: str  # the interpreter binary behind it
    version: str  # "3.13.0"
    implementation: str  # "CPython"
    venv: str | None = None  # the virtualenv bench/ made for it, if it made one

    def describe(self) -> str:
        """Say which interpreter it is, for the header."""
        return f"{self.executable} -> {self.realpath} ({self.implementation} {self.version})"


def interpreter_of(executable: str) -> Interpreter:
    """Ask `executable` what it is.

    Raises:
        BenchError: it does not run.

    """
    try:
        result = subprocess.run(
            [executable, "-c", ABOUT], capture_output=True, text=True, check=False, timeout=60
        )
    except OSError as exc:
        raise BenchError(f"--python {executable}: {exc.strerror}") from None
    if result.returncode != 0:
        raise BenchError(f"--python {executable}: exit {result.returncode}: {result.stderr}")
    version, implementation, realpath = result.stdout.split(maxsplit=2)
    return Interpreter(executable, realpath.strip(), version, implementation)


# The interpreter every server starts under (see use_python): this one, by default.
_servers_python = Interpreter(
    sys.executable,
    str(Path(sys.executable).resolve()),
    platform.python_version(),
    platform.python_implementation(),
)


def servers_python() -> Interpreter:
    """Return the interpreter that runs sockd and the Python references."""
    return _servers_python


def use_python(requested: str | None, build_dir: Path) -> Interpreter:
    """Run the servers under `requested` (None: this interpreter) from now on; return it.

    Another interpreter than this one gets a virtualenv in `build_dir` (see
    python_venv): sockd from this checkout, its dependencies pinned as CI pins them.

    Raises:
        BenchError: it does not run, or its virtualenv cannot be made.

    """
    global _servers_python  # noqa: PLW0603 (one setting, made once per run, read by every start)
    if requested is not None:
        wanted = interpreter_of(requested)
        if wanted.realpath != _servers_python.realpath:
            venv = python_venv(wanted, build_dir)
            _servers_python = dataclasses.replace(
                interpreter_of(str(venv / "bin" / "python")), venv=str(venv)
            )
    return _servers_python


def byte_compile(interpreter: Interpreter) -> None:
    """Write the bytecode caches of this checkout's sockd for `interpreter`, as installing does.

    An installed sockd has them (Debian's package compiles them at install).
    Without them (PYTHONDONTWRITEBYTECODE, or a source changed since), every
    module is compiled anew as the forker starts, and the compiler's leftovers
    make the forker, and so each fork, bigger: measured, 1.1 MB more with the
    echo service, 1.7 MB more with `proxy_protocol` (which loads the parser).

    Raises:
        BenchError: they cannot be written.

    """
    command = [interpreter.executable, "-m", "compileall", "-q", str(ROOT / "daemon" / "sockd")]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise BenchError(f"{' '.join(command)}: {(result.stdout + result.stderr).strip()[-500:]}")


def python_venv(interpreter: Interpreter, build_dir: Path) -> Path:
    """Make (once) `build_dir`/venv-X.Y for `interpreter`, with sockd and its dependencies.

    sockd is installed editable from this checkout, its dependencies pinned by
    .ci/constraints.txt (the versions Debian packages), by the interpreter's own
    venv and pip. A stamp of what was installed saves the install next time; a
    lock keeps two runs from making it at once.

    Raises:
        BenchError: venv or pip failed.

    """
    major_minor = ".".join(interpreter.version.split(".")[:2])
    venv = build_dir / f"venv-{major_minor}"
    wanted = hashlib.sha256(
        "\n".join(
            [
                interpreter.realpath,
                str(ROOT),
                CONSTRAINTS.read_text(),
                (ROOT / "pyproject.toml").read_text(),
            ]
        ).encode()
    ).hexdigest()
    stamp = venv / "sockd-bench.stamp"
    build_dir.mkdir(parents=True, exist_ok=True)
    with (build_dir / f".venv-{major_minor}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == wanted:
            return venv
        print(f"making {venv} for {interpreter.describe()}", file=sys.stderr, flush=True)
        steps = [
            [interpreter.realpath, "-m", "venv", "--clear", str(venv)],
            [
                str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                "--disable-pip-version-check", "-c", str(CONSTRAINTS), "-e", str(ROOT),
            ],
        ]  # fmt: skip
        for step in steps:
            result = subprocess.run(step, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                said = (result.stderr.strip() or result.stdout.strip())[-2000:]
                raise BenchError(f"{shlex.join(step)} failed (exit {result.returncode}): {said}")
        stamp.write_text(wanted)
    return venv


@dataclass(frozen=True)
class Settings:
    """What to run: repetitions, seconds per cell, concurrency levels, timeout, client."""

    repeat: int
    duration: float
    clients: tuple[int, ...]
    timeout: float
    client: str = "python"  # the load generator: "c" (bench/loadgen.c) or "python"
    loadgen: str | None = None  # the built C client, when client is "c"


@dataclass(frozen=True)
class Pinning:
    """Which CPU the servers and the load generator run on; None when not pinned."""

    server_cpu: int | None
    generator_cpu: int | None
    cpus_available: int

    def describe(self) -> str:
        """Say what was pinned where, for the header."""
        if self.server_cpu is None:
            return f"not pinned ({self.cpus_available} CPU available)"
        return (
            f"servers (and their children) on CPU {self.server_cpu}, load generator on CPU"
            f" {self.generator_cpu} ({self.cpus_available} CPUs available)"
        )


@dataclass
class Load:
    """What the load generator saw in one cell."""

    completed: int = 0
    completed_in_window: int = 0
    window: float = 0.0
    elapsed: float = 0.0
    busy: float = 0.0  # generator CPU time / elapsed
    latencies_ms: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_KINDS, 0))
    in_flight_at_end: int = 0  # connections in flight when the window closed


@dataclass(frozen=True)
class Cell:
    """One server at one concurrency in one repetition."""

    server: str
    clients: int
    repetition: int
    completed: int
    completed_in_window: int
    conn_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    server_cpu_s: float
    cpu_us_per_conn: float
    parent_us_per_conn: float  # the server process itself: accept, fork, reap, log
    children_us_per_conn: float  # the rest of its tree: forked children, or pooled workers
    server_busy: float  # server CPU time / elapsed: 1.0 is all of one CPU
    generator_busy: float
    in_flight_at_end: int
    client: str  # the load generator, "c" or "python"


@dataclass(frozen=True)
class Summary:
    """One server at one concurrency over every repetition: medians and spread."""

    server: str
    clients: int
    conn_per_s: float
    conn_per_s_min: float
    conn_per_s_max: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    cpu_us_per_conn: float
    parent_us_per_conn: float
    children_us_per_conn: float
    server_busy: float
    generator_busy: float
    ratio: float | None  # conn/s of this server / conn/s of the reference


# --- servers -------------------------------------------------------------------------------


class Server:
    """A server process under test: its pid, port, CPU time and stop."""

    name = "server"
    # How a client talks to it: False, send a line and close once it is back (it answers
    # and waits for more); True, send a line, half-close, read until the server closes (a
    # program run per connection answers and exits). See Generator.
    until_eof = False
    # False: it forks per connection, and its CPU readings wait until it has reaped every
    # child. True: pre-forked processes serve the connections and stay.
    pooled = False

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        """Take over a started and ready `process` listening on `port`."""
        self.process = process
        self.port = port

    def check_alive(self) -> None:
        """Raise BenchError if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited with status {code} during the benchmark")

    def generate(self, clients: int, settings: Settings, cpu: int | None) -> Load:
        """Run the load generator against this server for one cell (see `generate`).

        Raises:
            BenchError: the generator failed, died or overran duration + timeout.

        """
        return generate(self, clients, settings, cpu)

    def forking_pid(self) -> int:
        """Return the pid of the process that forks per connection."""
        return self.process.pid

    def own_pids(self) -> set[int]:
        """Return the server's own processes: the one started, and the one that forks."""
        if self.pooled:
            return {self.process.pid}
        return {self.process.pid, self.forking_pid()}

    def executables(self) -> list[str]:
        """Return what its processes run (/proc/PID/exe, resolved): which interpreter, say."""
        return sorted(
            {os.path.realpath(f"/proc/{pid}/exe") for pid in process_tree(self.process.pid)}
        )

    def cpu_seconds(self) -> tuple[float, float]:
        """Return CPU time of the server's own processes, and of the rest of its tree.

        The rest is every other live process under it (pooled workers) and every child
        reaped (cutime and cstime): once reaped, a process's time is its parent's.
        """
        own_pids = self.own_pids()
        own = rest = 0.0
        for pid in process_tree(self.process.pid):
            try:
                mine, reaped = cpu_times(pid)
            except FileNotFoundError:
                if pid in own_pids:
                    raise BenchError(
                        f"{self.name}: process {pid} exited during the benchmark"
                    ) from None
                continue  # a child that exited just now: its time is in its parent's
            if pid in own_pids:
                own += mine
            else:
                rest += mine
            rest += reaped
        return own, rest

    def settle(self) -> None:
        """Wait (bounded) until the server has reaped every child, so cutime/cstime are complete.

        Pooled servers keep their children: nothing to wait for.
        """
        if self.pooled:
            return
        pid = self.forking_pid()
        children = Path(f"/proc/{pid}/task/{pid}/children")
        deadline = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < deadline:
            try:
                if not children.read_text().strip():
                    return
            except OSError:
                time.sleep(0.6)  # no CONFIG_PROC_CHILDREN: the stdlib reaps every 0.5 s idle
                return
            time.sleep(0.01)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited in time; always waits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.close_pipes()

    def close_pipes(self) -> None:
        """Close our end of its stdout, if we read its port there."""
        if self.process.stdout is not None:
            self.process.stdout.close()


class Sockd(Server):
    """sockd started with given `sockd run` options, logging JSON to a file."""

    name = "sockd"

    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        """Take over a ready sockd whose stderr goes to `log_path`."""
        super().__init__(process, port)
        self.log_path = log_path
        pid = process.pid
        self.forker = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])

    def forking_pid(self) -> int:
        """Return the pid of sockd's forker (the daemon's one child; it forks per connection)."""
        return self.forker

    @classmethod
    def start(cls, log_path: Path, cpu: int | None, options: Sequence[str]) -> Sockd:
        """Start `sockd run OPTIONS`, pin it, and wait for its `ready` event.

        Its first listener's port is the one measured.

        Raises:
            BenchError: sockd exited or did not get ready in time.

        """
        python = servers_python().executable
        command = [python, "-m", "sockd", "run", *options, "--log-format", "json"]
        # stderr goes to a file, not a pipe: one line per connection can never block sockd,
        # and we spend no CPU draining it.
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
            )
        try:
            pin(process.pid, cpu)
            port = _wait_sockd_ready(process, log_path)
        except BaseException:
            process.kill()
            process.wait()
            raise
        return cls(process, port, log_path)


def pin(pid: int, cpu: int | None) -> None:
    """Pin process `pid` (0: this one) to CPU `cpu`, unless that is None."""
    if cpu is not None:
        os.sched_setaffinity(pid, {cpu})


# Receive packet steering of the loopback device: which CPUs do its receiving side's work.
LOOPBACK_RPS = Path("/sys/class/net/lo/queues/rx-0/rps_cpus")


def can_steer_loopback() -> bool:
    """Tell whether this process may set loopback's receive steering (root, sysfs there)."""
    return os.access(LOOPBACK_RPS, os.W_OK)


@contextlib.contextmanager
def loopback_received_on(cpu: int | None) -> Iterator[None]:
    """While inside, have loopback's receiving side processed on `cpu` (RPS), if allowed.

    On loopback the kernel does the receiving side's TCP work on the CPU that
    sent the packet: the load generator's CPU carries the server's half of each
    handshake and close, and a fast server makes it the limit. Steered to the
    server's CPU, that work is where a real server does it, and the client can
    drive a server to its full CPU. The setting is the machine's: it is put back.
    """
    if cpu is None or not can_steer_loopback():
        yield
        return
    before = LOOPBACK_RPS.read_text().strip()
    LOOPBACK_RPS.write_text(f"{1 << cpu:x}\n")
    try:
        yield
    finally:
        LOOPBACK_RPS.write_text(f"{before}\n")


def process_tree(root: int) -> list[int]:
    """Return `root` and every live process under it, parents first.

    Raises:
        BenchError: `root` does not exist.

    """
    if not Path(f"/proc/{root}").exists():
        raise BenchError(f"process {root} has exited")
    pids: list[int] = []
    pending = [root]
    while pending:
        pid = pending.pop(0)
        pids.append(pid)
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
            for task in tasks:
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except FileNotFoundError:
            continue  # it exited while we looked
    return pids


def cpu_times(pid: int) -> tuple[float, float]:
    """Return (utime + stime, cutime + cstime) of process `pid`, in seconds.

    Raises:
        FileNotFoundError: there is no such process (any more).

    """
    text = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the ")" that ends the command name: utime is [11] ... cstime [14].
    ticks = [int(value) for value in text.rpartition(")")[2].split()[11:15]]
    return (ticks[0] + ticks[1]) / CLK_TCK, (ticks[2] + ticks[3]) / CLK_TCK


def read_port(process: subprocess.Popen[bytes], name: str, err_path: Path) -> int:
    """Read the port a server `name` prints on its first line of stdout.

    Raises:
        BenchError: it exited or did not print its port in time.

    """
    assert process.stdout is not None  # noqa: S101 (the caller passes stdout=PIPE)
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(STARTUP_TIMEOUT):
            line = process.stdout.readline()
            if line.strip().isdigit():
                return int(line)
    tail = err_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"{name} did not print its port (status {process.poll()}):\n{tail}")


def start_reference(
    argv: list[str], name: str, err_path: Path, cpu: int | None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a reference server in its own process group, pinned to `cpu`; read its port.

    What it forked at start (pre-forked workers) is pinned too.

    Raises:
        BenchError: it exited or did not print its port in time.

    """
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, process_group=0
        )
    try:
        pin(process.pid, cpu)
        port = read_port(process, name, err_path)
        for pid in process_tree(process.pid):  # pre-forked workers inherited it; make sure
            pin(pid, cpu)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    return process, port


def _wait_sockd_ready(process: subprocess.Popen[bytes], log_path: Path) -> int:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    port: int | None = None
    with log_path.open("rb") as log:
        pending = b""
        while time.monotonic() < deadline:
            pending += log.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                event = _json_event(line)
                if event.get("event") == "starting":
                    port = int(event["listeners"][0]["address"].rpartition(":")[2])
                elif event.get("event") == "ready" and port is not None:
                    return port
            if process.poll() is not None:
                break
            time.sleep(0.02)
    tail = log_path.read_text(errors="replace")[-2000:]
    raise BenchError(f"sockd did not get ready (status {process.poll()}):\n{tail}")


def _json_event(line: bytes) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


# --- load generator ------------------------------------------------------------------------


class _Conn:
    __slots__ = ("deadline", "received", "sent", "sock", "started")

    def __init__(self, sock: socket.socket, started: float, deadline: float) -> None:
        self.sock = sock
        self.started = started
        self.deadline = deadline
        self.sent = False
        self.received = b""


class Generator:
    """Keeps `clients` connections in flight against one port for one window.

    Each connection sends PAYLOAD and expects it back. By default it closes as soon as the
    line is back; with `until_eof` it half-closes after sending and reads until the server
    closes (a program exec'd per connection, like `head -n1`, exits when done).
    """

    def __init__(
        self, port: int, clients: int, duration: float, timeout: float, *, until_eof: bool
    ) -> None:
        """Prepare a run; nothing is opened yet."""
        self.address = (HOST, port)
        self.clients = clients
        self.duration = duration
        self.timeout = timeout
        self.until_eof = until_eof
        self.selector = selectors.DefaultSelector()
        # Insertion order is start order, so the first entry always has the nearest deadline.
        self.active: dict[int, _Conn] = {}
        self.latencies: list[float] = []
        self.load = Load(window=duration)
        self.window_end = 0.0

    def run(self) -> Load:
        """Run the window, let the connections in flight finish or time out, and report."""
        cpu_start = time.process_time()
        start = time.perf_counter()
        self.window_end = start + self.duration
        window_open = True
        while True:
            now = time.perf_counter()
            self._expire(now)
            if now < self.window_end:
                for _ in range(self.clients - len(self.active)):
                    self._open()  # once per free slot: a refused connect must not spin here
            else:
                if window_open:
                    self.load.in_flight_at_end = len(self.active)
                    window_open = False
                if not self.active:
                    break
            wait = self.window_end - now if now < self.window_end else self.timeout
            if self.active:
                wait = min(wait, next(iter(self.active.values())).deadline - now)
            for key, _ in self.selector.select(max(0.0, wait)):
                self._step(key.data)
        self.load.elapsed = time.perf_counter() - start
        self.load.busy = (time.process_time() - cpu_start) / self.load.elapsed
        self.load.latencies_ms = _percentiles(self.latencies)
        self.selector.close()
        return self.load

    def _open(self) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self._count(exc.errno or "other")
            return
        sock.setblocking(False)
        started = time.perf_counter()
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self._count(code)
            return
        conn = _Conn(sock, started, started + self.timeout)
        self.active[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_WRITE, conn)

    def _step(self, conn: _Conn) -> None:
        if conn.sent:
            self._receive(conn)
        else:
            self._send(conn)

    def _send(self, conn: _Conn) -> None:
        sock = conn.sock
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._end(conn, code)
            return
        try:
            sock.send(PAYLOAD)  # 12 bytes into an empty send buffer: all of it goes
            if self.until_eof:
                sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._end(conn, exc.errno or "other")
            return
        conn.sent = True
        self.selector.modify(sock, selectors.EVENT_READ, conn)

    def _receive(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(conn, exc.errno or "other")
            return
        if not data:
            if self.until_eof:
                self._end(conn, None if conn.received == PAYLOAD else "mismatch")
            else:
                self._end(conn, "eof")
            return
        conn.received += data
        if len(conn.received) > len(PAYLOAD):
            self._end(conn, "mismatch")
        elif len(conn.received) == len(PAYLOAD) and not self.until_eof:
            self._end(conn, None if conn.received == PAYLOAD else "mismatch")

    def _end(self, conn: _Conn, error: int | str | None) -> None:
        """Close `conn`: a success when `error` is None, else count the error."""
        finished = time.perf_counter()
        self.selector.unregister(conn.sock)
        del self.active[conn.sock.fileno()]
        conn.sock.close()
        if error is not None:
            self._count(error)
            return
        self.latencies.append(finished - conn.started)
        self.load.completed += 1
        if finished <= self.window_end:
            self.load.completed_in_window += 1

    def _expire(self, now: float) -> None:
        while self.active:
            conn = next(iter(self.active.values()))
            if conn.deadline > now:
                return
            self._end(conn, "timeout")

    def _count(self, error: int | str) -> None:
        kind = _error_kind(error)
        self.load.errors[kind] = self.load.errors.get(kind, 0) + 1


def _error_kind(error: int | str) -> str:
    if isinstance(error, str):
        return error
    if error == errno.ECONNREFUSED:
        return "refused"
    if error in (errno.ECONNRESET, errno.EPIPE):
        return "reset"
    if error == errno.ETIMEDOUT:
        return "timeout"
    return errno.errorcode.get(error, str(error))


def _percentiles(latencies: list[float]) -> dict[str, float]:
    """Nearest-rank p50 and p99 and the maximum, in milliseconds (zeros when empty)."""
    if not latencies:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(latencies)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000

    return {"p50": rank(0.50), "p99": rank(0.99), "max": ordered[-1] * 1000}


def _generator_main(
    out: Connection, server: Server, clients: int, settings: Settings, cpu: int | None
) -> None:
    pin(0, cpu)
    generator = Generator(
        server.port, clients, settings.duration, settings.timeout, until_eof=server.until_eof
    )
    out.send(generator.run())
    out.close()


def generate(server: Server, clients: int, settings: Settings, cpu: int | None) -> Load:
    """Run the load generator settings.client names against `server`; return what it saw.

    Raises:
        BenchError: the generator failed, died or overran duration + timeout.

    """
    if settings.client == "c":
        return _generate_c(server, clients, settings, cpu)
    return generate_in_process(server, clients, settings, cpu)


def generate_in_process(
    server: Server,
    clients: int,
    settings: Settings,
    cpu: int | None,
    main: Callable[[Connection, Server, int, Settings, int | None], None] = _generator_main,
) -> Load:
    """Run the Python generator (`main`, which sends its Load) in its own (forked) process."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    worker = context.Process(
        target=main,
        args=(send, server, clients, settings, cpu),
        daemon=True,
    )
    worker.start()
    send.close()
    try:
        if not receive.poll(settings.duration + settings.timeout + OVERRUN_MARGIN):
            raise BenchError(f"the load generator overran at {clients} clients")
        load: Load = receive.recv()
    except EOFError as exc:
        raise BenchError(f"the load generator died (exit code {worker.exitcode})") from exc
    finally:
        receive.close()
        if worker.is_alive():
            worker.join(5)
        if worker.is_alive():
            worker.kill()
            worker.join()
    return load


def loadgen_command(
    settings: Settings, port: int | str, clients: int, cpu: int | None, *, until_eof: bool
) -> list[str]:
    """Return the command line of the C client (settings.loadgen) for one cell."""
    command = [
        settings.loadgen or "loadgen",
        "--host", HOST, "--port", str(port), "--clients", str(clients),
        "--duration", str(settings.duration), "--timeout", str(settings.timeout),
        "--line", PAYLOAD.decode().rstrip("\n"),
    ]  # fmt: skip
    # The same exchange as the Python generator's: see Generator.
    command += ["--shut-wr", "--until-eof"] if until_eof else ["--until-newline"]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    return command


def _generate_c(
    server: Server,
    clients: int,
    settings: Settings,
    cpu: int | None,
    extra: Sequence[str] = (),
) -> Load:
    """Run bench/loadgen.c's binary (it pins itself), `extra` options last; read its report."""
    if settings.loadgen is None:
        raise BenchError("the C client was chosen but not built")
    command = loadgen_command(settings, server.port, clients, cpu, until_eof=server.until_eof)
    command += extra
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=settings.duration + settings.timeout + OVERRUN_MARGIN,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"the C load generator overran at {clients} clients") from None
    if result.returncode != 0:
        raise BenchError(
            f"the C load generator failed (status {result.returncode}):"
            f" {result.stderr.decode(errors='replace').strip()}"
        )
    report = json.loads(result.stdout)
    errors = dict.fromkeys(ERROR_KINDS, 0) | {
        str(kind): int(n) for kind, n in report["errors"].items()
    }
    return Load(
        completed=int(report["completed"]),
        completed_in_window=int(report["completed_in_window"]),
        window=float(report["window_s"]),
        elapsed=float(report["elapsed_s"]),
        busy=float(report["busy"]),
        latencies_ms={key: float(report[f"{key}_ms"]) for key in ("p50", "p99", "max")},
        errors=errors,
        in_flight_at_end=int(report["in_flight_at_end"]),
    )


@dataclass(frozen=True)
class ClientChoice:
    """The load generator a run uses, and what the header says of it."""

    client: str  # "c" or "python"
    loadgen: str | None  # the built binary, for "c"
    description: str


def build_loadgen(build_dir: Path) -> tuple[Path, str]:
    """Compile bench/loadgen.c with gcc into `build_dir`; return the binary and gcc's version.

    Built afresh each run (it takes a fraction of a second), so a binary is never stale;
    renamed into place, so a concurrent run never executes a half-written one.

    Raises:
        BenchError: there is no gcc, or it failed.

    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BenchError("gcc not found (apt-get install gcc)")
    build_dir.mkdir(parents=True, exist_ok=True)
    target = build_dir / "loadgen"
    partial = build_dir / f".loadgen.{os.getpid()}"
    try:
        result = subprocess.run(
            [gcc, *GCC_FLAGS, "-o", str(partial), str(LOADGEN_SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BenchError(f"gcc failed on {LOADGEN_SOURCE.name}: {result.stderr.strip()}")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    version = subprocess.run(
        [gcc, "-dumpfullversion"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return target, version


def _shown(path: Path) -> str:
    """Return `path` relative to the repository when it is inside, else as it is."""
    try:
        return str(path.resolve().relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def choose_client(requested: str, build_dir: Path, cpu: int | None) -> ClientChoice:
    """Resolve --client: "auto" is the C client when it builds, else the Python generator.

    Raises:
        BenchError: --client c, and the C client does not build.

    """
    where = "unpinned" if cpu is None else f"pinned to CPU {cpu}"
    if requested != "python":
        try:
            binary, version = build_loadgen(build_dir)
        except BenchError as exc:
            if requested == "c":
                raise
            reason = f"C client unavailable ({exc})"
        else:
            return ClientChoice(
                "c",
                str(binary),
                f"C (bench/loadgen.c: epoll, one thread), built by gcc {version}"
                f" {' '.join(GCC_FLAGS)} into {_shown(binary)}; {where}",
            )
    else:
        reason = "--client python"
    return ClientChoice(
        "python",
        None,
        f"Python (selectors, one process), {reason}; {where}. NOTE: it saturates its own"
        " core at about 12,000-13,000 conn/s: faster servers are measured short",
    )


# --- running -------------------------------------------------------------------------------


def run_cell(
    server: Server, clients: int, repetition: int, settings: Settings, pinning: Pinning
) -> Cell:
    """Measure `server` at `clients` concurrent connections for one window."""
    server.settle()
    self_before, children_before = server.cpu_seconds()
    load = server.generate(clients, settings, pinning.generator_cpu)
    server.settle()
    server.check_alive()
    self_after, children_after = server.cpu_seconds()
    own, children = self_after - self_before, children_after - children_before
    per_conn = 1e6 / load.completed if load.completed else 0.0
    return Cell(
        server=server.name,
        clients=clients,
        repetition=repetition,
        completed=load.completed,
        completed_in_window=load.completed_in_window,
        conn_per_s=load.completed_in_window / load.window,
        p50_ms=load.latencies_ms["p50"],
        p99_ms=load.latencies_ms["p99"],
        max_ms=load.latencies_ms["max"],
        errors=load.errors,
        server_cpu_s=own + children,
        cpu_us_per_conn=(own + children) * per_conn,
        parent_us_per_conn=own * per_conn,
        children_us_per_conn=children * per_conn,
        server_busy=(own + children) / load.elapsed if load.elapsed else 0.0,
        generator_busy=load.busy,
        in_flight_at_end=load.in_flight_at_end,
        client=settings.client,
    )


def run_all(
    servers: Sequence[Server], settings: Settings, pinning: Pinning, label: str = ""
) -> list[Cell]:
    """Run every repetition and concurrency, flipping the order of the servers each cell.

    Progress goes to stderr, each line starting with `label` when given.
    """
    warmup = dataclasses.replace(settings, repeat=1, duration=WARMUP_SECONDS, clients=(1,))
    for server in servers:
        server.generate(1, warmup, pinning.generator_cpu)
    width = max(len(server.name) for server in servers)
    prefix = f"  {label}" if label else " "
    cells: list[Cell] = []
    for repetition in range(settings.repeat):
        for index, clients in enumerate(settings.clients):
            order = list(servers) if (repetition + index) % 2 == 0 else list(reversed(servers))
            for server in order:
                cell = run_cell(server, clients, repetition, settings, pinning)
                cells.append(cell)
                print(
                    f"{prefix} rep {repetition + 1}/{settings.repeat} {server.name:>{width}}"
                    f" c={clients:<3}"
                    f" {cell.conn_per_s:8.0f} conn/s  p99 {cell.p99_ms:7.2f} ms"
                    f"  errors {errors_text(cell.errors)}"
                    f"  server {cell.server_busy:4.0%} generator {cell.generator_busy:4.0%} busy",
                    file=sys.stderr,
                    flush=True,
                )
    return cells


def summarize(
    cells: Sequence[Cell], names: Sequence[str], clients: Sequence[int], reference: str
) -> list[Summary]:
    """Medians (errors: totals) per server and concurrency, with the ratio to `reference`."""
    rows: list[Summary] = []
    for count in clients:
        reference_rate: float | None = None
        for name in sorted(names, key=lambda n: n != reference):
            mine = [cell for cell in cells if cell.server == name and cell.clients == count]
            rates = [cell.conn_per_s for cell in mine]
            errors: dict[str, int] = {}
            for cell in mine:
                for kind, number in cell.errors.items():
                    errors[kind] = errors.get(kind, 0) + number
            rate = statistics.median(rates)
            if name == reference:
                reference_rate = rate
            rows.append(
                Summary(
                    server=name,
                    clients=count,
                    conn_per_s=rate,
                    conn_per_s_min=min(rates),
                    conn_per_s_max=max(rates),
                    p50_ms=statistics.median(cell.p50_ms for cell in mine),
                    p99_ms=statistics.median(cell.p99_ms for cell in mine),
                    max_ms=statistics.median(cell.max_ms for cell in mine),
                    errors=errors,
                    cpu_us_per_conn=statistics.median(cell.cpu_us_per_conn for cell in mine),
                    parent_us_per_conn=statistics.median(cell.parent_us_per_conn for cell in mine),
                    children_us_per_conn=statistics.median(
                        cell.children_us_per_conn for cell in mine
                    ),
                    server_busy=statistics.median(cell.server_busy for cell in mine),
                    generator_busy=statistics.median(cell.generator_busy for cell in mine),
                    ratio=rate / reference_rate if reference_rate else None,
                )
            )
    order = {name: index for index, name in enumerate(names)}
    return sorted(rows, key=lambda row: (row.clients, order[row.server]))


# --- reporting -----------------------------------------------------------------------------

TABLE_HEAD = (
    "server", "clients", "conn/s", "spread", "p50 ms", "p99 ms", "max ms", "errors r/r/t",
    "cpu us/conn (parent+children)", "srv busy", "gen busy", "ratio",
)  # fmt: skip
LEGEND = (
    "medians over repetitions; spread = min-max conn/s; errors = refused/reset/timeout totals;"
    "\ncpu = server CPU per completed connection (its own processes + the rest of its tree);"
    "\nsrv/gen busy = CPU time of the server / the load generator over the cell (100% = one CPU)"
)


def errors_text(errors: dict[str, int]) -> str:
    """Render error counts as refused/reset/timeout, then any other kind by name."""
    text = "/".join(str(errors.get(kind, 0)) for kind in ERROR_KINDS)
    others = {kind: n for kind, n in errors.items() if kind not in ERROR_KINDS and n}
    if others:
        text += " +" + ",".join(f"{kind}={n}" for kind, n in sorted(others.items()))
    return text


def row_texts(row: Summary, reference: str) -> tuple[str, ...]:
    """Render one summary row as the texts of TABLE_HEAD's columns."""
    return (
        row.server,
        str(row.clients),
        f"{row.conn_per_s:.0f}",
        f"{row.conn_per_s_min:.0f}-{row.conn_per_s_max:.0f}",
        f"{row.p50_ms:.2f}",
        f"{row.p99_ms:.2f}",
        f"{row.max_ms:.2f}",
        errors_text(row.errors),
        cpu_text(row),
        f"{row.server_busy:.0%}",
        f"{row.generator_busy:.0%}",
        "ref" if row.server == reference else ratio_text(row.ratio),
    )


def cpu_text(row: Summary) -> str:
    """Render CPU per connection: total (own processes + the rest of the tree)."""
    own, rest = row.parent_us_per_conn, row.children_us_per_conn
    return f"{row.cpu_us_per_conn:.0f} ({own:.0f}+{rest:.0f})"


def render(head: Sequence[str], body: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Align a plain-text table: the first `left` columns to the left, the others right.

    A row shorter than the head is a note: its last cell is printed as it is.
    """
    full = [line for line in body if len(line) == len(head)]
    widths = [max(len(line[i]) for line in [head, *full]) for i in range(len(head))]
    lines = []
    for line in [head, *body]:
        aligned = line if len(line) == len(head) else line[:-1]
        cells = [
            text.ljust(width) if index < left else text.rjust(width)
            for index, (text, width) in enumerate(zip(aligned, widths, strict=False))
        ]
        if len(line) != len(head):
            cells.append(line[-1])
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return lines


def table(rows: Sequence[Summary], reference: str, not_run: dict[str, str] | None = None) -> str:
    """Render the summary as a plain-text table, then one SERVER/`reference` ratio line each."""
    body: list[tuple[str, ...]] = [row_texts(row, reference) for row in rows]
    body += [(name, f"not run: {reason}") for name, reason in (not_run or {}).items()]
    lines = render(TABLE_HEAD, body)
    lines.append("")
    lines.extend(
        f"ratio {row.server}/{reference} conn/s at {row.clients:>2} clients:"
        f" {ratio_text(row.ratio)}"
        for row in rows
        if row.server != reference
    )
    return "\n".join(lines)


def ratio_text(ratio: float | None) -> str:
    """Render a ratio to the reference, or n/a."""
    return "n/a" if ratio is None else f"{ratio:.2f}"


def notes(rows: Sequence[Summary]) -> Iterator[str]:
    """Warnings a reader needs: a saturated generator."""
    for row in rows:
        if row.generator_busy > 0.9:
            yield (
                f"note: the load generator was {row.generator_busy:.0%} busy for {row.server}"
                f" at {row.clients} clients: that cell is limited by the generator"
            )


def choose_pinning(enabled: bool) -> Pinning:
    """Servers on the first allowed CPU, the generator on the second, if there are two."""
    allowed = sorted(os.sched_getaffinity(0))
    if not enabled or len(allowed) < 2:
        return Pinning(None, None, len(allowed))
    return Pinning(allowed[0], allowed[1], len(allowed))


def sockd_log_summary(path: Path) -> str:
    """Count sockd's events by name, and failed connections, from its JSON log."""
    if not path.exists():
        return "sockd log: none (sockd did not run)"
    events: dict[str, int] = {}
    failed = 0
    with path.open("rb") as log:
        for line in log:
            event = _json_event(line)
            name = str(event.get("event", "?"))
            events[name] = events.get(name, 0) + 1
            if name == "connection_closed" and event.get("exit_code") != 0:
                failed += 1
    counts = ", ".join(f"{name} {n}" for name, n in sorted(events.items()))
    return f"sockd log: {counts}; {failed} connections failed"


# --- the command line ----------------------------------------------------------------------


def build_parser(
    description: str | None, script: str, *, sockd_log: bool = True
) -> argparse.ArgumentParser:
    """Return the command-line parser of the benchmark at `script` (bench/NAME.py).

    With `sockd_log` false, it has no --sockd-log (a run of several sockd has several logs).
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=f"Run from the repository root: .venv/bin/python {script}",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per cell")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument(
        "--clients", default="1,8,64", help="comma-separated concurrent client counts"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="per-connection timeout, s")
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, 0.5 s per cell, 1 and 8 clients"
    )
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="auto",
        help="load generator: c (bench/loadgen.c, built with gcc), python, or auto:"
        " c when gcc builds it, else python",
    )
    parser.add_argument(
        "--build-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_BUILD_DIR,
        help="where the C client is built",
    )
    parser.add_argument("--json", metavar="PATH", type=Path, help="write raw results here")
    if sockd_log:
        parser.add_argument(
            "--sockd-log", metavar="PATH", type=Path, help="keep sockd's JSON log (stderr) here"
        )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    add_python_option(parser)
    return parser


def add_python_option(parser: argparse.ArgumentParser) -> None:
    """Add --python: the interpreter of sockd and of every Python reference (see use_python)."""
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="run sockd and every Python reference under this interpreter (default: the one"
        " running the benchmark); another one gets a virtualenv in the build directory, made"
        " once: sockd from this checkout, its dependencies pinned by .ci/constraints.txt",
    )


def settings_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """Validate the options into Settings (exits through argparse on bad values)."""
    if args.quick:
        return Settings(1, 0.5, (1, 8), args.timeout)
    try:
        clients = tuple(int(part) for part in args.clients.split(","))
    except ValueError:
        parser.error(f"--clients: expected numbers separated by commas, got {args.clients!r}")
    if args.repeat < 1 or args.duration <= 0 or args.timeout <= 0 or min(clients) < 1:
        parser.error("--repeat, --duration, --timeout and --clients must be positive")
    return Settings(args.repeat, args.duration, clients, args.timeout)


@dataclass(frozen=True)
class Bench:
    """One benchmark: the servers it compares, the reference, what each connection does."""

    script: str  # its file name, to sign error messages
    reference: str  # the server whose conn/s the ratios divide by
    # Starts every server in a working directory (sockd logs to SOCKD_LOG there), stops them.
    start_servers: Callable[[Path, Pinning], AbstractContextManager[list[Server]]]
    header: tuple[str, ...] = ()  # more lines for the header
    meta: dict[str, Any] = field(default_factory=dict)  # more facts for the JSON report
    not_run: dict[str, str] = field(default_factory=dict)  # servers left out, and why


@dataclass(frozen=True)
class Outcome:
    """What measuring one Bench gave."""

    cells: list[Cell]
    rows: list[Summary]
    log_line: str  # sockd_log_summary's
    executables: dict[str, list[str]]  # per server, what its processes ran (Server.executables)


def prepare(args: argparse.Namespace, settings: Settings) -> tuple[Settings, Pinning, str]:
    """Choose the servers' interpreter, pin this process, choose the load generator.

    Returns the settings, pinning and client text.

    Raises:
        BenchError: --client c, and the C client does not build; --python's does not run.

    """
    byte_compile(use_python(args.python, args.build_dir))
    pinning = choose_pinning(not args.no_pin)
    if pinning.generator_cpu is not None:
        # This process only waits during cells; keep it off the servers' CPU too.
        pin(0, pinning.generator_cpu)
    choice = choose_client(args.client, args.build_dir, pinning.generator_cpu)
    settings = dataclasses.replace(settings, client=choice.client, loadgen=choice.loadgen)
    return settings, pinning, choice.description


def run_meta(settings: Settings, pinning: Pinning, client: str) -> dict[str, Any]:
    """Return the facts every report starts with: interpreter, date, pinning, settings."""
    python = servers_python()
    return {
        "interpreter": python.executable,
        "interpreter_realpath": python.realpath,
        "python": f"{python.implementation} {python.version}",
        "interpreter_venv": python.venv,
        "sockd": importlib.metadata.version("sockd"),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pinning": asdict(pinning),
        "settings": asdict(settings),
        "client": client,
        "payload": PAYLOAD.decode(),
    }


def header_lines(meta: dict[str, Any], pinning: Pinning, settings: Settings) -> list[str]:
    """Return the header's lines about the interpreter, date, pinning, cells and client."""
    interpreter = f"{meta['interpreter']} -> {meta['interpreter_realpath']} ({meta['python']})"
    clients = ", ".join(map(str, settings.clients))
    cells = f"{settings.repeat} x {settings.duration:g} s, clients {clients}"
    return [
        f"interpreter: {interpreter}, sockd {meta['sockd']}",
        f"date: {meta['date']}",
        f"cpu pinning: {pinning.describe()}",
        f"cells: {cells}, per-connection timeout {settings.timeout:g} s",
        f"load generator: {meta['client']}",
    ]


def measure(
    bench: Bench,
    settings: Settings,
    pinning: Pinning,
    sockd_log: Path | None = None,
    label: str = "",
) -> Outcome:
    """Start the servers, run every cell, stop them; return the cells and their summary.

    Raises:
        BenchError: a server failed to start or died, or the load generator failed.

    """
    with tempfile.TemporaryDirectory(prefix="sockd-bench-") as tmp:
        with bench.start_servers(Path(tmp), pinning) as servers:
            executables = {server.name: server.executables() for server in servers}
            cells = run_all(servers, settings, pinning, label)
        log_path = Path(tmp) / SOCKD_LOG
        log_line = sockd_log_summary(log_path)
        if sockd_log and log_path.exists():
            sockd_log.write_bytes(log_path.read_bytes())
    names = [server.name for server in servers]
    rows = summarize(cells, names, settings.clients, bench.reference)
    return Outcome(cells, rows, log_line, executables)


def run(bench: Bench, args: argparse.Namespace, settings: Settings) -> int:
    """Run `bench`, print the table, write JSON if asked; return the exit status."""
    try:
        settings, pinning, client = prepare(args, settings)
    except BenchError as exc:
        print(f"{bench.script}: {exc}", file=sys.stderr)
        return 1
    meta = run_meta(settings, pinning, client) | bench.meta
    lines = header_lines(meta, pinning, settings)
    print(lines[0])
    for line in [*bench.header, *lines[1:]]:
        print(line)
    try:
        outcome = measure(bench, settings, pinning, args.sockd_log)
    except BenchError as exc:
        print(f"{bench.script}: {exc}", file=sys.stderr)
        return 1
    print()
    print(LEGEND)
    print()
    print(table(outcome.rows, bench.reference, bench.not_run))
    for line in notes(outcome.rows):
        print(line)
    print(outcome.log_line)
    if args.json:
        report = {
            "meta": meta,
            "cells": [asdict(cell) for cell in outcome.cells],
            "summary": [asdict(row) for row in outcome.rows],
            "executables": outcome.executables,
            "not_run": bench.not_run,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
