"""sockd, a systemd-native forking socket server: its public names (every process imports this)."""

from __future__ import annotations

import importlib

from sockd._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers see of the lazy exports below
    from sockd.server import (
        ForkingMixIn,
        ForkingTCPServer,
        ForkingUnixStreamServer,
        JSONErrorMixIn,
    )

# Re-exported lazily: the forker imports this package and must stay small.
_EXPORTS = {
    "Config": "sockd.supervisor.config",
    "ConfigError": "sockd.errors",
    "DaemonConfig": "sockd.supervisor.config",
    "ForkingMixIn": "sockd.server",
    "ForkingTCPServer": "sockd.server",
    "ForkingUnixStreamServer": "sockd.server",
    "JSONErrorMixIn": "sockd.server",
    "ListenAddress": "sockd.supervisor.config",
    "ServiceConfig": "sockd.supervisor.config",
    "ServiceServer": "sockd.forker.service",
    "SockdError": "sockd.errors",
}

__all__ = [
    "Config",
    "ConfigError",
    "DaemonConfig",
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUnixStreamServer",
    "JSONErrorMixIn",
    "ListenAddress",
    "ServiceConfig",
    "ServiceServer",
    "SockdError",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    msg = f"module 'sockd' has no attribute {name!r}"
    raise AttributeError(msg)
