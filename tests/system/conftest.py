"""Fixtures of the system tests: sockd's .deb, installed in a freshly booted systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from harness import TESTS
from nspawn import HANDLERS_DIR, Container, rootfs

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = TESTS.parent
SETUP_TIMEOUT = 300


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test here as a system test; the first one may build the rootfs (30-60 s)."""
    for item in items:
        if Path(item.path).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.timeout(SETUP_TIMEOUT))


@pytest.fixture(scope="session")
def deb() -> Path:
    """Build the package from this tree (scripts/build-deb: dpkg-buildpackage, lintian)."""
    if os.geteuid() != 0 or shutil.which("systemd-nspawn") is None:
        pytest.fail("the system tests need root and systemd-nspawn: run `make test` as root")
    result = subprocess.run(
        [str(REPO / "scripts/build-deb")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (package,) = (REPO / "dist").glob("sockd_*_all.deb")
    return package


@pytest.fixture(scope="session")
def root(deb: Path) -> Path:
    """Return the container's rootfs, cached across runs (after `deb`, which checks for root)."""
    assert deb.exists()
    return rootfs()


@pytest.fixture
def machine(deb: Path, root: Path, tmp_path: Path) -> Iterator[Container]:
    """Boot a fresh container and install sockd with apt, as an administrator would."""
    container = Container(f"sockd-{os.getpid()}", deb.parent, tmp_path)
    try:
        container.boot(root)
        container.run("apt-get", "install", "-y", "-q", f"/mnt/share/{deb.name}", timeout=120)
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
