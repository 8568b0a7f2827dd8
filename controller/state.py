"""What the SttConfig asks for, what is really running, and the status that says so.

Pure functions (no API calls) so that every status rule is unit-tested without a cluster. The
backend that serves is the proxy's own rule (:func:`core.vocabulary.serving_backend`), so
``activeBackend`` in the resource and ``active_backend`` in the proxy's ``/gpu-status`` tell the same story.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from controller.autoscaling import Decision, Policy, policies_from_spec
from core.vocabulary import BACKENDS, CPU, DEFAULT_DETECTOR, DETECTORS, ROUTING_MODES, routes_to_gpu, serving_backend


@dataclass(frozen=True)
class Spec:
    """The SttConfig ``spec`` with the CRD's defaults applied (the API server applies them too;
    repeating them here keeps the operator correct against objects created before a default existed)."""

    routing: str = "cpu"
    gpu_replicas: int = 1
    gpu_idle_replicas: int = 0
    cpu_replicas: int = 1
    detector: str = DEFAULT_DETECTOR
    # Enabled ``spec.autoscaling`` backends ("gpu", "cpu") and their policies; empty: fixed counts.
    autoscaling: dict[str, Policy] = field(default_factory=dict)
    # ``spec.models``: the Whisper model per backend ("gpu", "cpu"); absent: the pods' own setting.
    models: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> Spec:
        spec = dict(spec or {})
        routing = str(spec.get("routing", cls.routing))
        detector = str(spec.get("detector", cls.detector))
        if routing not in ROUTING_MODES:
            raise ValueError(f"spec.routing={routing!r}: use one of {', '.join(ROUTING_MODES)}")
        if detector not in DETECTORS:
            raise ValueError(f"spec.detector={detector!r}: use one of {', '.join(DETECTORS)}")
        values = {
            "gpu_replicas": spec.get("gpuReplicas", cls.gpu_replicas),
            "gpu_idle_replicas": spec.get("gpuIdleReplicas", cls.gpu_idle_replicas),
            "cpu_replicas": spec.get("cpuReplicas", cls.cpu_replicas),
        }
        for key, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"spec.{key}={value!r}: must be a non-negative integer")
        autoscaling = policies_from_spec(spec.get("autoscaling"))
        models = models_from_spec(spec.get("models"))
        return cls(routing=routing, detector=detector, autoscaling=autoscaling, models=models, **values)

    def autoscaled(self) -> dict[str, Policy]:
        """The backends the autoscaler drives now: the GPU side only while routing may use it
        (under ``cpu`` routing it keeps ``gpuIdleReplicas``, as without autoscaling)."""
        return {b: p for b, p in self.autoscaling.items() if b == CPU or routes_to_gpu(self.routing)}

    def with_decisions(self, decisions: dict[str, Decision]) -> Spec:
        """This spec with the autoscaler's replicas in place of the fixed counts it drives."""
        return self.with_replicas({b: d.replicas for b, d in decisions.items() if b in self.autoscaled()})

    def with_replicas(self, replicas: dict[str, int]) -> Spec:
        """This spec running ``replicas`` per backend ("gpu", "cpu") whatever the routing, in place
        of its fixed counts: the autoscaler's decisions, or what an HPA or KEDA has set."""
        gpu = replicas.get("gpu")
        return replace(
            self,
            gpu_replicas=self.gpu_replicas if gpu is None else gpu,
            gpu_idle_replicas=self.gpu_idle_replicas if gpu is None else gpu,
            cpu_replicas=replicas.get("cpu", self.cpu_replicas),
        )

    @property
    def desired_gpu_replicas(self) -> int:
        """GPU pods cost money: ``gpuReplicas`` only while routing may use them, else ``gpuIdleReplicas``."""
        return self.gpu_replicas if routes_to_gpu(self.routing) else self.gpu_idle_replicas


MODEL_CHARS = re.compile(r"[A-Za-z0-9._/@-]{1,256}")


def models_from_spec(models: dict | None) -> dict[str, str]:
    """``spec.models`` checked: per backend a model name the transcriber resolves (a provisioned
    name such as ``base`` or ``tiny.en``, an absolute directory in the pod such as a mounted
    volume, or a hub name such as ``Systran/faster-whisper-small``), as
    :func:`services.common.models.resolve_model` does. The CRD's pattern refuses the rest first."""
    out: dict[str, str] = {}
    for backend, model in (models or {}).items():
        if backend not in BACKENDS:
            raise ValueError(f"spec.models.{backend}: unknown backend (use {', '.join(BACKENDS)})")
        if not isinstance(model, str) or not MODEL_CHARS.fullmatch(model) or ".." in model.split("/"):
            raise ValueError(
                f"spec.models.{backend}={model!r}: a model name (base, tiny.en, org/name) or an absolute "
                "directory, at most 256 of A-Z a-z 0-9 . _ / @ -"
            )
        out[backend] = model
    return out


