"""The Debian package: lintian-clean, hardened valid units, install, remove and purge."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest
from harness import TESTS

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from nspawn import Container

UNITS = ("sockd.socket", "sockd.service", "sockd@.socket", "sockd@.service")
MAX_EXPOSURE = 1.2
# What each release's `systemd-analyze security` rates the services (README, Hardening).
EXPOSURE = {"bookworm": 1.1, "trixie": 1.1}
# The drop-ins of the package built for a release with systemd 257 (packaging/debian/rules).
DROP_INS = ("sockd.service.d/systemd-257.conf", "sockd@.service.d/systemd-257.conf")
SYSTEMD_257 = {"bookworm": False, "trixie": True}
# Where each release's debhelper installs the units (packaging/debian/rules).
UNIT_DIRS = {"bookworm": "/lib/systemd/system", "trixie": "/usr/lib/systemd/system"}
REPO = TESTS.parent


def test_lintian_reports_no_error_and_no_warning(suite: str, deb: Path) -> None:
    """The release's own lintian on the .deb and the .changes: informational notes at most."""
    report = (REPO / f"build/deb-{suite}/lintian.log").read_text()
    assert not [line for line in report.splitlines() if line[:2] in {"E:", "W:"}], report
    assert list(deb.parent.glob("sockd_*.changes"))


def test_package_version_is_the_project_version(deb: Path) -> None:
    """The .deb's version comes from daemon/sockd/_version.py (the build checks it)."""
    text = (REPO / "daemon/sockd/_version.py").read_text()
    version = re.search(r'__version__ = "(.*)"', text)
    assert version is not None
    assert deb.name == f"sockd_{version[1]}_all.deb"


@pytest.mark.parametrize(("version", "builds"), [("0.1.0", True), ("9.9.9", False)])
def test_the_build_refuses_a_version_other_than_the_projects(
    tmp_path: Path, version: str, builds: bool
) -> None:
    """debian/rules stops the build when debian/changelog and _version.py disagree."""
    shutil.copytree(REPO / "packaging/debian", tmp_path / "debian")
    changelog = tmp_path / "debian/changelog"
    text = changelog.read_text()
    changelog.write_text(text.replace(text[text.index("(") : text.index(")") + 1], "(0.1.0)", 1))
    (tmp_path / "daemon/sockd").mkdir(parents=True)
    (tmp_path / "daemon/sockd/_version.py").write_text(f'__version__ = "{version}"\n')
    result = subprocess.run(
        ["make", "-f", "debian/rules", "execute_before_dh_auto_configure"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode == 0) is builds, result.stderr
    if not builds:
        assert (
            "debian/changelog says 0.1.0 but daemon/sockd/_version.py says 9.9.9" in result.stderr
        )


def test_the_template_service_is_the_service_per_instance() -> None:
    """sockd@.service (and its drop-in) has every option of sockd.service, for INSTANCE.toml."""

    def options(name: str) -> list[str]:
        text = (REPO / "packaging/systemd" / name).read_text()
        return [line for line in text.splitlines() if line and not line.startswith("#")]

    for service, template in [("sockd.service", "sockd@.service"), DROP_INS]:
        per_instance = [
            line.replace("sockd.socket", "sockd@%i.socket")
            .replace("/etc/sockd/sockd.toml", "/etc/sockd/%i.toml")
            .replace("=sockd socket server", "=sockd socket server, instance %i")
            for line in options(service)
        ]
        assert options(template) == per_instance


def test_units_are_where_the_releases_systemd_keeps_a_packages_units(
    machine: Container, suite: str
) -> None:
    """Debian 13 has merged /usr: /usr/lib/systemd/system; Debian 12 keeps /lib/systemd/system."""
    assert _unit_paths(machine) == [f"{UNIT_DIRS[suite]}/{unit}" for unit in UNITS]
    assert machine.show("sockd.socket", "FragmentPath").endswith("/lib/systemd/system/sockd.socket")


def test_units_verify_clean_and_the_service_is_hardened(machine: Container, suite: str) -> None:
    """The release's `systemd-analyze verify` says nothing of any unit; exposure is at most 1.2.

    Both read the units with their drop-ins, as systemd loads them.
    """
    paths = [f"{UNIT_DIRS[suite]}/{unit}" for unit in UNITS]
    verify = machine.run("systemd-analyze", "verify", *paths, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    for unit in ("sockd.service", "sockd@.service"):
        security = machine.run(
            "systemd-analyze", "security", "--offline=yes", f"{UNIT_DIRS[suite]}/{unit}"
        ).stdout
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d)", security)
        assert score is not None, security
        assert float(score[1]) == EXPOSURE[suite] <= MAX_EXPOSURE, security
        assert "✗ PrivateMounts=" not in security


def test_only_the_package_for_systemd_257_has_its_drop_ins(machine: Container, suite: str) -> None:
    """Debian 13's package: notify-reload, a reload's check without kill; Debian 12's: neither."""
    files = machine.run("dpkg", "-L", "sockd").stdout.split()
    shipped = [path for path in files if path.endswith(".conf") and "/systemd/" in path]
    on_257 = SYSTEMD_257[suite]
    expected = [f"/usr/lib/systemd/system/{drop_in}" for drop_in in DROP_INS] if on_257 else []
    assert shipped == expected
    for unit in ("sockd.service", "sockd@i.service"):
        assert machine.show(unit, "Type") == ("notify-reload" if on_257 else "notify")
        reloads = machine.show(unit, "ExecReload")
        assert "/usr/bin/sockd" in reloads
        # systemd 257 sends the SIGHUP itself; 252 runs `kill -HUP $MAINPID` after the check.
        assert ("/bin/kill" in reloads) is not on_257
        assert machine.show(unit, "FileDescriptorStoreMax") == ("128" if on_257 else "0")


def test_systemd_warns_of_no_option_of_the_units(machine: Container) -> None:
    """No option is unknown to the release's systemd: it logs none as ignored when it loads them.

    Debian 12's systemd would log each systemd 257 option of the drop-ins
    ("Failed to parse service type, ignoring: notify-reload").
    """
    machine.write("/etc/sockd/extra.toml", EXTRA_INSTANCE)
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "start", "sockd.service", "sockd@extra.socket", "sockd@extra.service")
    assert machine.show("sockd@extra.service", "ActiveState") == "active"
    warnings = machine.journal("-b", "_PID=1", "-p", "warning")
    about_ours = [entry["MESSAGE"] for entry in warnings if "sockd" in entry["MESSAGE"]]
    assert about_ours == []


