"""Fill CPython's type attribute cache in the forker, so that its children only read it.

CPython caches the lookups of attributes on types, (type, name) -> value, in
one table of 4,096 entries (about 100 KiB). A lookup that misses writes its
entry; in a child, that write copies a page of the table, which it shares
with the forker. A child looks up what the forker never did (the handler's
methods and attributes, the request socket's methods), so each child copied
most of the table: 16 of a child's 121 page faults, measured on the
benchmark machine (CPython 3.11). Measured again with bench/faults.py
(2026-12-03): a child 2 faults fewer on 3.11.7 and 11 on 3.13.0, where the
forker takes 8 more itself; since 3.12 a cold lookup writes little besides
the entry (the names it pushes out are immortal), so less is at stake. A
fault or two per connection for one pass at start-up: kept on both. Those
figures were taken while the warm-up made part of its own work stale (see
`_CHANGES_THE_CLASS`); with that fixed, and the child's path rehearsed
(`ServiceServer.rehearse`), a 3.11.7 child took 125 faults instead of 139.

`warm(types)` makes those lookups in the forker: for each type, every
attribute its classes define, and every name their functions use (their
instances' attributes, which are looked up on the type first).
"""

from __future__ import annotations

import types as _types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


# Looked up on a class that has none, `__annotations__` is made, an empty dict
# stored in the class: that changes the class's version, which makes stale every
# entry of it cached before and every instruction specialized for it.
_CHANGES_THE_CLASS = "__annotations__"


def warm(classes: Iterable[type]) -> int:
    """Look up on each class what its methods may look up; return how many lookups."""
    lookups = 0
    for cls in classes:
        for name in sorted(_names(cls) - {_CHANGES_THE_CLASS}):
            try:
                getattr(cls, name, None)
            except Exception:  # noqa: BLE001, S112 (a descriptor that fails on its class: no matter)
                continue
            lookups += 1
    return lookups


def _names(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            names.add(name)
            function = getattr(value, "__func__", value)  # classmethod, staticmethod
            code = getattr(function, "__code__", None)
            if isinstance(code, _types.CodeType):
                names.update(_code_names(code))
    return names


def _code_names(code: _types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, _types.CodeType):  # nested functions, comprehensions
            names.update(_code_names(constant))
    return names
