"""CPython's own test_socketserver passes with sockd's forking classes in socketserver's place.

See tests/stdlib/README.md: the runner, the vendored files and what passing means.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sockd

STDLIB = Path(__file__).parent.parent / "stdlib"
RUNNER = STDLIB / "run_socketserver.py"
VERSIONS = ("3.11", "3.13")


def version_of(python: str) -> str | None:
    """Return the `major.minor` of interpreter `python`, or None if it does not run."""
    try:
        found = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip()


def interpreters(version: str) -> list[str]:
    """Return the interpreters of `version` here: the suite's first, each binary once."""
    candidates = [sys.executable]
    candidates += [shutil.which(f"python{version}") or "", f"/usr/bin/python{version}"]
    candidates += ["/usr/bin/python3", shutil.which("python3") or ""]
    for root in (os.path.expanduser("~/.pyenv"), os.environ.get("PYENV_ROOT", "")):
        if root:
            candidates += sorted(glob.glob(f"{root}/versions/{version}*/bin/python{version}"))
    found: list[str] = []
    binaries: set[str] = set()
    for python in candidates:
        if not python or not os.path.exists(python):
            continue
        binary = os.path.realpath(python)
        if binary in binaries:
            continue
        binaries.add(binary)
        if version_of(python) == version:
            found.append(python)
    return found


def run(python: str, version: str, cwd: Path) -> None:
    """Run the vendored test file of `version` under `python`; fail unless the runner passes."""
    test_file = STDLIB / f"cpython-{version}" / "test_socketserver.py"
    env = dict(os.environ, PYTHONPATH=str(Path(sockd.__file__).parent.parent))
    done = subprocess.run(
        [python, str(RUNNER), str(test_file)],
        capture_output=True,
        text=True,
        cwd=cwd,  # the tests write os_helper.TESTFN in the current directory
        env=env,
        timeout=240,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"{python}: no summary\n{done.stderr[-3000:]}"
    problems = json.loads(lines[-1])["problems"]
    assert done.returncode == 0, f"{python}: {problems}\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("version", VERSIONS)
def test_cpython_socketserver_tests_pass(version: str, tmp_path: Path) -> None:
    """The forking tests of CPython's test_socketserver pass with sockd's classes substituted."""
    found = interpreters(version)
    if not found:
        pytest.skip(f"no Python {version} on this machine: CPython {version}'s tests did not run")
    for python in found:
        run(python, version, tmp_path)  # asserts the runner passed


def test_runner_sees_a_failed_substitution(tmp_path: Path) -> None:
    """The runner fails when the tests would use the real socketserver (so it can fail)."""
    test_file = tmp_path / "test_fake.py"
    test_file.write_text("import socketserver\nimport unittest\n")
    env = dict(os.environ, PYTHONPATH=str(Path(sockd.__file__).parent.parent))
    done = subprocess.run(
        [sys.executable, str(RUNNER), str(test_file)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    problems = json.loads(done.stdout.strip().splitlines()[-1])["problems"]
    assert "the test file's ForkingErrorTestServer does not use sockd's ForkingMixIn" in problems
    assert "test_forking_handled: did not run" in problems
