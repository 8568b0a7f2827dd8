"""kopf handlers: make the Deployments match the SttConfig, and say in its status what runs.

Run: ``kopf run --standalone --namespace NS -m controller.operator --liveness http://0.0.0.0:8081/healthz``
(``--all-namespaces`` works too, with cluster-wide RBAC). Settings (environment):

- ``STT_STTCONFIG_NAME``: the one SttConfig this operator manages (empty: every SttConfig it sees).
- ``STT_CPU_DEPLOYMENT`` (``stt-base-cpu``), ``STT_GPU_DEPLOYMENT`` (``stt-base-gpu``),
  ``STT_DETECTOR_DEPLOYMENT`` (``stt-tiny``), ``STT_DETECTOR_CONTAINER`` (``tiny``): what it drives,
  in the SttConfig's namespace.
- ``STT_CONTROLLER_METRICS_PORT`` (8080; 0 = off): Prometheus ``/metrics``.
- ``STT_STATUS_RESYNC_S`` (15): status is refreshed on every Deployment event; this periodic
  refresh is the backstop for a missed event.
- ``STT_K8S_TIMEOUT_S`` (5): the timeout of every API call, the operator's own
  (:mod:`controller.kube`) and kopf's (``settings.networking``); see :mod:`controller.kube`.
  Reading the proxies' load for the autoscaler is bounded by it too (all proxies together).
- ``STT_PROXY_METRICS_SERVICE`` (``stt-proxy-metrics``) and ``STT_PROXY_METRICS_PORT`` (9090):
  where the autoscaler reads the live streams (the Service's Endpoints list the proxy pods;
  each is read at ``http://<pod IP>:<port>/metrics``, see :mod:`controller.load`).
- ``STT_EXTERNALLY_SCALED`` (empty): ``gpu``, ``cpu`` or ``gpu,cpu``: backends whose replicas an
  HPA or KEDA sets (the chart's ``autoscaling.engine``); the operator leaves them alone.

Liveness (``--liveness``, ``/healthz``): kopf answers it from the probe handlers, and
:func:`resync_alive` fails it (HTTP 500) once the status resync has finished no attempt for
:func:`controller.state.resync_stale_after_s` (255 s by default), so the kubelet restarts an
operator whose resync is stuck; a resync that keeps failing on API errors stays alive (see
:class:`controller.state.ResyncHeartbeat`).

What it does on create/update/resume of the spec: scale the GPU Deployment (``gpuReplicas``
while routing is ``gpu``/``auto``, ``gpuIdleReplicas`` while ``cpu``), scale the CPU Deployment,
set the detector's default (``STT_DETECTOR`` on the tiny Deployment: a rolling update) and each
transcriber's model (``spec.models``: ``STT_MODEL``, a rolling update; ``status.models`` says
when it is done), then write the status.

Autoscaling (``spec.autoscaling.<gpu|cpu>.enabled``): on every resync (``STT_STATUS_RESYNC_S``)
and every spec change, the operator reads the live streams from the proxies, asks
:func:`controller.autoscaling.decide` for each autoscaled backend's replicas, and those replace
the fixed counts above; each change is a Kubernetes Event on the SttConfig (a Warning when the
max is reached and the load still exceeds it), and ``status.autoscaling`` says what it saw and
why. The decision's memory (its stabilization windows) lives in this process: a restarted
operator starts from the replicas that run, so it never scales down before a full window.

The routing switch itself needs no action here: every proxy watches the same SttConfig
(``services.proxy.routing_k8s``), so there is one source of truth and nothing to keep in sync.
No deletion handler and no kopf timers/daemons on purpose: those put finalizers on the
SttConfig, which would block ``helm uninstall`` (the CRD's deletion) once the operator is gone.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import time
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from controller import metrics as m
from controller.autoscaler import Autoscaler
from controller.autoscaling import Policy
from controller.kube import (
    API_ERRORS,
    RETRIES,
    TIMEOUT_S,
    Cluster,
    Names,
    asked,
    container_env,
    describe_error,
    load_config,
    ready_replicas,
    rollout_done,
)
from controller.state import (
    Observed,
    ResyncHeartbeat,
    Rollout,
    Spec,
    autoscaling_status,
    compute_status,
    merge_patch,
    resync_stale_after_s,
)
from core.settings import env_int
from core.vocabulary import GROUP, PLURAL, VERSION

log = logging.getLogger("stt.controller")

CONFIG_NAME = os.environ.get("STT_STTCONFIG_NAME", "").strip()
NAMES = Names(
    cpu=os.environ.get("STT_CPU_DEPLOYMENT", "stt-base-cpu"),
    gpu=os.environ.get("STT_GPU_DEPLOYMENT", "stt-base-gpu"),
    detector=os.environ.get("STT_DETECTOR_DEPLOYMENT", "stt-tiny"),
    detector_container=os.environ.get("STT_DETECTOR_CONTAINER", "tiny"),
)
METRICS_PORT = int(os.environ.get("STT_CONTROLLER_METRICS_PORT", "8080"))
RESYNC_S = float(os.environ.get("STT_STATUS_RESYNC_S", "15"))
PROXY_METRICS_SERVICE = os.environ.get("STT_PROXY_METRICS_SERVICE", "stt-proxy-metrics")
PROXY_METRICS_PORT = env_int("STT_PROXY_METRICS_PORT", 9090, minimum=1)
EXTERNALLY_SCALED = frozenset(b.strip() for b in os.environ.get("STT_EXTERNALLY_SCALED", "").split(",") if b.strip())
if EXTERNALLY_SCALED - {"gpu", "cpu"}:
    raise SystemExit(f"STT_EXTERNALLY_SCALED={','.join(sorted(EXTERNALLY_SCALED))}: use gpu, cpu or both")

_cluster: Cluster | None = None
_known: set[tuple[str, str]] = set()  # (namespace, name) of managed SttConfigs
_errors: dict[tuple[str, str], str] = {}  # last apply error per SttConfig, shown in its status
_applied: dict[tuple[str, str], int] = {}  # metadata.generation last applied, per SttConfig
AUTOSCALER = Autoscaler(PROXY_METRICS_SERVICE, PROXY_METRICS_PORT)
# Status is written from kopf's handler threads and the resync loop: one writer at a time, so a
# refresh that read an older status can never overwrite a newer one.
_status_lock = threading.Lock()


def cluster() -> Cluster:
    global _cluster
    if _cluster is None:
        load_config()
        _cluster = Cluster()
    return _cluster


def managed(name: str, **_: Any) -> bool:
    return not CONFIG_NAME or name == CONFIG_NAME


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def observe(c: Cluster, namespace: str) -> Observed:
    cpu = c.read_deployment(namespace, NAMES.cpu)
    gpu = c.read_deployment(namespace, NAMES.gpu)
    det = c.read_deployment(namespace, NAMES.detector)
    # No STT_DETECTOR in the pod template means the tiny service's own default, silero.
    detector = (container_env(det, NAMES.detector_container).get("STT_DETECTOR") or "silero") if det else None
    rollouts = {
        backend: Rollout(container_env(d, NAMES.transcriber_container).get("STT_MODEL"), rollout_done(d))
        for backend, d in (("cpu", cpu), ("gpu", gpu))
        if d is not None
    }
    return Observed(
        ready_replicas(cpu), ready_replicas(gpu), ready_replicas(det), detector, asked(cpu), asked(gpu), rollouts
    )


def operator_scaled(spec: Spec) -> dict[str, Policy]:
    """The backends this operator autoscales: the spec's, less those an HPA or KEDA scales."""
    return {b: p for b, p in spec.autoscaled().items() if b not in EXTERNALLY_SCALED}


