# Everything runs from the project's own virtual environment, which the first target
# that needs it creates: on a fresh machine `make run` and `make test` are enough.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup lock proto proto-check lint test run reload reconcile bench chaos clean

# Every third-party package comes from requirements.lock, pinned and hash-checked; then the
# two local distributions, the client (client/) and the service, with nothing more. `pip
# check` fails when pyproject.toml asks for something the lock does not hold: run `make lock`.
$(STAMP): requirements.lock pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e ./client -e .
	$(VENV)/bin/pip check
	touch $@

setup: $(STAMP)

# Resolves requirements.in (both local distributions and the dev tools) again, for every
# platform, with hashes, then deploy/requirements.in (what production installs) at the same
# versions. Pins already in a lock are kept unless a range excludes them; `make lock
# LOCK_ARGS=--upgrade` moves everything to the newest allowed. Commit both locks with the
# pyproject.toml change that needed them.
LOCK_ARGS ?=
LOCK_FLAGS = $(LOCK_ARGS) --universal --python-version 3.11 --generate-hashes --quiet \
	--no-emit-package credits-client --no-emit-package credits-service
lock: $(STAMP)
	UV_CUSTOM_COMPILE_COMMAND='make lock' $(VENV)/bin/uv pip compile requirements.in \
		$(LOCK_FLAGS) --output-file requirements.lock
	UV_CUSTOM_COMPILE_COMMAND='make lock' $(VENV)/bin/uv pip compile deploy/requirements.in \
		-c requirements.lock $(LOCK_FLAGS) --output-file deploy/requirements.lock

# Generated code is committed; `proto-check` fails when it no longer matches protos/.
proto: $(STAMP)
	$(PY) -m scripts.protogen .

proto-check: $(STAMP)
	$(PY) -m scripts.protogen --check .

lint: $(STAMP) proto-check
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy service gateway scripts tests chaos bench
	cd client && ../$(VENV)/bin/mypy
	$(VENV)/bin/buf lint
	@if git rev-parse --verify --quiet main >/dev/null && git cat-file -e main:buf.yaml 2>/dev/null; then \
		$(VENV)/bin/buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no buf.yaml on main yet, nothing to compare against"; fi

test: $(STAMP) proto-check
	scripts/ensure-redis-server.sh
	scripts/ensure-prometheus.sh
	$(PY) -m pytest

# The runner starts a Redis for the rate limits when redis-server is there (one service
# process without it); a machine where it cannot be installed still runs.
run: $(STAMP)
	-scripts/ensure-redis-server.sh
	$(PY) -m scripts.devrun

# The running `make run` service rereads its callers file and TLS files (SIGHUP to the
# process named in .dev/service.pid).
reload: $(STAMP)
	$(PY) -m scripts.devrun --reload

reconcile: $(STAMP)
	$(PY) -m scripts.devrun --reconcile

# Not part of `make test`: a few minutes of load (docs/performance.md). Options go in
# BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`.
bench: $(STAMP)
	scripts/ensure-redis-server.sh
	$(PY) -m bench $(BENCH_ARGS)

# Load, faults and fuzzing against processes of its own, then the checks (docs/proof.md).
# Options: make chaos CHAOS_ARGS="--duration 1200 --clients 16".
CHAOS_ARGS ?=
chaos: $(STAMP) proto-check
	scripts/ensure-redis-server.sh
	$(PY) -m chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache client/.mypy_cache
