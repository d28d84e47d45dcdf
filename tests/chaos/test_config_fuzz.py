"""Config fuzzer: every key with bad values, through `sockd check` and `sockd run` as processes.

For every key of `[daemon]` and `[[service]]`: the edges of its range and
just past them, a wrong type, nan and infinity, huge values (a 400-digit
integer, a 1 MiB string, a 200,000-entry list), unicode (non-ASCII, control
characters, NUL) and empty; and for the file itself: not UTF-8, an integer
Python will not convert, deep nesting, too many services, overlapping
addresses. About 380 cases.

Every case goes through `sockd check`: never a traceback; either exit 0 with
an effective config that is valid TOML, or exactly one printable line naming
the key, exit 78. Some also go through `sockd run`: the cases of ALWAYS_RUN,
and a deterministic sample (by a hash of the case's id) of one accepted case
in ACCEPTED_SAMPLE and one rejected in REJECTED_SAMPLE. An accepted case must
start (READY=1; a service without `listen` gets a socket as systemd passes
it), serve one connection with no error event, and stop with exit 0 on
SIGTERM; a rejected one must print the same line as its one JSON line and
exit with the same code. With `--soak` every case goes through `run` too
(about 3 minutes).

The cases run in parallel from one module fixture, in order; each has a test
id of its own and waits for its own outcome only; one summary line (cases,
accepted, rejected, run, seconds) is printed at the end. About 100 s of CPU
(each `sockd check` costs 0.15 s, mostly imports): 80 s on two cores shared
with other work, about 50 s on two idle ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import grp
import json
import math
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from harness import Notifications, connect

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

TIMEOUT = 30.0  # seconds any one process may take
# `sockd run` gets one accepted case in ACCEPTED_SAMPLE and one rejected case in
# REJECTED_SAMPLE, chosen by a hash of the case's id (the same ones every time).
ACCEPTED_SAMPLE = 4
REJECTED_SAMPLE = 24
# ...and these always: the values of issue 11's defect 7 at the edges of their new ranges.
ALWAYS_RUN = {
    "service.burst=max",  # a huge burst overflowed at the first connection
    "service.idle_timeout=max",  # inf made every connection a handler_error
    "service.rate=min",
    "daemon.stop_timeout=max",
    "service.deny=100k-addresses",  # the forker gets the whole list in one record
    "service.allow=all-v6",
    "service.listen=empty",  # valid with a socket from systemd
    "service.listen=unix-unicode",
    "service.refusal=nul-del",
}
WORKERS = (os.cpu_count() or 1) + 1
ROOT = os.geteuid() == 0
ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(os.getgid()).gr_name
TMP = "@TMP@"  # replaced by the directory of the case's files


class Raw(str):
    """TOML text written as it is (a datetime, say)."""

    __slots__ = ()


def toml(value: Any) -> str:
    """Render a value as TOML, whatever it holds (nan, NUL, huge integers, nested tables)."""
    if isinstance(value, Raw):
        text = str(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        escaped = (f"\\u{ord(c):04x}" if ord(c) < 32 or c in '\x7f"\\' else c for c in value)
        text = '"' + "".join(escaped) + '"'
    elif isinstance(value, list):
        text = "[" + ", ".join(toml(item) for item in value) + "]"
    else:
        text = "{" + ", ".join(f"{toml(str(k))} = {toml(v)}" for k, v in value.items()) + "}"
    return text


ECHO: dict[str, Any] = {"name": "e", "handler": "echo", "listen": ["127.0.0.1:0"]}
PROGRAM: dict[str, Any] = {"name": "e", "exec": ["/bin/cat"], "listen": ["127.0.0.1:0"]}


@dataclasses.dataclass(frozen=True)
class Key:
    """A key to fuzz: where it is, the service around it, its kind, values of its own."""

    table: str  # "daemon" or "service"
    name: str
    kind: str  # int, number, string, list, table, bool
    own: tuple[tuple[str, Any], ...]  # (label, value): edges of its range, valid and not
    service: tuple[tuple[str, Any], ...] = tuple(ECHO.items())
    also: tuple[str, ...] = ()  # other keys an error may name (a rule that spans two)

    def names(self) -> tuple[str, ...]:
        """How a message names this key (or the other key of a rule that spans two)."""
        if self.table == "daemon":
            return (f"daemon.{self.name}", *self.also)
        return (f"service 'e': {self.name}", f"service[0].{self.name}", *self.also)


def _number(low: float, high: float, *, integer: bool) -> tuple[tuple[str, Any], ...]:
    """Return the edges of a range, and values just past them."""
    step = 1 if integer else 0.0005
    return (("min", low), ("max", high), ("below-min", low - step), ("above-max", high + step))


def _int(low: int, high: int) -> tuple[tuple[str, Any], ...]:
    return _number(low, high, integer=True)


RATED = (*ECHO.items(), ("rate", 1))
SOURCE_RATED = (*ECHO.items(), ("per_source_rate", 1))
POOLED = (*ECHO.items(), ("workers", 2))
PROXIED = (*ECHO.items(), ("proxy_protocol", True))
RUN_AS = (*PROGRAM.items(), ("user", "nobody" if ROOT else ME))
NAMES = (("nobody", "nobody"), ("me", ME), ("no-such", "no-such-user-x"), ("dash", "-"))
GROUPS = (("nogroup", "nogroup"), ("mine", MY_GROUP), ("no-such", "no-such-group-x"))

KEYS = (
    Key("daemon", "stop_timeout", "number", (*_number(0, 2_592_000, integer=False), ("half", 0.5))),
    Key("daemon", "max_children", "int", _int(1, 65_536)),
    Key("daemon", "renew_forker_after", "int", _int(0, 65_536)),
    Key("daemon", "user", "string", NAMES if ROOT else NAMES[1:]),
    Key("daemon", "group", "string", GROUPS if ROOT else GROUPS[1:]),
    Key(
        "daemon",
        "pythonpath",
        "list",
        (
            ("here", ["."]),
            ("tmp", [TMP]),
            ("missing", ["/nonexistent/é\u0007"]),
            ("65-entries", ["."] * 65),
            ("4097-bytes", ["/" + "d" * 4096]),
            ("number", [1]),
        ),
    ),
    Key(
        "service",
        "name",
        "string",
        (("all-kinds", "a.b@c-d_1"), ("64", "n" * 64), ("65", "n" * 65), ("space", "a b")),
    ),
    Key(
        "service",
        "handler",
        "string",
        (
            ("discard", "discard"),
            ("base-class", "socketserver:BaseRequestHandler"),
            ("no-class", "socketserver:Nope"),
            ("not-handler", "os:path"),
            ("relative", ".x:Y"),
            ("colon", ":"),
            ("no-module", "no_such_module_x:H"),
            ("257-bytes", "m" * 250 + ":Handler"),
        ),
        service=tuple((key, value) for key, value in ECHO.items() if key != "handler"),
    ),
    Key(
        "service",
        "exec",
        "list",
        (
            ("on-path", ["cat", "-u"]),
            ("relative", ["bin/cat"]),
            ("missing", ["/nonexistent"]),
            ("not-executable", ["/etc/passwd"]),
            ("directory", ["/"]),
            ("empty-name", [""]),
            ("257-items", ["/bin/cat"] + ["x"] * 256),
            ("65-KiB", ["/bin/cat", "x" * 65_536]),
        ),
        service=tuple(PROGRAM.items())[:1] + tuple(PROGRAM.items())[2:],
        also=("service 'e': handler",),
    ),
    Key(
        "service",
        "env",
        "table",
        (
            ("valid", {"LANG": "C.UTF-8", "A_1": "é\u001b"}),
            ("digit-first", {"1A": "x"}),
            ("reserved", {"NOTIFY_SOCKET": "x"}),
            ("listen", {"LISTEN_FDS": "1"}),
            ("nul-value", {"A": "a\u0000"}),
            ("int-value", {"A": 1}),
            ("nested", {"A": {"B": "1"}}),
            ("odd-name", {"A\nB": "1"}),
            ("empty-name", {"": "1"}),
            ("257-vars", {f"V{n}": "1" for n in range(257)}),
            ("1MB-value", {"A": "x" * (1 << 20)}),
        ),
        service=tuple(PROGRAM.items()),
    ),
    Key("service", "user", "string", NAMES if ROOT else NAMES[1:], service=tuple(PROGRAM.items())),
    Key("service", "group", "string", GROUPS if ROOT else GROUPS[1:], service=RUN_AS),
    Key(
        "service",
        "listen",
        "list",
        (
            ("v4", ["127.0.0.1:0"]),
            ("unix", [f"unix:{TMP}/s.sock"]),
            ("unix-unicode", [f"unix:{TMP}/é\u001b\n.sock"]),
            ("two-unix", [f"unix:{TMP}/a.sock", f"unix:{TMP}//a.sock"]),
            ("unix-file", [f"unix:{TMP}/case.toml"]),
            ("unix-relative", ["unix:s.sock"]),
            ("unix-108-bytes", ["unix:/" + "u" * 107]),
            ("unresolvable", ["999.1.1.1:80"]),
            ("empty-label", ["a..b:80"]),
            ("port-65536", ["127.0.0.1:65536"]),
            ("port-superscript", ["127.0.0.1:\u00b2"]),
            ("port-negative", ["127.0.0.1:-1"]),
            ("scoped", ["[fe80::1%lo]:80"]),
            ("v4-mapped", ["[::ffff:127.0.0.1]:80"]),
            ("unbracketed-v6", ["::1:80"]),
            ("wildcard-overlap", ["127.0.0.1:7", "0.0.0.0:7"]),
            ("65-entries", ["127.0.0.1:0"] * 65),
        ),
    ),
    Key("service", "max_children", "int", _int(1, 65_536)),
    Key(
        "service",
        "allow",
        "list",
        (
            ("v4", ["127.0.0.1"]),
            ("all-v6", ["::/0", "10.0.0.0/8"]),
            ("mapped", ["::ffff:127.0.0.1"]),
            ("scoped", ["fe80::1%eth0"]),
            ("prefix-33", ["1.2.3.4/33"]),
            ("word", ["anywhere"]),
            ("number", [1]),
            ("200k-addresses", ["10.0.0.1"] * 200_000),
        ),
    ),
    Key(
        "service",
        "deny",
        "list",
        (
            ("v4", ["127.0.0.2"]),
            ("100k-addresses", ["10.0.0.1"] * 100_000),
            ("100001-addresses", ["10.0.0.1"] * 100_001),
            ("scoped", ["fe80::1%eth0"]),
        ),
    ),
    Key(
        "service",
        "unix_mode",
        "int",
        (*_int(0, 0o777), ("decimal-777", 777)),
        service=(("name", "e"), ("handler", "echo"), ("listen", [f"unix:{TMP}/m.sock"])),
    ),
    Key("service", "max_duration", "number", _number(0.001, 2_592_000, integer=False)),
    Key("service", "idle_timeout", "number", _number(0.001, 2_592_000, integer=False)),
    Key(
        "service",
        "refusal",
        "string",
        (
            ("busy", "busy\r\n"),
            ("nul-del", "\u0000\u007f"),
            ("512-bytes", "é" * 256),
            ("513-bytes", "é" * 256 + "x"),
        ),
    ),
    Key("service", "per_source", "int", _int(1, 65_536)),
    Key("service", "source_prefix_v4", "int", _int(0, 32)),
    Key("service", "source_prefix_v6", "int", _int(0, 128)),
    Key("service", "rate", "number", _number(0.001, 1_000_000, integer=False)),
    Key("service", "burst", "int", _int(1, 1_000_000), service=RATED),
    Key("service", "per_source_rate", "number", _number(0.001, 1_000_000, integer=False)),
    Key("service", "per_source_burst", "int", _int(1, 1_000_000), service=SOURCE_RATED),
    Key("service", "workers", "int", _int(1, 1024), also=("daemon.max_children",)),
    Key(
        "service",
        "max_connections_per_child",
        "int",
        _int(1, 1_000_000_000),
        service=POOLED,
    ),
    Key("service", "proxy_protocol", "bool", (("true", True), ("false", False))),
    Key(
        "service",
        "wait",
        "bool",
        (("true", True), ("false", False)),
        service=tuple(PROGRAM.items()),
    ),
    Key(
        "service",
        "proxy_trusted",
        "list",
        (
            ("v6", ["::1", "10.0.0.0/8"]),
            ("empty", []),
            ("scoped", ["fe80::1%eth0"]),
            ("word", ["haproxy"]),
            ("100001-addresses", ["10.0.0.1"] * 100_001),
        ),
        service=PROXIED,
    ),
    Key(
        "service",
        "proxy_timeout",
        "number",
        _number(0.001, 300, integer=False),
        service=PROXIED,
    ),
)


_WRONG: dict[
    str, list[tuple[str, Any]]
] = {  # one value of another TOML type, picked by the key's place in KEYS
    "int": [("bool", True), ("string", "7"), ("float", 1.5), ("datetime", Raw("1979-05-27"))],
    "number": [("bool", False), ("string", "1.5"), ("table", {"a": 1}), ("list", [1])],
    "string": [("integer", 7), ("bool", True), ("list", ["x"]), ("float", 0.5)],
    "list": [("string", "x"), ("table", {"a": "x"}), ("integer", 0)],
    "table": [("list", ["A=1"]), ("string", "A=1")],
    "bool": [("integer", 1), ("string", "true"), ("list", [True])],
}


def _generic(index: int, key: Key) -> list[tuple[str, Any]]:
    """Values every key gets: a wrong type, nan/inf, huge, unicode, empty.

    The sign of inf and of the 400-digit integer, and which wrong type, vary
    from key to key, to cover more with fewer processes. To a key that takes
    no string, a string is a wrong type whatever it holds: it gets one, huge
    and unicode at once (a table's own values are huge: see env).
    """
    wrong = _WRONG[key.kind]
    sign = -1 if index % 2 else 1
    values: list[tuple[str, Any]] = [wrong[index % len(wrong)], ("nan", math.nan)]
    values += [("inf", sign * math.inf), ("400-digits", sign * 10**400)]
    if key.kind == "list":
        values += [("1MB-string", "x" * (1 << 20)), ("200k-list", ["x"] * 200_000)]
        values += [("unicode-item", ["é名"]), ("control-item", ["\u001b[31m\r\n"])]
        values += [("nul-item", ["a\u0000b"]), ("empty-item", [""]), ("empty", [])]
    elif key.kind == "string":
        values += [("1MB-string", "x" * (1 << 20)), ("unicode", "é名")]
        values += [("control", "\u001b[31m\r\n"), ("nul", "a\u0000b"), ("empty", "")]
    elif key.kind == "table":
        values += [("unicode-name", {"é": "x"}), ("empty", {})]
    else:
        values += [("1MB-unicode-string", "é\u001b\u0000" * (1 << 18)), ("empty", "")]
    return values


@dataclasses.dataclass(frozen=True)
class Case:
    """One config file to try."""

    id: str
    names: tuple[str, ...]  # an error must name one of these
    render: Callable[[], bytes]  # the file's bytes, with TMP for its directory
    root: bool = False  # starting it needs root (a program run as another user)


def _service_text(pairs: tuple[tuple[str, Any], ...]) -> str:
    return "[[service]]\n" + "".join(f"{key} = {toml(value)}\n" for key, value in pairs)


def _key_case(key: Key, label: str, value: Any) -> Case:
    def render() -> bytes:
        if key.table == "daemon":
            text = f"[daemon]\n{key.name} = {toml(value)}\n" + _service_text(tuple(ECHO.items()))
        else:
            pairs = (*((k, v) for k, v in key.service if k != key.name), (key.name, value))
            text = _service_text(pairs)
        return text.encode()

    root = key.table == "service" and key.name in ("user", "group")  # require_root
    return Case(f"{key.table}.{key.name}={label}", key.names(), render, root)


def _file_cases() -> list[Case]:
    """Files whose trouble is not one key's value."""
    service = _service_text(tuple(ECHO.items()))

    def fixed(data: bytes) -> Callable[[], bytes]:
        return lambda: data

    return [
        Case("file=empty", ("no [[service]] defined",), fixed(b"")),
        Case("file=not-utf8", ("invalid TOML: not UTF-8",), fixed(service.encode() + b"# \xff\n")),
        Case("file=not-toml", ("invalid TOML",), fixed(b"[[service]\n")),
        Case(
            "file=5000-digits",
            ("invalid TOML: an integer of more than",),
            fixed(b"[daemon]\nmax_children = " + b"9" * 5000 + b"\n" + service.encode()),
        ),
        Case(
            "file=deep-nesting",
            ("invalid TOML: arrays or tables nested too deeply",),
            fixed(b"x = " + b"[" * 50_000 + b"]" * 50_000 + b"\n" + service.encode()),
        ),
        Case(
            "file=unknown-top-key",
            ("colour: unknown key",),
            fixed(b"colour = 1\n" + service.encode()),
        ),
        Case(
            "file=odd-top-key",
            ("'\\x1b[31m': unknown key",),
            fixed(b'"\\u001b[31m" = 1\n' + service.encode()),
        ),
        Case(
            "file=daemon-not-table",
            ("daemon: expected a table",),
            fixed(b"daemon = 1\n" + service.encode()),
        ),
        Case("file=service-not-list", ("service: expected a list",), fixed(b"service = 1\n")),
        Case(
            "file=service-not-table",
            ("service[0]: expected a [[service]] table",),
            fixed(b"service = [1]\n"),
        ),
        Case("file=257-services", ("service: at most 256 entries",), fixed(service.encode() * 257)),
        Case("file=duplicate-name", ("name: duplicate service name",), fixed(service.encode() * 2)),
        Case(
            "file=same-port-twice",
            ("listen[0]: 127.0.0.1:7 overlaps",),
            fixed(
                service.replace('"e"', '"a"').replace(":0", ":7").encode()
                + service.replace(":0", ":7").encode()
            ),
        ),
        Case(
            "file=pooled-past-max-children",
            ("daemon.max_children: 4 leaves no room beside 4 workers",),
            fixed(
                b"[daemon]\nmax_children = 4\n"
                + _service_text((*ECHO.items(), ("workers", 4))).encode()
            ),
        ),
        Case(
            "file=wait-with-handler",
            ("service 'e': wait: hands the listening socket to a program",),
            fixed(_service_text((*ECHO.items(), ("wait", True))).encode()),
        ),
        Case(
            "file=wait-with-allow",
            ("service 'e': allow: not with wait = true",),
            fixed(_service_text((*PROGRAM.items(), ("wait", True), ("allow", ["::1"]))).encode()),
        ),
        Case(
            "file=proxy-timeout-alone",
            ("proxy_timeout: goes with proxy_protocol = true",),
            fixed(_service_text((*ECHO.items(), ("proxy_timeout", 3))).encode()),
        ),
    ]


def all_cases() -> list[Case]:
    """Return the whole matrix, in a fixed order."""
    cases = []
    for index, key in enumerate(KEYS):
        for label, value in [*key.own, *_generic(index, key)]:
            cases.append(_key_case(key, label, value))
    return cases + _file_cases()


CASES = all_cases()


@dataclasses.dataclass
class Outcome:
    """What check and run did with a case."""

    check_code: int
    check_out: str
    check_err: str
    run_code: int | None = None  # None: not run
    run_lines: list[str] = dataclasses.field(default_factory=list)
    run_problem: str | None = None  # what went wrong starting, serving or stopping it


def _environ() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_", "JOURNAL_STREAM"))
    }