def test_install_creates_the_user_and_starts_only_the_socket(machine: Container) -> None:
    """After `apt install`: sockd.socket listens, sockd itself waits for a connection."""
    assert machine.show("sockd.socket", "ActiveState") == "active"
    assert machine.show("sockd.socket", "UnitFileState") == "enabled"
    assert machine.show("sockd.service", "ActiveState") == "inactive"
    user = machine.run("getent", "passwd", "sockd").stdout.strip().split(":")
    assert user[0] == "sockd"
    assert int(user[2]) < 1000  # a system user
    assert user[6] == "/usr/sbin/nologin"
    conffiles = machine.run("dpkg-query", "-W", "-f=${Conffiles}", "sockd").stdout
    assert "/etc/sockd/sockd.toml" in conffiles


def test_remove_then_purge_leave_nothing_of_ours(machine: Container) -> None:
    """No process, unit, socket or file survives remove and purge (the user may)."""
    machine.write("/etc/sockd/extra.toml", EXTRA_INSTANCE)
    machine.run("systemctl", "enable", "--now", "sockd@extra.socket")
    with machine.connect("127.0.0.1", 7) as client:  # starts sockd.service
        client.sendall(b"hi\n")
        assert client.recv(10) == b"hi\n"
    with machine.connect_unix("/run/sockd/extra.sock") as client:  # starts sockd@extra
        client.sendall(b"hi\n")
        assert client.recv(10) == b"hi\n"
    assert machine.run("pgrep", "-u", "sockd", check=False).stdout.split()

    machine.run("apt-get", "remove", "-y", "-q", "sockd")
    assert machine.run("pgrep", "-u", "sockd", check=False).stdout == ""
    assert _our_units(machine, "list-units", "--state=active") == ""
    assert _our_units(machine, "list-unit-files") == ""
    assert machine.run("test", "-e", "/run/sockd/extra.sock", check=False).returncode != 0
    assert machine.run("test", "-e", "/etc/sockd/sockd.toml", check=False).returncode == 0

    machine.run("apt-get", "purge", "-y", "-q", "sockd")
    assert _our_units(machine, "list-units", "--all") == ""
    assert machine.run("dpkg-query", "-W", "sockd", check=False).returncode != 0
    assert machine.run("test", "-e", "/etc/sockd/sockd.toml", check=False).returncode != 0
    places = ("/etc", "/lib", "/usr/bin", "/usr/lib", "/usr/share", "/var/lib", "/run")
    leftovers = machine.run("find", *places, "-name", "*sockd*").stdout.split()
    # The administrator's own config of the instance is theirs, not ours.
    assert leftovers == ["/etc/sockd"]
    assert machine.run("ls", "/etc/sockd").stdout.split() == ["extra.toml"]


