"""Run CPython's own test_socketserver with sockd's forking classes in socketserver's place.

Usage: `python run_socketserver.py TEST_FILE` (sockd importable, through PYTHONPATH).

The test file is imported with `socketserver` resolved to a copy of the
module whose ForkingMixIn and forking servers (ForkingTCPServer,
ForkingUnixStreamServer, ForkingUDPServer, ForkingUnixDatagramServer) are
sockd's (the real module is back in sys.modules once the file is imported, so
sockd itself, and anything else, keeps the real one). The file's own forking
classes, built from `socketserver.ForkingMixIn`, then use sockd's mix-in.
Every test runs; the run passes when the substitution took, the forking tests
ran and passed (none skipped), and nothing else failed but `test_all`, which
fails by design under any substitution: it checks that each public name of
socketserver is defined in socketserver itself.

Prints one JSON summary line; exit status 0 when it passes, 1 otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import unittest

FORKING_TESTS = {
    "test_ForkingTCPServer",
    "test_ForkingUDPServer",
    "test_ForkingUnixDatagramServer",
    "test_ForkingUnixStreamServer",
    "test_forking_handled",
    "test_forking_not_handled",
}
FAILS_BY_DESIGN = {"test_all"}
SERVERS = (
    "ForkingTCPServer",
    "ForkingUnixStreamServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
)


def substituted_socketserver() -> object:
    """Return a fresh copy of socketserver, with sockd's forking classes in it."""
    import sockd.server  # noqa: PLC0415 (imported with the real socketserver in place)

    spec = importlib.util.find_spec("socketserver")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("ForkingMixIn", *SERVERS):
        setattr(module, name, getattr(sockd.server, name))
    return module


def import_tests(path: str) -> object:
    """Import the test file at `path`, with `socketserver` resolved to the substituted copy."""
    real = sys.modules.get("socketserver")
    sys.modules["socketserver"] = substituted_socketserver()  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location("test_socketserver", path)
        assert spec is not None
        assert spec.loader is not None
        tests = importlib.util.module_from_spec(spec)
        sys.modules["test_socketserver"] = tests
        spec.loader.exec_module(tests)
    finally:
        if real is None:
            del sys.modules["socketserver"]
        else:
            sys.modules["socketserver"] = real
    return tests


def substitution_problems(tests: object) -> list[str]:
    """Return what shows that the tests would not exercise sockd's classes (nothing, if they do)."""
    import sockd.server  # noqa: PLC0415

    mixin = sockd.server.ForkingMixIn
    problems = []
    copy = getattr(tests, "socketserver", None)
    if copy is None or copy is sys.modules.get("socketserver"):
        problems.append("the test file uses the real socketserver module")
    elif getattr(copy, "ForkingMixIn", None) is not mixin:
        problems.append("socketserver.ForkingMixIn is not sockd's")
    else:
        problems += [
            f"socketserver.{name} is not sockd's"
            for name in ("ForkingTCPServer", "ForkingUDPServer")
            if getattr(copy, name, None) is not getattr(sockd.server, name)
        ]
    # The file's own classes: 3.11 defines the UNIX ones, 3.13 takes socketserver's.
    for name in ("ForkingUnixStreamServer", "ForkingUnixDatagramServer", "ForkingErrorTestServer"):
        cls = getattr(tests, name, None) or getattr(copy, name, None)
        if not isinstance(cls, type) or not issubclass(cls, mixin):
            problems.append(f"the test file's {name} does not use sockd's ForkingMixIn")
    return problems


class Outcomes(unittest.TextTestResult):
    """A text result that also keeps each test's outcome by its method name."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.outcomes: dict[str, str] = {}

    def _note(self, test: unittest.TestCase, outcome: str) -> None:
        name = getattr(test, "_testMethodName", str(test))
        self.outcomes[name] = outcome

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802 (unittest's name)
        super().addSuccess(test)
        self._note(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: object) -> None:  # noqa: N802
        super().addFailure(test, err)  # type: ignore[arg-type]
        self._note(test, "failed")

    def addError(self, test: unittest.TestCase, err: object) -> None:  # noqa: N802
        super().addError(test, err)  # type: ignore[arg-type]
        self._note(test, "error")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._note(test, "skipped")


def main() -> int:
    """Run the file named on the command line; print the summary; return the exit status."""
    path = sys.argv[1]
    tests = import_tests(path)
    problems = substitution_problems(tests)
    suite = unittest.defaultTestLoader.loadTestsFromModule(tests)  # type: ignore[arg-type]
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=Outcomes)
    result = runner.run(suite)
    assert isinstance(result, Outcomes)
    outcomes = result.outcomes
    for name in sorted(FORKING_TESTS):
        if outcomes.get(name) != "passed":
            problems.append(f"{name}: {outcomes.get(name, 'did not run')}")
    for name, outcome in sorted(outcomes.items()):
        if outcome in ("failed", "error") and name not in FAILS_BY_DESIGN | FORKING_TESTS:
            problems.append(f"{name}: {outcome}")
    summary = {
        "python": sys.version.split()[0],
        "file": path,
        "ran": result.testsRun,
        "outcomes": outcomes,
        "problems": problems,
    }
    print(json.dumps(summary))  # noqa: T201 (the runner's report)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
