"""Monitoring assets' tooling: the Grafana dashboard generator and the live PromQL check.

The shipped artefacts live in ``charts/stt/files/`` (dashboard JSON, alerting rules and their
promtool unit tests); see docs/monitoring.md.
"""
