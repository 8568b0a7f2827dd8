# Supply chain (included by the top-level Makefile). See docs/reliability.md, "Supply chain".
#
#   make lock               requirements.lock from pyproject.toml (hashes; Python 3.11 and 3.12)
#   make test-min-versions  the fast tests against the lowest versions pyproject.toml allows (.venv-min)
#   make pin-base-images    rewrite the Dockerfiles' base image ARGs to tag@sha256:<current digest> (needs Docker)
#
# The tools run from their own venv (.cache/supply-tools) with a pinned uv, so the lock does not
# depend on whichever uv or pip a machine happens to have.
PYTHON ?= python3
SUPPLY_TOOLS := .cache/supply-tools
UV_VERSION ?= 0.13.9
UV := $(SUPPLY_TOOLS)/bin/uv
LOCK := requirements.lock
MIN_VENV ?= .venv-min
# every Dockerfile that installs the lock and the base image tags it pins
DOCKERFILES := services/base/Dockerfile services/tiny/Dockerfile services/proxy/Dockerfile controller/Dockerfile

.PHONY: lock test-min-versions pin-base-images

$(UV):
	@test -x $(SUPPLY_TOOLS)/bin/python || $(PYTHON) -m venv $(SUPPLY_TOOLS)
	$(SUPPLY_TOOLS)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

# --universal: one file for the CPU images (python:3.11, Debian's 3.11) and the GPU stage
# (Ubuntu 24.04's 3.12); --fork-strategy fewest keeps both on the same versions where one
# version fits both (otherwise uv picks e.g. a numpy for 3.12 that 3.11 cannot install).
# Then each interpreter resolves the lock again, wheels only, for Linux x86_64: the same pins
# must come back, which proves every pinned version has a wheel for it (no sdist builds in images).
lock: $(UV) ## Regenerate requirements.lock (pinned, hashed) from pyproject.toml
	$(UV) pip compile pyproject.toml --quiet --universal --fork-strategy fewest --python-version 3.11 \
	  --generate-hashes --custom-compile-command 'make lock' -o $(LOCK)
	@for py in 3.11 3.12; do \
	  $(UV) pip compile $(LOCK) --quiet --python-version $$py --python-platform x86_64-manylinux_2_28 \
	    --only-binary :all: --no-header --no-annotate -o $(SUPPLY_TOOLS)/check-$$py.txt || exit 1; \
	  grep -oE '^[a-z0-9._-]+==[^ ;]+' $(SUPPLY_TOOLS)/check-$$py.txt | sort > $(SUPPLY_TOOLS)/pins-$$py.txt; \
	  extra=$$(grep -oE '^[a-z0-9._-]+==[^ ;]+' $(LOCK) | sort | comm -13 - $(SUPPLY_TOOLS)/pins-$$py.txt); \
	  [ -z "$$extra" ] || { echo "Python $$py resolves pins the lock lacks: $$extra"; exit 1; }; \
	  echo "lock: $$(wc -l < $(SUPPLY_TOOLS)/pins-$$py.txt) pins install as wheels on Python $$py (Linux x86_64)"; \
	done

# --resolution lowest-direct: every dependency pyproject.toml names at its floor (transitive ones
# newest), i.e. what a user who already has old versions installed gets. Fails where a floor is a lie.
# compile + sync, not `uv pip install`: install keeps whatever newer version the venv already has.
test-min-versions: $(UV) ## The fast tests against the lowest declared dependency versions (.venv-min)
	@test -x $(MIN_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(MIN_VENV) || exit 1; \
	$(UV) pip compile pyproject.toml --quiet --extra dev --resolution lowest-direct --python $(MIN_VENV)/bin/python \
	  --no-header -o $(MIN_VENV)/requirements-min.txt || exit 1; \
	$(UV) pip sync --quiet --python $(MIN_VENV)/bin/python $(MIN_VENV)/requirements-min.txt || exit 1; \
	$(UV) pip install --quiet --python $(MIN_VENV)/bin/python --no-deps -e . || exit 1; \
	$(UV) pip freeze --python $(MIN_VENV)/bin/python | grep -iE '^(fastapi|starlette|uvicorn|python-multipart|httpx|aiohttp|av|numpy|kopf|kubernetes|prometheus-client|pytest|pytest-asyncio|hypothesis)==' | tr '\n' ' '; echo; \
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

pin-base-images: ## Pin the Dockerfiles' base images to their tags' current digests (Docker buildx, crane or skopeo)
	@$(PYTHON) hack/images/pin_base_images.py $(DOCKERFILES)
	@$(PYTHON) hack/images/pin_base_images.py --check $(DOCKERFILES)
