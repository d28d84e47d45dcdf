"""Fixtures of the system tests: sockd's .deb, installed in a freshly booted systemd.

Every test that boots a container runs once per supported Debian release
(`suite`), with the package built in and for that release.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS
from nspawn import HANDLERS_DIR, SUITES, Container, rootfs

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = TESTS.parent
DIST = REPO / "dist"
# The first test of a release may make its build root and its rootfs (about
# 45 s each) and build the package (about 25 s).
SETUP_TIMEOUT = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here as a system test; the first of a release builds (SETUP_TIMEOUT)."""
    for item in items:
        if Path(item.path).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.timeout(SETUP_TIMEOUT))


@pytest.fixture(scope="session", params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    """Return the Debian release under test (pytest runs one release's tests, then the next's)."""
    return str(request.param)


@functools.cache
def build(suite: str) -> Path:
    """Build the package from this tree in a root of `suite`, once a session (build-deb --suite)."""
    result = subprocess.run(
        [str(REPO / "scripts/build-deb"), "--suite", suite],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (package,) = (DIST / suite).glob("sockd_*_all.deb")
    return package


@pytest.fixture(scope="session")
def builder() -> Callable[[str], Path]:
    """Return `build`: the package of any release, in dist/SUITE/ (/mnt/share/SUITE/ inside)."""
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None:
        pytest.fail("the system tests need root and systemd-nspawn: run `make test` as root")
    return build


@pytest.fixture(scope="session")
def deb(suite: str, builder: Callable[[str], Path]) -> Path:
    """Return the package built for `suite` (in dist/SUITE/: /mnt/share/SUITE/ in a container)."""
    return builder(suite)


@pytest.fixture(scope="session")
def root(suite: str, deb: Path) -> Path:
    """Return the rootfs of `suite`, cached across runs (after `deb`, which checks for root)."""
    assert deb.exists()
    return rootfs(suite)


@pytest.fixture
def machine(suite: str, deb: Path, root: Path, tmp_path: Path) -> Iterator[Container]:
    """Boot a fresh container and install sockd with apt, as an administrator would."""
    container = Container(f"sockd-{os.getpid()}", DIST, tmp_path)
    try:
        container.boot(root)
        container.run(
            "apt-get", "install", "-y", "-q", f"/mnt/share/{suite}/{deb.name}", timeout=120
        )
        container.write(
            f"{HANDLERS_DIR}/support_handlers.py", (TESTS / "support_handlers.py").read_text()
        )
        yield container
    finally:
        if container.leader:
            print(  # noqa: T201 (shown with a failing test's output)
                container.run("journalctl", "-b", "--no-pager", "-n", "80", check=False).stdout
            )
        container.shutdown()
