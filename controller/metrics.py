"""The operator's Prometheus metrics (served on ``STT_CONTROLLER_METRICS_PORT``, default 8080).

The names are a contract: the monitoring dashboards and alerts (``charts/stt/files/``) use them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILIATIONS = Counter(
    "stt_controller_reconciliations_total",
    "SttConfig reconciliations by result (success: Deployments match the spec; error: an API call failed)",
    ["result"],
)
APPLY_SECONDS = Histogram(
    "stt_controller_apply_seconds",
    "Time from observing an SttConfig change to having applied it to the Deployments",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ROUTING_MODE = Gauge("stt_controller_routing_mode", "1 for the routing mode the SttConfig asks for", ["mode"])
GPU_REPLICAS_DESIRED = Gauge("stt_controller_gpu_replicas_desired", "GPU Deployment replicas the operator asks for")
GPU_REPLICAS_READY = Gauge("stt_controller_gpu_replicas_ready", "GPU pods ready (from the Deployment status)")


def publish(routing: str, gpu_desired: int, gpu_ready: int) -> None:
    for mode in ("cpu", "gpu", "auto"):
        ROUTING_MODE.labels(mode).set(1 if mode == routing else 0)
    GPU_REPLICAS_DESIRED.set(gpu_desired)
    GPU_REPLICAS_READY.set(gpu_ready)


# Create the known series at 0 so that rate()/increase() (and the error alert) see the first event.
for _result in ("success", "error"):
    RECONCILIATIONS.labels(_result)