def hands_off(spec: Spec, observed: Observed) -> Spec:
    """Where an HPA or KEDA scales a backend (``STT_EXTERNALLY_SCALED``), what it asked for is the
    desired count; the operator neither scales those Deployments nor reports its own number."""
    asked_for = {"gpu": observed.gpu_replicas, "cpu": observed.cpu_replicas}
    return spec.with_replicas({b: n for b in EXTERNALLY_SCALED if (n := asked_for[b]) is not None})


def refresh_status(namespace: str, name: str, generation: int | None = None) -> dict[str, Any] | None:
    """Write the status from what runs now; ``generation`` marks a spec as applied."""
    with _status_lock:
        return _refresh_status(namespace, name, generation)


def _refresh_status(namespace: str, name: str, generation: int | None) -> dict[str, Any] | None:
    key = (namespace, name)
    if generation is not None:
        _applied[key] = generation
    c = cluster()
    obj = c.read_config(namespace, name)
    if obj is None:
        _known.discard(key)
        return None
    previous = obj.get("status") or {}
    if generation is None:
        generation = _applied.get(key, previous.get("observedGeneration"))
    error = _errors.get((namespace, name))
    try:
        spec = Spec.from_dict(obj.get("spec"))
    except ValueError as exc:
        spec, error = Spec(), str(exc)
    scaled = AUTOSCALER.last(key)
    observed = observe(c, namespace)
    spec = hands_off(spec.with_decisions(scaled.decisions), observed)
    now = _now()
    report = {
        backend: autoscaling_status(
            decision,
            scaled.streams.get(backend),
            (observed.gpu_ready if backend == "gpu" else observed.cpu_ready) or 0,
            (previous.get("autoscaling") or {}).get(backend),
            now,
        )
        for backend, decision in scaled.decisions.items()
        if backend in operator_scaled(spec)
    }
    status = compute_status(spec, observed, generation, previous, now, error, report)
    m.publish(spec.routing, spec.desired_gpu_replicas, status["gpuReplicasReady"])
    if any(previous.get(k) != v for k, v in status.items()) or previous.keys() - status.keys():
        c.patch_status(namespace, name, merge_patch(previous, status))
    return status


