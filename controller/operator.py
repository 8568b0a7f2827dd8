"""kopf handlers: make the Deployments match the SttConfig, and say in its status what runs.

Run: ``kopf run --standalone --namespace NS -m controller.operator --liveness http://0.0.0.0:8081/healthz``
(``--all-namespaces`` works too, with cluster-wide RBAC). Settings (environment, read once at
start-up into :class:`controller.settings.OperatorSettings`, which documents each one):

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

State lives where kopf keeps it, not in module globals: what every handler shares (settings, API
client, autoscaler, status lock) is a :class:`Runtime` in the operator's ``memo``, built at
start-up; what the operator remembers about one SttConfig (its last apply error, the generation
it applied) is a :class:`ConfigState` in that object's own ``memo``, dropped with the object; the
index :func:`sttconfigs` (managed SttConfigs by namespace) is how Deployment events and the
resync loop find them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
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
    Cluster,
    Names,
    asked,
    container_env,
    describe_error,
    load_config,
    ready_replicas,
    rollout_done,
)
from controller.settings import OperatorSettings, load_settings
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
from core.vocabulary import DEFAULT_DETECTOR, GROUP, PLURAL, VERSION

log = logging.getLogger("stt.controller")


@dataclass
class Runtime:
    """What every handler shares, built once at start-up and kept in kopf's memo (``memo.runtime``).

    kopf copies the operator's memo shallowly into each object's memo, so every handler, filter
    and index function sees this one object: replacing ``cluster`` (a test does) reaches them all.
    """

    settings: OperatorSettings
    cluster: Cluster
    autoscaler: Autoscaler
    # Status is written from kopf's handler threads and the resync loop: one writer at a time, so
    # a refresh that read an older status can never overwrite a newer one (but see apply()).
    status_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: OperatorSettings, cluster: Cluster | None = None) -> Runtime:
        """The runtime for ``settings``; without ``cluster``, one from the in-cluster config or kubeconfig."""
        if cluster is None:
            load_config()
            cluster = Cluster(timeout_s=settings.k8s_timeout_s)
        autoscaler = Autoscaler(settings.proxy_metrics_service, settings.proxy_metrics_port, settings.k8s_timeout_s)
        return cls(settings, cluster, autoscaler)

    @property
    def names(self) -> Names:
        """The Deployments it drives, from the settings (built on use: it follows replaced settings)."""
        s = self.settings
        return Names(
            cpu=s.cpu_deployment,
            gpu=s.gpu_deployment,
            detector=s.detector_deployment,
            detector_container=s.detector_container,
        )

    @property
    def externally_scaled(self) -> frozenset[str]:
        """The backends an HPA or KEDA scales (``STT_EXTERNALLY_SCALED``): hands off."""
        return self.settings.externally_scaled_backends


@dataclass
class ConfigState:
    """What the operator remembers about one SttConfig, in that object's kopf memo: kopf keeps it
    for the object's lifetime and drops it when the object is deleted, so nothing leaks."""

    error: str | None = None  # the last apply error, shown in the status until an apply succeeds
    applied: int | None = None  # metadata.generation last applied (status.observedGeneration)
    # Whether apply() has run for it (since this operator started). Until then its own handler
    # is about to reconcile it; a Deployment event or a resync doing the same at that moment
    # would only race that handler (kopf indexes an object before any of its handlers run).
    handled: bool = False


@dataclass(frozen=True)
class Known:
    """One managed SttConfig in the :func:`sttconfigs` index: its name and its state."""

    name: str
    state: ConfigState


def config_state(memo: kopf.Memo) -> ConfigState:
    """The SttConfig's :class:`ConfigState` in its own memo, created on first use."""
    state: ConfigState = memo.setdefault("sttconfig", ConfigState())
    return state


def runtime(memo: kopf.Memo) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


