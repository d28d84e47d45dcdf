"""CPython's test files here are run by run_socketserver.py (see README.md), not collected."""

collect_ignore_glob = ["cpython-*"]
