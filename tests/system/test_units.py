"""sockd under a real systemd: activation, readiness, journal, reload, restart, stop, instances."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from harness import recv_all, wait_until
from nspawn import HANDLERS_DIR

if TYPE_CHECKING:
    from nspawn import Container

CONFIG = "/etc/sockd/sockd.toml"
CLIENTS = 4
STATUS = re.compile(r"\d+ active, \d+ served, \d+ denied, \d+ errors")
DAYTIME = re.compile(rb"\w+, \w+ \d+, \d{4} \d\d:\d\d:\d\d-\w+\r\n")


def echo(machine: Container, line: bytes = b"hi\n", port: int = 7) -> bytes:
    """Send `line` to a TCP port of the container, half-close, return all the answer."""
    with machine.connect("127.0.0.1", port) as client:
        client.sendall(line)
        client.shutdown(socket.SHUT_WR)
        return recv_all(client)


def daytime(machine: Container, port: int = 7) -> bytes:
    """Read what a daytime service says, sending nothing.

    Data the server never reads makes its close a reset, which may cut the answer.
    """
    with machine.connect("127.0.0.1", port) as client:
        return recv_all(client)


def events(machine: Container, unit: str = "sockd.service") -> list[dict[str, Any]]:
    """Return sockd's events in the unit's journal (not `sockd check`'s plain lines)."""
    return [
        json.loads(entry["MESSAGE"])
        for entry in machine.journal("-u", unit, "SYSLOG_IDENTIFIER=sockd")
        if entry["MESSAGE"].startswith("{")
    ]


def wait_events(
    machine: Container, name: str, unit: str = "sockd.service", count: int = 1
) -> list[dict[str, Any]]:
    """Wait until the unit's journal holds `count` events `name` (journald lags a little)."""

    def found() -> list[dict[str, Any]]:
        matching = [event for event in events(machine, unit) if event["event"] == name]
        return matching if len(matching) >= count else []

    return list(wait_until(found, what=f"{count} x {name} in the journal of {unit}"))


def wait_journal(machine: Container, text: str, *args: str) -> str:
    """Wait until `journalctl -u sockd -o cat ARGS` shows `text`; return what it shows."""

    def shown() -> str:
        said = machine.run("journalctl", "-u", "sockd", "-o", "cat", *args).stdout
        return said if text in said else ""

    return str(wait_until(shown, what=f"{text!r} in the journal"))


def listener(machine: Container, port: int) -> str:
    """Return `ss`'s one line for the listening TCP socket on `port` (processes, inode)."""
    lines = machine.run("ss", "-Hltnpe", f"sport = :{port}").stdout.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def inode(line: str) -> str:
    found = re.search(r"ino:(\d+)", line)
    assert found is not None, line
    return found[1]


def config(*services: str, daemon: str = "") -> str:
    """Return a config with `[daemon]` settings and the given `[[service]]` bodies."""
    return f"[daemon]\n{daemon}\n" + "".join(f"\n[[service]]\n{body}\n" for body in services)


PYTHONPATH = f'pythonpath = ["{HANDLERS_DIR}"]'


ECHO = 'name = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7"]'


def timestamp(text: str) -> dt.datetime:
    """Parse `systemctl show --timestamp=us+utc` or sockd's ISO 8601 timestamps."""
    text = text.removesuffix(" UTC").removesuffix("Z")
    return dt.datetime.fromisoformat(text.split(" ", 1)[-1]).replace(tzinfo=dt.UTC)


def test_first_connection_starts_sockd_as_its_user_on_the_socket_units_socket(
    machine: Container,
) -> None:
    """Socket activation: answered by sockd running as `sockd`, holding systemd's listener."""
    assert machine.show("sockd.service", "ActiveState") == "inactive"
    before = listener(machine, 7)

    assert echo(machine) == b"hi\n"

    assert machine.show("sockd.service", "SubState") == "running"
    main = machine.show("sockd.service", "MainPID")
    cgroup = machine.show("sockd.service", "ControlGroup")
    pids = machine.run("cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs").stdout.split()
    users = machine.run("ps", "-o", "user=", "-p", ",".join(pids)).stdout.split()
    assert len(users) >= 2  # the daemon and its forker
    assert set(users) == {"sockd"}
    # One listening socket, systemd's, now shared with sockd: adopted, not bound again.
    after = listener(machine, 7)
    assert inode(after) == inode(before)
    assert f'"sockd",pid={main},' in after
    assert '"systemd",pid=1,' in after
    (starting,) = wait_events(machine, "starting")
    assert starting["listeners"] == [
        {"service": "echo", "address": "127.0.0.1:7", "origin": "adopted", "fd_name": "echo"}
    ]


SLOW_START = """
import socketserver, time
time.sleep(1.0)  # every import of this module: in `sockd check`, the daemon and the forker

class Hello(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(b"hello\\n")
"""


def test_service_is_active_only_after_ready_and_shows_sockds_status(machine: Container) -> None:
    """Type=notify: `activating` until sockd's READY=1, then `running` with STATUS= text."""
    machine.write(f"{HANDLERS_DIR}/slow_start.py", SLOW_START)
    slow = 'name = "slow"\nhandler = "slow_start:Hello"\nlisten = ["127.0.0.1:8001"]'
    machine.write(CONFIG, config(ECHO, slow, daemon=PYTHONPATH))
    machine.run("systemctl", "start", "--no-block", "sockd.service")
    seen: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 30
    while (state := machine.show("sockd.service", "ActiveState")) != "active":
        assert state in {"inactive", "activating"}, state
        assert time.monotonic() < deadline, seen
        seen.add((state, machine.show("sockd.service", "SubState")))
        time.sleep(0.05)
    assert ("activating", "start") in seen  # sockd's own start-up, before READY=1

    show = machine.run(
        "systemctl",
        "show",
        "--timestamp=us+utc",
        "-P",
        "ExecMainStartTimestamp",
        "-P",
        "ActiveEnterTimestamp",
        "sockd.service",
    )
    exec_main, active = (timestamp(line) for line in show.stdout.splitlines())
    (ready,) = wait_events(machine, "ready")
    # The daemon and the forker each import the slow module before READY=1.
    assert exec_main + dt.timedelta(seconds=2) <= timestamp(ready["timestamp"]) <= active

    assert echo(machine) == b"hi\n"
    wait_until(lambda: "1 served" in machine.show("sockd.service", "StatusText"))
    assert STATUS.fullmatch(machine.show("sockd.service", "StatusText"))
    status = machine.run("systemctl", "status", "--no-pager", "sockd.service").stdout
    assert re.search(r'Status: "0 active, 1 served, 0 denied, 0 errors"', status), status


def test_journal_holds_json_events_and_a_handler_error_as_one_err_entry(
    machine: Container,
) -> None:
    """Every sockd line is JSON; a handler's traceback is one PRIORITY=3 entry, seen by -p err."""
    boom = 'name = "boom"\nhandler = "support_handlers:Boom"\nlisten = ["127.0.0.1:8000"]'
    machine.write(CONFIG, config(ECHO, boom, daemon=PYTHONPATH))
    assert echo(machine) == b"hi\n"
    assert echo(machine, port=8000) == b""  # sockd bound this one itself: no socket unit

    def handler_errors() -> list[dict[str, Any]]:
        entries = machine.journal("-u", "sockd.service", "SYSLOG_IDENTIFIER=sockd")
        return [entry for entry in entries if '"handler_error"' in entry["MESSAGE"]]

    (entry,) = wait_until(handler_errors)
    assert entry["PRIORITY"] == "3"
    error = json.loads(entry["MESSAGE"])
    assert (error["service"], error["level"]) == ("boom", "error")
    assert error["exception"]["type"] == "ValueError"
    assert error["exception"]["message"] == "boom 42"
    functions = [frame["function"] for frame in error["exception"]["frames"]]
    assert functions[-2:] == ["handle", "explode"]  # the whole traceback, to the raise
    assert "local-secret" not in entry["MESSAGE"]

    wait_events(machine, "connection_closed", count=2)
    for entry in machine.journal("-u", "sockd.service", "SYSLOG_IDENTIFIER=sockd"):
        assert isinstance(json.loads(entry["MESSAGE"])["event"], str), entry["MESSAGE"]
    errors = wait_journal(machine, "handler_error", "-p", "err")
    assert [json.loads(line)["event"] for line in errors.splitlines()] == ["handler_error"]


def test_reload_applies_a_change_keeping_the_listener_and_refuses_a_broken_config(
    machine: Container, suite: str
) -> None:
    """`systemctl reload`: same process and socket, new behaviour; broken: old one serves."""
    assert echo(machine) == b"hi\n"
    main = machine.show("sockd.service", "MainPID")
    socket_before = inode(listener(machine, 7))

    machine.write(CONFIG, config('name = "echo"\nhandler = "daytime"\nlisten = ["127.0.0.1:7"]'))
    machine.run("systemctl", "reload", "sockd.service")
    wait_events(machine, "reloaded")
    assert DAYTIME.fullmatch(daytime(machine))
    assert machine.show("sockd.service", "MainPID") == main
    assert inode(listener(machine, 7)) == socket_before

    # Invalid TOML: `systemctl reload` itself fails (ExecReload= checks first).
    machine.write(CONFIG, "[daemon\n")
    reload = machine.run("systemctl", "reload", "sockd.service", check=False)
    assert reload.returncode != 0
    assert DAYTIME.fullmatch(daytime(machine))
    wait_journal(machine, f"sockd: {CONFIG}: invalid TOML", "-p", "err")

    # A change that needs a restart reaches the daemon (a bare SIGHUP): refused and logged.
    # (On systemd 257 the SIGHUP of the broken reload reached sockd too, which refused it.)
    machine.write(CONFIG, config('name = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:8007"]'))
    machine.run("systemctl", "kill", "--kill-who=main", "--signal=HUP", "sockd.service")
    failed = wait_events(machine, "reload_failed", count=2 if suite == "trixie" else 1)[-1]
    assert "listen" in failed["error"]
    assert DAYTIME.fullmatch(daytime(machine))
    assert machine.show("sockd.service", "ActiveState") == "active"


@pytest.mark.parametrize("suite", ["trixie"], indirect=True)
def test_reload_on_systemd_257_returns_once_sockd_serves_the_new_config(
    machine: Container,
) -> None:
    """Type=notify-reload: `systemctl reload` waits for sockd's READY=1; a broken file still fails.

    The new handler takes a second to import in the forker, so a reload that
    returned once SIGHUP was sent would return a second before sockd has reloaded.
    """
    machine.write(f"{HANDLERS_DIR}/slow_start.py", SLOW_START)
    machine.write(CONFIG, config(ECHO, daemon=PYTHONPATH))
    assert echo(machine) == b"hi\n"
    main = machine.show("sockd.service", "MainPID")

    slow = 'name = "echo"\nhandler = "slow_start:Hello"\nlisten = ["127.0.0.1:7"]'
    machine.write(CONFIG, config(slow, daemon=PYTHONPATH))
    machine.run("systemctl", "reload", "sockd.service")
    returned = dt.datetime.now(dt.UTC)
    (reloaded,) = wait_events(machine, "reloaded")
    assert timestamp(reloaded["timestamp"]) <= returned
    assert daytime(machine) == b"hello\n"
    assert machine.show("sockd.service", "MainPID") == main

    # Invalid TOML: the reload fails (ExecReload= checks); sockd refuses it too.
    machine.write(CONFIG, "[daemon\n")
    assert machine.run("systemctl", "reload", "sockd.service", check=False).returncode != 0
    wait_journal(machine, f"sockd: {CONFIG}: invalid TOML", "-p", "err")
    (failed,) = wait_events(machine, "reload_failed")
    assert "invalid TOML" in failed["error"]
    assert daytime(machine) == b"hello\n"

    # A change that needs a restart: sockd refuses it, and cannot tell systemd so.
    machine.write(CONFIG, config(slow.replace(":7", ":8007"), daemon=PYTHONPATH))
    machine.run("systemctl", "reload", "sockd.service")
    failed = wait_events(machine, "reload_failed", count=2)[-1]
    assert "listen" in failed["error"]
    assert daytime(machine) == b"hello\n"
    assert machine.show("sockd.service", "ActiveState") == "active"
    assert machine.show("sockd.service", "MainPID") == main


@pytest.mark.parametrize("suite", ["trixie"], indirect=True)
def test_restart_on_systemd_257_keeps_the_sockets_sockd_bound_itself(machine: Container) -> None:
    """The file descriptor store: through restarts no client of a self-bound port is refused.

    sockd gives systemd its own TCP listener and takes it back at the next
    start; a config without that service lets it go, and a stop closes it.
    """
    own = 'name = "own"\nhandler = "echo"\nlisten = ["127.0.0.1:8000"]'  # no socket unit
    machine.write(CONFIG, config(ECHO, own))
    machine.run("systemctl", "start", "sockd.service")
    before = inode(listener(machine, 8000))
    store = machine.run("systemd-analyze", "fdstore", "sockd.service").stdout
    assert "sockd-bound/own" in store, store
    refused: list[str] = []
    wrong: list[object] = []
    served = [0] * CLIENTS
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            line = b"client %d line %d\n" % (index, served[index])
            try:
                answer: object = echo(machine, line, port=8000)
            except ConnectionRefusedError as exc:
                refused.append(repr(exc))
                continue
            except OSError as exc:
                answer = exc
            if answer != line:
                wrong.append(answer)
            served[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for target in (10, 20, 30):  # clients served between the restarts
            wait_until(functools.partial(lambda least: sum(served) >= least, target))
            machine.run("systemctl", "restart", "sockd.service")
        wait_until(lambda: sum(served) >= 40)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert refused == []
    assert wrong == []
    assert inode(listener(machine, 8000)) == before
    starting = wait_events(machine, "starting", count=4)
    origins = [[lst["origin"] for lst in event["listeners"]] for event in starting]
    assert origins == [["adopted", "bound"]] + [["adopted", "stored"]] * 3

    machine.write(CONFIG, config(ECHO))
    machine.run("systemctl", "restart", "sockd.service")
    assert machine.run("ss", "-Hltn", "sport = :8000").stdout == ""
    assert "sockd-bound" not in machine.run("systemd-analyze", "fdstore", "sockd.service").stdout
    machine.write(CONFIG, config(ECHO, own))
    machine.run("systemctl", "restart", "sockd.service")
    machine.run("systemctl", "stop", "sockd.service")
    assert machine.run("ss", "-Hltn", "sport = :8000").stdout == ""


def test_the_service_has_a_cgroup_namespace_of_its_own_on_systemd_257(
    machine: Container, suite: str
) -> None:
    """ProtectControlGroups=strict (Debian 13): its own cgroup is its root; read-only on both."""
    machine.run("systemctl", "start", "sockd.service")
    main = machine.show("sockd.service", "MainPID")
    inside = ("nsenter", f"--target={main}", "--cgroup", "--mount")
    seen = machine.run(*inside, "cat", f"/proc/{main}/cgroup").stdout.splitlines()
    cgroup = {"bookworm": "/system.slice/sockd.service", "trixie": "/"}[suite]
    assert seen[-1] == f"0::{cgroup}"
    options = machine.run(*inside, "findmnt", "-n", "-o", "OPTIONS", "/sys/fs/cgroup").stdout
    assert options.split(",")[0] == "ro"


def test_restart_under_load_loses_no_connection(machine: Container) -> None:
    """While clients keep connecting, `systemctl restart` drops none: the socket unit queues."""
    assert echo(machine) == b"hi\n"
    first = machine.show("sockd.service", "MainPID")
    wrong: list[object] = []
    served = [0] * CLIENTS
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            line = b"client %d line %d\n" % (index, served[index])
            try:
                answer: object = echo(machine, line)
            except OSError as exc:
                answer = exc
            if answer != line:
                wrong.append(answer)
            served[index] += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(served) >= 20)
        machine.run("systemctl", "restart", "sockd.service")
        after_restart = sum(served)
        wait_until(lambda: sum(served) >= after_restart + 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert machine.show("sockd.service", "MainPID") != first
    assert wrong == []
    assert min(served) > 0


def test_stop_lets_a_connection_in_progress_finish_and_leaves_no_process(
    machine: Container,
) -> None:
    """`systemctl stop`: the open connection is still served; nothing is left to kill."""
    with machine.connect("127.0.0.1", 7) as client:
        client.sendall(b"first\n")
        assert client.recv(100) == b"first\n"
        machine.run("systemctl", "stop", "--no-block", "sockd.service")
        wait_until(lambda: machine.show("sockd.service", "ActiveState") == "deactivating")
        time.sleep(0.5)
        client.sendall(b"late\n")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"late\n"
    wait_until(lambda: machine.show("sockd.service", "ActiveState") == "inactive")
    assert machine.show("sockd.service", "Result") == "success"
    assert machine.run("pgrep", "-u", "sockd", check=False).stdout == ""
    assert [e["event"] for e in wait_events(machine, "stopped")] == ["stopped"]
    assert [e["event"] for e in events(machine)][-2:] == ["connection_closed", "stopped"]
    # Nothing was left for systemd to kill, and sockd did not have to kill anything.
    said = machine.run("journalctl", "-u", "sockd", "-o", "cat").stdout
    assert "Killing process" not in said
    assert "stop_timeout" not in said


def test_template_runs_two_instances_with_their_own_configs(machine: Container) -> None:
    """sockd@a (UNIX socket by default) and sockd@b (TCP from a drop-in) serve side by side."""
    machine.write("/etc/sockd/a.toml", '[[service]]\nname = "a"\nhandler = "echo"\n')
    machine.write("/etc/sockd/b.toml", '[[service]]\nname = "clock"\nhandler = "daytime"\n')
    machine.write(
        "/etc/systemd/system/sockd@b.socket.d/listen.conf",
        "[Socket]\nListenStream=\nListenStream=127.0.0.1:8013\nFileDescriptorName=clock\n",
    )
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "start", "sockd@a.socket", "sockd@b.socket")

    with machine.connect_unix("/run/sockd/a.sock") as client:
        client.sendall(b"to a\n")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"to a\n"
    assert DAYTIME.fullmatch(daytime(machine, port=8013))

    pids = {machine.show(f"sockd@{i}.service", "MainPID") for i in "ab"}
    assert len(pids) == 2
    assert "0" not in pids
    assert machine.show("sockd.service", "ActiveState") == "inactive"
    configs = {i: wait_events(machine, "starting", f"sockd@{i}.service")[0]["config"] for i in "ab"}
    assert configs == {"a": "/etc/sockd/a.toml", "b": "/etc/sockd/b.toml"}

    machine.run("systemctl", "stop", "sockd@a.socket", "sockd@a.service")
    assert DAYTIME.fullmatch(daytime(machine, port=8013))


def test_config_error_at_start_fails_with_the_config_exit_code_without_restarting(
    machine: Container,
) -> None:
    """A broken config: 78, one line saying why, no restart; fixed, it serves again."""
    machine.write(CONFIG, config(ECHO, daemon="max_childern = 3"))
    with machine.connect("127.0.0.1", 7) as client:  # socket activation starts it
        client.sendall(b"hi\n")
        client.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            assert recv_all(client) == b""  # closed unanswered
    wait_until(lambda: machine.show("sockd.service", "ActiveState") == "failed")
    assert machine.show("sockd.service", "ExecMainStatus") == "78"
    wait_journal(machine, f"sockd: {CONFIG}: daemon.max_childern: unknown key")
    # Restart= would have started it again within RestartSec= (100 ms).
    time.sleep(1)
    assert machine.show("sockd.service", "NRestarts") == "0"
    assert machine.show("sockd.service", "ActiveState") == "failed"

    # The recovery README.md gives: fix the file, clear the failure, connect.
    machine.write(CONFIG, config(ECHO))
    machine.run("systemctl", "reset-failed", "sockd.service", "sockd.socket")
    machine.run("systemctl", "start", "sockd.socket")
    assert echo(machine) == b"hi\n"


DAYTIME_SOCKET = """[Socket]
ListenStream=127.0.0.1:13
FileDescriptorName=daytime
Service=sockd.service
[Install]
WantedBy=sockets.target
"""


def test_a_second_socket_unit_feeds_another_service_as_the_config_explains(
    machine: Container,
) -> None:
    """The packaged config's recipe: sockd-daytime.socket serves daytime, adopted by name."""
    service = 'name = "daytime"\nhandler = "daytime"\nlisten = ["127.0.0.1:13"]'
    machine.write(CONFIG, config(ECHO, service))
    machine.write("/etc/systemd/system/sockd-daytime.socket", DAYTIME_SOCKET)
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "enable", "--now", "sockd-daytime.socket")

    assert DAYTIME.fullmatch(daytime(machine, port=13))  # the first connection starts sockd
    assert echo(machine) == b"hi\n"
    (starting,) = wait_events(machine, "starting")
    origins = {(lst["service"], lst["origin"], lst["fd_name"]) for lst in starting["listeners"]}
    assert origins == {("echo", "adopted", "echo"), ("daytime", "adopted", "daytime")}


