"""How a connection's end is recorded and told: raw exit records, and their log fields.

Leaf module, used by both processes: the forker records exits raw (cheap
between forks), the daemon decodes them into `connection_closed` fields.
"""

from __future__ import annotations

import os
import signal

from sockd.listeners import describe

# The exit status of a child whose peer reset or hung up: 128 + SIGPIPE, a
# shell's status for a writer whose reader left. A handler's child exits so
# (sockd.server.ForkingMixIn.fork_request), a shell script whose command wrote to the gone peer too;
# a program killed by SIGPIPE did the same. `connection_closed` says
# `peer_reset: true` for these, and STATUS= does not count them as errors.
PEER_GONE = 128 + signal.SIGPIPE
PEER_GONE_STATUSES = (PEER_GONE << 8, int(signal.SIGPIPE))  # as wait statuses

TYPE_CHECKING = False
if TYPE_CHECKING:
    # pid, service, client, wait status, seconds, user CPU, system CPU, max RSS (KiB, or None)
    RawExit = tuple[int, str, object, int, float, float, float, int | None]


def closed_fields(raw: RawExit) -> dict[str, object]:
    """Return the fields of the `connection_closed` event for a reaped child."""
    pid, service, client, status, duration, cpu_user, cpu_system, max_rss_kib = raw
    fields = {
        "service": service,
        **client_fields(client),
        "pid": pid,
        **exit_fields(status),
        "duration": round(duration, 6),
        "cpu_user": round(cpu_user, 6),
        "cpu_system": round(cpu_system, 6),
        "max_rss_kib": max_rss_kib,
    }
    if status in PEER_GONE_STATUSES:
        fields["peer_reset"] = True
    return fields


def served_fields(
    pid: int, service: str, client: object, code: int, duration: float
) -> dict[str, object]:
    """Return the fields of the `connection_closed` event of a pooled worker's connection.

    A negative `code` is the signal that killed the worker while it served it.
    """
    fields = {
        "service": service,
        **client_fields(client),
        "pid": pid,
        "exit_code": code if code >= 0 else None,
        "signal": signal_name(-code) if code < 0 else None,
        "duration": round(duration, 6),
        "worker": True,
    }
    if code == PEER_GONE:
        fields["peer_reset"] = True
    return fields


def client_fields(client: object) -> dict[str, object]:
    """Return the fields naming a recorded client: `client`, and a UNIX peer's `peer_path`.

    `client` is a TCP client's address, a UNIX peer's credentials' text, or
    [text, escaped path] for a UNIX peer bound to a path (`sockd.forker.shared.unix_client`).
    """
    if isinstance(client, list):
        return {"client": client[0], "peer_path": client[1]}
    return {"client": client if isinstance(client, str) else describe(client)}


def exit_fields(status: int) -> dict[str, object]:
    """Decode a wait status: `exit_code`, or the `signal` (by name) that ended the process."""
    code = os.waitstatus_to_exitcode(status)
    return {
        "exit_code": code if code >= 0 else None,
        "signal": signal_name(-code) if code < 0 else None,
    }


def signal_name(signum: int) -> str:
    """Name a signal, real-time ones included (`SIGRTMIN+6`)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
