"""The code's layout by process: the daemon's side and the forker's never import each other.

`sockd.supervisor` runs in the daemon, `sockd.forker` in the forker and its
children; the leaves (`sockd/*.py`, `sockd.handlers`) serve both and import
neither. Read from the source (every import, guarded by TYPE_CHECKING or not),
so a violation fails here before it costs a fork anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sockd

PACKAGE = Path(sockd.__file__).parent
# Modules nothing the forker loads may import at run time: each is memory in every fork.
HEAVY = {"structlog", "typing", "tomllib", "ipaddress", "dataclasses", "json", "sdnotify", "daemon"}
# The library's servers import these in the methods that use them (handle_error),
# which the forker's ServiceServer never calls.
LAZY = {"sockd.server": {"structlog", "sdnotify"}}


def side(module: str) -> str:
    """Return which process runs `module`: supervisor, forker or leaf (both)."""
    parts = module.split(".")
    if module == "sockd.__main__":
        return "supervisor"  # `python -m sockd`: the daemon's entry point
    if len(parts) > 1 and parts[1] in ("supervisor", "forker"):
        return parts[1]
    return "leaf"


def modules() -> dict[str, Path]:
    """Return every module of the package by its dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(path: Path, *, run_time_only: bool = False) -> set[str]:
    """Return the modules `path` imports (with `run_time_only`, not those under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    guarded: set[int] = set()
    if run_time_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                guarded |= {id(child) for child in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sockd_imports(path: Path) -> set[str]:
    """Return the sockd modules `path` imports (`from sockd import x` counts as sockd.x)."""
    known = modules()
    return {name for name in imports(path) if name in known}


MODULES = modules()


def test_the_sides_are_what_the_tests_think() -> None:
    """The package has the three kinds of module this test checks (so it checks something)."""
    sides = {side(name) for name in MODULES}
    assert sides == {"supervisor", "forker", "leaf"}
    assert "sockd.forker.loop" in MODULES
    assert "sockd.supervisor.loop" in MODULES


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_reaches_across(name: str) -> None:
    """A module imports its own side and the leaves only; a leaf imports leaves only."""
    mine = side(name)
    allowed = {mine, "leaf"} if mine != "leaf" else {"leaf"}
    crossing = {other for other in sockd_imports(MODULES[name]) if side(other) not in allowed}
    assert crossing == set(), f"{name} ({mine}) imports {sorted(crossing)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if side(n) != "supervisor"))
def test_nothing_heavy_where_the_forker_runs(name: str) -> None:
    """The forker's modules and the leaves import nothing heavy at run time."""
    heavy = {
        module
        for module in imports(MODULES[name], run_time_only=True)
        if module.split(".")[0] in HEAVY - LAZY.get(name, set())
    }
    assert heavy == set(), f"{name} imports {sorted(heavy)}"


def test_the_checks_catch_a_crossing(tmp_path: Path) -> None:
    """A forker module importing the daemon's side, or structlog, is seen (the checks can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from typing import TYPE_CHECKING\n"
        "import structlog\n"
        "from sockd.supervisor import config\n"
        "if TYPE_CHECKING:\n    import ipaddress\n"
    )
    assert "sockd.supervisor.config" in sockd_imports(bad)
    assert side("sockd.supervisor.config") == "supervisor"
    run_time = imports(bad, run_time_only=True)
    assert "structlog" in run_time
    assert "ipaddress" not in run_time
    assert "typing" in run_time  # `from typing import TYPE_CHECKING` is an import of typing
