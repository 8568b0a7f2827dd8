# The fresh-machine check (included by the top-level Makefile). See docs/cluster.md.
#
#   make fresh-check                 `make run` and `make test` on a new Debian 12 root filesystem (~25 min)
#   make fresh-check ARGS=--e2e      ... and `make e2e` inside it too (Kubernetes from source; ~60 min)
#   make fresh-check ARGS=--worktree ... of the working tree instead of a clone of HEAD
ARGS ?=

.PHONY: fresh-check

fresh-check: ## The README's two commands on a fresh Debian 12 root filesystem (root; ARGS=--e2e adds make e2e)
	@bash hack/fresh/check.sh $(ARGS)
