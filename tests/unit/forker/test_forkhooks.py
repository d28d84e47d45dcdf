"""Tests of sockd.forker.forkhooks: threading's after-fork hook runs only when threads exist.

Each case runs in a fresh interpreter (`python -S`, as the forker runs), since
this one imported threading long ago. A child tells whether threading's hook
ran by its lock table: the hook replaces `_active_limbo_lock` with a new lock.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import sockd
from sockd.forker import forkhooks

SOURCE_ROOT = Path(sockd.__file__).parent.parent

# Prints, for one fork: whether the child rebuilt threading's state, and how
# many threads the child's threading module counts.
FORK_AND_REPORT = """
import os, threading

def fork_and_report():
    lock = threading._active_limbo_lock
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        rebuilt = threading._active_limbo_lock is not lock
        os.write(write_end, f"rebuilt={rebuilt} threads={threading.active_count()}".encode())
        os._exit(0)
    os.close(write_end)
    report = os.read(read_end, 100).decode()
    os.waitpid(pid, 0)
    return report
"""


def run(before: str, after: str) -> list[str]:
    """Run `before`, then FORK_AND_REPORT, then `after`; return the lines printed."""
    script = textwrap.dedent(before) + FORK_AND_REPORT + textwrap.dedent(after)
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        env={**os.environ, "PYTHONPATH": str(SOURCE_ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.splitlines()


def test_one_thread_skips_the_rebuild_and_threads_get_it() -> None:
    """One thread: the child keeps threading's state; with a second thread, it is rebuilt."""
    before = """
        from sockd.forker import forkhooks
        print(forkhooks.import_threading())
    """
    after = """
        forkhooks.note_threads()
        print(fork_and_report())
        started = threading.Event()
        stop = threading.Event()
        thread = threading.Thread(target=lambda: (started.set(), stop.wait()))
        thread.start()
        started.wait()
        forkhooks.note_threads()
        print(fork_and_report())
        stop.set()
        thread.join()
        forkhooks.note_threads()
        print(fork_and_report())
    """
    assert run(before, after) == [
        "True",
        "rebuilt=False threads=1",
        "rebuilt=True threads=1",  # the other thread is forgotten, as threading does
        "rebuilt=False threads=1",
    ]


def test_one_thread_runs_no_python_code_in_the_child() -> None:
    """One thread: no hook is registered, so a child calls no Python function after fork()."""
    before = """
        from sockd.forker import forkhooks
        forkhooks.import_threading()
    """
    after = """
        import sys
        forkhooks.note_threads()
        calls = []
        sys.setprofile(lambda f, event, _: event == "call" and calls.append(f.f_code.co_name))
        read_end, write_end = os.pipe()
        calls.clear()
        pid = os.fork()  # a C call: only the hooks it runs are Python calls
        if pid == 0:
            sys.setprofile(None)
            os.write(write_end, f"child calls={calls}".encode())
            os._exit(0)
        sys.setprofile(None)
        os.close(write_end)
        print(os.read(read_end, 1000).decode())
        os.waitpid(pid, 0)
    """
    assert run(before, after) == ["child calls=[]"]


def test_the_forker_imports_threading_without_the_hook() -> None:
    """Importing the forker's entry (`python -P -S -m sockd.forker` runs it) hides the hook."""
    assert run("import sockd.forker.start\n", "print(fork_and_report())\n") == [
        "rebuilt=False threads=1"
    ]


def test_too_late_once_threading_is_imported() -> None:
    """Where threading is imported already, its own hook stays: import_threading says so."""
    assert "threading" in sys.modules
    assert forkhooks.import_threading() is False
