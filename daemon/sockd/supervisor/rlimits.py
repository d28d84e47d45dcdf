"""A program's resource limits (a service's `rlimits`) as written: read and checked in the daemon.

The daemon (and `check`, `import`) reads each value with `parse` and refuses
one above its own hard limit (`beyond_hard`): the forker, which may lack
CAP_SYS_RESOURCE, could not raise it. The forker sets them (soft and hard
alike, as xinetd does) in a program's forked child, before it changes
identity and execs (`sockd.forker.programs`); it never imports this module.
"""

from __future__ import annotations

import resource

from sockd.spec import RLIMITS

RESOURCES = RLIMITS  # the config's names, and their resources
SIZES = ("as", "core", "data", "fsize", "rss", "stack")  # bytes: may end in K, M or G
UNLIMITED = ("unlimited", "infinity")  # any case: RLIM_INFINITY
SUFFIXES = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Below RLIM_INFINITY, as the C library's 64-bit rlim_t holds it (Python's -1).
MAX_VALUE = (1 << 63) - 1
_MAX_TEXT = 32  # characters of a value written as a string
# The least of each a program can start with: 0 means none only for core files and files
# written; a CPU limit of 0 kills at the first tick, and a dynamic program's loader needs
# a fourth descriptor. The others: at least 1 (xinetd takes 0 as "not set": sockd refuses it).
MINIMUMS = {"core": 0, "fsize": 0, "files": 4}


def parse(name: str, value: object) -> int | None:
    """Return the limit `value` (as written for `rlimits.NAME`) sets; None: unlimited.

    Raises:
        ValueError: not a limit for `name`; the message says why, in one line.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        msg = f"expected an integer or a string, got {type(value).__name__}"
        raise ValueError(msg)  # noqa: TRY004 (one exception for every value the file may hold)
    limit = _parse_text(name, value) if isinstance(value, str) else value
    least = MINIMUMS.get(name, 1)
    if limit is not None and limit < least:
        raise ValueError(f'must be at least {least} (or "unlimited"), got {limit}')
    if limit is not None and limit > MAX_VALUE:
        raise ValueError(f'must be at most {MAX_VALUE} (or "unlimited")')
    return limit


def _parse_text(name: str, text: str) -> int | None:
    if text.lower() in UNLIMITED:
        return None
    digits, multiplier = text, 1
    if text[-1:].upper() in SUFFIXES:
        if name not in SIZES:
            unit = "seconds" if name == "cpu" else "a count"
            raise ValueError(f"{text[:_MAX_TEXT]!r}: {name} is {unit}, not bytes: no K, M or G")
        digits, multiplier = text[:-1], SUFFIXES[text[-1].upper()]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
        forms = "a number, with K, M or G" if name in SIZES else "a number"
        raise ValueError(f'{text[:_MAX_TEXT]!r} is neither {forms}, nor "unlimited"')
    value = int(digits) * multiplier
    if value > MAX_VALUE:
        raise ValueError(f'{text!r} is more than {MAX_VALUE} (write "unlimited")')
    return value


def written(value: int | None) -> int | str:
    """Return a limit as the config writes it: a number, or "unlimited"."""
    return "unlimited" if value is None else value


def beyond_hard(name: str, value: int | None) -> str | None:
    """Say why `value` cannot be set by this process (above its hard limit), or None if it can."""
    constant = RESOURCES[name]
    hard = resource.getrlimit(getattr(resource, constant))[1]
    if hard == resource.RLIM_INFINITY or (value is not None and value <= hard):
        return None
    return (
        f"{written(value)} is above sockd's hard limit of {hard} ({constant}); "
        "sockd cannot raise it: lower the value, or raise the limit of sockd's service"
    )
