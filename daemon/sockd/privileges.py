"""Dropping root: who sockd becomes is decided once, then the daemon and its forker become it."""

from __future__ import annotations

import os
import pwd

from sockd.errors import PermissionFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

Identity = tuple[str, int, int]  # user name, uid, gid


def identity(user: str | None, group: str | None) -> Identity | None:
    """Return who to become for `[daemon] user/group`, or None to stay as we are.

    Raises:
        PermissionFailure: not root, and asked to become someone else.
    """
    if user is None and group is None:
        return None
    import grp  # noqa: PLC0415 (the daemon's only: an extension module less in each fork)

    entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.getuid())
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    if os.geteuid() != 0:
        if (os.geteuid(), os.getegid()) == (entry.pw_uid, gid):
            return None
        msg = (
            f"daemon.user/group: running as uid {os.geteuid()}, cannot become"
            f" {entry.pw_name}:{gid}; start sockd as root to drop privileges"
        )
        raise PermissionFailure(msg)
    return (entry.pw_name, entry.pw_uid, gid)


def become(who: Identity | None) -> None:
    """Take the user's groups, then the group, then the user: for good.

    Raises:
        PermissionFailure: the system refused.
    """
    if who is None:
        return
    name, uid, gid = who
    try:
        become_ids(group_ids(name, uid, gid))
    except PermissionError as exc:
        raise PermissionFailure(
            f"daemon.user/group: cannot become {name}: {exc.strerror}"
        ) from None


def group_ids(name: str, uid: int, gid: int) -> list[Any]:
    """Return [uid, gid, groups] for `become_ids`, the user's groups read now (not in a child)."""
    return [uid, gid, os.getgrouplist(name, gid)]


def become_ids(ids: list[Any]) -> None:
    """Take [uid, gid, groups] for good: groups, then group, then user.

    No file is read, so a forked child may call it between accept and serve.
    """
    uid, gid, groups = ids
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)


def require_root(what: str) -> None:
    """Refuse a setting that needs root (a program run as another user) when not root.

    Raises:
        PermissionFailure: naming the setting.
    """
    if os.geteuid() != 0:
        msg = f"{what}: running as uid {os.geteuid()}; start sockd as root to run as another user"
        raise PermissionFailure(msg)