def managed(name: str, memo: kopf.Memo, **_: Any) -> bool:
    """Only the SttConfig named by ``STT_STTCONFIG_NAME``, or every one when it is empty."""
    wanted = runtime(memo).settings.sttconfig_name
    return not wanted or name == wanted


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def observe(c: Cluster, names: Names, namespace: str) -> Observed:
    cpu = c.read_deployment(namespace, names.cpu)
    gpu = c.read_deployment(namespace, names.gpu)
    det = c.read_deployment(namespace, names.detector)
    # No STT_DETECTOR in the pod template means the tiny service's own default.
    detector = (container_env(det, names.detector_container).get("STT_DETECTOR") or DEFAULT_DETECTOR) if det else None
    rollouts = {
        backend: Rollout(container_env(d, names.transcriber_container).get("STT_MODEL"), rollout_done(d))
        for backend, d in (("cpu", cpu), ("gpu", gpu))
        if d is not None
    }
    return Observed(
        ready_replicas(cpu), ready_replicas(gpu), ready_replicas(det), detector, asked(cpu), asked(gpu), rollouts
    )


def operator_scaled(spec: Spec, externally_scaled: frozenset[str]) -> dict[str, Policy]:
    """The backends this operator autoscales: the spec's, less those an HPA or KEDA scales."""
    return {b: p for b, p in spec.autoscaled().items() if b not in externally_scaled}


def hands_off(spec: Spec, observed: Observed, externally_scaled: frozenset[str]) -> Spec:
    """Where an HPA or KEDA scales a backend (``STT_EXTERNALLY_SCALED``), what it asked for is the
    desired count; the operator neither scales those Deployments nor reports its own number."""
    asked_for = {"gpu": observed.gpu_replicas, "cpu": observed.cpu_replicas}
    return spec.with_replicas({b: n for b in externally_scaled if (n := asked_for[b]) is not None})


def refresh_status(
    rt: Runtime,
    namespace: str,
    name: str,
    state: ConfigState,
    generation: int | None = None,
    patch: kopf.Patch | None = None,
) -> dict[str, Any] | None:
    """Write the status from what runs now; ``generation`` marks a spec as applied.

    ``patch``: a handler's own patch of this SttConfig, which kopf writes when the handler
    returns; without it (the resync loop, a Deployment's handler) the status is patched here.
    """
    with rt.status_lock:
        return _refresh_status(rt, namespace, name, state, generation, patch)


def _refresh_status(
    rt: Runtime, namespace: str, name: str, state: ConfigState, generation: int | None, patch: kopf.Patch | None
) -> dict[str, Any] | None:
    if generation is not None:
        state.applied = generation
    c = rt.cluster
    obj = c.read_config(namespace, name)
    if obj is None:  # deleted meanwhile: kopf drops it from the index and its memo
        return None
    previous = obj.get("status") or {}
    if generation is None:
        generation = state.applied if state.applied is not None else previous.get("observedGeneration")
    error = state.error
    try:
        spec = Spec.from_dict(obj.get("spec"))
    except ValueError as exc:
        spec, error = Spec(), str(exc)
    scaled = rt.autoscaler.last((namespace, name))
    observed = observe(c, rt.names, namespace)
    spec = hands_off(spec.with_decisions(scaled.decisions), observed, rt.externally_scaled)
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
        if backend in operator_scaled(spec, rt.externally_scaled)
    }
    status = compute_status(spec, observed, generation, previous, now, error, report)
    m.publish(spec.routing, spec.desired_gpu_replicas, status["gpuReplicasReady"])
    if any(previous.get(k) != v for k, v in status.items()) or previous.keys() - status.keys():
        if patch is not None:
            patch.status.update(merge_patch(previous, status))
        else:
            c.patch_status(namespace, name, merge_patch(previous, status))
    return status