def reconcile(c: Cluster, namespace: str, spec: Spec) -> list[str]:
    """Bring the Deployments to the spec; returns what changed (for the log and the event).

    ``spec`` already carries the autoscaler's replicas where it drives them (:meth:`Spec.with_decisions`).
    """
    changed = []
    if "gpu" not in EXTERNALLY_SCALED and c.scale(namespace, NAMES.gpu, spec.desired_gpu_replicas):
        changed.append(f"{NAMES.gpu} replicas={spec.desired_gpu_replicas}")
    if "cpu" not in EXTERNALLY_SCALED and c.scale(namespace, NAMES.cpu, spec.cpu_replicas):
        changed.append(f"{NAMES.cpu} replicas={spec.cpu_replicas}")
    if c.set_env(namespace, NAMES.detector, NAMES.detector_container, "STT_DETECTOR", spec.detector):
        changed.append(f"{NAMES.detector} STT_DETECTOR={spec.detector}")
    # A model change is a rolling update: new pods load it and become ready before the Service
    # sends them work, and old ones drain (the CPU side surges; the GPU side, short of GPUs,
    # replaces a pod at a time while the proxy falls back to CPU).
    for backend, model in spec.models.items():
        deployment = NAMES.gpu if backend == "gpu" else NAMES.cpu
        if c.set_env(namespace, deployment, NAMES.transcriber_container, "STT_MODEL", model):
            changed.append(f"{deployment} STT_MODEL={model}")
    return changed


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (a function of its own so that a test can check them)."""
    # Progress and diff-base live in annotations: the status belongs to this operator's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Only warnings and errors become Kubernetes Events by themselves (an INFO event per Deployment
    # status change would be spam); apply() posts one Event per change it makes.
    settings.posting.level = logging.WARNING
    # No cluster-wide scanning of namespaces and CRDs: it needs cluster-scope RBAC that a
    # namespaced operator should not have. The CRD is installed before this Deployment (Helm's
    # order), and wait_for_crd() below holds start-up until the API serves it.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # kopf's own calls (progress annotations, Events, discovery) get the same bound as ours
    # instead of aiohttp's 5 minutes; a watch's connect uses connect_timeout too, and its
    # stream is bounded by the two watching timeouts above.
    settings.networking.request_timeout = TIMEOUT_S
    settings.networking.connect_timeout = TIMEOUT_S


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    if METRICS_PORT:
        start_http_server(METRICS_PORT)
        log.info("metrics on :%d/metrics", METRICS_PORT)
    await asyncio.to_thread(cluster)
    await asyncio.to_thread(wait_for_crd)
    # kopf serves /healthz only once the start-up handlers are done: the clock starts here.
    memo.resync = ResyncHeartbeat(resync_stale_after_s(RESYNC_S, TIMEOUT_S, RETRIES), time.monotonic())
    memo.resync_task = asyncio.create_task(_resync_loop(memo.resync))


def wait_for_crd(timeout_s: float = 120.0) -> None:
    """Block until the API serves sttconfigs (discovery needs no RBAC), so kopf starts watching it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cluster().serves(GROUP, VERSION, PLURAL):
                return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        except API_ERRORS as exc:  # no answer in time: the API server may still be starting
            if time.monotonic() > deadline:
                raise
            log.warning("discovery failed: %s", describe_error(exc))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{PLURAL}.{GROUP}/{VERSION} is not served: install the chart's CRD")
        log.warning("waiting for the %s.%s CRD to be served", PLURAL, GROUP)
        time.sleep(2)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync_task")
    if task is not None:
        task.cancel()