SANDBOX = """
import json, os, socketserver

class Probe(socketserver.BaseRequestHandler):
    def handle(self):
        report = {"uid": os.getuid(), "writable": {}}
        for directory in ("/tmp", "/dev/shm", "/etc", "/var/lib", "/usr/local/lib"):
            try:
                with open(os.path.join(directory, "probe"), "w") as file:
                    file.write("x")
                report["writable"][directory] = True
            except OSError:
                report["writable"][directory] = False
        self.request.sendall(json.dumps(report).encode())
"""


def test_handlers_run_unprivileged_in_a_read_only_system(machine: Container) -> None:
    """A handler runs as sockd and may write /tmp and /dev/shm only (README, Hardening)."""
    machine.write(f"{HANDLERS_DIR}/sandbox.py", SANDBOX)
    probe = 'name = "probe"\nhandler = "sandbox:Probe"\nlisten = ["127.0.0.1:8002"]'
    machine.write(CONFIG, config(ECHO, probe, daemon=PYTHONPATH))
    machine.run("systemctl", "start", "sockd.service")  # 8002 has no socket unit
    report = json.loads(echo(machine, b"", port=8002))
    uid = machine.run("id", "-u", "sockd").stdout.strip()
    assert report["uid"] == int(uid)
    assert report["writable"] == {
        "/tmp": True,
        "/dev/shm": True,
        "/etc": False,
        "/var/lib": False,
        "/usr/local/lib": False,
    }
    # PrivateTmp=yes: the handler's /tmp is not the system's.
    assert machine.run("test", "-e", "/tmp/probe", check=False).returncode != 0


