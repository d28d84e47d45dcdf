"""sockd: a systemd-native forking socket server built on socketserver."""

from sockd._version import __version__
from sockd.config import Config, DaemonConfig, ListenAddress, ServiceConfig
from sockd.errors import ConfigError, SockdError
from sockd.server import ServiceServer

__all__ = [
    "Config",
    "ConfigError",
    "DaemonConfig",
    "ListenAddress",
    "ServiceConfig",
    "ServiceServer",
    "SockdError",
    "__version__",
]
