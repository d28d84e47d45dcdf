"""threading's after-fork hook in the forker: run only when there are threads to forget.

CPython's threading module registers a hook with `os.register_at_fork`: after
every fork, the child rebuilds threading's locks and its table of threads.
The child of a forker that runs one thread has nothing to rebuild, and the
rebuild writes to about 110 memory pages that the child shares with the
forker, each a copy-on-write fault: measured on the benchmark machine, 110
of a child's 255 faults and 290 of its 990 µs of CPU. Measured again with
bench/faults.py (2026-12-03): a child's faults from 239 to 145 on CPython
3.11.7, from 206 to 121 on 3.13.0 (the forker takes 5 and 12 more itself):
the forker's biggest saving, on both.

`import_threading()` runs first in the forker, before anything imports
threading (socketserver does): it imports threading with the registration
hidden, and registers `_after_fork_in_child` instead. That runs threading's
own hook when the forker had other threads at fork time (a handler module
started one at import), as `note_threads()` recorded after each import of
handlers.
"""

from __future__ import annotations

import os
import sys

_threads = False  # the forker runs threads besides its main one


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
    os.register_at_fork(after_in_child=_after_fork_in_child)
    return True


def note_threads() -> None:
    """Record whether the forker runs other threads (call after importing handlers)."""
    global _threads  # noqa: PLW0603 (one flag the hook reads in each child)
    _threads = sys.modules["threading"].active_count() > 1


def _after_fork_in_child() -> None:
    if _threads:
        sys.modules["threading"]._after_fork()  # noqa: SLF001 (the hook threading would have run)