def reconcile(rt: Runtime, namespace: str, spec: Spec) -> list[str]:
    """Bring the Deployments to the spec; returns what changed (for the log and the event).

    ``spec`` already carries the autoscaler's replicas where it drives them (:meth:`Spec.with_decisions`).
    """
    c, names, external = rt.cluster, rt.names, rt.externally_scaled
    changed = []
    if "gpu" not in external and c.scale(namespace, names.gpu, spec.desired_gpu_replicas):
        changed.append(f"{names.gpu} replicas={spec.desired_gpu_replicas}")
    if "cpu" not in external and c.scale(namespace, names.cpu, spec.cpu_replicas):
        changed.append(f"{names.cpu} replicas={spec.cpu_replicas}")
    if c.set_env(namespace, names.detector, names.detector_container, "STT_DETECTOR", spec.detector):
        changed.append(f"{names.detector} STT_DETECTOR={spec.detector}")
    # A model change is a rolling update: new pods load it and become ready before the Service
    # sends them work, and old ones drain (the CPU side surges; the GPU side, short of GPUs,
    # replaces a pod at a time while the proxy falls back to CPU).
    for backend, model in spec.models.items():
        deployment = names.gpu if backend == "gpu" else names.cpu
        if c.set_env(namespace, deployment, names.transcriber_container, "STT_MODEL", model):
            changed.append(f"{deployment} STT_MODEL={model}")
    return changed


def configure(settings: kopf.OperatorSettings, config: OperatorSettings) -> None:
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
    # kopf's own calls (progress annotations, Events, discovery, the status apply() leaves in
    # its patch) get the same bound as ours instead of aiohttp's 5 minutes; a watch's connect
    # uses connect_timeout too, and its stream is bounded by the two watching timeouts above.
    settings.networking.request_timeout = config.k8s_timeout_s
    settings.networking.connect_timeout = config.k8s_timeout_s


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    """Read the settings (once), build the :class:`Runtime` into the memo, start the resync.

    A memo that already holds a ``runtime`` (``kopf.operator(memo=...)``: a test, an embedding
    program) is used as it is. Invalid settings stop the operator at once (a permanent error).
    """
    # kopf passes every index to every handler by its id; kopf's handler protocol types no such
    # keyword, so it is taken from the rest.
    index: kopf.Index[str, Known] = kwargs["sttconfigs"]
    rt: Runtime | None = memo.get("runtime")
    if rt is None:
        try:
            config = load_settings()
        except ValueError as exc:
            raise kopf.PermanentError(str(exc)) from exc
        configure(settings, config)
        rt = memo.runtime = await asyncio.to_thread(Runtime.create, config)
    else:
        configure(settings, rt.settings)
    port = rt.settings.controller_metrics_port
    if port:
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)
    await asyncio.to_thread(wait_for_crd, rt.cluster)
    # kopf serves /healthz only once the start-up handlers are done: the clock starts here.
    stale_after = resync_stale_after_s(rt.settings.status_resync_s, rt.settings.k8s_timeout_s, RETRIES)
    memo.resync = ResyncHeartbeat(stale_after, time.monotonic())
    # The index is a live view that kopf keeps up to date: the loop sees SttConfigs come and go.
    memo.resync_task = asyncio.create_task(_resync_loop(rt, index, memo.resync))


