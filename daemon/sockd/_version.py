"""The version, in one place: pyproject.toml and debian/changelog are checked against it."""

__version__ = "0.1.0"
