# Helm chart, operator and end-to-end test (included by the top-level Makefile; see docs/kubernetes.md).
#
#   make e2e          cluster up, images built and loaded, then tests/e2e: helm install --wait, real
#                     speech through a real port-forward, kubectl edit / gpu-toggle routing switches,
#                     GPU scale-up, RBAC, upgrade/rollback/uninstall; prints the measured timings
#   make chart-test   the fast chart and operator checks (helm lint/template, kubernetes-validate, kmock)
#   make chart-install / chart-uninstall   the chart on the running cluster (namespace $(STT_NAMESPACE))
#   make operator-local  run the operator on this host against the cluster (kopf + kubeconfig)
VENV ?= .venv
PY ?= $(VENV)/bin/python
STT_K8S_CACHE ?= /var/tmp/stt-k8s
STT_CLUSTER_DIR ?= /var/tmp/stt-cluster
STT_KUBECONFIG ?= $(STT_CLUSTER_DIR)/kubeconfig
STT_NAMESPACE ?= stt
STT_RELEASE ?= stt
K8S_BIN := $(STT_K8S_CACHE)/bin
export STT_KUBECONFIG

.PHONY: e2e chart-test chart-lint chart-install chart-uninstall operator-local k8s-tools

k8s-tools:
	@test -x $(K8S_BIN)/helm -a -x $(K8S_BIN)/kubectl || bash hack/cluster/build-binaries.sh --tools-only

chart-lint: k8s-tools ## helm lint the chart (1.20 and current API versions)
	$(K8S_BIN)/helm lint --strict charts/stt --kube-version 1.20.2
	$(K8S_BIN)/helm lint --strict charts/stt --kube-version 1.33.0

chart-test: k8s-tools ## Fast chart/operator checks: lint, kubernetes-validate, template assertions, kmock
	$(PY) -m pytest -q tests/k8s

e2e: install ## Cluster + images + helm install + the end-to-end test on a real cluster (prints timings)
	$(MAKE) cluster
	$(MAKE) images
	@test -d $${STT_CORPUS_CACHE:-$$HOME/.cache/stt-corpus} || $(MAKE) corpus
	$(MAKE) browser
	$(PY) -m pytest -m e2e tests/e2e -v -s -p no:cacheprovider

chart-install: k8s-tools ## Install the chart on the running cluster (local images, imagePullPolicy Never)
	$(K8S_BIN)/kubectl --kubeconfig $(STT_KUBECONFIG) create namespace $(STT_NAMESPACE) --dry-run=client -o yaml \
	  | $(K8S_BIN)/kubectl --kubeconfig $(STT_KUBECONFIG) apply -f -
	$(K8S_BIN)/helm --kubeconfig $(STT_KUBECONFIG) -n $(STT_NAMESPACE) upgrade --install $(STT_RELEASE) charts/stt \
	  --set image.pullPolicy=Never --wait --timeout 10m

chart-uninstall: k8s-tools ## Uninstall the chart (removes the CRD and every SttConfig with it)
	$(K8S_BIN)/helm --kubeconfig $(STT_KUBECONFIG) -n $(STT_NAMESPACE) uninstall $(STT_RELEASE) --wait

operator-local: ## Run the operator on this host (for debugging; scale the in-cluster one to 0 first)
	KUBECONFIG=$(STT_KUBECONFIG) STT_STTCONFIG_NAME=$(STT_RELEASE) STT_CPU_DEPLOYMENT=$(STT_RELEASE)-base-cpu \
	  STT_GPU_DEPLOYMENT=$(STT_RELEASE)-base-gpu STT_DETECTOR_DEPLOYMENT=$(STT_RELEASE)-tiny \
	  $(VENV)/bin/kopf run --standalone --namespace $(STT_NAMESPACE) -m controller.operator
