"""Tests of sockd.privileges: dropping root (in forked children, as it changes the process)."""

from __future__ import annotations

import os
import pwd

import pytest
from harness import in_child

from sockd import privileges
from sockd.errors import PermissionFailure
from sockd.privileges import become, identity

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")


class TestDropPrivileges:
    def test_nothing_to_do(self) -> None:
        """Without user or group, the process keeps its identity."""

        def child() -> tuple[int, int]:
            become(identity(None, None))
            return os.geteuid(), os.getegid()

        assert in_child(child) == (os.geteuid(), os.getegid())

    @needs_root
    def test_root_becomes_the_user_for_good(self) -> None:
        """As root, sockd becomes user:group with that user's groups, and cannot go back."""
        nobody = pwd.getpwnam("nobody")

        def child() -> tuple[int, int, int, list[int], bool]:
            become(identity("nobody", "nogroup"))
            try:
                os.setuid(0)
                regained = True
            except PermissionError:
                regained = False
            return os.getuid(), os.geteuid(), os.getegid(), os.getgroups(), regained

        uid, euid, gid, groups, regained = in_child(child)
        assert (uid, euid) == (nobody.pw_uid, nobody.pw_uid)
        assert gid == 65534
        assert 0 not in groups
        assert not regained

    def test_unprivileged_cannot_switch(self) -> None:
        """Not root and asked to become another user: a clear error, exit 77."""

        def child() -> None:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            identity("root", None)

        with pytest.raises(PermissionFailure, match="start sockd as root") as caught:
            in_child(child)
        assert caught.value.exit_code == 77


class TestRequireRoot:
    def test_refused_when_not_root(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A program's user/group without root: exit 77, naming the setting."""
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        with pytest.raises(PermissionFailure) as caught:
            privileges.require_root("service 'p': user/group")
        assert caught.value.exit_code == 77
        assert str(caught.value).startswith("service 'p': user/group: running as uid 1000")

    def test_allowed_as_root(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """As root, nothing is said."""
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        privileges.require_root("service 'p': user/group")