@kopf.on.probe(id="resync")
async def resync_alive(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """Part of ``/healthz``: fails while the status resync is stuck (see ``ResyncHeartbeat``).

    It raises :class:`kopf.PermanentError` on purpose: kopf retries a probe that raises anything
    else after the handler's backoff (60 s by default) within the same ``/healthz`` request, so
    the request would hang instead of failing; a permanent error makes kopf's health endpoint
    answer HTTP 500 at once. Async, so that it answers even when every worker thread is stuck.
    """
    heartbeat: ResyncHeartbeat | None = memo.get("resync")
    if heartbeat is None:  # start-up has not finished (kopf does not serve /healthz before that)
        return {"resync": "starting"}
    now = time.monotonic()
    age = heartbeat.age_s(now)
    if heartbeat.stuck(now):
        raise kopf.PermanentError(
            f"status resync stuck: no attempt finished for {age:.0f}s (allowed {heartbeat.stale_after_s:.0f}s)"
        )
    return {
        "lastAttemptSecondsAgo": round(age, 1),
        "lastAttemptOk": heartbeat.last_ok,
        "consecutiveFailures": heartbeat.consecutive_failures,
    }


def correct_drift(namespace: str, name: str, evaluate: bool = False) -> None:
    """Re-apply the current spec (someone scaled by hand, a ``helm rollback``) and refresh the status.

    The SttConfig is the truth: a Deployment that drifted from it is put back. Writes nothing
    when everything is in place. ``evaluate``: read the load and let the autoscaler decide anew
    (the periodic resync); otherwise its last decisions stand (a Deployment event), unless a
    backend it now drives has none yet.
    """
    c = cluster()
    obj = c.read_config(namespace, name)
    if obj is None:
        _known.discard((namespace, name))
        return
    if (namespace, name) not in _errors:
        try:
            spec = Spec.from_dict(obj.get("spec"))
        except ValueError:
            spec = None
        if spec is not None:
            policies = operator_scaled(spec)
            if evaluate or not set(policies) <= set(AUTOSCALER.last((namespace, name)).decisions):
                AUTOSCALER.evaluate(c, obj, spec.routing, policies, NAMES)
            changed = reconcile(c, namespace, spec.with_decisions(AUTOSCALER.last((namespace, name)).decisions))
            if changed:
                m.RECONCILIATIONS.labels("success").inc()
                log.warning("corrected drift from SttConfig %s/%s: %s", namespace, name, ", ".join(changed))
    refresh_status(namespace, name)


async def _resync_loop(heartbeat: ResyncHeartbeat) -> None:
    """Every ``RESYNC_S``: correct drift and refresh the status of every known SttConfig.

    Each finished attempt (one SttConfig, or a sweep with none to check) beats ``heartbeat``,
    failed or not, so that the liveness probe sees progress; only an attempt that never
    finishes (or this task's death) lets it go stale.
    """
    while True:
        await asyncio.sleep(RESYNC_S)
        for namespace, name in list(_known):
            try:
                await asyncio.to_thread(correct_drift, namespace, name, True)
            except Exception:
                log.exception("resync of %s/%s failed; retrying in %.0fs", namespace, name, RESYNC_S)
                heartbeat.finished(time.monotonic(), ok=False)
            else:
                heartbeat.finished(time.monotonic(), ok=True)
        if not _known:
            heartbeat.finished(time.monotonic(), ok=True)


@kopf.on.resume(GROUP, VERSION, PLURAL, when=managed, id="apply-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, when=managed, id="apply-create")
@kopf.on.update(GROUP, VERSION, PLURAL, when=managed, field="spec", id="apply-update")
def apply(
    spec: dict[str, Any],
    meta: dict[str, Any],
    name: str,
    namespace: str,
    logger: logging.Logger,
    body: Any = None,
    **_: Any,
) -> None:
    """Reconcile on every spec change (and once per SttConfig when the operator starts)."""
    started = time.perf_counter()
    key = (namespace, name)
    _known.add(key)
    try:
        wanted = Spec.from_dict(spec)
    except ValueError as exc:  # the CRD schema should have refused it; say so rather than guess
        _errors[key] = str(exc)
        m.RECONCILIATIONS.labels("error").inc()
        refresh_status(namespace, name)
        raise kopf.PermanentError(str(exc)) from exc
    c = cluster()
    try:
        obj = {"metadata": {**dict(meta), "name": name, "namespace": namespace}}
        wanted = wanted.with_decisions(AUTOSCALER.evaluate(c, obj, wanted.routing, operator_scaled(wanted), NAMES))
        changed = reconcile(c, namespace, wanted)
    except API_ERRORS as exc:
        _errors[key] = f"applying the spec failed: {describe_error(exc, c.timeout_s)}"
        m.RECONCILIATIONS.labels("error").inc()
        try:  # best effort: the API that just failed may fail this too, and kopf must still retry
            refresh_status(namespace, name)
        except API_ERRORS as status_exc:
            logger.warning("could not write the status: %s", describe_error(status_exc, c.timeout_s))
        raise kopf.TemporaryError(_errors[key], delay=5) from exc
    _errors.pop(key, None)
    m.APPLY_SECONDS.observe(time.perf_counter() - started)
    m.RECONCILIATIONS.labels("success").inc()
    try:
        refresh_status(namespace, name, generation=meta.get("generation"))
    except API_ERRORS as exc:  # applied, but not yet said so: kopf retries soon, not in its default 60 s
        raise kopf.TemporaryError(f"writing the status failed: {describe_error(exc, c.timeout_s)}", delay=5) from exc
    summary = (
        f"applied routing={wanted.routing} gpuReplicas={wanted.desired_gpu_replicas} "
        f"cpuReplicas={wanted.cpu_replicas} detector={wanted.detector}: {', '.join(changed) or 'already in place'}"
    )
    logger.info("%s", summary)
    if changed and body is not None:
        kopf.info(body, reason="Applied", message=summary)


@kopf.on.event(GROUP, VERSION, PLURAL, when=managed)
def track(event: dict[str, Any], name: str, namespace: str, **_: Any) -> None:
    """Forget deleted SttConfigs (there is no deletion handler, see the module docstring)."""
    if event.get("type") == "DELETED":
        _known.discard((namespace, name))
        _errors.pop((namespace, name), None)
        _applied.pop((namespace, name), None)
        AUTOSCALER.forget((namespace, name))


def _ours(name: str, **_: Any) -> bool:
    return name in (NAMES.cpu, NAMES.gpu, NAMES.detector)


@kopf.on.event("apps", "v1", "deployments", when=_ours)
def deployment_changed(namespace: str, **_: Any) -> None:
    """Pods came or went (or someone scaled by hand): correct drift and refresh the status at once."""
    for ns, name in list(_known):
        if ns == namespace:
            correct_drift(ns, name)
