"""The docs against the code: every event sockd logs is in README's table and sockd(8)'s list.

The events are read from the source: the first argument of a logger's call
(`log.info("ready", ...)`, `info_many`, `getattr(log, level)(...)`), and a
name that follows a level in a call or a record (`report("info", "x", ...)`,
`("log", "info", "handler_stderr", ...)`).
"""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import sockd

PACKAGE = Path(sockd.__file__).parent
ROOT = Path(__file__).resolve().parents[2]  # the repository: README.md, docs/
LEVELS = {"debug", "info", "warning", "error", "critical"}
NAME = re.compile(r"[a-z]+(?:_[a-z]+)*")


def _is_level(node: ast.expr) -> bool:
    """Tell whether `node` is a level: "info", or `"warning" if failed else "info"`."""
    if isinstance(node, ast.IfExp):
        return _is_level(node.body) and _is_level(node.orelse)
    return isinstance(node, ast.Constant) and node.value in LEVELS


def _name(node: ast.expr) -> str | None:
    """Return the event name `node` is, if it is one."""
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, str) and NAME.fullmatch(value) and value not in LEVELS:
        return value
    return None


def _logger_call(call: ast.Call) -> bool:
    """Tell whether `call` logs: `x.info(...)`, `info_many(...)`, `getattr(log, level)(...)`."""
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr in LEVELS or func.attr == "info_many"
    if isinstance(func, ast.Name):
        return func.id == "info_many"
    return isinstance(func, ast.Call) and ast.unparse(func.func) == "getattr"


def emitted() -> dict[str, str]:
    """Return every event the code logs, with where it is first found."""
    events: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        slots = {  # attribute names, not a record: ("error", "fds") names no event
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
        }
        for node in ast.walk(tree):
            if id(node) in slots:
                continue
            if isinstance(node, ast.Call):
                values = node.args
                names = [_name(node.args[0])] if node.args and _logger_call(node) else []
            elif isinstance(node, ast.Tuple):
                values, names = node.elts, []
            else:
                continue
            pairs = itertools.pairwise(values)
            names += [_name(after) for before, after in pairs if _is_level(before)]
            for name in filter(None, names):
                events.setdefault(name, f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return events


def readme_events() -> set[str]:
    """Return the events of README's table under "## Logs" (a `a` / `b` row names two)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| event | level | fields |") :].split("\n\n", 1)[0]
    rows = table.splitlines()[2:]
    return {name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def man_events() -> set[str]:
    """Return the events sockd(8) lists under LOGGING ("The events are ...")."""
    text = (ROOT / "docs" / "man" / "sockd.8").read_text()
    listing = text[text.index("The events are") :].split("\n.PP", 1)[0]
    listing = listing[: listing.index("Each line")]
    return set(re.findall(r"^\.BR? \\?%?([a-z_]+)", listing, re.MULTILINE))


def test_the_events_are_found_in_the_code() -> None:
    """The search finds events of each kind of call: a logger's, a report, a record."""
    events = emitted()
    assert {"starting", "forker_retired", "connection_closed"} <= events.keys()  # loggers
    assert {"worker_crashed", "worker_exited", "stop_timeout"} <= events.keys()  # reports
    assert "handler_stderr" in events  # a record
    assert not {"info", "log", "service", "handler"} & events.keys()


def test_readme_lists_every_event_logged() -> None:
    """README's table of events is the code's events, no more, no fewer."""
    events = emitted()
    assert {name: events[name] for name in events.keys() - readme_events()} == {}
    assert readme_events() - events.keys() == set()


def test_the_man_page_lists_every_event_logged() -> None:
    """sockd(8)'s list of events is the code's events, no more, no fewer."""
    events = emitted()
    assert {name: events[name] for name in events.keys() - man_events()} == {}
    assert man_events() - events.keys() == set()
