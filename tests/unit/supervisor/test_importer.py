"""Tests of sockd.supervisor.importer and `sockd import`: validation, names, output, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import TYPE_CHECKING

import pytest
from importing import DATA, check, debian_xinetd, inetd, served

from sockd.errors import ConfigError
from sockd.supervisor import cli, importer

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def no_wrapper_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TCP wrappers' files of the tests' own: none."""
    paths = (str(tmp_path / "hosts.allow"), str(tmp_path / "hosts.deny"))
    monkeypatch.setattr(importer, "HOSTS_ACCESS", paths)


def run_main(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    return int(caught.value.code or 0)


class TestReadText:
    def test_fifo_is_refused_at_once(self, tmp_path: Path) -> None:
        """A FIFO is refused, never waited on: the daemon reads inetd_conf at each reload."""
        path = tmp_path / "inetd.conf"
        os.mkfifo(path)
        errors: list[str] = []

        def read() -> None:
            try:
                importer.read_text(str(path))
            except ConfigError as exc:
                errors.append(str(exc))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(5)
        if reader.is_alive():  # blocked in open(): a writer lets it go
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            reader.join(5)
            pytest.fail("read_text waited for a writer of a FIFO")
        assert errors == [f"{path}: cannot read: not a regular file"]

    def test_endless_device_is_refused(self, tmp_path: Path) -> None:
        """A symlink to /dev/zero is refused before any byte is read."""
        path = tmp_path / "inetd.conf"
        path.symlink_to("/dev/zero")
        with pytest.raises(ConfigError, match=f"^{path}: cannot read: not a regular file$"):
            importer.read_text(str(path))

    def test_lines_split_at_newlines_only(self) -> None:
        """A form feed, a vertical tab or U+2028 stays in its line; CRLF ends a line."""
        text = "# a\x0cb\n#\x0bc\u2028d\r\nlast"
        assert list(importer.lines(text)) == [(1, "# a\x0cb"), (2, "#\x0bc\u2028d"), (3, "last")]


class TestConvert:
    def test_checked_as_sockd_check_does(self, tmp_path: Path) -> None:
        """A service `sockd check` would refuse stays a comment, with check's own reason."""
        text = (
            "echo stream tcp4 nowait nobody /bin/cat cat\n"
            "7 stream tcp4 nowait nobody /bin/cat cat\n"  # the same address again
            "discard stream tcp nowait no-such-user /bin/cat cat\n"
            "daytime stream tcp nowait nobody /nonexistent/prog prog\n"
        )
        result = inetd(tmp_path / "inetd.conf", text)
        assert [service["name"] for service in served(result)] == ["echo"]
        where = f"{tmp_path}/inetd.conf"
        assert result.problems == [
            (
                f"{where}:2: 7: kept as a comment: service '7': listen[0]: 0.0.0.0:7 overlaps"
                " 0.0.0.0:7 of service 'echo'"
            ),
            (
                f"{where}:3: discard: kept as a comment: service 'discard': user: no such user"
                " 'no-such-user'"
            ),
            (
                f"{where}:4: daytime: kept as a comment: service 'daytime': exec[0]:"
                " /nonexistent/prog: no such program"
            ),
        ]
        assert result.served == 1
        check(tmp_path, result)

    def test_names_made_valid_and_unique(self, tmp_path: Path) -> None:
        """Characters a name may not have become '-'; the same name twice gets a number."""
        text = f"{tmp_path}/a+b=c.sock stream unix nowait nobody /bin/cat cat\n"
        text += f"{tmp_path}/x/a+b=c.sock stream unix nowait nobody /bin/cat cat\n"
        text += f"{tmp_path}/y/a+b=c.sock stream unix nowait nobody /bin/cat cat\n"
        result = inetd(tmp_path / "inetd.conf", text)
        names = [service["name"] for service in served(result)]
        assert names == ["a-b-c.sock", "a-b-c.sock-unix", "a-b-c.sock-2"]
        check(tmp_path, result)
        rpc = inetd(tmp_path / "inetd.conf", "rstatd/1-3 dgram rpc/udp wait root /bin/cat cat\n")
        assert rpc.problems[0].startswith(f"{tmp_path}/inetd.conf:1: rstatd-1-3: ")

    def test_strings_are_escaped(self, tmp_path: Path) -> None:
        """Quotes and backslashes in arguments come back as written."""
        text = 'echo stream tcp nowait nobody /bin/echo echo "a\\b" \'c\n'
        result = inetd(tmp_path / "inetd.conf", text)
        assert served(result)[0]["exec"] == ["/bin/echo", '"a\\b"', "'c"]
        assert check(tmp_path, result).services[0].exec == ("/bin/echo", '"a\\b"', "'c")


class TestCommand:
    def test_everything_converted_exits_0(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Everything converted: exit 0, the TOML on stdout passes `sockd check`, no stderr."""
        (tmp_path / "inetd.conf").write_text("echo stream tcp nowait root internal\n")
        assert run_main(["import", "inetd", str(tmp_path / "inetd.conf")]) == 0
        out, err = capsys.readouterr()
        assert err == ""
        (tmp_path / "sockd.toml").write_text(out)
        assert run_main(["check", "--quiet", "--config", str(tmp_path / "sockd.toml")]) == 0

    def test_parts_left_as_comments_exit_1(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Parts left as comments: exit 1, a stderr line each, and the output still passes check."""
        text = "echo stream tcp nowait root internal\nrstatd/1-3 dgram rpc/udp wait root /bin/cat\n"
        (tmp_path / "inetd.conf").write_text(text)
        assert run_main(["import", "inetd", str(tmp_path / "inetd.conf")]) == 1
        out, err = capsys.readouterr()
        assert err == (
            f"sockd: {tmp_path}/inetd.conf:2: rstatd-1-3: rpc/udp: RPC services (through the"
            " portmapper) have no equivalent\n"
        )
        (tmp_path / "sockd.toml").write_text(out)
        assert run_main(["check", "--quiet", "--config", str(tmp_path / "sockd.toml")]) == 0

    def test_nothing_to_serve_exits_78(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Debian's xinetd files, all disabled: the services are printed as comments, exit 78."""
        conf = debian_xinetd(tmp_path)
        assert run_main(["import", "xinetd", str(conf)]) == 78
        out, err = capsys.readouterr()
        assert out.count("# [[service]]") == 17
        assert err == f"sockd: {conf}: no service left to serve (sockd check refuses that)\n"
        (tmp_path / "sockd.toml").write_text(out)
        assert run_main(["check", "--config", str(tmp_path / "sockd.toml")]) == 78
        assert "no [[service]] defined" in capsys.readouterr().err

    def test_debian_inetd_default_exits_78(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Debian's default inetd.conf enables nothing: exit 78, said in one line."""
        path = DATA / "openbsd-inetd" / "inetd.conf"
        assert run_main(["import", "inetd", str(path)]) == 78
        assert (
            capsys.readouterr().err
            == f"sockd: {path}: no service left to serve (sockd check refuses that)\n"
        )

    @pytest.mark.parametrize(
        ("kind", "text", "error"),
        [
            ("inetd", None, "nonexistent: cannot read: No such file or directory"),
            ("xinetd", "service echo\n{\n", "xinetd.conf:1: service echo: no closing '}'"),
            ("xinetd", b"# \xff\nservice \xff\n", "xinetd.conf:2: not UTF-8"),
        ],
    )
    def test_unreadable_or_unparsable_exits_78(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        kind: str,
        text: str | bytes | None,
        error: str,
    ) -> None:
        """A file that cannot be read or parsed: one line, exit 78, nothing on stdout."""
        path = tmp_path / (f"{kind}.conf" if text is not None else "nonexistent")
        if isinstance(text, bytes):
            path.write_bytes(text)
        elif text is not None:
            path.write_text(text)
        assert run_main(["import", kind, str(path)]) == 78
        out, err = capsys.readouterr()
        assert out == ""
        assert err == f"sockd: {tmp_path}/{error}\n"

    @pytest.mark.parametrize(
        "argv", [["import"], ["import", "rlinetd"], ["import", "inetd", "a", "b"]]
    )
    def test_usage_errors_exit_64(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A missing or unknown format, or two files: usage error, exit 64."""
        assert run_main(argv) == 64
        assert "usage: sockd" in capsys.readouterr().err

    def test_as_a_process(self, tmp_path: Path) -> None:
        """`python -m sockd import inetd FILE` prints the TOML and exits 0."""
        (tmp_path / "inetd.conf").write_text("daytime stream tcp6 nowait root internal\n")
        done = subprocess.run(
            [sys.executable, "-m", "sockd", "import", "inetd", str(tmp_path / "inetd.conf")],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (done.returncode, done.stderr) == (0, "")
        assert 'listen = ["[::]:13"]' in done.stdout
