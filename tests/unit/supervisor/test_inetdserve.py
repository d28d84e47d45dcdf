"""Tests of sockd.supervisor.inetdserve and `[daemon] inetd_conf`: an inetd.conf's lines served."""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import TYPE_CHECKING

import pytest
from importing import DATA

from sockd.errors import ConfigError
from sockd.supervisor import config, importer, inetdserve

if TYPE_CHECKING:
    from pathlib import Path

CAT = shutil.which("cat")
SERVICES = "/etc/services for tcp"
BOTH_79 = ["0.0.0.0:79", "[::]:79"]


@pytest.fixture(autouse=True)
def no_wrapper_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP wrappers' files of the tests' own: none, unless a test writes one."""
    paths = (str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"))
    monkeypatch.setattr(importer, "HOSTS_ACCESS", paths)


def load(
    tmp_path: Path, inetd_conf: str | None, own: str = "", *, reload: bool = False
) -> config.Config:
    """Load a sockd.toml whose inetd_conf is tmp_path/inetd.conf, written with `inetd_conf`."""
    path = tmp_path / "inetd.conf"
    if inetd_conf is not None:
        path.write_text(inetd_conf)
    toml = tmp_path / "sockd.toml"
    toml.write_text(f'[daemon]\ninetd_conf = "{path}"\n{own}')
    return config.load(str(toml), import_handlers=not reload)


class TestServices:
    def test_update_inetd_lines(self) -> None:
        """Debian packages' lines: the enabled ones served, talk (dgram) as a wait service."""
        path = str(DATA / "update-inetd" / "inetd.conf")
        tables, warnings = inetdserve.services(path)
        assert [(origin, table["name"]) for origin, table in tables] == [
            (f"{path}:28", "inetd.www"),
            (f"{path}:31", "inetd.talk"),
            (f"{path}:37", "inetd.finger"),
        ]
        assert (tables[1][1]["wait"], tables[1][1]["listen"]) == (
            True,
            ["udp:0.0.0.0:517", "udp:[::]:517"],
        )
        finger = tables[2][1]
        assert finger["exec"] == ["/usr/sbin/in.fingerd"]
        assert finger["listen"] == BOTH_79
        assert finger["user"] == "nobody"
        assert warnings == []

    def test_missing_file_is_empty(self, tmp_path: Path) -> None:
        """No inetd.conf yet (update-inetd creates it): no service, no warning."""
        assert inetdserve.services(str(tmp_path / "inetd.conf")) == ([], [])

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
    def test_unreadable_file_is_an_error(self, tmp_path: Path) -> None:
        """A file that is there but cannot be read is not taken for an empty one."""
        path = tmp_path / "inetd.conf"
        path.write_text("")
        path.chmod(0)
        with pytest.raises(ConfigError, match=r"inetd\.conf: cannot read: Permission denied"):
            inetdserve.services(str(path))

    def test_directory_is_an_error(self, tmp_path: Path) -> None:
        """A path that names a directory is a one-line error naming it."""
        with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read: Is a directory$"):
            inetdserve.services(str(tmp_path))

    def test_malformed_line_is_skipped_naming_file_and_line(self, tmp_path: Path) -> None:
        """A line no inetd reads is skipped with a warning naming FILE:LINE; the others serve."""
        path = tmp_path / "inetd.conf"
        path.write_text(
            "# comment\n\nfinger stream tcp nowait\n"
            f"no-such-name stream tcp nowait root {CAT} cat\n"
            "echo stream tcp nowait root internal\n"
        )
        tables, warnings = inetdserve.services(str(path))
        assert [table["name"] for _, table in tables] == ["inetd.echo"]
        fields = "expected service, socket type, protocol, wait, user, server"
        assert warnings == [
            f"{path}:3: finger: skipped: 4 fields: {fields}",
            f"{path}:4: no-such-name: skipped: service 'no-such-name' is not in {SERVICES}",
        ]

    def test_warning_escapes_the_service_field(self, tmp_path: Path) -> None:
        """A terminal escape in a skipped line's service is escaped in its warning (on stderr)."""
        path = tmp_path / "inetd.conf"
        path.write_text("\x1b[2J\x1b]0;owned\x07 stream tcp\n")
        _, (warning,) = inetdserve.services(str(path))
        assert warning.startswith(f"{path}:1: \\x1b[2J\\x1b]0;owned\\x07: skipped: 3 fields")

    def test_huge_file_costs_little(self, tmp_path: Path) -> None:
        """Past MAX_LINES enabled lines (or the room left) the rest is one warning, not read."""
        path = tmp_path / "inetd.conf"
        lines = [f"{port} stream tcp nowait root {CAT} cat" for port in range(1000, 3000)]
        path.write_text("##\n" * 100_000 + "\n".join(lines) + "\n")
        tables, warnings = inetdserve.services(str(path), room=3)
        assert [table["name"] for _, table in tables] == ["inetd.1000", "inetd.1001", "inetd.1002"]
        assert warnings == [
            f"{path}:100004: 1003: skipped, and the lines after it: sockd reads no more services"
        ]
        tables, warnings = inetdserve.services(str(path))
        assert len(tables) == inetdserve.MAX_LINES
        assert warnings[-1].endswith(": sockd reads 1024 enabled lines")

    def test_not_yet_served_lines_are_skipped(self, tmp_path: Path) -> None:
        """RPC, raw sockets, internal services without a built-in: one warning each."""
        path = tmp_path / "inetd.conf"
        path.write_text(
            f"7001 stream tcp wait root {CAT} cat\n"
            f"rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n"
            f"7002 raw tcp nowait root {CAT} cat\n"
            "tcpmux stream tcp nowait root internal\n"
            f"7003 stream tcp nowait root {CAT} cat\n"
        )
        tables, warnings = inetdserve.services(str(path))
        assert [table["name"] for _, table in tables] == ["inetd.7001", "inetd.7003"]
        assert tables[0][1]["wait"] is True
        assert [warning.split(": ")[1:3] for warning in warnings] == [
            ["rstatd/1-3", "skipped"],
            ["7002", "skipped"],
            ["tcpmux", "skipped"],
        ]

    def test_tcpd_with_rules_is_skipped(self, tmp_path: Path) -> None:
        """A line through tcpd is not served while hosts.allow has rules: they would not apply."""
        (tmp_path / "hosts.allow").write_text("in.fingerd: 192.168.1.0/24\n")
        path = tmp_path / "inetd.conf"
        path.write_text("finger stream tcp nowait nobody /usr/sbin/tcpd /usr/sbin/in.fingerd\n")
        tables, warnings = inetdserve.services(str(path))
        assert tables == []
        assert warnings == [
            (
                f"{path}:1: finger: skipped: tcpd dropped (/usr/sbin/in.fingerd is run directly):"
                f" the rules in {tmp_path}/hosts.allow no longer apply; write them as allow/deny"
            )
        ]

    def test_names_are_unique(self, tmp_path: Path) -> None:
        """The same service over tcp and tcp6 gets the protocol, then a number."""
        path = tmp_path / "inetd.conf"
        lines = ["echo stream tcp nowait root internal", "echo stream tcp6 nowait root internal"]
        path.write_text("\n".join([*lines, lines[0]]) + "\n")
        tables, _ = inetdserve.services(str(path))
        assert [table["name"] for _, table in tables] == [
            "inetd.echo",
            "inetd.echo-tcp6",
            "inetd.echo-2",
        ]

    def test_warnings_are_bounded(self, tmp_path: Path) -> None:
        """A file of many lines sockd skips gives MAX_WARNINGS warnings and a count."""
        line = "rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n"
        loaded = load(tmp_path, line * (inetdserve.MAX_WARNINGS + 5))
        assert len(loaded.warnings) == inetdserve.MAX_WARNINGS + 1
        assert loaded.warnings[-1] == f"{tmp_path}/inetd.conf: 5 more lines skipped or changed"


