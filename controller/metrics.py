"""The operator's Prometheus metrics (served on ``STT_CONTROLLER_METRICS_PORT``, default 8080).

The names are a contract: the monitoring dashboards and alerts (``charts/stt/files/``) use them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from core.vocabulary import ROUTING_MODES

if TYPE_CHECKING:
    from controller.autoscaling import Decision

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


AUTOSCALER_STREAMS = Gauge(
    "stt_controller_autoscaler_streams",
    "Live streams the autoscaler attributes to a backend (read from the proxies)",
    ["backend"],
)
AUTOSCALER_DESIRED = Gauge(
    "stt_controller_autoscaler_replicas_desired",
    "Replicas the autoscaler asks for, per autoscaled backend",
    ["backend"],
)
AUTOSCALER_AT_MAX = Gauge(
    "stt_controller_autoscaler_at_max",
    "1 while a backend runs its max replicas and the load still exceeds max x target",
    ["backend"],
)
SCALE_EVENTS = Counter(
    "stt_controller_autoscaler_scale_events_total",
    "Replica changes made by the autoscaler, by backend and reason (ScaleUp, ScaleFromZero, ScaleDown, ScaleToZero)",
    ["backend", "reason"],
)
LOAD_READ_FAILURES = Counter(
    "stt_controller_autoscaler_load_read_failures_total",
    "Autoscaler evaluations that could not read every proxy's live streams (replicas were held)",
)


def publish_autoscaler(decisions: dict[str, Decision], streams: dict[str, float | None]) -> None:
    """Set the autoscaler's gauges; backends it does not drive (any more) lose their series."""
    for backend in ("gpu", "cpu"):
        gauges = (AUTOSCALER_STREAMS, AUTOSCALER_DESIRED, AUTOSCALER_AT_MAX)
        if backend not in decisions:
            for gauge in gauges:
                with contextlib.suppress(KeyError):  # never set
                    gauge.remove(backend)
            continue
        decision = decisions[backend]
        if (streams_now := streams.get(backend)) is not None:
            AUTOSCALER_STREAMS.labels(backend).set(streams_now)
        AUTOSCALER_DESIRED.labels(backend).set(decision.replicas)
        AUTOSCALER_AT_MAX.labels(backend).set(1 if decision.at_max else 0)


def publish(routing: str, gpu_desired: int, gpu_ready: int) -> None:
    for mode in ROUTING_MODES:
        ROUTING_MODE.labels(mode).set(1 if mode == routing else 0)
    GPU_REPLICAS_DESIRED.set(gpu_desired)
    GPU_REPLICAS_READY.set(gpu_ready)


# Create the known series at 0 so that rate()/increase() (and the error alert) see the first event.
for _result in ("success", "error"):
    RECONCILIATIONS.labels(_result)
for _backend in ("gpu", "cpu"):
    for _reason in ("ScaleUp", "ScaleFromZero", "ScaleDown", "ScaleToZero"):
        SCALE_EVENTS.labels(_backend, _reason)
