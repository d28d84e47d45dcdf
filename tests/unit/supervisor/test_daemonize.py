"""Tests of sockd.supervisor.daemonize: the files sockd opens as root before detaching."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

import pytest

from sockd.errors import OSFailure
from sockd.supervisor import daemonize

if TYPE_CHECKING:
    from pathlib import Path


class TestOpenLogFile:
    def test_new_file_is_0640_and_appended_to(self, tmp_path: Path) -> None:
        """A new log file gets mode 0640; an existing one is appended to."""
        path = tmp_path / "sockd.log"
        old_umask = os.umask(0)
        try:
            with daemonize.open_log_file(str(path)) as log:
                log.write("one\n")
        finally:
            os.umask(old_umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        with daemonize.open_log_file(str(path)) as log:
            log.write("two\n")
        assert path.read_text() == "one\ntwo\n"

    def test_symlink_is_not_followed(self, tmp_path: Path) -> None:
        """A symlink is refused, whatever it points to, and its target is untouched."""
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        (tmp_path / "sockd.log").symlink_to(victim)
        with pytest.raises(OSFailure) as caught:
            daemonize.open_log_file(str(tmp_path / "sockd.log"))
        assert str(caught.value) == (
            f"--log-file {tmp_path}/sockd.log: cannot open: is a symbolic link (not followed)"
        )
        assert caught.value.exit_code == 71
        assert victim.read_text() == "precious\n"

    def test_dangling_symlink_creates_nothing(self, tmp_path: Path) -> None:
        """A symlink to a file yet to exist is refused too: O_CREAT does not make its target."""
        (tmp_path / "sockd.log").symlink_to(tmp_path / "made-by-root")
        with pytest.raises(OSFailure, match="is a symbolic link"):
            daemonize.open_log_file(str(tmp_path / "sockd.log"))
        assert not (tmp_path / "made-by-root").exists()

    def test_fifo_neither_blocks_nor_is_taken(self, tmp_path: Path) -> None:
        """A FIFO with no reader would block the open for ever: it is refused at once."""
        os.mkfifo(tmp_path / "sockd.log")
        with pytest.raises(OSFailure, match=r"sockd\.log: cannot open"):
            daemonize.open_log_file(str(tmp_path / "sockd.log"))

    def test_fifo_with_a_reader_is_not_a_regular_file(self, tmp_path: Path) -> None:
        """A FIFO someone reads is refused as not a regular file."""
        os.mkfifo(tmp_path / "sockd.log")
        reader = os.open(tmp_path / "sockd.log", os.O_RDONLY | os.O_NONBLOCK)
        try:
            with pytest.raises(OSFailure, match="cannot open: not a regular file"):
                daemonize.open_log_file(str(tmp_path / "sockd.log"))
        finally:
            os.close(reader)

    def test_hard_link_is_refused(self, tmp_path: Path) -> None:
        """A second name of another file (a hard link) is refused."""
        other = tmp_path / "other"
        other.write_text("x\n")
        os.link(other, tmp_path / "sockd.log")
        with pytest.raises(OSFailure, match="has 2 hard links"):
            daemonize.open_log_file(str(tmp_path / "sockd.log"))
        assert other.read_text() == "x\n"


class TestPidFile:
    def test_read_pid(self, tmp_path: Path) -> None:
        """A pid file's first line is its pid; garbage is none."""
        path = tmp_path / "sockd.pid"
        path.write_text("1234\n")
        assert daemonize._read_pid(str(path)) == 1234
        path.write_text("\u00b2\n")
        assert daemonize._read_pid(str(path)) is None

    def test_symlink_is_not_read(self, tmp_path: Path) -> None:
        """A pid file that is a symlink is not read through (as root, any file's first line)."""
        secret = tmp_path / "secret"
        secret.write_text("4321\n")
        (tmp_path / "sockd.pid").symlink_to(secret)
        assert daemonize._read_pid(str(tmp_path / "sockd.pid")) is None
