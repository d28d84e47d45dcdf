"""sockd, a systemd-native forking socket server: its public names (every process imports this).

The drop-in server classes and mix-ins (`sockd.server`), the errors they raise, the
version. The daemon and the forker are programs, not an API: nothing of theirs is here.
"""

from __future__ import annotations

import importlib

from sockd._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers see of the lazy exports below
    from sockd.server import (
        ForkingMixIn,
        ForkingTCPServer,
        ForkingUDPServer,
        ForkingUnixDatagramServer,
        ForkingUnixStreamServer,
        JSONErrorMixIn,
    )

# Re-exported lazily: the forker imports this package and must stay small.
_EXPORTS = {
    "ConfigError": "sockd.errors",
    "ForkingMixIn": "sockd.server",
    "ForkingTCPServer": "sockd.server",
    "ForkingUDPServer": "sockd.server",
    "ForkingUnixDatagramServer": "sockd.server",
    "ForkingUnixStreamServer": "sockd.server",
    "JSONErrorMixIn": "sockd.server",
    "SockdError": "sockd.errors",
}

__all__ = [
    "ConfigError",
    "ForkingMixIn",
    "ForkingTCPServer",
    "ForkingUDPServer",
    "ForkingUnixDatagramServer",
    "ForkingUnixStreamServer",
    "JSONErrorMixIn",
    "SockdError",
    "__version__",
]


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    msg = f"module 'sockd' has no attribute {name!r}"
    raise AttributeError(msg)