def test_upgrade_keeps_the_listener_and_restarts_sockd_on_the_new_code(
    machine: Container, suite: str, deb: Path
) -> None:
    """Reinstalling (dpkg's upgrade path) never closes the socket; a running sockd restarts."""
    with machine.connect("127.0.0.1", 7) as client:
        client.sendall(b"hi\n")
        assert client.recv(10) == b"hi\n"
    before = machine.run("ss", "-Hltne", "sport = :7").stdout
    main = machine.show("sockd.service", "MainPID")

    machine.run("apt-get", "install", "--reinstall", "-y", "-q", f"/mnt/share/{suite}/{deb.name}")

    assert machine.run("ss", "-Hltne", "sport = :7").stdout == before  # the same socket
    assert machine.show("sockd.service", "ActiveState") == "active"
    assert machine.show("sockd.service", "MainPID") != main
    with machine.connect("127.0.0.1", 7) as client:
        client.sendall(b"again\n")
        assert client.recv(10) == b"again\n"


@pytest.mark.parametrize("suite", ["trixie"], indirect=True)
def test_debian_12s_package_upgraded_to_13s_moves_the_units_to_usr_and_keeps_the_socket(
    machine: Container, deb: Path, builder: Callable[[str], Path]
) -> None:
    """On Debian 13, 12's package then 13's: the units move /lib -> /usr/lib, none is lost.

    /lib is a link to /usr/lib there, so each unit's old and new paths are one
    file: dpkg must not remove the new one as the old one's leftover.
    """
    old = builder("bookworm")
    machine.run("dpkg", "-i", f"/mnt/share/bookworm/{old.name}")  # same version: a reinstall
    assert _unit_paths(machine) == [f"/lib/systemd/system/{unit}" for unit in UNITS]
    with machine.connect("127.0.0.1", 7) as client:  # starts sockd
        client.sendall(b"hi\n")
        assert client.recv(10) == b"hi\n"
    before = machine.run("ss", "-Hltne", "sport = :7").stdout
    main = machine.show("sockd.service", "MainPID")

    machine.run("apt-get", "install", "--reinstall", "-y", "-q", f"/mnt/share/trixie/{deb.name}")

    assert _unit_paths(machine) == [f"/usr/lib/systemd/system/{unit}" for unit in UNITS]
    for unit in UNITS:
        machine.run("test", "-f", f"/usr/lib/systemd/system/{unit}")
    machine.run("systemctl", "daemon-reload")
    assert machine.show("sockd.socket", "LoadState") == "loaded"
    assert machine.run("ss", "-Hltne", "sport = :7").stdout == before
    assert machine.show("sockd.service", "MainPID") != main
    with machine.connect("127.0.0.1", 7) as client:
        client.sendall(b"again\n")
        assert client.recv(10) == b"again\n"


def _unit_paths(machine: Container) -> list[str]:
    """Return where dpkg says the package's units are, in `UNITS`' order."""
    files = machine.run("dpkg", "-L", "sockd").stdout.split()
    return [path for unit in UNITS for path in files if path.endswith(f"/{unit}")]


def _our_units(machine: Container, *listing: str) -> str:
    """Return what `systemctl LISTING sockd*` lists (it exits 1 when that is nothing)."""
    command = ("systemctl", *listing, "--plain", "--no-legend", "sockd*")
    return machine.run(*command, check=False).stdout.strip()


EXTRA_INSTANCE = """
[[service]]
name = "extra"
handler = "echo"
"""
