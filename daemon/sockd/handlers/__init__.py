"""Handler lookup: built-ins by name, or `package.module:Class`.

A leaf: the daemon imports handlers with it to validate the config (`run` and
`check`), the forker to serve them.
"""

from __future__ import annotations

import importlib
import socketserver

from sockd.handlers.builtin import BUILTINS

__all__ = ["BUILTINS", "load_handler"]


def load_handler(spec: str) -> type[socketserver.BaseRequestHandler]:
    """Return the handler class that `spec` names.

    Raises:
        ValueError: `spec` is neither a built-in name nor `module:Class`.
        ImportError: the module cannot be imported.
        AttributeError: the module has no such class.
        TypeError: the object is not a `socketserver.BaseRequestHandler` subclass.
    """
    if spec in BUILTINS:
        return BUILTINS[spec]
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        names = ", ".join(sorted(BUILTINS))
        raise ValueError(f"expected one of {names} or 'package.module:Class'")
    target: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, socketserver.BaseRequestHandler)):
        raise TypeError(f"{qualname} is not a socketserver.BaseRequestHandler subclass")
    return target