def test_programs_and_pooled_workers_run_under_the_hardened_unit(machine: Container) -> None:
    """An exec'd program (posix_spawn) and a pooled service both work inside the sandbox."""
    program = 'name = "head"\nexec = ["/usr/bin/head", "-n1"]\nlisten = ["127.0.0.1:8010"]'
    pooled = 'name = "pool"\nhandler = "echo"\nlisten = ["127.0.0.1:8011"]\nworkers = 2'
    machine.write(CONFIG, config(ECHO, program, pooled))
    machine.run("systemctl", "start", "sockd.service")
    assert echo(machine, b"first\nsecond\n", port=8010) == b"first\n"
    assert echo(machine, b"pooled\n", port=8011) == b"pooled\n"
    closed = wait_events(machine, "connection_closed", count=2)
    by_service = {event["service"]: event for event in closed}
    assert by_service["head"]["exit_code"] == 0
    assert by_service["pool"]["worker"] is True
    machine.run("systemctl", "stop", "sockd.service")
    assert machine.show("sockd.service", "Result") == "success"


def test_a_fresh_forker_takes_over_under_the_hardened_unit(machine: Container) -> None:
    """Forker renewal (a second interpreter started by the unprivileged daemon) in the sandbox."""
    pooled = 'name = "pool"\nhandler = "echo"\nlisten = ["127.0.0.1:8011"]\nworkers = 2'
    machine.write(CONFIG, config(ECHO, pooled, daemon="renew_forker_after = 2"))
    machine.run("systemctl", "start", "sockd.service")
    with contextlib.ExitStack() as stack:
        for index in range(2):
            client = stack.enter_context(machine.connect("127.0.0.1", 7))
            client.sendall(b"%d\n" % index)
            assert client.recv(100) == b"%d\n" % index
        (renewed,) = wait_events(machine, "forker_renewed")
        assert echo(machine, b"new\n") == b"new\n"
        assert echo(machine, b"pooled\n", port=8011) == b"pooled\n"
        client.sendall(b"old\n")
        assert client.recv(100) == b"old\n", "the retired forker serves on"
    (retired,) = wait_events(machine, "forker_retired")
    assert (retired["forker"], retired["exit_status"]) == (renewed["retired"], 0)
    machine.run("systemctl", "stop", "sockd.service")
    assert machine.show("sockd.service", "Result") == "success"
    assert not [event for event in events(machine) if event["level"] in ("error", "critical")]
