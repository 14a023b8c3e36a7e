# ovis-batch: development, CI and the quick start. GNU make.
#   make venv      .venv with the project, the model stack (CPU torch) and the dev tools
#   make services  Redis and PostgreSQL answering on 127.0.0.1, Chromium for the browser tests (installs and
#                  starts them if needed)
#   make test      lint + types + the whole test suite against the real services (what .ci/run does)
#   make test-gpu  the CUDA tests alone, on a machine with a GPU
#   make demo      the quick start: caption, edit and generate on the tiny model, no servers needed

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# Tests read CI=true to fail instead of skip when a service is missing: pass it on as it came (and don't
# invent an empty one when it is unset).
ifdef CI
export CI
endif

VENV := .venv
BIN := $(VENV)/bin
# Written last by a successful install: the venv is rebuilt when pyproject.toml is newer than it.
STAMP := $(VENV)/.installed
PYTHON ?= $(shell command -v python3.11 || command -v python3 || echo python3)
PIP_INSTALL := $(BIN)/python -m pip --disable-pip-version-check install --progress-bar off
# numpy is held in the same command as the project, or the resolver upgrades it; torch==2.13.0 takes the
# machine's local CPU wheel where pip is configured to find one, else the release from PyPI.
INSTALL_PINS := numpy==1.24.3 torch==2.13.0

.PHONY: help venv services lint types test test-gpu demo clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install the project with its dev extras

$(STAMP): pyproject.toml
	@command -v "$(PYTHON)" >/dev/null || { echo "error: no python3 found: install Python >= 3.11" >&2; exit 1; }
	@"$(PYTHON)" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else \
		"error: ovis-batch needs Python >= 3.11, but $(PYTHON) is " + sys.version.split()[0] + \
		" (set PYTHON=/path/to/python3.11)")'
	@# Reuse a working venv; replace one whose interpreter is gone or too old (e.g. made by another Python).
	@if ! $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
		echo "creating $(VENV) with $$("$(PYTHON)" -c 'import sys; print(sys.executable, sys.version.split()[0])')"; \
		"$(PYTHON)" -m venv --clear $(VENV) || { echo "error: '$(PYTHON) -m venv' failed;" \
			"on Debian/Ubuntu install the venv module: apt-get install python3-venv" >&2; exit 1; }; \
	fi
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) $(INSTALL_PINS) -e ".[dev]"
	@touch $@

services: venv ## make sure Redis and PostgreSQL answer and Chromium is there (installs them if needed)
	bash .ci/services.sh

lint: venv ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: venv ## mypy on the packages (configured in pyproject.toml)
	$(BIN)/mypy

test: venv services lint types ## lint, types and the whole test suite against real services
	$(BIN)/pytest -q

# Without a GPU these tests are skipped in `make test`; here a machine where torch sees no CUDA is an error.
test-gpu: venv ## the CUDA tests alone (pytest -m cuda), on a GPU machine
	OVIS_TEST_REQUIRE_CUDA=1 $(BIN)/pytest -q -m cuda

demo: venv ## the quick start on embedded defaults: SQLite, local folders, the tiny random-weight model
	$(BIN)/ovis-batch demo

clean: ## remove caches, build output and demo output (keeps .venv)
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info demo-output .ovis-batch
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## also remove .venv
	rm -rf $(VENV)
