"""inetd.conf and xinetd.conf fuzzer: hostile files through the readers, `check`, and `import`.

Random files are made of the fields and forms that trouble a reader (odd
hosts and ports, `#<off>#` marks, continuation lines, wait forms, users,
NUL, U+2028, bytes that are not UTF-8, braces in braces), from fixed seeds,
so a failure comes back the same. Each goes through `sockd import` (the
reader and `convert`) and through the config load that `sockd check`, start
and a reload run with `[daemon] inetd_conf`: never anything but a one-line
ConfigError, and a load's warnings are printable single lines naming the
file, at most 65. A few through `sockd check` as a process: exit 0 or 78,
no traceback. About 10 s.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from sockd.errors import ConfigError
from sockd.supervisor import config, importer, inetdconf, inetdserve, xinetdconf

if TYPE_CHECKING:
    from pathlib import Path

CASES = 1000  # files per seed
SEEDS = (1, 2, 3)
FIELDS = (
    *("echo", "7", "0", "65536", "99999999999999999999", "[::1]:7", "::1:7", "[::1]", "*:"),
    *("127.0.0.1:", "a,b:echo", ",:echo", ":echo", "[:echo", "echo/1", "talk"),
    *("stream", "dgram", "raw", "tcp", "tcp6", "udp", "udp4", "unix", "rpc/tcp", "tcp,rcvbuf=1"),
    *("tcp46", "sctp", "wait", "nowait", "nowait.5", "wait.0", "nowait.x", "nowait.10.20"),
    *("root", "nobody", "root:root", "root.", ":root", "no-such-user", "internal", "/bin/cat"),
    *("/usr/sbin/tcpd", "/nonexistent", "cat", "-u", "\x00", "\x7f", "é", "\u2028", "\x0c"),
    *("#", "#<off>#", "sockd-fuzz.sock", "/", "\ufeff", "\udcff"),
)
ATTRIBUTES = (
    *("id", "type", "flags", "disable", "socket_type", "protocol", "wait", "user", "group"),
    *("server", "server_args", "port", "bind", "only_from", "no_access", "instances", "cps"),
    *("per_source", "env", "passenv", "redirect", "log_type", "banner", "disabled", "enabled"),
)
VALUES = (
    *("INTERNAL", "RPC", "IPv6", "NAMEINARGS", "yes", "no", "stream", "dgram", "tcp", "udp"),
    *("root", "0", "99999999999999999", "/bin/cat", "/nonexistent", "7", "65536", "127.0.0.1"),
    *("::1", "0.0.0.0/0", "1.2.3.", "10.{1,2}", "10.{1.{2}}", "{", "}", "=", "a=b", "UNLIMITED"),
    *("\x00", "é", "1.2.3.4/99", "::/0", "100 30"),
)


def inetd_text(rng: random.Random) -> bytes:
    """Return a random inetd.conf: lines of hostile fields, some indented, marked off or torn."""
    lines = []
    for _ in range(rng.randint(1, 6)):
        fields = " ".join(rng.choice(FIELDS) for _ in range(rng.randint(0, 9)))
        prefix = rng.choice(["", "", "  ", "\t", "#<off># ", "#"])
        lines.append(prefix + fields)
    text = "\n".join(lines).encode(errors="surrogateescape")
    return text + rng.choice([b"\n", b"\r\n", b"", b"\xff\n"])


def xinetd_text(rng: random.Random) -> bytes:
    """Return a random xinetd.conf: blocks of hostile attributes, braces where they fall."""
    lines = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["service echo", "service daytime", "defaults", "service", "include"])
        lines.append(kind + rng.choice(["", " {"]))
        if not lines[-1].endswith("{"):
            lines.append(rng.choice(["{", "{ ", ""]))
        for _ in range(rng.randint(0, 6)):
            values = " ".join(rng.choice(VALUES) for _ in range(rng.randint(0, 3)))
            lines.append(f"  {rng.choice(ATTRIBUTES)} {rng.choice(['=', '+=', '-='])} {values}")
        lines.append(rng.choice(["}", "}", "} x", ""]))
    return ("\n".join(lines) + "\n").encode()


def one_line(message: str) -> None:
    """Assert that `message` is a printable single line of a sane length."""
    assert message.isprintable(), repr(message)
    assert len(message) < 5000, message[:500]


@pytest.fixture(autouse=True)
def no_wrapper_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP wrappers' files of the tests' own: none."""
    paths = (str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"))
    monkeypatch.setattr(importer, "HOSTS_ACCESS", paths)


@pytest.mark.parametrize("seed", SEEDS)
def test_inetd_conf_files(tmp_path: Path, seed: int) -> None:
    """`sockd import`, check, start, reload of a hostile inetd.conf: one-line errors, warnings."""
    rng = random.Random(seed)  # noqa: S311 (cases, not secrets)
    path = tmp_path / "inetd.conf"
    toml = tmp_path / "sockd.toml"
    toml.write_text(f'[daemon]\ninetd_conf = "{path}"\n')
    for _ in range(CASES):
        path.write_bytes(inetd_text(rng))
        try:
            result = importer.convert(inetdconf.read(str(path)), str(path))
        except ConfigError as exc:
            one_line(str(exc))
        else:
            for problem in result.problems:
                one_line(problem)
        for import_handlers in (True, False):  # check and start; a reload
            try:
                loaded = config.load(str(toml), import_handlers=import_handlers)
            except ConfigError as exc:
                one_line(str(exc))
                continue
            assert len(loaded.warnings) <= inetdserve.MAX_WARNINGS + 1
            for warning in loaded.warnings:
                one_line(warning)
                assert warning.startswith(str(path)), warning


@pytest.mark.parametrize("seed", SEEDS)
def test_xinetd_conf_files(tmp_path: Path, seed: int) -> None:
    """`sockd import` of a hostile xinetd.conf: converted, or one ConfigError of one line."""
    rng = random.Random(seed)  # noqa: S311 (cases, not secrets)
    path = tmp_path / "xinetd.conf"
    for _ in range(CASES):
        path.write_bytes(xinetd_text(rng))
        try:
            result = importer.convert(xinetdconf.read(str(path)), str(path))
        except ConfigError as exc:
            one_line(str(exc))
        else:
            for problem in result.problems:
                one_line(problem)


def test_check_as_a_process(tmp_path: Path) -> None:
    """`sockd check` on hostile inetd.conf files: exit 0 or 78, no traceback, `sockd: ` lines."""
    rng = random.Random(4)  # noqa: S311 (cases, not secrets)
    toml = tmp_path / "sockd.toml"
    toml.write_text(f'[daemon]\ninetd_conf = "{tmp_path}/inetd.conf"\n')
    for _ in range(8):
        (tmp_path / "inetd.conf").write_bytes(inetd_text(rng) * 20)
        done = subprocess.run(
            [sys.executable, "-m", "sockd", "check", "--quiet", "--config", str(toml)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode in (0, 78), done.stderr[-2000:]
        assert "Traceback" not in done.stderr, done.stderr[-2000:]
        assert all(line.startswith("sockd: ") for line in done.stderr.splitlines())
