# Fuzzing untrusted audio (included by the top-level Makefile). See docs/reliability.md.
#
#   make fuzz                     decode_audio, the WAV checks and the upload parser, 10 minutes
#   make fuzz FUZZ_SECONDS=120    the same for 2 minutes
#
# `make test` and `make test-fast` run the same properties briefly (the ci profile, ~15 s).
# The budget is shared out among the properties and the run prints how many inputs each tried.
# Each input must be answered within 5 s; a call still running after 120 s is a hang: its stacks
# go to .cache/fuzz-hang.log (printed below) and the run ends (tests/fuzz/harness.py). The outer
# timeout only stops a run that overruns its budget by far more than shrinking a find needs.
VENV ?= .venv
PY ?= $(VENV)/bin/python
FUZZ_SECONDS ?= 600

.PHONY: fuzz

fuzz: install ## Fuzz decode_audio, the WAV checks and the upload parser for FUZZ_SECONDS (600); fails on any find
	@FUZZ_PROFILE=long FUZZ_SECONDS=$(FUZZ_SECONDS) timeout --kill-after=30 $$(( $(FUZZ_SECONDS) + 600 )) \
	  $(PY) -m pytest -q tests/fuzz || { \
	  status=$$?; grep -qs '^Timeout' .cache/fuzz-hang.log && cat .cache/fuzz-hang.log >&2; \
	  echo "make fuzz: FAILED (exit $$status)" >&2; exit 1; }
