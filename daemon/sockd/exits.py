"""How a connection's end is recorded and told: raw exit records, and their log fields.

Leaf module, used by both processes: the forker records exits raw (cheap
between forks), a pooled worker its connections as entries (encoded once, in
the worker), the daemon decodes both into `connection_closed` fields.
"""

from __future__ import annotations

import marshal
import math
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

# A pooled worker's connection is an entry: a 2-byte length (little-endian), then the
# marshal of (number, client, exit code, seconds); `number` counts the worker's
# connections from 1. A batch datagram (worker -> forker) is BATCH_MARK, the number of
# its last entry, the connections refused and the records lost since the last batch (8
# bytes each, little-endian: read without marshal), then the entries as they are. The
# forker passes the entries on unread; the daemon decodes them (`read_entries`).
BATCH_MARK = 0  # the first byte of a batch: no marshal output starts with it
BATCH_HEADER = 25  # bytes: the mark, the last number, denied, lost
MAX_ENTRY = 0xFFFF  # bytes of an entry's marshal, at most (its length takes 2 bytes)

TYPE_CHECKING = False
if TYPE_CHECKING:
    # pid, service, client, wait status, seconds, user CPU, system CPU, max RSS (KiB, or None)
    RawExit = tuple[int, str, object, int, float, float, float, int | None]
    # A pooled worker's connection: its number in the worker, client, exit code, seconds.
    Entry = tuple[int, object, int, float]


def entry(number: int, client: object, code: int, seconds: float) -> bytes:
    """Encode a pooled worker's connection as an entry (the worker inlines this).

    Raises:
        ValueError: `client` is not a plain value, or the entry exceeds MAX_ENTRY.
    """
    data = marshal.dumps((number, client, code, seconds))  # type: ignore[arg-type]
    if len(data) > MAX_ENTRY:
        raise ValueError(f"an entry of {len(data)} bytes")
    return len(data).to_bytes(2, "little") + data


def batch_header(last: int, denied: int, lost: int) -> bytes:
    """Return the header of a batch datagram whose last entry is connection `last`."""
    return bytes((BATCH_MARK,)) + b"".join(
        value.to_bytes(8, "little") for value in (last, denied, lost)
    )


def read_batch_header(data: bytes) -> tuple[int, int, int] | None:
    """Return a batch datagram's (last number, denied, lost), or None if it has no header."""
    if len(data) < BATCH_HEADER or data[0] != BATCH_MARK:
        return None
    return (
        int.from_bytes(data[1:9], "little"),
        int.from_bytes(data[9:17], "little"),
        int.from_bytes(data[17:25], "little"),
    )


def read_entries(data: bytes) -> tuple[list[Entry], int]:
    """Decode entries; return those of the right shape, and how many others were skipped.

    The entries come from a worker, which runs a handler: each is checked
    (number, exit code: int; seconds: a float from 0 up; client: what a
    worker records, see `client_fields`, or None). One that does not decode
    or has another shape is skipped; a length of 0 or past the end ends the
    reading (counted as one).
    """
    entries: list[Entry] = []
    bad = 0
    offset, end = 0, len(data)
    while offset < end:
        start = offset + 2
        offset = start + int.from_bytes(data[offset:start], "little")
        if offset > end or offset == start:  # torn (a worker killed as it copied), made up
            return entries, bad + 1
        try:
            record = marshal.loads(data[start:offset])  # noqa: S302 (no code runs: plain values)
        except (EOFError, ValueError, TypeError):
            bad += 1
            continue
        if type(record) is tuple and len(record) == 4:
            number, client, code, seconds = record
            if (
                type(number) is int
                and type(code) is int
                and type(seconds) is float
                and 0.0 <= seconds < math.inf
                and _is_client(client)
            ):
                entries.append(record)
                continue
        bad += 1
    return entries, bad


def count_entries(data: bytes) -> int:
    """Count the entries in `data` (a batch the forker drops, unread)."""
    count = offset = 0
    while offset < len(data):
        offset += 2 + int.from_bytes(data[offset : offset + 2], "little")
        count += 1
    return count


def _is_client(client: object) -> bool:
    """Tell whether `client` is one `client_fields` takes: an address, a UNIX peer's, None."""
    if type(client) is tuple:  # an address: (host, port, ...)
        return len(client) >= 2 and type(client[0]) is str
    if type(client) is list:  # [credentials' text, escaped path]
        return len(client) == 2 and type(client[0]) is str and type(client[1]) is str
    if type(client) is dict:  # a proxied client: {"client": ..., "via": ...}, address or text
        return client.keys() == _PROXIED and all(
            type(value) is str or (type(value) is tuple and _is_client(value))
            for value in client.values()
        )
    return client is None or type(client) is str  # None: not known (a worker's slot scribbled on)


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


_PROXIED = {"client", "via"}


def client_fields(client: object) -> dict[str, object]:
    """Return the fields naming a recorded client: `client`, a UNIX peer's `peer_path`, `via`.

    `client` is a TCP client's address, a UNIX peer's credentials' text,
    [text, escaped path] for a UNIX peer bound to a path (`sockd.forker.shared.unix_client`),
    or a proxied client's fields: the client its PROXY header named, and the
    proxy `via` (`sockd.forker.proxied.proxied_client`); None when it is not
    known (the program of a wait service, which takes its clients itself).
    """
    if client is None:
        return {"client": None}
    if isinstance(client, list):
        return {"client": client[0], "peer_path": client[1]}
    if isinstance(client, dict):
        return {name: _text(value) for name, value in client.items()}
    return {"client": client if isinstance(client, str) else describe(client)}


def _text(client: object) -> object:
    return describe(client) if isinstance(client, tuple) else client


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
