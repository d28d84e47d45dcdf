"""The version, in one place: pyproject.toml and debian/changelog are checked against it.

A leaf: loaded in every process (the forker too, through `sockd/__init__.py`).
"""

__version__ = "0.1.0"
