# The quick start: `make run` serves examples/sockd.toml in the foreground;
# `make test` sets up and runs every check (lint, types, tests, and as root the
# system tests: the .deb built, installed and driven in a booted systemd), then
# as root the suite again under Debian 13's Python 3.13 (`make test-py313`).
.PHONY: setup setup-tests run test test-py313 lint bench deb clean

setup:
	./scripts/setup

setup-tests:
	./scripts/setup --tests

run: setup
	.venv/bin/python -m sockd run --config examples/sockd.toml

lint: setup-tests
	.venv/bin/ruff check daemon tests bench examples
	.venv/bin/ruff format --check daemon tests bench examples
	.venv/bin/mypy

test: lint
	.venv/bin/python -m pytest
	@$(MAKE) --no-print-directory test-py313

# In a cached root of Debian 13, with its python3 (scripts/test-trixie); not root: skipped, said so.
test-py313:
	./scripts/test-trixie

# `make deb` builds on this machine; `make deb SUITE=trixie` (as root) in a root of that release.
deb:
	./scripts/build-deb $(if $(SUITE),--suite $(SUITE))

bench: setup-tests
	.venv/bin/python bench/run.py

clean:
	rm -rf .venv build dist bench/build *.egg-info daemon/*.egg-info .pytest_cache .mypy_cache .ruff_cache
