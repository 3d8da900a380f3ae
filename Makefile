# Two commands matter: `make run` (the whole stack locally) and `make test` (the whole suite).
# Both create or update .venv themselves. The bench targets also install the `bench` extra (Django and
# gunicorn, for the seed-style baseline of bench-token); no test needs it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp

# The Firebase Auth emulator (Node) for `memharbor dev` and the console's browser test, project-local.
FIREBASE_TOOLS := .cache/firebase-tools/node_modules/.bin/firebase

.PHONY: run test venv firebase-tools console-screenshots bench-venv lint typecheck unit bench bench-token bench-calls bench-push bench-recorder clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Only the Auth emulator is used: --omit=optional skips re2 (the hosting emulator's), which npm would
# otherwise compile from source for about five minutes.
$(FIREBASE_TOOLS):
	npm install --no-audit --no-fund --omit=optional --prefix .cache/firebase-tools firebase-tools@15

firebase-tools: $(FIREBASE_TOOLS)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench-venv: $(BENCH_STAMP)

run: venv firebase-tools
	$(VENV)/bin/memharbor dev

test: venv firebase-tools lint typecheck
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

typecheck: venv
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --explicit-package-bases tests/support $(wildcard bench/*.py)

unit: venv
	$(PY) -m pytest tests/unit

# Refresh docs/console-*.png (README shows them) from the console's browser test.
console-screenshots: venv firebase-tools
	MEMHARBOR_CONSOLE_SCREENSHOTS=docs $(PY) -m pytest -q tests/e2e/test_console.py

bench: bench-token bench-calls bench-push bench-recorder

bench-token: bench-venv
	$(PY) bench/token_bench.py --minimal

bench-calls: bench-venv
	$(PY) bench/calls_bench.py --devices 3

bench-push: bench-venv
	$(PY) bench/push_bench.py

bench-recorder: bench-venv
	$(PY) bench/recorder_bench.py --sessions 200 --seconds 30

# The chaos soak (bench/soak.py): 5 calls/s for 10 minutes under a seeded fault schedule, e.g.
# `make soak SOAK_ARGS="--rate 2 --duration 1800"` (bench/soak.py --help). `make soak-test` runs only its
# 2-minute check (tests/e2e/test_soak.py), which `make test` runs too.
SOAK_ARGS ?=
.PHONY: soak soak-test
soak: venv
	$(PY) bench/soak.py $(SOAK_ARGS)

soak-test: venv
	$(PY) -m pytest -q tests/e2e/test_soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
