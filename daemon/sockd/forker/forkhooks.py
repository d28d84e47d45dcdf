"""threading's after-fork hook in the forker: run only when there are threads to forget.

CPython's threading module registers a hook with `os.register_at_fork`: after
every fork, the child rebuilds threading's locks and its table of threads.
The child of a forker that runs one thread has nothing to rebuild, and the
rebuild writes to about 110 memory pages that the child shares with the
forker, each a copy-on-write fault: measured on the benchmark machine, 110
of a child's 255 faults and 290 of its 990 µs of CPU.

`import_threading()` runs first in the forker, before anything imports
threading (socketserver does): it imports threading with the registration
hidden. `note_threads()`, after each import of handlers, registers
`_after_fork_in_child` once the forker has other threads (a handler module
started one at import): it runs threading's own hook while they run. With
one thread no hook is registered at all, so a child calls no Python code
after fork(): measured with bench/faults.py (2026-12-03), hiding threading's
hook takes a child from 239 faults to 144 on CPython 3.11.7 and from 206 to
120 on 3.13.0; registering nothing instead of a hook that returns at once
saves a child 5 more on 3.11.7 (the forker takes 2 or 3 more), and the
forker 10 on 3.13.0 (a child 3).
"""

from __future__ import annotations

import os
import sys

_threads = False  # the forker runs threads besides its main one
_registered = False  # _after_fork_in_child is registered


def import_threading() -> bool:
    """Import threading without its after-fork hook; False if it was imported already."""
    if "threading" in sys.modules:
        return False  # too late: its own hook stays, correct and only slower
    register = os.register_at_fork
    del os.register_at_fork  # threading registers its hook only if this exists
    try:
        import threading  # noqa: F401, PLC0415 (the one import this module is for)
    finally:
        os.register_at_fork = register
    return True


def note_threads() -> None:
    """Record whether the forker runs other threads (call after importing handlers)."""
    global _threads, _registered  # noqa: PLW0603 (flags the hook reads in each child)
    _threads = sys.modules["threading"].active_count() > 1
    if _threads and not _registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _registered = True


def _after_fork_in_child() -> None:
    if _threads:
        sys.modules["threading"]._after_fork()  # noqa: SLF001 (the hook threading would have run)
