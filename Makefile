# bncheck: `make test` and `make serve` work on a fresh machine with python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
SERVE_STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: test lint typecheck browser serve bench fuzz clean

# make serve installs what serving needs; make test adds the dev tools (ruff, mypy, pytest, ...).
$(SERVE_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[server]'
	@# Compile the comparison kernel once, here (Numba's cache, about half a minute), not in every
	@# worker process that starts before the cache exists.
	$(BIN)/python -c "from bncheck.numerics import fused; assert fused.available(), 'the comparison kernel did not load'"
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The browser tests need a Chromium: Debian's package, installed when missing.
browser:
	@sh tools/ensure-chromium

test: lint typecheck browser
	$(BIN)/python -m pytest -q

# Ctrl-C stops it quietly (exit 0): bncheck serve lets checks in flight finish, then returns.
# A server for this machine: clients on it may send tensors through /dev/shm (BNCHECK_CLIENT_SHM,
# README "Same host"); `bncheck serve` and the Docker image leave that off. BNCHECK_CLIENT_SHM=false turns it off.
serve: $(SERVE_STAMP)
	@BNCHECK_CLIENT_SHM=$${BNCHECK_CLIENT_SHM:-true} $(BIN)/bncheck serve --host $(HOST) --port $(PORT)

bench: $(STAMP)
	$(BIN)/python -m bench.core
	$(BIN)/python -m bench.service

fuzz: $(STAMP)
	BNCHECK_FUZZ_EXAMPLES=2000 $(BIN)/python -m pytest -q tests/server/test_fuzz.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
