"""How many replicas one backend (GPU or CPU) should run for the live load it has now.

A pure function, like :mod:`controller.state`: the load, the replicas, the policy, what the
autoscaler remembers and the time are all arguments, so the rule is unit-tested
(``tests/k8s/test_autoscaling.py``) and driven through a simulated day
(``bench/autoscale_sim.py``, figures in docs/kubernetes.md) without a cluster or a clock.
The operator calls it through :mod:`controller.autoscaler` on each resync, with the load read
from the proxies (:mod:`controller.load`).

The rule is the Kubernetes HPA's (``behavior.scaleUp/scaleDown.stabilizationWindowSeconds``)
on a load people can reason about:

1. ``needed = ceil(streams / target per replica)``, clamped to ``[min, max]``; every evaluation
   remembers its ``needed`` with its time.
2. Up: to the *smallest* ``needed`` over the scale-up window (0 s by default: at once, since
   a stream over target is latency now, and GPU pods take a minute to start).
3. Down: to the *largest* ``needed`` over the scale-down window: replicas go only once the load
   has stayed low for the whole window, so a noisy load around a boundary does not flap and a
   short lull does not cost a cold start a minute later.
4. Any stream with 0 replicas asks for at least 1 whatever the windows say (scale from zero).

The unit is **live streams per replica** (the proxy's ``stt_proxy_sessions_active``), not
audio-seconds per second: the capacity benchmark states what a replica serves in streams
within the latency bound (docs/performance.md), so the target reads straight off it, and a live
stream is a steady 1 audio-s/s anyway. File transcriptions load the GPU too but tolerate a
queue; they are left out of this signal on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.vocabulary import BACKENDS

SCALE_UP = "ScaleUp"
SCALE_FROM_ZERO = "ScaleFromZero"
SCALE_DOWN = "ScaleDown"
SCALE_TO_ZERO = "ScaleToZero"
SCALE_UP_DELAYED = "ScaleUpDelayed"
SCALE_DOWN_DELAYED = "ScaleDownDelayed"
AT_MAX = "AtMax"
STEADY = "Steady"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Policy:
    """How one backend scales. Defaults, and why:

    - ``min_replicas`` 0: an idle GPU costs as much as a busy one; the CPU side serves the first
      minute of a cold start (the proxy's fallback).
    - ``max_replicas`` 1: the spend ceiling is the user's call; 1 is what the platform runs
      without autoscaling (``gpuReplicas``), so turning autoscaling on never spends more unless
      asked to.
    - ``target_streams_per_replica`` 120: ~75 % of the 163 streams one H200 replica served
      within the latency bound at batch 16 (docs/performance.md); the headroom absorbs the
      load that arrives while a new pod starts.
    - ``scale_up_stabilization_s`` 0: react at once, like the HPA's default.
    - ``scale_down_stabilization_s`` 900: the simulated day (docs/kubernetes.md) shows 15 min
      keeping the cold starts and the events few for a few percent more GPU-hours than 5 min.
    """

    min_replicas: int = 0
    max_replicas: int = 1
    target_streams_per_replica: float = 120.0
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 900.0

    def __post_init__(self) -> None:
        for name in ("min_replicas", "max_replicas"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a non-negative integer")
        if self.max_replicas < 1:
            raise ValueError("max_replicas=0: must be at least 1 (to run no GPU at all, route to cpu instead)")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} is above max_replicas={self.max_replicas}")
        target = self.target_streams_per_replica
        if not _is_number(target) or target <= 0:
            raise ValueError(f"target_streams_per_replica={target!r}: must be a number above 0")
        for name in ("scale_up_stabilization_s", "scale_down_stabilization_s"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a non-negative number of seconds")

    def needed(self, streams: float) -> int:
        """Replicas that keep ``streams`` at or under target, before the bounds."""
        return math.ceil(streams / self.target_streams_per_replica)

    def clamp(self, replicas: int) -> int:
        return min(self.max_replicas, max(self.min_replicas, replicas))


@dataclass(frozen=True)
class State:
    """What the autoscaler remembers between evaluations: ``(time s, needed replicas)``, oldest
    first, only as far back as the longer window. Empty (a restarted operator), it is seeded with
    the current replicas, so a restart never scales down before a full window has been seen."""

    recommendations: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Decision:
    """The replicas to ask for, the state to keep, and why (``reason`` for machines, ``message``
    for people: both become a Kubernetes Event). ``at_max``: the max is asked for and the load
    still exceeds ``max x target``, which deserves an alert (latency is at risk and only a
    higher max or more capacity per replica helps)."""

    replicas: int
    state: State
    reason: str
    message: str
    at_max: bool


def decide(streams: float, current: int, policy: Policy, state: State, now: float) -> Decision:
    """The replicas one backend should run.

    ``streams``: live streams now (>= 0; a mean over a scrape is fine). ``current``: the replicas
    asked for so far (the Deployment's ``spec.replicas``), not the ready ones, or pods still
    starting would be asked for again. ``now``: monotonic seconds; remembered entries later than
    ``now`` (a reset clock) are dropped.
    """
    if not _is_number(streams) or streams < 0:
        raise ValueError(f"streams={streams!r}: must be a non-negative number")
    if not _is_int(current) or current < 0:
        raise ValueError(f"current={current!r}: must be a non-negative integer")
    up_w, down_w = policy.scale_up_stabilization_s, policy.scale_down_stabilization_s
    keep = max(up_w, down_w)
    history = [(t, r) for t, r in state.recommendations if now - keep < t <= now]
    if not any(t <= now for t, _ in state.recommendations):  # a fresh start or a reset clock
        history = [(now, current)]
    wanted = policy.needed(streams)
    needed = policy.clamp(wanted)
    up = min([needed] + [r for t, r in history if t > now - up_w])
    down = max([needed] + [r for t, r in history if t > now - down_w])
    if current < up:
        replicas = up
    elif current > down:
        replicas = down
    else:
        replicas = current
    replicas = policy.clamp(replicas)
    if streams > 0 and replicas == 0:
        replicas = 1
    history.append((now, needed))
    new_state = State(tuple((t, r) for t, r in history if t > now - keep or t == now))
    at_max = replicas >= policy.max_replicas and streams > policy.max_replicas * policy.target_streams_per_replica
    reason, message = _explain(streams, current, replicas, wanted, policy, down)
    return Decision(replicas, new_state, reason, message, at_max)


def _explain(streams: float, current: int, replicas: int, wanted: int, policy: Policy, down: int) -> tuple[str, str]:
    """The reason and the human message of one decision."""
    load = f"{streams:g} streams"
    target = f"target {policy.target_streams_per_replica:g} per replica"
    change = f"{current} -> {replicas}"
    cap = f" (capped at max {policy.max_replicas}; {wanted} needed)" if wanted > policy.max_replicas else ""
    if replicas > current:
        if current < policy.min_replicas and replicas == policy.min_replicas and wanted <= current:
            return SCALE_UP, f"raised to min {policy.min_replicas}: {change}"
        if current == 0:
            return SCALE_FROM_ZERO, f"{load} with no replica, {target}: {change}{cap}"
        return SCALE_UP, f"{load} over {target}: {change}{cap}"
    if replicas < current:
        window = f"{policy.scale_down_stabilization_s:g} s"
        if replicas == 0:
            return SCALE_TO_ZERO, f"no stream for {window}: {change}"
        return SCALE_DOWN, f"{load}; at most {down} replicas needed over the last {window}: {change}"
    if wanted > replicas and replicas >= policy.max_replicas:
        return AT_MAX, f"{load} need {wanted} replicas at {target}; held at max {policy.max_replicas}"
    if policy.clamp(wanted) > replicas:
        window = f"{policy.scale_up_stabilization_s:g} s"
        return SCALE_UP_DELAYED, f"{load} over {target}; waiting for {window} of high load ({replicas} replicas)"
    if policy.clamp(wanted) < replicas:
        window = f"{policy.scale_down_stabilization_s:g} s"
        return (
            SCALE_DOWN_DELAYED,
            f"{load} need {policy.clamp(wanted)} of {replicas} replicas; keeping them until the load "
            f"stays low for {window}",
        )
    return STEADY, f"{load} at {target}: {replicas} replicas"


LOAD_UNKNOWN = "LoadUnknown"


def hold(current: int, policy: Policy, state: State, why: str) -> Decision:
    """No load figure this time (a proxy did not answer): keep the replicas, within the bounds.

    Like the HPA with a missing metric, it neither scales up nor down on a guess: an unread
    proxy may hold many streams (scaling down would cut latency for them) or none. The state is
    kept as it was, so the windows resume where they stood once the load reads again.
    """
    replicas = policy.clamp(current)
    change = f": {current} -> {replicas} (the bounds)" if replicas != current else f"; holding {replicas} replicas"
    return Decision(replicas, state, LOAD_UNKNOWN, f"load unknown ({why}){change}", False)


# The CRD's names (spec.autoscaling.<backend>.*) for the Policy's fields.
SPEC_FIELDS = {
    "minReplicas": "min_replicas",
    "maxReplicas": "max_replicas",
    "targetStreamsPerReplica": "target_streams_per_replica",
    "scaleUpStabilizationSeconds": "scale_up_stabilization_s",
    "scaleDownStabilizationSeconds": "scale_down_stabilization_s",
}
# Per-backend defaults (the CRD's and the chart's are the same). The CPU side: a CPU pod is the
# fallback and costs little idle, so min 1; its capacity is a few streams (on a 2-core AVX2
# node, 4 within the latency bound: docs/performance.md), so the target is 3.
DEFAULT_POLICIES = {
    "gpu": Policy(),
    "cpu": Policy(min_replicas=1, max_replicas=1, target_streams_per_replica=3.0, scale_down_stabilization_s=300.0),
}


def policies_from_spec(autoscaling: dict | None) -> dict[str, Policy]:
    """The enabled backends' policies from ``spec.autoscaling`` (CRD names, per-backend defaults).

    Raises ValueError naming the field, for what the CRD schema cannot refuse (min above max).
    """
    out: dict[str, Policy] = {}
    for backend, raw in (autoscaling or {}).items():
        if backend not in BACKENDS:
            raise ValueError(f"spec.autoscaling.{backend}: unknown backend (use {', '.join(BACKENDS)})")
        raw = dict(raw or {})
        if not raw.pop("enabled", False):
            continue
        unknown = sorted(set(raw) - set(SPEC_FIELDS))
        if unknown:
            raise ValueError(f"spec.autoscaling.{backend}: unknown field(s) {', '.join(unknown)}")
        values = {SPEC_FIELDS[k]: v for k, v in raw.items()}
        base = DEFAULT_POLICIES[backend]
        try:
            out[backend] = Policy(**{**base.__dict__, **values})
        except ValueError as exc:
            raise ValueError(f"spec.autoscaling.{backend}: {exc}") from exc
    return out


def streams_per_backend(streams: float, routing: str, gpu_ready: int) -> dict[str, float]:
    """Which backend serves the live streams now, by the proxy's routing rule.

    ``cpu`` routing: all on CPU. ``gpu``/``auto``: all on GPU while a GPU pod is ready, else on
    CPU (the proxy's fallback), which is also what happens during a scale from zero: the CPU side
    takes the streams while the first GPU pod starts, and an autoscaled CPU side may grow for it.
    """
    if routing == "cpu":
        return {"gpu": 0.0, "cpu": streams}
    return {"gpu": streams, "cpu": streams if gpu_ready == 0 else 0.0}
