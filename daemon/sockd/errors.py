"""Errors that end sockd, each with the sysexits(3) code it exits with; exceptions as data."""

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


# An error record must fit one atomic pipe write: frames are trimmed to fit.
_MAX_ERROR_RECORD = 3800


def exception_fields(exc: BaseException, limit: int = _MAX_ERROR_RECORD) -> dict[str, Any]:
    """Describe `exc` as data: type, message and frames (never local variables).

    Frames are dropped from the middle, then the message shortened, until the
    description encodes to at most `limit` bytes.
    """
    import traceback  # noqa: PLC0415 (the error path only: the forker stays small)

    frames = [
        {"file": frame.filename, "line": frame.lineno, "function": frame.name}
        for frame in traceback.extract_tb(exc.__traceback__)
    ]
    fields: dict[str, Any] = {"type": type(exc).__qualname__, "message": str(exc)}
    total = len(frames)
    keep = total
    while True:
        if keep < total:
            fields["frames"] = frames[: keep // 2] + frames[total - (keep - keep // 2) :]
            fields["frames_omitted"] = total - keep
        else:
            fields["frames"] = frames
        size = len(marshal.dumps(fields))
        if size <= limit:
            return fields
        if keep > 2:
            keep = max(2, keep * limit // size - 1)
        else:
            fields["message"] = fields["message"][: len(fields["message"]) * limit // size // 2]
