"""Fixtures of the fault-injection suite, its `--soak` option and its one summary table.

Every scenario (churn, hostile clients, resource faults) records a `Row`
through the `scenario` fixture; the row's verdict is the test's outcome. A test
here that records none (the config and environment fuzzers) gets one row per
test function: its cases run and passed. The table is printed once, at the end
of the session.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from chaoslib import Row, table
from harness import Sockd, write_config

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator

    from _pytest.terminal import TerminalReporter

HERE = Path(__file__).parent
SHORT = 10.0
SOAK = 60.0
ROWS: dict[str, list[Row]] = {}  # by test node id, in the order the tests ran


@pytest.fixture
def churn_seconds(request: pytest.FixtureRequest) -> float:
    """How long the churn lasts: 10 s, or 60 s with `--soak` (tests/conftest.py adds it)."""
    return SOAK if request.config.getoption("--soak") else SHORT


@pytest.fixture
def scenario(request: pytest.FixtureRequest) -> Callable[[str], Row]:
    """Return a maker of summary rows for this test; each gets the test's verdict."""

    def make(name: str) -> Row:
        row = Row(name)
        ROWS.setdefault(request.node.nodeid, []).append(row)
        return row

    return make


@pytest.fixture
def root() -> None:
    """Fail unless root: these scenarios mount, change limits and users, make namespaces."""
    if os.geteuid() != 0:
        pytest.fail("this chaos scenario needs root (CI runs as root)")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Sockd]]:
    """Start sockd with a config text (JSON logs); every one is killed at teardown."""
    started: list[Sockd] = []

    def run(text: str, *args: str, **kwargs: object) -> Sockd:
        path = write_config(tmp_path / f"sockd-{len(started)}.toml", text)
        process = Sockd(
            ["run", "--config", path, "--log-format", "json", *args],
            tmp_path,
            **kwargs,  # type: ignore[arg-type]
        )
        started.append(process)
        process.wait_event("ready", timeout=30)
        return process

    yield run
    for process in started:
        process.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, None]:
    """Give the test's rows its outcome: pass, FAIL, xfail (a known defect) or skip."""
    outcome = yield
    report = outcome.get_result()
    if "scenario" not in getattr(item, "fixturenames", ()):
        _count_case(item, report)
        return
    rows = ROWS.get(item.nodeid, [])
    if not rows or (report.when != "call" and report.passed):
        return
    if hasattr(report, "wasxfail"):
        verdict = "xfail" if report.skipped else "XPASS"
    elif report.skipped:
        verdict = "skip"
    else:
        verdict = "pass" if report.passed else "FAIL"
    for row in rows:
        if report.when == "call" or verdict != "pass":
            row.verdict = verdict


def _count_case(item: pytest.Item, report: pytest.TestReport) -> None:
    """Sum up the cases of a test that records no row (a fuzzer): one row per test function."""
    if item.path.parent != HERE or (report.when != "call" and report.passed):
        return
    name = getattr(item, "originalname", item.name)
    (row,) = ROWS.setdefault(f"{item.path}::{name}", [Row(name, note="cases: run / passed")])
    row.attempted += 1
    row.served += report.passed
    row.lost += report.failed
    row.verdict = "FAIL" if row.lost else "pass"


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Print the summary table once, after every test ran."""
    rows = [row for rows in ROWS.values() for row in rows]
    if not rows:
        return
    terminalreporter.write_sep("=", "chaos summary")
    for line in table(rows):
        terminalreporter.write_line(line)
