# Monitoring (included by the top-level Makefile; also works alone: `make -f mk/monitoring.mk monitor`).
# See docs/monitoring.md.
#
#   make monitor            Prometheus on http://127.0.0.1:9090 scraping `make up`'s stack, with the alerts loaded
#   make monitoring-check   promtool on the rules + every dashboard/rule PromQL against that Prometheus
#   make dashboard          regenerate charts/stt/files/grafana-dashboard.json from monitoring/dashboard.py
#   make test-monitoring    the monitoring tests (starts its own stack and Prometheus)
VENV ?= .venv
PY ?= $(VENV)/bin/python
PROMETHEUS_URL ?= http://127.0.0.1:9090
STT_MONITORING_FILES ?= charts/stt/files

.PHONY: monitor monitoring-tools monitoring-check dashboard test-monitoring

monitoring-tools: ## Install Prometheus and promtool (Debian package) when missing
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || bash hack/need-debs.sh prometheus

monitor: monitoring-tools ## Run Prometheus (:9090) against the local stack (`make up` first); Ctrl-C stops it
	@mkdir -p .run/prometheus
	@echo "Prometheus on http://127.0.0.1:9090 (targets: /targets, alerts: /alerts); Ctrl-C to stop"
	prometheus --config.file=monitoring/prometheus-local.yml --storage.tsdb.path=.run/prometheus \
	  --web.listen-address=127.0.0.1:9090 --storage.tsdb.retention.time=2d --log.level=warn

monitoring-check: monitoring-tools ## promtool checks + evaluate every dashboard/rule PromQL against $(PROMETHEUS_URL)
	promtool check rules $(STT_MONITORING_FILES)/prometheus-rules.yml
	promtool test rules $(STT_MONITORING_FILES)/prometheus-rules.test.yml
	$(PY) -m monitoring.promql_check --prometheus $(PROMETHEUS_URL) \
	  --dashboard $(STT_MONITORING_FILES)/grafana-dashboard.json --rules $(STT_MONITORING_FILES)/prometheus-rules.yml \
	  --allow-missing-prefix stt_controller_ --allow-missing-prefix stt_client_

dashboard: ## Regenerate the Grafana dashboard JSON from monitoring/dashboard.py
	$(PY) -m monitoring.dashboard --write

test-monitoring: monitoring-tools ## Monitoring tests only: promtool, dashboard, live Prometheus on the real stack
	$(PY) -m pytest -q tests/monitoring