def wait_for_crd(c: Cluster, timeout_s: float = 120.0) -> None:
    """Block until the API serves sttconfigs (discovery needs no RBAC), so kopf starts watching it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if c.serves(GROUP, VERSION, PLURAL):
                return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        except API_ERRORS as exc:  # no answer in time: the API server may still be starting
            if time.monotonic() > deadline:
                raise
            log.warning("discovery failed: %s", describe_error(exc, c.timeout_s))
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


@kopf.index(GROUP, VERSION, PLURAL, when=managed)
def sttconfigs(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> dict[str, Known]:
    """The managed SttConfigs by namespace, each with its :class:`ConfigState`.

    A Deployment event (another object's handler) and the resync loop (no handler at all) find
    here which SttConfigs to refresh, and their state, which lives in each SttConfig's own memo.
    kopf adds an SttConfig on its first event, before any of its handlers run, and removes it
    when it is deleted (or stops matching ``managed``); see :func:`handled` for who acts on it.
    """
    if namespace is None:  # an SttConfig is namespaced; kopf's types allow cluster-scoped objects
        return {}
    return {namespace: Known(name, config_state(memo))}


def handled(entries: Any) -> list[Known]:
    """The SttConfigs among ``entries`` (an index's values) that apply() has handled: those the
    Deployment events and the resync look after (see :attr:`ConfigState.handled`). A snapshot,
    as kopf updates the index on its event loop while these run in threads."""
    return [known for known in list(entries) if known.state.handled]


def correct_drift(rt: Runtime, namespace: str, known: Known, evaluate: bool = False) -> None:
    """Re-apply the current spec (someone scaled by hand, a ``helm rollback``) and refresh the status.

    The SttConfig is the truth: a Deployment that drifted from it is put back. Writes nothing
    when everything is in place. ``evaluate``: read the load and let the autoscaler decide anew
    (the periodic resync); otherwise its last decisions stand (a Deployment event), unless a
    backend it now drives has none yet.

    The status is patched here with an API call, not through a kopf ``patch``: this runs for an
    SttConfig from a Deployment's handler or from the resync loop, never from its own handler.
    """
    c, name, key = rt.cluster, known.name, (namespace, known.name)
    obj = c.read_config(namespace, name)
    if obj is None:  # deleted meanwhile: kopf drops it from the index
        return
    if known.state.error is None:
        try:
            spec = Spec.from_dict(obj.get("spec"))
        except ValueError:
            spec = None
        if spec is not None:
            policies = operator_scaled(spec, rt.externally_scaled)
            if evaluate or not set(policies) <= set(rt.autoscaler.last(key).decisions):
                rt.autoscaler.evaluate(c, obj, spec.routing, policies, rt.names)
            changed = reconcile(rt, namespace, spec.with_decisions(rt.autoscaler.last(key).decisions))
            if changed:
                m.RECONCILIATIONS.labels("success").inc()
                log.warning("corrected drift from SttConfig %s/%s: %s", namespace, name, ", ".join(changed))
    refresh_status(rt, namespace, name, known.state)


async def _resync_loop(rt: Runtime, index: kopf.Index[str, Known], heartbeat: ResyncHeartbeat) -> None:
    """Every ``STT_STATUS_RESYNC_S``: correct drift and refresh the status of every SttConfig in ``index``.

    Each finished attempt (one SttConfig, or a sweep with none to check) beats ``heartbeat``,
    failed or not, so that the liveness probe sees progress; only an attempt that never
    finishes (or this task's death) lets it go stale.
    """
    period = rt.settings.status_resync_s
    while True:
        await asyncio.sleep(period)
        targets = [(namespace, known) for namespace, store in list(index.items()) for known in handled(store)]
        for namespace, known in targets:
            try:
                await asyncio.to_thread(correct_drift, rt, namespace, known, True)
            except Exception:
                log.exception("resync of %s/%s failed; retrying in %.0fs", namespace, known.name, period)
                heartbeat.finished(time.monotonic(), ok=False)
            else:
                heartbeat.finished(time.monotonic(), ok=True)
        if not targets:
            heartbeat.finished(time.monotonic(), ok=True)


@kopf.on.resume(GROUP, VERSION, PLURAL, when=managed, id="apply-resume")
@kopf.on.create(GROUP, VERSION, PLURAL, when=managed, id="apply-create")
@kopf.on.update(GROUP, VERSION, PLURAL, when=managed, field="spec", id="apply-update")
def apply(
    spec: kopf.Spec,
    meta: kopf.Meta,
    name: str,
    namespace: str | None,
    logger: kopf.Logger,
    memo: kopf.Memo,
    patch: kopf.Patch,
    body: kopf.Body | None = None,
    **_: Any,
) -> None:
    """Reconcile on every spec change (and once per SttConfig when the operator starts).

    The status goes into kopf's ``patch``, which kopf writes (to the status subresource) when
    this returns or raises, together with its own progress annotations: one write path for this
    object's handler. It is computed under the status lock but written just after it, so a
    resync finishing in between may see its status replaced by this one, observed a moment
    earlier; the next Deployment event or resync brings it up to date.
    """
    started = time.perf_counter()
    if namespace is None:  # an SttConfig is namespaced; kopf's types allow cluster-scoped objects
        raise kopf.PermanentError(f"SttConfig {name} has no namespace")
    rt, state = runtime(memo), config_state(memo)
    state.handled = True
    try:
        wanted = Spec.from_dict(dict(spec))
    except ValueError as exc:  # the CRD schema should have refused it; say so rather than guess
        state.error = str(exc)
        m.RECONCILIATIONS.labels("error").inc()
        refresh_status(rt, namespace, name, state, patch=patch)
        raise kopf.PermanentError(str(exc)) from exc
    c = rt.cluster
    try:
        obj = {"metadata": {**dict(meta), "name": name, "namespace": namespace}}
        policies = operator_scaled(wanted, rt.externally_scaled)
        wanted = wanted.with_decisions(rt.autoscaler.evaluate(c, obj, wanted.routing, policies, rt.names))
        changed = reconcile(rt, namespace, wanted)
    except API_ERRORS as exc:
        state.error = error = f"applying the spec failed: {describe_error(exc, c.timeout_s)}"
        m.RECONCILIATIONS.labels("error").inc()
        try:  # best effort: the API that just failed may fail this too, and kopf must still retry
            refresh_status(rt, namespace, name, state, patch=patch)
        except API_ERRORS as status_exc:
            logger.warning("could not write the status: %s", describe_error(status_exc, c.timeout_s))
        raise kopf.TemporaryError(error, delay=5) from exc
    state.error = None
    m.APPLY_SECONDS.observe(time.perf_counter() - started)
    m.RECONCILIATIONS.labels("success").inc()
    try:
        refresh_status(rt, namespace, name, state, generation=meta.get("generation"), patch=patch)
    except API_ERRORS as exc:  # applied, but not yet said so: kopf retries soon, not in its default 60 s
        raise kopf.TemporaryError(f"refreshing the status failed: {describe_error(exc, c.timeout_s)}", delay=5) from exc
    summary = (
        f"applied routing={wanted.routing} gpuReplicas={wanted.desired_gpu_replicas} "
        f"cpuReplicas={wanted.cpu_replicas} detector={wanted.detector}: {', '.join(changed) or 'already in place'}"
    )
    logger.info("%s", summary)
    if changed and body is not None:
        kopf.info(body, reason="Applied", message=summary)


@kopf.on.event(GROUP, VERSION, PLURAL, when=managed)
def track(event: kopf.RawEvent, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Forget a deleted SttConfig's autoscaling memory (there is no deletion handler, see the
    module docstring); its index entry and its memo kopf drops by itself."""
    if event.get("type") == "DELETED" and namespace is not None:
        runtime(memo).autoscaler.forget((namespace, name))


def _ours(name: str, memo: kopf.Memo, **_: Any) -> bool:
    names = runtime(memo).names
    return name in (names.cpu, names.gpu, names.detector)


@kopf.on.event("apps", "v1", "deployments", when=_ours)
def deployment_changed(namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    """Pods came or went (or someone scaled by hand): correct drift and refresh the status at once.

    The SttConfigs of this namespace come from the ``sttconfigs`` index (in ``kwargs``: kopf's
    handler protocol types no such keyword).
    """
    index: kopf.Index[str, Known] = kwargs["sttconfigs"]
    if namespace is None:
        return
    rt = runtime(memo)
    for known in handled(index.get(namespace, ())):
        correct_drift(rt, namespace, known)