def _sockd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sockd", *args]


def _check(path: Path) -> Outcome:
    done = subprocess.run(
        _sockd("check", "--config", str(path)),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
        env=_environ(),
    )
    return Outcome(
        done.returncode,
        done.stdout.decode(errors="replace"),
        done.stderr.decode(errors="replace"),
    )


def _run_rejected(path: Path, outcome: Outcome) -> None:
    done = subprocess.run(
        _sockd("run", "--config", str(path), "--log-format", "json"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=TIMEOUT,
        check=False,
        env=_environ(),
    )
    outcome.run_code = done.returncode
    outcome.run_lines = done.stdout.decode(errors="replace").splitlines()


# What systemd does to pass a socket: as fd 3, with LISTEN_FDS and LISTEN_PID.
_ACTIVATE = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.close(int(sys.argv[1]))
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def _run_accepted(path: Path, outcome: Outcome) -> None:
    """Start it, wait for READY=1, serve one connection, stop it with SIGTERM.

    A service without `listen` is valid for the socket systemd may pass: it is
    given one, as systemd does (fd 3, LISTEN_FDS=1, LISTEN_PID its own pid).
    """
    log_path = path.with_suffix(".log")
    services = tomllib.loads(outcome.check_out)["service"]
    with contextlib.ExitStack() as stack:
        notify = stack.enter_context(Notifications(path.with_suffix(".notify")))
        log = stack.enter_context(log_path.open("wb"))
        command = _sockd("run", "--config", str(path), "--log-format", "json")
        passed: tuple[int, ...] = ()
        if not all(service["listen"] for service in services):
            listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
            passed = (listener.fileno(),)
            command = [sys.executable, "-c", _ACTIVATE, str(passed[0]), *command]
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env={**_environ(), "NOTIFY_SOCKET": str(notify.path)},
            start_new_session=True,
            pass_fds=passed,
        )
        try:
            outcome.run_problem = _serve_and_stop(process, notify, log_path)
            outcome.run_code = process.returncode
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    outcome.run_lines = log_path.read_text(errors="replace").splitlines()


