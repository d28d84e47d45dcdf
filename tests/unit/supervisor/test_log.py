"""Tests of sockd.supervisor.log: JSON lines, journald priority prefixes, exceptions as data."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import pytest
import structlog

from sockd.supervisor import log

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)
    structlog.reset_defaults()


def read_lines(fd: int) -> list[str]:
    return os.read(fd, 65536).decode().splitlines()


class TestConfigure:
    def test_json_line_per_event(self, pipe: tuple[int, int]) -> None:
        """Each event is one JSON line with timestamp, level, event and our pid first."""
        log.configure("json", fd=pipe[1])
        structlog.get_logger().info("ready", service="echo", note="two\nlines")
        (line,) = read_lines(pipe[0])
        record = json.loads(line)
        assert list(record)[:3] == ["timestamp", "level", "event"]
        assert record["event"] == "ready"
        assert record["level"] == "info"
        assert record["pid"] == os.getpid()
        assert record["note"] == "two\nlines"

    def test_event_pid_is_kept(self, pipe: tuple[int, int]) -> None:
        """An event about a child (connection_closed) keeps the child's pid."""
        log.configure("json", fd=pipe[1])
        structlog.get_logger().info("connection_closed", pid=42)
        assert json.loads(read_lines(pipe[0])[0])["pid"] == 42

    def test_journal_prefix(self, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
        """When stderr is the journal stream, lines start with the syslog priority."""
        info = os.fstat(pipe[1])
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        log.configure("json", fd=pipe[1])
        logger = structlog.get_logger()
        logger.error("handler_error")
        logger.info("ready")
        logger.warning("stop_timeout")
        error, info_line, warning = read_lines(pipe[0])
        assert error.startswith('<3>{"timestamp"')
        assert info_line.startswith("<6>{")
        assert warning.startswith("<4>{")

    def test_no_prefix_for_another_stream(
        self, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A JOURNAL_STREAM naming another file (inherited by a child) adds no prefix."""
        monkeypatch.setenv("JOURNAL_STREAM", "1:2")
        log.configure("json", fd=pipe[1])
        structlog.get_logger().info("ready")
        assert read_lines(pipe[0])[0].startswith("{")

    @pytest.mark.parametrize("value", ["\u00b2:1", "1:\u00b2", "9" * 5000 + ":1", ":", "1", ""])
    def test_garbled_journal_stream_is_not_the_journal(
        self, pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        """A JOURNAL_STREAM that is not two ASCII numbers is no journal (it crashed at start)."""
        monkeypatch.setenv("JOURNAL_STREAM", value)
        assert not log.stderr_is_journal(pipe[1])

    def test_console_format(self, pipe: tuple[int, int]) -> None:
        """The console format is readable text, not JSON."""
        log.configure("console", fd=pipe[1])
        structlog.get_logger().info("ready", service="echo")
        (line,) = read_lines(pipe[0])
        assert "ready" in line
        assert "service=echo" in line
        assert not line.startswith("{")

    def test_a_float_that_is_not_finite_stays_json(self, pipe: tuple[int, int]) -> None:
        """NaN and infinities (not JSON) are written as text: the line still parses."""
        log.configure("json", fd=pipe[1])
        structlog.get_logger().info("odd", value=float("nan"), deep={"x": [float("-inf")]})
        record = json.loads(read_lines(pipe[0])[0])
        assert (record["value"], record["deep"]) == ("nan", {"x": ["-inf"]})

    def test_console_prints_an_exception_given_as_data(self, pipe: tuple[int, int]) -> None:
        """A handler_error's `exception` (a dict) and a stray `exc_info` never break the console."""
        log.configure("console", fd=pipe[1])
        exception = {"type": "ValueError", "message": "boom", "frames": []}
        structlog.get_logger().error("handler_error", exception=exception, exc_info=(1, 2, 3))
        text = "\n".join(read_lines(pipe[0]))
        assert "handler_error" in text
        assert "ValueError" in text


class TestBatched:
    def test_lines_wait_for_the_end_of_the_batch_then_go_out_whole(self) -> None:
        """Inside batched(), nothing is written; at its end every line is, in order."""
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        try:
            log.configure("json", write_end)
            logger = structlog.get_logger().bind()
            with log.batched():
                logger.info("first", n=1)
                logger.info("second", n=2)
                with pytest.raises(BlockingIOError):
                    os.read(read_end, 4096)
            lines = os.read(read_end, 4096).decode().splitlines()
        finally:
            os.close(read_end)
            os.close(write_end)
            log.configure("json")
        assert [json.loads(line)["event"] for line in lines] == ["first", "second"]


class TestInfoMany:
    FIELDS = (
        {"service": "echo", "client": "unix:uid=0,pid=1", "pid": 7, "signal": None, "d": 0.5},
        {"service": 'q"uote\nline', "client": "[::1]:2", "worker": True},  # our pid is added
        {"service": "x", "level": "odd", "timestamp": "mine"},  # fields that replace the head's
        {"service": "x", "other": object()},  # what is not JSON is logged as its repr
    )

    @pytest.mark.parametrize("journal", [False, True])
    def test_json_lines_are_structlogs(
        self, pipe: tuple[int, int], journal: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each line is the one structlog renders, but for the time; to the journal, <6> first."""
        if journal:
            info = os.fstat(pipe[1])
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        log.configure("json", fd=pipe[1])
        log.info_many("connection_closed", (dict(fields) for fields in self.FIELDS))
        fast = read_lines(pipe[0])
        logger = structlog.get_logger()
        for fields in self.FIELDS:
            logger.info("connection_closed", **fields)
        slow = read_lines(pipe[0])
        assert len(fast) == len(slow) == len(self.FIELDS)
        for ours, theirs in zip(fast, slow, strict=True):
            assert ours.startswith("<6>{" if journal else "{")
            ours_record = json.loads(ours.removeprefix("<6>"))
            theirs_record = json.loads(theirs.removeprefix("<6>"))
            if theirs_record["timestamp"] != "mine":
                ours_record["timestamp"] = theirs_record["timestamp"]
            assert list(ours_record.items()) == list(theirs_record.items())
        assert json.loads(fast[1].removeprefix("<6>"))["pid"] == os.getpid()

    def test_console_goes_through_structlog(self, pipe: tuple[int, int]) -> None:
        """Another format is structlog's own rendering, one line per event."""
        log.configure("console", fd=pipe[1])
        log.info_many("connection_closed", [{"service": "echo"}, {"service": "time"}])
        lines = read_lines(pipe[0])
        assert len(lines) == 2
        assert "connection_closed" in lines[0]
        assert "service=time" in lines[1]
