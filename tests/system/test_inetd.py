"""sockd-inetd, the inet-superserver: a Debian package registered with update-inetd is served."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from harness import wait_until
from nspawn import DEBS

if TYPE_CHECKING:
    from pathlib import Path

    from nspawn import Container

CONFIG = "/etc/sockd/inetd.toml"


def install_sockd_inetd(machine: Container, suite: str, deb: Path) -> None:
    """Install sockd-inetd (sockd is installed) from the release's build, as apt would."""
    package = deb.name.replace("sockd_", "sockd-inetd_", 1)
    machine.run("apt-get", "install", "-y", "-q", f"/mnt/share/{suite}/{package}", timeout=120)


def finger(machine: Container, query: str) -> str:
    """Run Debian's finger client inside the container; return what it printed."""
    result = machine.run("finger", query, check=False, timeout=30)
    return result.stdout + result.stderr


def finger_refused(machine: Container) -> bool:
    """Tell whether port 79 refuses connections (nothing serves finger)."""
    try:
        machine.connect("127.0.0.1", 79).close()
    except ConnectionRefusedError:
        return True
    return False


def test_installs_as_the_inet_superserver(machine: Container, suite: str, deb: Path) -> None:
    """sockd-inetd.service runs, with an /etc/inetd.conf for update-inetd and no service yet."""
    install_sockd_inetd(machine, suite, deb)
    assert machine.show("sockd-inetd.service", "ActiveState") == "active"
    assert machine.show("sockd-inetd.service", "UnitFileState") == "enabled"
    assert machine.run("test", "-x", "/etc/init.d/sockd-inetd", check=False).returncode == 0
    text = machine.run("cat", "/etc/inetd.conf").stdout
    assert "#:INFO: Info services" in text
    provides = machine.run("dpkg-query", "-W", "-f=${Provides}", "sockd-inetd").stdout
    assert provides == "inet-superserver"


def test_fingerd_registered_with_update_inetd_is_served_then_gone(
    machine: Container, suite: str, deb: Path
) -> None:
    """Installing fingerd serves `finger alice@127.0.0.1`; removing it closes port 79.

    fingerd's postinst adds its line with `update-inetd --add`, its prerm
    disables it with `update-inetd --disable finger`; each time update-inetd
    sends SIGHUP to the inetd of /run/inetd.pid: the same sockd reloads.
    """
    install_sockd_inetd(machine, suite, deb)
    machine.run("useradd", "--create-home", "--comment", "Alice Example", "alice")
    assert finger_refused(machine)
    main = machine.show("sockd-inetd.service", "MainPID")
    assert machine.run("cat", "/run/inetd.pid").stdout.strip() == main

    machine.run("sh", "-c", f"apt-get install -y -q {DEBS}/fingerd_*.deb", timeout=120)
    line = machine.run("grep", "^finger", "/etc/inetd.conf").stdout
    assert line.split()[:3] == ["finger", "stream", "tcp"]
    checked = machine.run("sockd", "check", "--config", CONFIG).stdout
    assert 'name = "inetd.finger"' in checked
    # SIGHUP is sent, not awaited: port 79 is served once the fresh forker took over.
    wait_until(lambda: not finger_refused(machine), what="port 79 to be served")
    answer = finger(machine, "alice@127.0.0.1")
    assert "Login: alice" in answer, answer
    assert "Name: Alice Example" in answer, answer

    machine.run("apt-get", "remove", "-y", "-q", "fingerd", timeout=120)
    assert machine.run("grep", "^#<off># finger", "/etc/inetd.conf").returncode == 0
    wait_until(lambda: finger_refused(machine), what="port 79 to refuse connections")
    assert "Connection refused" in finger(machine, "alice@127.0.0.1")
    assert machine.show("sockd-inetd.service", "MainPID") == main, "reloaded, not restarted"
    events = [
        json.loads(entry["MESSAGE"])["event"]
        for entry in machine.journal("-u", "sockd-inetd.service", "SYSLOG_IDENTIFIER=sockd-inetd")
    ]
    assert events.count("reloaded") == 2, events