def _serve_and_stop(
    process: subprocess.Popen[bytes], notify: Notifications, log: Path
) -> str | None:
    deadline = time.monotonic() + TIMEOUT
    while not any("READY=1" in message.split("\n") for message in notify.poll()):
        if process.poll() is not None:
            return f"exited {process.returncode} before READY=1"
        if time.monotonic() > deadline:
            return "no READY=1"
        time.sleep(0.02)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    listeners = [event["listeners"] for event in events if event.get("event") == "starting"]
    address = listeners[0][0]["address"]
    with contextlib.suppress(OSError), connect(address, timeout=5) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass
    time.sleep(0.2)  # the connection's events reach the log
    if process.poll() is not None:
        return f"exited {process.returncode} after one connection"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        return "did not stop on SIGTERM"
    return None if process.returncode == 0 else f"stopped with exit {process.returncode}"


def _sampled(case: Case, every: int) -> bool:
    return case.id in ALWAYS_RUN or zlib.crc32(case.id.encode()) % every == 0


def _try(case: Case, directory: Path, index: int, *, everything: bool) -> Outcome:
    case_dir = directory / f"c{index}"
    case_dir.mkdir()
    path = case_dir / "case.toml"
    path.write_bytes(case.render().replace(TMP.encode(), str(case_dir).encode()))
    outcome = _check(path)
    if outcome.check_code == 0:
        if (everything or _sampled(case, ACCEPTED_SAMPLE)) and (ROOT or not case.root):
            _run_accepted(path, outcome)
    elif everything or _sampled(case, REJECTED_SAMPLE):
        _run_rejected(path, outcome)
    with contextlib.suppress(OSError):
        path.unlink()  # the big ones
    return outcome


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """Start trying every selected case, in parallel and in order; at the end, one summary line.

    Each test waits for its own case only, so no test waits for the whole matrix.
    """
    selected = set()
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if isinstance(params.get("case"), Case):  # not another module's
            selected.add(params["case"].id)
    directory = tmp_path_factory.mktemp("fuzz", numbered=True)
    soak = bool(request.config.getoption("--soak"))  # every case through run too
    started = time.monotonic()
    pool = ThreadPoolExecutor(WORKERS)
    futures = {
        case.id: pool.submit(_try, case, directory, index, everything=soak)
        for index, case in enumerate(CASES)
        if case.id in selected
    }
    try:
        yield futures
    finally:
        pool.shutdown(cancel_futures=True)
    done = [f.result() for f in futures.values() if not f.cancelled() and f.exception() is None]
    accepted = sum(1 for outcome in done if outcome.check_code == 0)
    run = sum(1 for outcome in done if outcome.run_code is not None)
    summary = (
        f"config fuzz: {len(done)} cases through sockd check ({accepted} accepted,"
        f" {len(done) - accepted} rejected), {run} of them through sockd run,"
        f" in {time.monotonic() - started:.1f} s"
    )
    plugins = request.config.pluginmanager
    capture, reporter = plugins.get_plugin("capturemanager"), plugins.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(summary)


