"""The forker: a small process that accepts connections and forks a child for each.

This module is its entry point (set-up from the daemon's record, process
hygiene); its loop is `sockd.forker.loop.Forker`.

Forking costs time in proportion to the memory of the process that forks
(page tables copied at fork(), copy-on-write faults while the child runs,
teardown at its exit). The daemon itself carries structlog, tomllib and
the config dataclasses; the forker carries only socketserver, the handlers
and what they import, so each connection forks the smallest process it can.

The daemon starts it with `python -P -S -m sockd.forker CONTROL EVENTS FD...` (no
site packages scanned: `sys.path` comes with the set-up record), hands it the
listening sockets, and talks to it through two SOCK_SEQPACKET sockets of
`sockd.ipc` records (each record one or more atomic messages, up to
`ipc.MAX_RECORD` bytes; a reader skips and logs what does not decode or has
the wrong shape, see `ipc.EVENTS` and `ipc.COMMANDS`):

- control, daemon -> forker: ("setup", {...}, [services]), ("reload", seq, [services],
  max_children, stop_timeout, renew_forker_after),
  ("stop", stop_timeout), ("quit",). End of file (the daemon died): quit.
  Renewal (see `sockd.supervisor.renewal`): ("retire",); to a forker started on
  standby, ("take_over", children, {service: children}), then
  ("elsewhere", ...) alike: the children of retired forkers.
- events, forker -> daemon: ("ready",), ("alive",), ("status", active,
  served, denied, errors, at_cap), ("log", level, event, fields), ("closed", [RawExit, ...]),
  ("served", [(pid, service, entries), ...], denied) of pooled workers (each
  item a batch of one worker's connections: its `entries`, bytes the daemon
  decodes, see `sockd.exits.read_entries`; an exit code < 0 is the signal that
  killed the worker serving it), ("reloaded", seq), ("reload_failed", seq, error),
  ("fatal", error, exit_code), ("crowded", long_lived), once retired
  ("children", children, {service: children}), and ("events_dropped",
  {event: count}). The forker never waits for the daemon: what the socket
  cannot take waits in a bounded queue; past it, events are dropped and
  counted (see `sockd.forker.loop`).

Only the forker holds these two sockets. Its children report to it instead
(`sockd.forker.childlog`): `log` events of their own connection, and a pooled
worker's batches of connections, on a datagram socket the forker reads with the
kernel's pid of each sender; their fd 2 is a stream socket to it, whose
lines the forker logs as `handler_stderr`. A batch is a fixed header (a 0
byte, which no marshal output starts with, then the number of its last
connection in the worker, the connections refused and the records lost, 8
bytes each) and the entries, each a connection's (number, client, exit_code,
seconds) marshalled once, in the worker, behind its 2-byte length (see
`sockd.exits`): the forker reads the header and passes the entries on unread,
with the kernel's pid and its own service name.
"""

from __future__ import annotations

from sockd.forker import forkhooks

forkhooks.import_threading()  # first: before socketserver imports threading
# isort: split
import contextlib
import os
import resource
import socket
import sys

from sockd import ipc, privileges
from sockd.errors import EX_SOFTWARE, SockdError, exception_fields
from sockd.forker.loop import Forker
from sockd.forker.service import ServiceServer
from sockd.forker.shared import Service, Shared
from sockd.listeners import Endpoint
from sockd.spec import WireError, services_from_wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sockd.spec import ServiceSpec


def _servers(
    setup: dict[str, Any], specs: list[ServiceSpec], shared: Shared
) -> list[ServiceServer]:
    identity = shared.child_identity
    services = {spec.name: Service(spec, identity) for spec in specs}
    servers = []
    for fd, name, fd_name in setup["listeners"]:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        endpoint = Endpoint(
            name, sock.family, sock.getsockname(), adopted=sock, fd_name=fd_name, type=sock.type
        )
        server_class = ServiceServer
        if sock.type == socket.SOCK_DGRAM:
            # Only with a datagram socket: a forker without any stays as small as it was.
            from sockd.forker.datagrams import DatagramServer  # noqa: PLC0415

            server_class = DatagramServer
        servers.append(server_class(endpoint, services[name], shared))
    return servers


def _close_other_fds(keep: set[int]) -> None:
    """Close what the daemon's own parent let it inherit: children must not hold it."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def main() -> None:
    """Entry point of `python -P -S -m sockd.forker CONTROL EVENTS LISTENER...`."""
    control, events = int(sys.argv[1]), int(sys.argv[2])
    # Each running program's stderr pipe is a descriptor here: allow what the system allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    os.environ.pop("PYTHONPATH", None)  # set only to find sockd; children inherit os.environ
    if os.environ.get("LD_BIND_NOW") == ipc.BIND_NOW_MARK:
        del os.environ["LD_BIND_NOW"]  # set for us only (see sockd.supervisor.loop.spawn)
    _close_other_fds({0, 1, 2, control, events, *(int(fd) for fd in sys.argv[3:])})
    for fd in (control, events):
        os.set_inheritable(fd, False)  # no program a child execs may hold them
    commands = ipc.Reader(control)
    record = commands.read_blocking()
    if record is None or ipc.problem(record, ipc.COMMANDS) or record[0] != "setup":
        os._exit(EX_SOFTWARE)
    setup: dict[str, Any] = record[1]  # type: ignore[assignment]
    try:
        specs = services_from_wire(record[2])
    except WireError:
        os._exit(EX_SOFTWARE)
    sys.path.extend(entry for entry in setup["sys_path"] if entry not in sys.path)
    shared = Shared()
    try:
        identity = setup["identity"]  # [daemon] user: [name, uid, gid], or None
        if identity and any(spec.identity for spec in specs):
            # Programs run as their own users: we stay root; children become the daemon user.
            shared.child_identity = privileges.group_ids(*identity)
            identity = None
        servers = _servers(setup, specs, shared)
        forkhooks.note_threads()
        privileges.become(tuple(identity) if identity else None)
    except SockdError as exc:
        ipc.send(events, ("fatal", str(exc), exc.exit_code))
        os._exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 (reported to the daemon, which exits)
        ipc.send(events, ("fatal", f"forker: {type(exc).__name__}: {exc}", EX_SOFTWARE))
        os._exit(EX_SOFTWARE)
    forker = Forker(
        servers,
        shared,
        commands,
        events,
        setup["max_children"],
        setup["stop_timeout"],
        setup["renew_forker_after"],
        standby=setup["standby"],
    )
    try:
        forker.run()
    except Exception as exc:  # noqa: BLE001 (a bug: report it as data, then die)
        forker.report("critical", "forker_crashed", {"exception": exception_fields(exc)})
        forker.quit()
        forker.events.drain(1.0)
        os._exit(EX_SOFTWARE)
