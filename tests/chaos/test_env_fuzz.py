"""Bad input: systemd's environment variables fuzzed, for real `sockd run` processes.

Each case starts sockd with hostile LISTEN_*, NOTIFY_SOCKET or WATCHDOG_*
values (and JOURNAL_STREAM; hand-picked, and generated from a fixed seed), with descriptor 3 as
systemd would leave it (see harness.as_listener). Whatever the values,
sockd either refuses them with one JSON line and its documented exit code
(78: the environment systemd gave is wrong), or starts, serves, and stops
cleanly on SIGTERM. Never a traceback, a crash (70) or a hang. Bounded:
each case takes well under a second (about 0.3 s of CPU), under 30 s in all.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

import pytest
from harness import as_listener, exchange

if TYPE_CHECKING:
    from pathlib import Path

WAIT = 10.0  # for one case to be ready or to exit
REFUSED = 78  # EX_CONFIG: what sockd exits with for a bad environment
# Values a careless parser trips on: signs, blanks, other scripts' digits, huge
# numbers (int() refuses more than 4,300 digits), separators, non-UTF-8 bytes.
NUMBERS = [
    b"",
    b"0",
    b"-1",
    b"+1",
    b" 1",
    b"1_0",
    "\u00b2".encode(),  # a digit to str.isdigit(), not to int()
    "\u0661".encode(),  # a digit to int() too
    b"\xff",  # not UTF-8
    b"9" * 5000,
    b"300000000",
    b"18446744073709551616",
]


class Case(NamedTuple):
    """One environment: the variables set, and what descriptor 3 is."""

    name: str
    env: dict[bytes, bytes]
    fd3: str = "tcp"


def listen_cases() -> list[Case]:
    cases = []
    for value in NUMBERS:
        pid = {b"LISTEN_PID": value, b"LISTEN_FDS": b"1"}
        cases.append(Case(f"LISTEN_PID={value[:20]!r}", pid))
        ours = {b"LISTEN_PID": b"$PID", b"LISTEN_FDS": value}
        cases.append(Case(f"LISTEN_FDS={value[:20]!r}", ours))
    ours = {b"LISTEN_PID": b"$PID", b"LISTEN_FDS": b"1"}
    names = [b"", b":", b"a:b", b"echo", b"\xff\xfe", "\u00e9".encode(), b"x" * 100_000]
    cases += [Case(f"LISTEN_FDNAMES={n[:20]!r}", {**ours, b"LISTEN_FDNAMES": n}) for n in names]
    cases += [
        Case("LISTEN_FDS=1, nothing at fd 3", ours, "none"),
        Case("LISTEN_FDS=1, a file at fd 3", ours, "file"),
        Case("LISTEN_FDS=1, a UDP socket at fd 3", ours, "udp"),
        Case("LISTEN_FDS=2, one socket", {**ours, b"LISTEN_FDS": b"2"}),
        Case("LISTEN_FDS without LISTEN_PID", {b"LISTEN_FDS": b"1"}),
        Case("LISTEN_PID of another process", {b"LISTEN_PID": b"1", b"LISTEN_FDS": b"1"}),
    ]
    return cases


def notify_cases(tmp: str) -> list[Case]:
    addresses = [
        b"notify.sock",  # relative
        b"@sockd-fuzz-nobody-listens",  # abstract
        b"@",
        b"/nonexistent/notify.sock",
        b"/" + b"n" * 200,  # longer than sun_path
        f"{tmp}/regular-file".encode(),
        b"/dev/null",
        b"vsock:2:1234",
        b"/tmp/\xff\xfe",
    ]
    return [Case(f"NOTIFY_SOCKET={a[:30]!r}", {b"NOTIFY_SOCKET": a}, "none") for a in addresses]


def watchdog_cases(tmp: str) -> list[Case]:
    notify = f"{tmp}/notify.sock".encode()
    cases = [
        Case(f"WATCHDOG_USEC={v[:20]!r}", {b"NOTIFY_SOCKET": notify, b"WATCHDOG_USEC": v}, "none")
        for v in [b"1", b"-1", "\u00b2".encode(), b"\xff", b"9" * 5000]
    ]
    for value in [b"$PID", b"0$PID", "\u00b2".encode(), b"9" * 5000]:
        env = {b"NOTIFY_SOCKET": notify, b"WATCHDOG_USEC": b"1000000", b"WATCHDOG_PID": value}
        cases.append(Case(f"WATCHDOG_PID={value[:20]!r}", env, "none"))
    return cases


def journal_cases() -> list[Case]:
    values = [b"\xc2\xb2:1", b"1:" + b"9" * 5000, b"\xff:\xfe"]
    return [Case(f"JOURNAL_STREAM={v[:20]!r}", {b"JOURNAL_STREAM": v}, "none") for v in values]


def generated_cases(count: int, seed: int = 11) -> list[Case]:
    """Random garbage from a fixed seed: the same cases at every run."""
    rng = random.Random(seed)  # noqa: S311 (garbage, not secrets)
    pieces = [b"0", b"1", b"9", b":", b"-", b" ", b"@", b"/", b"\xff", "\u00b2".encode(), b"$PID"]
    names = [b"LISTEN_PID", b"LISTEN_FDS", b"LISTEN_FDNAMES", b"WATCHDOG_USEC", b"WATCHDOG_PID"]
    cases = []
    for index in range(count):
        env = {b"LISTEN_PID": b"$PID", b"LISTEN_FDS": b"1"}
        for name in rng.sample(names, rng.randint(1, 3)):
            env[name] = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        cases.append(Case(f"generated-{index}", env, rng.choice(["tcp", "none", "tcp"])))
    return cases


CASES = [
    *listen_cases(),
    *notify_cases("{tmp}"),
    *watchdog_cases("{tmp}"),
    *journal_cases(),
    *generated_cases(6),
]


def clean_environment() -> dict[bytes, bytes]:
    skip = (b"NOTIFY_SOCKET", b"LISTEN_", b"WATCHDOG_", b"JOURNAL_STREAM")
    return {k: v for k, v in os.environb.items() if not k.startswith(skip)}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_environment_is_refused_in_one_line_or_served(case: Case, tmp_path: Path) -> None:
    """The environment is refused in one line (exit 78), or sockd serves and stops cleanly."""
    tmp = str(tmp_path).encode()
    env = clean_environment()
    env |= {key: value.replace(b"{tmp}", tmp) for key, value in case.env.items()}
    (tmp_path / "regular-file").write_text("not a socket\n")
    log_path = tmp_path / "sockd.log"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
        log_path.open("wb") as log,
    ):
        notify.bind(str(tmp_path / "notify.sock"))
        notify.setblocking(False)
        command = [sys.executable, "-m", "sockd", "run", "--handler", "echo"]
        command += ["--listen", "127.0.0.1:0", "--log-format", "json"]
        process = subprocess.Popen(
            [*as_listener(case.fd3), *command],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            events = _ready_or_exit(process, log_path, notify)
            if process.poll() is None:
                _serves_and_stops(process, events, log_path, notify)
            else:
                _refused_in_one_line(process, log_path)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
    text = log_path.read_bytes().decode(errors="replace")
    assert "Traceback" not in text
    for line in text.splitlines():
        event = json.loads(line)  # every line is JSON: nothing else reaches the log
        assert event["level"] != "critical", line


def _events(log_path: Path) -> list[dict[str, object]]:
    events = []
    for line in log_path.read_bytes().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _drain(notify: socket.socket) -> None:
    """Read what sockd told its NOTIFY_SOCKET, as systemd does (a full queue would block it)."""
    with contextlib.suppress(BlockingIOError):
        while True:
            notify.recv(4096)


def _ready_or_exit(
    process: subprocess.Popen[bytes], log_path: Path, notify: socket.socket
) -> list[dict[str, object]]:
    deadline = time.monotonic() + WAIT
    while process.poll() is None:
        _drain(notify)
        events = _events(log_path)
        if any(event["event"] == "ready" for event in events):
            return events
        assert time.monotonic() < deadline, "neither ready nor exited"
        time.sleep(0.01)
    return _events(log_path)


def _serves_and_stops(
    process: subprocess.Popen[bytes],
    events: list[dict[str, object]],
    log_path: Path,
    notify: socket.socket,
) -> None:
    (starting,) = [event for event in events if event["event"] == "starting"]
    listeners: list[dict[str, str]] = starting["listeners"]  # type: ignore[assignment]
    assert exchange(listeners[0]["address"], b"fuzz") == b"fuzz"
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + WAIT
    while process.poll() is None:
        _drain(notify)
        assert time.monotonic() < deadline, "not stopped"
        time.sleep(0.01)
    assert process.returncode == 0, log_path.read_text(errors="replace")


def _refused_in_one_line(process: subprocess.Popen[bytes], log_path: Path) -> None:
    lines = log_path.read_bytes().splitlines()
    assert len(lines) == 1, lines
    failure = json.loads(lines[0])
    assert failure["event"] == "startup_failed"
    assert failure["exit_code"] == process.returncode == REFUSED, failure
    assert str(failure["error"]).startswith(("environment: ", "socket from systemd ")), failure