def _message(outcome: Outcome) -> str:
    line = outcome.check_err.rstrip("\n")
    assert line.startswith("sockd: "), outcome.check_err[:500]
    return line.removeprefix("sockd: ")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_config_is_refused_in_one_line_or_starts(
    case: Case, outcomes: dict[str, Future[Outcome]]
) -> None:
    """check: no traceback, 0 or one line naming the key (78); run agrees, or starts and stops."""
    outcome = outcomes[case.id].result()
    everything = outcome.check_out + outcome.check_err + "\n".join(outcome.run_lines)
    assert "Traceback" not in everything, everything[-3000:]
    assert outcome.check_code in (0, 78), (outcome.check_code, outcome.check_err[-2000:])
    if outcome.check_code == 0:
        assert outcome.check_err == ""
        tomllib.loads(outcome.check_out)  # the effective config is valid TOML
        if outcome.run_code is None:
            return
        assert outcome.run_problem is None, (outcome.run_problem, outcome.run_lines[-20:])
        events = [json.loads(line) for line in outcome.run_lines]
        bad = [event for event in events if event["level"] in ("error", "critical")]
        assert not bad, bad
        assert events[-1]["event"] == "stopped"
        return
    assert outcome.check_out == ""
    assert outcome.check_err.count("\n") == 1, outcome.check_err[:2000]
    message = _message(outcome)
    assert message.isprintable()
    assert len(message) < 1000, message[:2000]
    assert any(name in message for name in case.names), (message, case.names)
    if outcome.run_code is None:
        return
    assert outcome.run_code == outcome.check_code
    assert len(outcome.run_lines) == 1, outcome.run_lines[:20]
    (event,) = (json.loads(line) for line in outcome.run_lines)
    assert (event["event"], event["error"], event["exit_code"]) == (
        "startup_failed",
        message,
        outcome.check_code,
    )
