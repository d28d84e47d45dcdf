# The quick start: `make run` serves examples/sockd.toml in the foreground;
# `make test` sets up and runs every check (lint, types, tests).
.PHONY: setup run test lint bench clean

setup:
	./scripts/setup

run: setup
	.venv/bin/python -m sockd run --config examples/sockd.toml

lint: setup
	.venv/bin/ruff check daemon tests bench examples
	.venv/bin/ruff format --check daemon tests bench examples
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python bench/echo.py

clean:
	rm -rf .venv build *.egg-info daemon/*.egg-info .pytest_cache .mypy_cache .ruff_cache
