"""Dropping root: who sockd becomes is decided once, then the daemon and its forker become it."""

from __future__ import annotations

import grp
import os
import pwd

from sockd.errors import PermissionFailure

Identity = tuple[str, int, int]  # user name, uid, gid


def identity(user: str | None, group: str | None) -> Identity | None:
    """Return who to become for `[daemon] user/group`, or None to stay as we are.

    Raises:
        PermissionFailure: not root, and asked to become someone else.
    """
    if user is None and group is None:
        return None
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
        os.initgroups(name, gid)
        os.setgid(gid)
        os.setuid(uid)
    except PermissionError as exc:
        raise PermissionFailure(
            f"daemon.user/group: cannot become {name}: {exc.strerror}"
        ) from None


def require_root(what: str) -> None:
    """Refuse a setting that needs root (a program run as another user) when not root.

    Raises:
        PermissionFailure: naming the setting.
    """
    if os.geteuid() != 0:
        msg = f"{what}: running as uid {os.geteuid()}; start sockd as root to run as another user"
        raise PermissionFailure(msg)
