# Cluster and image infrastructure (included by the top-level Makefile; also works alone:
# `make -f mk/cluster.mk cluster`). See docs/cluster.md.
#
#   make cluster        kind cluster (Docker + kind present) or the local Docker-free Kubernetes v1.20;
#                       ends when the node is Ready, prints how long it took
#   make images         build localhost/stt-{tiny,base,proxy,controller}:dev, load them into the cluster
#   make cluster-smoke  one throwaway pod per image + in-cluster API access check
#   make kubeconfig     print the admin kubeconfig path
#   make cluster-down   stop/delete the cluster (twice is fine); binaries and image caches stay
VENV ?= .venv
PY ?= $(VENV)/bin/python
STT_K8S_CACHE ?= /var/tmp/stt-k8s
STT_CLUSTER_DIR ?= /var/tmp/stt-cluster
STT_KUBECONFIG ?= $(STT_CLUSTER_DIR)/kubeconfig
STT_IMAGE_TAG ?= dev
export STT_K8S_CACHE STT_CLUSTER_DIR STT_IMAGE_TAG
# kubectl and helm live in $(STT_K8S_CACHE)/bin (fetched by `make cluster`)
export PATH := $(STT_K8S_CACHE)/bin:$(PATH)
KUBECTL ?= kubectl --kubeconfig $(STT_KUBECONFIG)
HELM ?= helm --kubeconfig $(STT_KUBECONFIG)

.PHONY: cluster cluster-down images kubeconfig cluster-smoke cluster-tools cluster-status images-dockerfile-check

cluster: ## Single-node Kubernetes (kind with Docker, else local v1.20); ends when the node is Ready
	@bash hack/cluster/up.sh

cluster-down: ## Stop/delete the cluster and clean up after it (twice is fine)
	@bash hack/cluster/down.sh

images: ## Build localhost/stt-{tiny,base,proxy,controller}:dev and load them into the cluster
	@PY="$(abspath $(PY))" bash hack/images/build.sh

kubeconfig: ## Print the admin kubeconfig path
	@echo $(STT_KUBECONFIG)

cluster-smoke: ## One pod per image, in-cluster API access, Service discovery via env vars
	@bash hack/cluster/smoke.sh

# kubectl + helm only (no cluster), e.g. for `helm lint` in CI
cluster-tools: ## kubectl + helm into /var/tmp/stt-k8s/bin (no cluster)
	@bash hack/cluster/build-binaries.sh --tools-only

cluster-status: ## kubectl get nodes and pods
	@$(KUBECTL) get nodes -o wide && $(KUBECTL) get pods -A -o wide

# build every CPU target of the real Dockerfile with podman (no Docker here) and check what each image carries; ~5 min
images-dockerfile-check: ## Build the Dockerfile targets with podman, check each role image (no Docker here; ~5 min)
	@bash hack/images/dockerfile-check.sh
