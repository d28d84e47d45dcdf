"""Errors that end sockd, each with the sysexits(3) code it exits with."""

from __future__ import annotations

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
