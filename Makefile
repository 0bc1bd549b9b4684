# flakescan: two commands for a fresh machine.
#   make demo   scan a simulated chip through the daemon, print a summary
#   make test   run the test suite (what CI runs)
# Each creates or updates .venv first; re-running installs nothing new unless
# pyproject.toml changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STATE ?= demo-state

.PHONY: demo test lint bench clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The daemon's runtime (no torch).
$(VENV)/.runtime-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Tests also train and export models: torch 2.13.0 (CPU build), pytest, ruff, MM demo adapters,
# and the diffraction simulators (pymatgen, Dans_Diffraction, abTEM).
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,train,diffraction]'
	touch $@ $(VENV)/.runtime-installed

# The browser form's test drives Debian's chromium: installed here when missing and we are
# root (CI); otherwise that one test skips, saying why.
$(VENV)/.browser-installed: | $(BIN)/python
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	else echo "no chromium (Debian package 'chromium'): the browser form's test will skip"; fi
	@if command -v chromium >/dev/null 2>&1; then touch $@; fi

# The PostgreSQL tests start a server of their own from Debian's binaries
# (/usr/lib/postgresql/*/bin): installed here when missing and we are root (CI); otherwise
# those tests skip, saying why.
$(VENV)/.postgres-installed: | $(BIN)/python
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q postgresql >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; }; \
	else echo "no PostgreSQL server (Debian package 'postgresql'): its tests will skip"; fi
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then touch $@; fi

demo: $(VENV)/.runtime-installed
	$(BIN)/flakescan demo --config service.toml --state-dir $(DEMO_STATE)

test: $(VENV)/.dev-installed $(VENV)/.browser-installed $(VENV)/.postgres-installed
	$(BIN)/python -m pytest

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.dev-installed
	$(BIN)/python bench/bench_tile.py --tiles 8 --repeats 2 --plot docs/figures/bench-candidates.png
	$(BIN)/python bench/bench_classifier.py
	$(BIN)/python bench/bench_analysis.py
	$(BIN)/python bench/bench_http.py

clean-demo:
	rm -rf $(DEMO_STATE)
