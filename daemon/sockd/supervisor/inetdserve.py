"""The services of `[daemon] inetd_conf`: an inetd.conf's enabled lines (the daemon, `check`).

As xinetd's `-inetd_compat` does, sockd serves what an inetd.conf enables
(so that a Debian package registered with update-inetd is served), beside
the services of its own file. Each line is read by `sockd import inetd`'s
reader (`sockd.supervisor.inetdconf`) into a `[[service]]` table, which the
config then validates as any other, naming the file and line in an error.

Names: a line's service is `inetd.` + the name `sockd import` gives it
(`inetd.finger`, `inetd.echo-tcp6`); sockd.toml's own services may not take
that prefix, so the two never clash, and a reload tells the services it may
add or remove (inetd.conf's) from those it may not.

What sockd does not serve (RPC, a datagram line it cannot serve, an internal
service without a built-in, a line run through tcpd while TCP wrappers' rules
exist, which would no longer apply) is skipped with a warning, never fatal: a
Debian package may add such a line at any time. So is a line no inetd could
read (too few fields, an unknown protocol or service), or one `sockd check`
refuses (config.py): as inetd skips it, one line never stops the others.
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from sockd.supervisor.importer import Entry, safe_name
from sockd.supervisor.inetdconf import entries
from sockd.supervisor.tables import one_line

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sockd.supervisor.config import ServiceConfig

PREFIX = "inetd."  # of the services of inetd_conf's lines, and theirs only
MAX_WARNINGS = 64  # a load's warnings beyond these are counted in one more
MAX_LINES = 1024  # enabled lines read at a load, at most: served or skipped
# What an inetd reads and serves but sockd does not yet (the start of Entry.lost's text).
_NOT_YET = (
    *("dgram ", "stream udp", "wait: ", "rpc/", "socket type "),
    *("internal service ", "tcpd dropped "),
)


def services(
    path: str, room: int = MAX_LINES
) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Return the tables of the enabled lines of the inetd.conf at `path`, and the warnings.

    Each table comes with its origin (`FILE:LINE`), which names it in errors.
    A file that does not exist is an empty one (update-inetd creates it). A
    line that cannot be served is skipped with a warning naming FILE:LINE;
    past `room` tables (MAX_SERVICES in all, with sockd.toml's) or MAX_LINES
    enabled lines, the rest is skipped with one warning (a huge file costs
    the daemon no more than that).

    Raises:
        ConfigError: the file cannot be read.
    """
    if _missing(path):
        return [], []
    tables: list[tuple[str, dict[str, Any]]] = []
    warnings: list[str] = []
    names: set[str] = set()
    for count, entry in enumerate(entries(path, enabled=True)):
        where = f"{one_line(entry.origin)}: {one_line(entry.base, 256)}"
        if count >= MAX_LINES or len(tables) >= room:
            most = f"{MAX_LINES} enabled lines" if count >= MAX_LINES else "no more services"
            warnings.append(f"{where}: skipped, and the lines after it: sockd reads {most}")
            break
        skipped = [lost for lost in entry.lost if lost.startswith(_NOT_YET)]
        if skipped or entry.failed:
            warnings.append(f"{where}: skipped: {one_line((skipped or entry.lost)[0])}")
            continue
        warnings += [f"{where}: {one_line(lost)}" for lost in entry.lost]
        tables.append((entry.origin, {"name": _name(entry, names), **entry.keys}))
    return tables, warnings


def bounded(warnings: list[str], path: str) -> list[str]:
    """Return at most MAX_WARNINGS of `warnings`, and one line counting the rest."""
    if len(warnings) <= MAX_WARNINGS:
        return warnings
    more = len(warnings) - MAX_WARNINGS
    return [
        *warnings[:MAX_WARNINGS],
        f"{one_line(path, 4096)}: {more} more lines skipped or changed",
    ]


def _missing(path: str) -> bool:
    """Tell whether nothing is at `path` (not: something there cannot be read)."""
    try:
        os.lstat(path)
    except OSError as exc:
        return exc.errno == errno.ENOENT
    return False


def _name(entry: Entry, names: set[str]) -> str:
    """Return the service's name: `inetd.` and the name `sockd import` gives it."""
    base = safe_name(entry.base)
    name = base if base not in names or not entry.suffix else safe_name(f"{base}-{entry.suffix}")
    index = 2
    while name in names:
        name = f"{base}-{index}"
        index += 1
    names.add(name)
    return PREFIX + name


def changes(old: Iterable[ServiceConfig], new: Iterable[ServiceConfig]) -> tuple[set[str], bool]:
    """Tell how inetd_conf's services change at a reload: which to bind anew, and if any changed.

    A service added, or whose `listen` or `unix_mode` changed, needs new
    listeners; one removed (or whose `user`, `group` or pooling changed,
    which shaped the forker) needs a fresh forker too. Any change to them is
    made by a fresh forker with the new config (sockd.supervisor.loop).
    """
    olds = {service.name: service for service in old if service.name.startswith(PREFIX)}
    news = {service.name: service for service in new if service.name.startswith(PREFIX)}
    rebind = {
        name
        for name, service in news.items()
        if name not in olds or _listening(service) != _listening(olds[name])
    }
    shaped = (
        _shape(service) != _shape(olds[name]) for name, service in news.items() if name in olds
    )
    return rebind, bool(rebind) or olds.keys() != news.keys() or any(shaped)


def _listening(service: ServiceConfig) -> tuple[object, ...]:
    return service.listen, service.unix_mode


def _shape(service: ServiceConfig) -> tuple[object, ...]:
    return service.user, service.group, service.workers is None