@dataclass(frozen=True)
class Rollout:
    """One transcriber Deployment's model and whether its pods all run the current template."""

    model: str | None  # STT_MODEL in its pod template (None: unset, the image's default)
    done: bool  # every replica updated and ready (the Deployment controller has seen the change)


@dataclass(frozen=True)
class Observed:
    """Ready pod counts read from the Deployments' status (``None``: the Deployment is missing)."""

    cpu_ready: int | None
    gpu_ready: int | None
    detector_ready: int | None
    detector: str | None = None  # STT_DETECTOR currently in the detector's pod template
    # The Deployments' spec.replicas: what an HPA or KEDA asks for where one scales a backend.
    cpu_replicas: int | None = None
    gpu_replicas: int | None = None
    rollouts: dict[str, Rollout] = field(default_factory=dict)  # per backend, for status.models


def active_backend(routing: str, observed: Observed) -> str:
    """The backend the proxy serves from now, by the proxy's own rule (:func:`core.vocabulary.serving_backend`)."""
    return serving_backend(routing, bool(observed.cpu_ready), bool(observed.gpu_ready)) or "none"


def _condition(ctype: str, ok: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def conditions_for(
    spec: Spec, observed: Observed, generation: int | None, error: str | None = None
) -> list[dict[str, Any]]:
    """Ready, GpuReady and Degraded, each with a reason a person (and an alert) can act on."""
    cpu, gpu, det = observed.cpu_ready or 0, observed.gpu_ready or 0, observed.detector_ready or 0
    want_gpu = spec.desired_gpu_replicas
    active = active_backend(spec.routing, observed)

    if want_gpu == 0:
        gpu_cond = _condition(
            "GpuReady", False, "ScaledToZero", f"GPU Deployment scaled to 0 (routing {spec.routing})", generation
        )
    elif gpu >= want_gpu:
        gpu_cond = _condition("GpuReady", True, "AllReplicasReady", f"{gpu}/{want_gpu} GPU pods ready", generation)
    else:
        gpu_cond = _condition("GpuReady", False, "ReplicasNotReady", f"{gpu}/{want_gpu} GPU pods ready", generation)

    if error:
        degraded = _condition("Degraded", True, "ApplyFailed", error, generation)
    elif spec.routing == "gpu" and gpu == 0:
        degraded = _condition(
            "Degraded",
            True,
            "GpuNotReady",
            f"routing is gpu but no GPU pod is ready (0/{want_gpu}); the proxy serves on {active}",
            generation,
        )
    elif spec.cpu_replicas > 0 and cpu == 0:
        degraded = _condition("Degraded", True, "CpuNotReady", f"0/{spec.cpu_replicas} CPU pods ready", generation)
    elif det == 0:
        degraded = _condition("Degraded", True, "DetectorNotReady", "no speech detector pod is ready", generation)
    else:
        degraded = _condition("Degraded", False, "AsRequested", f"serving on {active} as requested", generation)

    if error:
        ready = _condition("Ready", False, "ApplyFailed", error, generation)
    elif active == "none":
        ready = _condition("Ready", False, "NoBackendReady", "no transcription pod is ready", generation)
    elif det == 0:
        ready = _condition("Ready", False, "DetectorNotReady", "no speech detector pod is ready", generation)
    else:
        ready = _condition("Ready", True, "Serving", f"serving on {active}", generation)
    return [ready, gpu_cond, degraded]


def keep_transition_times(
    new: list[dict[str, Any]], old: list[dict[str, Any]] | None, now: str
) -> list[dict[str, Any]]:
    """``lastTransitionTime`` changes only when a condition's status does (the Kubernetes convention)."""
    before = {c.get("type"): c for c in old or []}
    out = []
    for cond in new:
        prev = before.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        kept = prev.get("lastTransitionTime") if same and prev is not None else None
        out.append({**cond, "lastTransitionTime": kept or now})
    return out


def compute_status(
    spec: Spec,
    observed: Observed,
    generation: int | None,
    previous: dict[str, Any] | None,
    now: str,
    error: str | None = None,
    autoscaling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The full ``status`` for the SttConfig; equal to ``previous`` when nothing changed.

    ``spec`` carries the replicas to run (the autoscaler's where it drives them, see
    :meth:`Spec.with_decisions`); ``autoscaling`` is the autoscaler's own report per backend
    (:func:`autoscaling_status`), left out when autoscaling is off.
    """
    previous = previous or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "routing": spec.routing,
        "activeBackend": active_backend(spec.routing, observed),
        "detector": observed.detector or spec.detector,
        "gpuReplicasDesired": spec.desired_gpu_replicas,
        "gpuReplicasReady": observed.gpu_ready or 0,
        "cpuReplicasDesired": spec.cpu_replicas,
        "cpuReplicasReady": observed.cpu_ready or 0,
        "conditions": keep_transition_times(
            conditions_for(spec, observed, generation, error), previous.get("conditions"), now
        ),
    }
    if autoscaling:
        status["autoscaling"] = autoscaling
    if spec.models:
        status["models"] = models_status(spec, observed)
    return status


def models_status(spec: Spec, observed: Observed) -> dict[str, Any]:
    """``status.models.<backend>``: the model asked for, the one in the pod template, and whether
    the rollout to it is done (every pod updated and ready: from then on only it answers)."""
    out: dict[str, Any] = {}
    for backend, model in spec.models.items():
        rollout = observed.rollouts.get(backend)
        serving = rollout.model if rollout else None
        out[backend] = {
            "requested": model,
            "template": serving or "",
            "rolledOut": bool(rollout and rollout.done and serving == model),
        }
    return out


def merge_patch(previous: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` as a JSON merge patch over ``previous`` (RFC 7386): a field that ``new`` no longer
    has is sent as ``null``, at any depth of objects, or the API server would keep it (a stale
    ``streams`` figure, or ``status.autoscaling`` after autoscaling was turned off)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        old = previous.get(key)
        patch[key] = merge_patch(old, value) if isinstance(value, dict) and isinstance(old, dict) else value
    for key in previous.keys() - new.keys():
        patch[key] = None
    return patch


def autoscaling_status(
    decision: Decision, streams: float | None, ready: int, previous: dict[str, Any] | None, now: str
) -> dict[str, Any]:
    """One backend's ``status.autoscaling.<backend>``: the load seen, desired and ready replicas,
    and why; ``lastScaleTime`` moves only when the desired count does; no ``streams`` while the
    load is unknown."""
    previous = previous or {}
    changed = previous.get("desiredReplicas") != decision.replicas
    report = {
        "desiredReplicas": decision.replicas,
        "readyReplicas": ready,
        "reason": decision.reason,
        "message": decision.message,
        "atMax": decision.at_max,
        "lastScaleTime": now if changed or not previous.get("lastScaleTime") else previous["lastScaleTime"],
    }
    if streams is not None:  # absent while unknown (a null would delete the field in a merge patch anyway)
        report = {"streams": streams, **report}
    return report


# A drift check of one SttConfig makes at most this many API calls: read the SttConfig; for the
# autoscaler, read the proxies' Endpoints and the two transcriber Deployments and post up to four
# Events (a change and reaching the max, per backend); read (and maybe patch) the three
# Deployments; then read the SttConfig and the three Deployments again and maybe patch the
# status (``operator.correct_drift``). Reading the proxies' load adds one timeout, not a call.
RESYNC_MAX_CALLS = 19


def resync_stale_after_s(period_s: float, timeout_s: float, retries: int = 1) -> float:
    """How long without a finished resync attempt means the operator is stuck, not just slow.

    ``4 x period``: three sweeps may be late (a handler holding the status lock, a busy event
    loop) before anyone worries; plus one drift check in which every call (``RESYNC_MAX_CALLS``,
    each tried ``1 + retries`` times) ran to its timeout, the slowest an attempt can be while
    every call is bounded, and the autoscaler's read of the proxies ran to its one timeout.
    Defaults (15 s, 5 s, 1 retry): 60 + 190 + 5 = 255 s. Anything longer can
    only be a call that escaped its timeout, a deadlock or a dead resync task, which a restart
    cures; a false alarm would restart a healthy operator under a slow API server and add load.
    """
    return 4 * period_s + (RESYNC_MAX_CALLS * (1 + retries) + 1) * timeout_s


@dataclass
class ResyncHeartbeat:
    """When the periodic status resync last finished an attempt, successful or not.

    Stuck and failing are told apart on purpose: an attempt that ends in an API error (HTTP 5xx,
    403, a call that timed out) still *finishes*, so the operator stays alive and keeps retrying;
    a restart would not mend the API server or the RBAC and would hide the error behind
    CrashLoopBackOff, while the status condition, the error metric and the log already say what
    fails. Only an attempt that never ends (the loop is blocked or dead) makes the operator stale,
    which the liveness probe reports so that the kubelet restarts it. Times are
    ``time.monotonic()`` seconds, passed in, so the rule is tested without a clock.
    """

    stale_after_s: float
    last_finished: float
    last_ok: bool = True
    consecutive_failures: int = 0

    def finished(self, now: float, ok: bool) -> None:
        self.last_finished = now
        self.last_ok = ok
        self.consecutive_failures = 0 if ok else self.consecutive_failures + 1

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.last_finished)

    def stuck(self, now: float) -> bool:
        return self.age_s(now) > self.stale_after_s
