# Supply chain (included by the top-level Makefile). See docs/reliability.md, "Supply chain".
#
#   make lock               requirements/<role>.lock from pyproject.toml, one per image (hashes; Python 3.11 and 3.12)
#   make test-min-versions  the fast tests against the lowest versions pyproject.toml allows (.venv-min)
#   make pin-base-images    rewrite the Dockerfile's base image ARGs to tag@sha256:<current digest> (needs Docker)
#
# The tools run from their own venv (.cache/supply-tools) with a pinned uv, so the lock does not
# depend on whichever uv or pip a machine happens to have.
PYTHON ?= python3
SUPPLY_TOOLS := .cache/supply-tools
UV_VERSION ?= 0.13.9
UV := $(SUPPLY_TOOLS)/bin/uv
# one lock per image role (the pyproject.toml extra of that name); each image installs only its own
ROLES := detector transcriber proxy operator
LOCKS := $(ROLES:%=requirements/%.lock)
MIN_VENV ?= .venv-min
# the Dockerfile (one per repository, a target per role) whose base image tags are pinned
DOCKERFILES := Dockerfile

.PHONY: lock test-min-versions pin-base-images

$(UV):
	@test -x $(SUPPLY_TOOLS)/bin/python || $(PYTHON) -m venv $(SUPPLY_TOOLS)
	$(SUPPLY_TOOLS)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

# --universal: one file per role for the CPU images (python:3.11, Debian's 3.11) and the GPU stage
# (Ubuntu 24.04's 3.12); --fork-strategy fewest keeps both on the same versions where one
# version fits both (otherwise uv picks e.g. a numpy for 3.12 that 3.11 cannot install).
# All roles are first resolved together (unhashed, in the tools cache) and each role lock is
# compiled against that as constraints, so a package shared by two images (numpy, av, fastapi)
# has the same version in both. Then each interpreter resolves each lock again, wheels only, for
# Linux x86_64: the same pins must come back, which proves every pinned version has a wheel for
# it (no sdist builds in images).
lock: $(UV) ## Regenerate requirements/<role>.lock (pinned, hashed, one per image) from pyproject.toml
	$(UV) pip compile pyproject.toml --quiet --universal --fork-strategy fewest --python-version 3.11 \
	  $(ROLES:%=--extra %) --no-header --no-annotate -o $(SUPPLY_TOOLS)/all-roles.txt
	@mkdir -p requirements
	@for role in $(ROLES); do \
	  $(UV) pip compile pyproject.toml --quiet --universal --fork-strategy fewest --python-version 3.11 \
	    --extra $$role -c $(SUPPLY_TOOLS)/all-roles.txt --generate-hashes \
	    --custom-compile-command 'make lock' -o requirements/$$role.lock || exit 1; \
	done
	@for lock in $(LOCKS); do for py in 3.11 3.12; do \
	  $(UV) pip compile $$lock --quiet --python-version $$py --python-platform x86_64-manylinux_2_28 \
	    --only-binary :all: --no-header --no-annotate -o $(SUPPLY_TOOLS)/check-$$py.txt || exit 1; \
	  grep -oE '^[a-z0-9._-]+==[^ ;]+' $(SUPPLY_TOOLS)/check-$$py.txt | sort > $(SUPPLY_TOOLS)/pins-$$py.txt; \
	  extra=$$(grep -oE '^[a-z0-9._-]+==[^ ;]+' $$lock | sort | comm -13 - $(SUPPLY_TOOLS)/pins-$$py.txt); \
	  [ -z "$$extra" ] || { echo "$$lock: Python $$py resolves pins the lock lacks: $$extra"; exit 1; }; \
	  echo "$$lock: $$(wc -l < $(SUPPLY_TOOLS)/pins-$$py.txt) pins install as wheels on Python $$py (Linux x86_64)"; \
	done; done

# --resolution lowest-direct: every dependency pyproject.toml names at its floor (transitive ones
# newest), i.e. what a user who already has old versions installed gets. Fails where a floor is a lie.
# compile + sync, not `uv pip install`: install keeps whatever newer version the venv already has.
test-min-versions: $(UV) test-debs ## The fast tests against the lowest declared dependency versions (.venv-min)
	@test -x $(MIN_VENV)/bin/python || $(UV) venv --quiet --python $(PYTHON) $(MIN_VENV) || exit 1; \
	$(UV) pip compile pyproject.toml --quiet --extra dev --resolution lowest-direct --python $(MIN_VENV)/bin/python \
	  --no-header -o $(MIN_VENV)/requirements-min.txt || exit 1; \
	$(UV) pip sync --quiet --python $(MIN_VENV)/bin/python $(MIN_VENV)/requirements-min.txt || exit 1; \
	$(UV) pip install --quiet --python $(MIN_VENV)/bin/python --no-deps -e . || exit 1; \
	$(UV) pip freeze --python $(MIN_VENV)/bin/python | grep -iE '^(fastapi|starlette|uvicorn|python-multipart|httpx|aiohttp|av|numpy|kopf|kubernetes|prometheus-client|pytest|pytest-asyncio|hypothesis)==' | tr '\n' ' '; echo; \
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not slow"

pin-base-images: ## Pin the Dockerfile's base images to their tags' current digests (Docker buildx, crane or skopeo)
	@$(PYTHON) hack/images/pin_base_images.py $(DOCKERFILES)
	@$(PYTHON) hack/images/pin_base_images.py --check $(DOCKERFILES)
