"""Errors that end sockd, each with its sysexits(3) code; exceptions as data (a leaf)."""

from __future__ import annotations

import marshal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EX_OK = 0
EX_USAGE = 64
EX_SOFTWARE = 70
EX_OSERR = 71
EX_NOPERM = 77
EX_CONFIG = 78


class SockdError(Exception):
    """Base of sockd's errors: a one-line message and an exit code."""

    exit_code = EX_SOFTWARE


class UsageError(SockdError):
    """The command line is wrong."""

    exit_code = EX_USAGE


class ConfigError(SockdError):
    """The configuration file or the environment systemd gave us is wrong."""

    exit_code = EX_CONFIG


class OSFailure(SockdError):
    """The operating system refused something sockd needs (bind, fork, open)."""

    exit_code = EX_OSERR


class PermissionFailure(SockdError):
    """sockd lacks the privilege to do what the configuration asks."""

    exit_code = EX_NOPERM


# An exception's report stays one small log line (under 4 KiB with its record),
# whatever the exception: frames are trimmed to fit.
_MAX_ERROR_RECORD = 3800
# Each name (the type, a frame's file and function) is cut to this many characters.
_MAX_NAME = 300
# Frames looked at, at most: the first and last halves of a deeper traceback.
_MAX_FRAMES = 200


def exception_fields(exc: BaseException, limit: int = _MAX_ERROR_RECORD) -> dict[str, Any]:
    """Describe `exc` as data: type, message and frames (never local variables).

    Every name is cut to _MAX_NAME characters, the message to half of
    `limit`, and at most _MAX_FRAMES frames (the outermost and innermost) are
    kept; then frames are dropped from the middle, and the message shortened,
    until the description encodes to at most `limit` bytes (or nothing more
    can be cut: a `limit` too small for the type alone). Each step shortens
    something, so the loop ends.
    """
    import traceback  # noqa: PLC0415 (the error path only: the forker stays small)

    # walk_tb, not extract_tb: no source line is read (a deep recursion has
    # 100,000 frames), and only the kept frames are described.
    walked = list(traceback.walk_tb(exc.__traceback__))
    total = len(walked)
    if total > _MAX_FRAMES:
        walked = walked[: _MAX_FRAMES // 2] + walked[total - _MAX_FRAMES // 2 :]
    frames = [
        {
            "file": _cut(frame.f_code.co_filename, _MAX_NAME),
            "line": lineno,
            "function": _cut(frame.f_code.co_name, _MAX_NAME),
        }
        for frame, lineno in walked
    ]
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 (an exception that cannot be printed is still reported)
        message = "<unprintable>"
    fields: dict[str, Any] = {
        "type": _cut(type(exc).__qualname__, _MAX_NAME),
        "message": _cut(message, limit // 2),  # half the room, at most: frames tell more
    }
    keep = len(frames)
    while True:
        if keep < total:
            fields["frames"] = frames[: keep // 2] + frames[len(frames) - (keep - keep // 2) :]
            fields["frames_omitted"] = total - keep
        else:
            fields["frames"] = frames
        size = len(marshal.dumps(fields))
        if size <= limit:
            return fields
        if keep:
            keep = max(0, min(keep - 1, keep * limit // size - 1))
        elif fields["message"]:
            fields["message"] = fields["message"][: len(fields["message"]) // 2]
        else:
            return fields  # the type alone is over `limit`


def _cut(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length] + "..."