class TestConfig:
    def test_served_beside_own_services(self, tmp_path: Path) -> None:
        """The lines' services follow sockd.toml's own, validated, warnings kept."""
        own = '[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7007"]\n'
        loaded = load(
            tmp_path,
            f"127.0.0.1:7100 stream tcp nowait root {CAT} cat -u\n"
            "rstatd/1-3 dgram rpc/udp wait root /usr/sbin/rpc.rstatd rpc.rstatd\n",
            own,
        )
        assert [service.name for service in loaded.services] == ["echo", "inetd.7100"]
        served = loaded.services[1]
        assert served.exec == (CAT, "-u")
        assert served.user == "root"
        assert [str(address) for address in served.listen] == ["127.0.0.1:7100"]
        assert len(loaded.warnings) == 1
        assert loaded.daemon.inetd_conf == str(tmp_path / "inetd.conf")

    def test_no_service_at_all_is_valid(self, tmp_path: Path) -> None:
        """With inetd_conf, sockd.toml may have no service, and the file no line."""
        assert load(tmp_path, None).services == ()

    def test_without_inetd_conf_a_service_is_needed(self, tmp_path: Path) -> None:
        """Without inetd_conf, a file without a service is refused as before."""
        toml = tmp_path / "sockd.toml"
        toml.write_text("[daemon]\nmax_children = 4\n")
        with pytest.raises(ConfigError, match="no \\[\\[service\\]\\] defined"):
            config.load(str(toml))

    def test_prefix_is_reserved(self, tmp_path: Path) -> None:
        """sockd.toml's own services may not be named inetd.NAME: the two never clash."""
        own = '[[service]]\nname = "inetd.echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7"]\n'
        with pytest.raises(ConfigError, match=r"'inetd\.echo': name: the prefix 'inetd\.' is for"):
            load(tmp_path, "", own)

    def test_path_must_be_absolute(self, tmp_path: Path) -> None:
        """A relative inetd_conf is refused (a reload runs from /)."""
        toml = tmp_path / "sockd.toml"
        toml.write_text('[daemon]\ninetd_conf = "inetd.conf"\n')
        with pytest.raises(ConfigError, match=r"inetd_conf: 'inetd\.conf': give an absolute"):
            config.load(str(toml))

    def test_refused_line_is_skipped_naming_file_and_line(self, tmp_path: Path) -> None:
        """A line sockd check refuses (a program, a user not there) is skipped, named; not fatal."""
        own = '[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7007"]\n'
        loaded = load(
            tmp_path,
            "\nfinger stream tcp nowait nobody /usr/sbin/tcpd /nonexistent/fingerd\n"
            f"127.0.0.1:7101 stream tcp nowait no-such-user {CAT} cat\n"
            f"127.0.0.1:7102 stream tcp nowait root {CAT} cat\n",
            own,
        )
        assert [service.name for service in loaded.services] == ["echo", "inetd.7102"]
        path = tmp_path / "inetd.conf"
        assert loaded.warnings == (
            (
                f"{path}:2: inetd.finger: skipped: service 'inetd.finger': exec[0]:"
                " /nonexistent/fingerd: no such program"
            ),
            (
                f"{path}:3: inetd.7101: skipped: service 'inetd.7101': user: no such user"
                " 'no-such-user'"
            ),
        )

    def test_address_taken_is_skipped(self, tmp_path: Path) -> None:
        """A line on an address of sockd.toml's services, or of a line before it, is skipped."""
        own = '[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7"]\n'
        loaded = load(
            tmp_path,
            "echo stream tcp nowait root internal\n"
            "127.0.0.1:7103 stream tcp nowait root internal\n"  # not a built-in: skipped
            f"127.0.0.1:7104 stream tcp nowait root {CAT} cat\n"
            f"7104 stream tcp4 nowait root {CAT} cat -u\n",
            own,
        )
        assert [service.name for service in loaded.services] == ["echo", "inetd.7104"]
        path = tmp_path / "inetd.conf"
        assert loaded.warnings[1] == (  # after what the reader skipped (line 2)
            f"{path}:1: inetd.echo: skipped: service 'inetd.echo': listen[0]: 0.0.0.0:7 overlaps"
            " 127.0.0.1:7 of service 'echo'"
        )
        assert loaded.warnings[2] == (
            f"{path}:4: inetd.7104-tcp4: skipped: service 'inetd.7104-tcp4': listen[0]:"
            " 0.0.0.0:7104 overlaps 127.0.0.1:7104 of service 'inetd.7104'"
        )

    def test_address_taken_is_skipped_at_a_reload_without_dns(self, tmp_path: Path) -> None:
        """At a reload numeric addresses are checked too; a host name is left to binding."""
        own = '[[service]]\nname = "echo"\nhandler = "echo"\nlisten = ["127.0.0.1:7106"]\n'
        loaded = load(
            tmp_path,
            f"127.0.0.1:7106 stream tcp nowait root {CAT} cat\n"
            f"no-such-host.invalid:7107 stream tcp nowait root {CAT} cat\n",
            own,
            reload=True,
        )
        assert [service.name for service in loaded.services] == ["echo", "inetd.7107"]
        (warning,) = loaded.warnings
        assert warning.startswith(f"{tmp_path}/inetd.conf:1: inetd.7106: skipped: service")
        assert warning.endswith("127.0.0.1:7106 overlaps 127.0.0.1:7106 of service 'echo'")

    def test_own_services_overlapping_are_an_error(self, tmp_path: Path) -> None:
        """sockd.toml's own services still may not overlap: that is its error, not a line's."""
        own = '[[service]]\nname = "a"\nhandler = "echo"\nlisten = ["127.0.0.1:7105"]\n'
        own += '[[service]]\nname = "b"\nhandler = "echo"\nlisten = ["127.0.0.1:7105"]\n'
        with pytest.raises(
            ConfigError, match=r"sockd\.toml: service 'b': listen\[0\]: .* overlaps"
        ):
            load(tmp_path, "", own)


class TestChanges:
    def config(self, tmp_path: Path, lines: str) -> config.Config:
        return load(tmp_path, lines)

    def test_what_a_reload_changes(self, tmp_path: Path) -> None:
        """Added or moved: bound anew; removed, or another user: a fresh forker; else in place."""
        first = f"127.0.0.1:7100 stream tcp nowait root {CAT} cat\n"
        old = load(tmp_path, first).services
        assert inetdserve.changes(old, old) == (set(), False)
        argv = load(tmp_path, first.replace("cat\n", "cat -u\n")).services
        assert inetdserve.changes(old, argv) == (set(), False), "exec: in place"
        moved = load(tmp_path, first.replace("7100", "7101")).services
        assert inetdserve.changes(old, moved) == ({"inetd.7101"}, True)
        assert inetdserve.changes(old, ()) == (set(), True), "removed"
        other = (dataclasses.replace(old[0], user="nobody"),)
        assert inetdserve.changes(old, other) == (set(), True), "another user"
        own = (dataclasses.replace(old[0], name="echo"),)
        assert inetdserve.changes((), own) == (set(), False), "sockd.toml's: not theirs"
