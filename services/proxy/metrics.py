"""Metrics of the routing proxy."""

from prometheus_client import Counter, Gauge, Histogram

ROUTED = Counter("stt_proxy_routed_total", "Requests routed, by backend that served and mode", ["backend", "mode"])
FALLBACKS = Counter("stt_proxy_fallbacks_total", "Requests not served by the backend the mode asked for", ["reason"])
BACKEND_READY = Gauge("stt_proxy_backend_ready", "1 when the backend answered its last /readyz with 200", ["backend"])
UPSTREAM_SECONDS = Histogram(
    "stt_proxy_upstream_duration_seconds",
    "Time waiting for the backend, per backend and route",
    ["backend", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60),
)
UPSTREAM_ERRORS = Counter("stt_proxy_upstream_errors_total", "Backend calls that failed", ["backend", "kind"])
ADMIN_ACTIONS = Counter("stt_proxy_admin_actions_total", "Admin actions by action and result", ["action", "result"])
MODE = Gauge("stt_proxy_routing_mode", "1 for the routing mode in force", ["mode"])

# Create the known series at 0 so that rate()/increase() also see the first event.
for _backend in ("cpu", "gpu"):
    for _mode in ("cpu", "gpu", "auto"):
        ROUTED.labels(_backend, _mode)
for _backend in ("cpu", "gpu", "detector"):
    for _kind in ("connect", "timeout"):
        UPSTREAM_ERRORS.labels(_backend, _kind)
for _result in ("ok", "unauthenticated", "forbidden", "bad_request", "disabled", "error"):
    ADMIN_ACTIONS.labels("gpu-toggle", _result)
