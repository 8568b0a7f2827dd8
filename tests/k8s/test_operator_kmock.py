"""The operator's handlers against kmock's Kubernetes emulator (HTTP-level, stateful): the real
kubernetes client, real requests, no monkey-patching. The full kopf wiring against a real
API server and kubelet is covered by tests/e2e."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import kmock as km
import kopf
import pytest
import urllib3
from kopf._cogs.structs.credentials import Vault  # kopf.operator()'s own parameter type
from kubernetes import client
from prometheus_client import REGISTRY

from controller import kube
from controller import operator as op
from controller.autoscaler import Autoscaler
from controller.settings import OperatorSettings
from core.vocabulary import GROUP, PLURAL, VERSION

NS = "stt"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGS = "stt.platform.io/v1alpha1/sttconfigs"


def deployment(name: str, container: str, replicas: int, ready: int, env: list[dict] | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/component": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": container, "image": f"localhost/{name}:dev", "env": env or []}]},
            },
        },
        "status": {"replicas": replicas, "readyReplicas": ready},
    }


def sttconfig(spec: dict[str, Any], generation: int = 1, status: dict | None = None) -> dict[str, Any]:
    obj = {
        "apiVersion": "stt.platform.io/v1alpha1",
        "kind": "SttConfig",
        "metadata": {"name": "stt", "namespace": NS, "generation": generation},
        "spec": spec,
    }
    if status:
        obj["status"] = status
    return obj


def latest(kmock, resource: str, name: str) -> dict[str, Any]:
    return kmock.objects[resource, NS, name].raw


def counter(result: str) -> float:
    return REGISTRY.get_sample_value("stt_controller_reconciliations_total", {"result": result}) or 0.0


class Kopf:
    """What kopf hands the handlers, for calling them directly: the operator's memo (its
    :class:`op.Runtime`), the SttConfig's own memo (a shallow copy, as kopf makes it) and the
    ``sttconfigs`` index built by the index function itself."""

    def __init__(self, rt: op.Runtime) -> None:
        self.memo = kopf.Memo(runtime=rt)
        self.config_memo = kopf.Memo(self.memo)
        self.index = {NS: [*op.sttconfigs(name="stt", namespace=NS, memo=self.config_memo).values()]}

    @property
    def rt(self) -> op.Runtime:
        return self.memo.runtime

    @property
    def known(self) -> op.Known:
        return self.index[NS][0]


@pytest.fixture
def world(kmock) -> Kopf:
    kmock.objects[DEPLOYMENTS, NS, "stt-base-cpu"] = deployment("stt-base-cpu", "base", 1, 1)
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 0, 0)
    kmock.objects[DEPLOYMENTS, NS, "stt-tiny"] = deployment(
        "stt-tiny", "tiny", 1, 1, [{"name": "STT_DETECTORS", "value": "silero"}]
    )
    c = kube.Cluster(client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/"))), timeout_s=5.0)
    return Kopf(op.Runtime.create(OperatorSettings(), c))


@pytest.fixture
def cluster(world: Kopf) -> kube.Cluster:
    return world.rt.cluster


def _apply(world: Kopf, spec: dict[str, Any], generation: int) -> None:
    """The handler as kopf runs it: then kopf writes the handler's patch, failed or not."""
    meta = {"name": "stt", "namespace": NS, "generation": generation}
    patch = kopf.Patch()
    try:
        op.apply(spec=spec, meta=meta, name="stt", namespace=NS, logger=op.log, memo=world.config_memo, patch=patch)
    finally:
        if patch.get("status"):
            world.rt.cluster.patch_status(NS, "stt", patch["status"])


async def apply(world: Kopf, spec: dict[str, Any], generation: int = 1) -> None:
    await asyncio.to_thread(_apply, world, spec, generation)


async def deployment_changed(world: Kopf) -> None:
    await asyncio.to_thread(op.deployment_changed, namespace=NS, memo=world.memo, sttconfigs=world.index)


async def resync(world: Kopf) -> None:
    """One resync attempt of the SttConfig (what the resync loop does every period)."""
    await asyncio.to_thread(op.correct_drift, world.rt, NS, world.known, True)


async def test_gpu_routing_scales_gpu_sets_detector_and_reports_degraded(kmock, world) -> None:
    spec = {"routing": "gpu", "gpuReplicas": 2, "gpuIdleReplicas": 0, "cpuReplicas": 1, "detector": "whisper-tiny"}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec, generation=3)
    before = counter("success")
    await apply(world, spec, generation=3)

    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 2
    assert latest(kmock, DEPLOYMENTS, "stt-base-cpu")["spec"]["replicas"] == 1
    env = latest(kmock, DEPLOYMENTS, "stt-tiny")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "STT_DETECTOR", "value": "whisper-tiny"} in env
    assert {"name": "STT_DETECTORS", "value": "silero"} in env  # strategic merge: the rest untouched
    status = latest(kmock, CONFIGS, "stt")["status"]
    assert status["observedGeneration"] == 3
    assert status["activeBackend"] == "cpu"  # no GPU pod ready yet: the proxy serves on CPU
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "GpuNotReady")
    assert counter("success") == before + 1
    assert REGISTRY.get_sample_value("stt_controller_routing_mode", {"mode": "gpu"}) == 1
    assert REGISTRY.get_sample_value("stt_controller_routing_mode", {"mode": "cpu"}) == 0
    assert REGISTRY.get_sample_value("stt_controller_gpu_replicas_desired") == 2
    assert REGISTRY.get_sample_value("stt_controller_apply_seconds_count") >= 1


async def test_gpu_pods_becoming_ready_update_the_status(kmock, world) -> None:
    spec = {"routing": "gpu", "gpuReplicas": 1}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    await apply(world, spec)
    assert latest(kmock, CONFIGS, "stt")["status"]["activeBackend"] == "cpu"

    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 1, 1)
    await deployment_changed(world)
    status = latest(kmock, CONFIGS, "stt")["status"]
    assert status["activeBackend"] == "gpu" and status["gpuReplicasReady"] == 1
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Degraded"]["status"] == "False" and conds["GpuReady"]["status"] == "True"
    assert REGISTRY.get_sample_value("stt_controller_gpu_replicas_ready") == 1


async def test_back_to_cpu_scales_gpu_to_idle_count_and_writes_nothing_when_in_place(kmock, world) -> None:
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 2, 2)
    spec = {"routing": "cpu", "gpuReplicas": 2, "gpuIdleReplicas": 0, "detector": "silero"}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec, generation=7)
    await apply(world, spec, generation=7)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0
    assert latest(kmock, CONFIGS, "stt")["status"]["observedGeneration"] == 7

    patches_before = len(kmock["patch"])
    await apply(world, spec, generation=7)  # a resync / operator restart: already in place
    new_patches = list(kmock["patch"])[patches_before:]
    assert not [r for r in new_patches if "/deployments/" in str(r.url)], "no needless rollouts or scaling"


async def test_invalid_spec_is_reported_not_applied(kmock, world) -> None:
    spec = {"routing": "sideways"}  # the CRD refuses this; the operator must not guess either
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    before = counter("error")
    with pytest.raises(kopf.PermanentError):
        await apply(world, spec)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0
    degraded = next(c for c in latest(kmock, CONFIGS, "stt")["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "sideways" in degraded["message"]
    assert counter("error") == before + 1


def hang_reads_of_deployments(kmock) -> asyncio.Event:
    """Make the mock API server leave every GET of one Deployment unanswered until the event is set.

    Then the request goes on to the emulator (a reaction that yields nothing falls through), so
    nothing stays hung past the test. Lists and watches (kopf's) are left alone.
    """
    gate = asyncio.Event()

    async def wait() -> None:
        await gate.wait()

    kmock[km.action.FETCH, km.resource(DEPLOYMENTS)] << wait
    return gate


async def test_a_silent_api_server_fails_the_call_after_the_timeout(kmock, world) -> None:
    gate = hang_reads_of_deployments(kmock)
    c = kube.Cluster(kube.make_api_client(client.Configuration(host=str(kmock.url).rstrip("/"))), timeout_s=0.5)
    started = time.monotonic()
    try:
        # Without a timeout the call never returns: wait_for's own TimeoutError fails the test.
        with pytest.raises(urllib3.exceptions.MaxRetryError) as err:
            await asyncio.wait_for(asyncio.to_thread(c.read_deployment, NS, "stt-base-cpu"), 10)
    finally:
        gate.set()
    elapsed = time.monotonic() - started
    assert isinstance(err.value.reason, urllib3.exceptions.ReadTimeoutError)
    assert 0.9 < elapsed < 3, "two tries (one retry) of 0.5 s each"
    assert len(kmock[km.action.FETCH, km.resource(DEPLOYMENTS)]) == 2


async def test_apply_reports_a_timed_out_call_in_the_status_and_retries(kmock, world) -> None:
    spec = {"routing": "gpu", "gpuReplicas": 1}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    world.rt.cluster = kube.Cluster(world.rt.cluster.api, timeout_s=0.3)
    gate = hang_reads_of_deployments(kmock)
    try:
        with pytest.raises(kopf.TemporaryError):
            await asyncio.wait_for(apply(world, spec), 20)
    finally:
        gate.set()
    assert "timed out" in (world.known.state.error or "")


def test_kopf_calls_get_the_same_timeout() -> None:
    settings = kopf.OperatorSettings()
    op.configure(settings, OperatorSettings())
    assert settings.networking.request_timeout == OperatorSettings().k8s_timeout_s == 5.0
    assert settings.networking.connect_timeout == 5.0
    op.configure(settings, OperatorSettings(k8s_timeout_s=2))
    assert settings.networking.request_timeout == settings.networking.connect_timeout == 2
    assert (settings.watching.server_timeout, settings.watching.client_timeout) == (300, 330)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_operator(kmock, url: str, rt: op.Runtime) -> AsyncIterator[None]:
    """The real kopf operator (this module's handlers, kopf's own watches and /healthz) on kmock,
    with ``rt`` in its memo (so start-up reads no environment and builds no client of its own)."""
    vault = Vault()  # kopf's credentials: pre-filled, so no login handler and no kubeconfig
    await vault.populate({"kmock": kopf.ConnectionInfo(server=str(kmock.url).rstrip("/"))})
    stop = asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            standalone=True,
            namespaces=[NS],
            liveness_endpoint=url,
            stop_flag=stop,
            vault=vault,
            memo=kopf.Memo(runtime=rt),
        )
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def health(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    """kopf's /healthz: 200 with each probe's result by handler id, or 500 (plain text)."""
    async with session.get(url) as resp:
        return resp.status, (await resp.json() if resp.status == 200 else {})


async def poll(session: aiohttp.ClientSession, url: str, until: Any, within: float) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + within
    status, body = 0, {}
    while True:
        with contextlib.suppress(aiohttp.ClientConnectionError):
            status, body = await health(session, url)
            if until(status, body):
                return status, body
        if time.monotonic() > deadline:
            raise AssertionError(f"/healthz never matched within {within}s; last: {status} {body}")
        await asyncio.sleep(0.2)


@pytest.mark.slow
def serve_kopf_resources(kmock) -> None:
    """What kopf discovers before it watches anything: the SttConfig CRD, Deployments, its backbone."""
    verbs = {"get", "list", "watch", "patch", "delete"}
    kmock.resources[CONFIGS] = km.ResourceInfo(kind="SttConfig", namespaced=True, verbs=verbs, subresources={"status"})
    kmock.resources[DEPLOYMENTS] = km.ResourceInfo(kind="Deployment", namespaced=True, verbs=verbs)
    kmock.resources["v1/namespaces"] = km.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
    kmock.resources["v1/events"] = km.ResourceInfo(kind="Event", namespaced=True, verbs={"create"})


async def wait_for(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within}s")
        await asyncio.sleep(0.1)


def observed_generation(kmock) -> int | None:
    return (latest(kmock, CONFIGS, "stt").get("status") or {}).get("observedGeneration")


@pytest.mark.slow
async def test_liveness_fails_while_the_resync_is_stuck_not_while_it_fails(kmock, world, monkeypatch) -> None:
    serve_kopf_resources(kmock)
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig({"routing": "cpu"})
    rt = world.rt
    rt.settings = OperatorSettings(status_resync_s=0.2, controller_metrics_port=0)
    # The rule's own numbers are unit-tested; here a short bound (kopf keeps the real 5 s timeouts).
    bound = 5.0
    monkeypatch.setattr(op, "resync_stale_after_s", lambda *_: bound)
    api = kube.make_api_client(client.Configuration(host=str(kmock.url).rstrip("/")))  # one retry, as in production
    rt.cluster = kube.Cluster(api, timeout_s=0.5)  # a failed attempt: about 1 s
    url = f"http://127.0.0.1:{free_port()}/healthz"
    async with running_operator(kmock, url, rt), aiohttp.ClientSession() as session:
        # Healthy: the resync completes; the apply-resume handler's status went out in kopf's patch.
        await poll(session, url, lambda s, b: s == 200 and "resync" in b, within=30)
        await wait_for(lambda: observed_generation(kmock) == 1, 10, "status written from apply's patch")
        await poll(session, url, lambda s, b: s == 200 and b["resync"].get("lastAttemptOk") is True, within=15)

        # Failing, not stuck: every read times out, each attempt ends in an error, and the
        # operator stays alive past the bound (kopf caches a good answer for 10 s).
        gate = hang_reads_of_deployments(kmock)
        failing_since = time.monotonic()
        status, body = await poll(
            session,
            url,
            lambda s, b: (
                s != 200 or (b["resync"]["lastAttemptOk"] is False and time.monotonic() - failing_since > bound)
            ),
            within=bound + 20,
        )
        assert status == 200 and body["resync"]["consecutiveFailures"] >= 3

        # Stuck: a call that escapes its timeout (here: none at all) never returns.
        rt.cluster = kube.Cluster(api, timeout_s=None)
        status, body = await poll(session, url, lambda s, b: s == 500, within=bound + 20)

        # The stuck call returns, the resync completes again: healthy.
        gate.set()
        rt.cluster = kube.Cluster(api, timeout_s=0.5)
        await poll(session, url, lambda s, b: s == 200 and b["resync"]["lastAttemptOk"] is True, within=15)


def replicas(kmock, name: str) -> int:
    return latest(kmock, DEPLOYMENTS, name)["spec"]["replicas"]


@pytest.mark.slow
async def test_deployment_events_find_the_sttconfig_through_kopfs_index(kmock, world) -> None:
    """kopf's wiring of the ``sttconfigs`` index: a Deployment event (another object's handler)
    finds the managed SttConfig there and puts a hand-scaled Deployment back at once (the resync
    is an hour away); an SttConfig the operator does not manage (``STT_STTCONFIG_NAME``) is never
    indexed, and a deleted one leaves the index, so its Deployments are no longer corrected."""
    serve_kopf_resources(kmock)
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig({"routing": "gpu", "gpuReplicas": 2})
    other = sttconfig({"routing": "gpu", "gpuReplicas": 5})
    other["metadata"]["name"] = "other"
    kmock.objects[CONFIGS, NS, "other"] = other
    rt = world.rt
    rt.settings = OperatorSettings(sttconfig_name="stt", status_resync_s=3600, controller_metrics_port=0)
    c = rt.cluster
    url = f"http://127.0.0.1:{free_port()}/healthz"
    async with running_operator(kmock, url, rt):
        await wait_for(lambda: observed_generation(kmock) == 1, 15, "apply-resume wrote the status")
        assert replicas(kmock, "stt-base-gpu") == 2
        assert "status" not in latest(kmock, CONFIGS, "other")

        await asyncio.to_thread(c.scale, NS, "stt-base-gpu", 0)  # by hand: a MODIFIED event
        await wait_for(lambda: replicas(kmock, "stt-base-gpu") == 2, 15, "drift corrected from the event")

        await asyncio.to_thread(c.custom.delete_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "stt")
        await asyncio.sleep(1)  # kopf sees the DELETED event and drops the index entry
        await asyncio.to_thread(c.scale, NS, "stt-base-gpu", 1)
        await asyncio.sleep(2)
        assert replicas(kmock, "stt-base-gpu") == 1, "no SttConfig left to correct it"


# --- autoscaling: the real operator code, load read over HTTP from a metrics server ------------

ENDPOINTS = "v1/endpoints"


@pytest.fixture
def proxy_load(kmock, world: Kopf) -> Iterator:
    """One "proxy pod" (a loopback metrics server) behind the proxy metrics Service's Endpoints."""
    from tests.k8s.test_controller_load import exposition, metrics_server

    service = world.rt.settings.proxy_metrics_service
    with metrics_server(exposition()) as server:
        world.rt.autoscaler = Autoscaler(service, server.port, timeout_s=5.0)
        kmock.objects[ENDPOINTS, NS, service] = {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": service, "namespace": NS},
            "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "metrics", "port": server.port}]}],
        }

        def streams(n: int) -> None:
            server.text = exposition(ws=n)

        streams.server = server
        yield streams


def events(kmock) -> list[dict[str, Any]]:
    return [r.data for r in kmock[km.action.CREATE, km.resource("v1/events")]]


async def test_autoscaling_scales_gpu_from_zero_on_load_and_back_to_zero(kmock, world, proxy_load) -> None:
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": 2, "targetStreamsPerReplica": 2}
    auto |= {"scaleDownStabilizationSeconds": 0}
    spec = {"routing": "auto", "gpuReplicas": 1, "autoscaling": {"gpu": auto}}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    await apply(world, spec)  # no stream yet: the fixed gpuReplicas (1) is ignored, min 0 holds
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0
    status = latest(kmock, CONFIGS, "stt")["status"]
    assert status["autoscaling"]["gpu"]["streams"] == 0 and status["gpuReplicasDesired"] == 0
    assert "cpu" not in status["autoscaling"]

    proxy_load(3)  # 3 streams at 2 per replica: 2 replicas, from zero
    await resync(world)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 2
    gpu = latest(kmock, CONFIGS, "stt")["status"]["autoscaling"]["gpu"]
    assert (gpu["streams"], gpu["desiredReplicas"], gpu["reason"]) == (3, 2, "ScaleFromZero")
    assert gpu["lastScaleTime"] and not gpu["atMax"]
    (event,) = events(kmock)
    assert event["reason"] == "ScaleFromZero" and event["type"] == "Normal"
    assert event["involvedObject"]["kind"] == "SttConfig" and event["involvedObject"]["name"] == "stt"
    assert REGISTRY.get_sample_value("stt_controller_autoscaler_replicas_desired", {"backend": "gpu"}) == 2

    # A Deployment event (pods came up) keeps the autoscaler's count: it is not "drift".
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 2, 2)
    await deployment_changed(world)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 2
    assert latest(kmock, CONFIGS, "stt")["status"]["activeBackend"] == "gpu"

    proxy_load(9)  # over max x target: held at max, a Warning event once, the at-max gauge
    await resync(world)
    await resync(world)
    warnings = [e for e in events(kmock) if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == ["AtMax"]
    assert latest(kmock, CONFIGS, "stt")["status"]["autoscaling"]["gpu"]["atMax"] is True
    assert REGISTRY.get_sample_value("stt_controller_autoscaler_at_max", {"backend": "gpu"}) == 1

    proxy_load(0)  # load gone and a 0 s window: back to zero
    await resync(world)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0
    assert latest(kmock, CONFIGS, "stt")["status"]["autoscaling"]["gpu"]["reason"] == "ScaleToZero"
    assert events(kmock)[-1]["reason"] == "ScaleToZero"


async def test_autoscaling_holds_when_a_proxy_cannot_be_read(kmock, world, proxy_load) -> None:
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 2, 2)
    auto = {"enabled": True, "maxReplicas": 4, "targetStreamsPerReplica": 1, "scaleDownStabilizationSeconds": 0}
    spec = {"routing": "gpu", "autoscaling": {"gpu": auto}}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    proxy_load.server.text = "garbage {{{"
    await apply(world, spec)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 2  # neither up nor down
    gpu = latest(kmock, CONFIGS, "stt")["status"]["autoscaling"]["gpu"]
    assert "streams" not in gpu and gpu["reason"] == "LoadUnknown" and "unread" in gpu["message"]


async def test_cpu_autoscaling_under_cpu_routing_leaves_gpu_at_its_idle_count(kmock, world, proxy_load) -> None:
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 1, 1)
    autoscaling = {
        "cpu": {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetStreamsPerReplica": 2},
        "gpu": {"enabled": True, "minReplicas": 1, "maxReplicas": 4},
    }
    spec = {"routing": "cpu", "gpuIdleReplicas": 0, "autoscaling": autoscaling}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    proxy_load(5)
    await apply(world, spec)
    assert latest(kmock, DEPLOYMENTS, "stt-base-cpu")["spec"]["replicas"] == 3
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0  # cpu routing: gpuIdleReplicas
    status = latest(kmock, CONFIGS, "stt")["status"]
    assert set(status["autoscaling"]) == {"cpu"} and status["cpuReplicasDesired"] == 3


async def test_turning_autoscaling_off_restores_the_fixed_counts(kmock, world, proxy_load) -> None:
    auto = {"enabled": True, "minReplicas": 0, "maxReplicas": 3, "targetStreamsPerReplica": 1}
    spec = {"routing": "gpu", "gpuReplicas": 1, "autoscaling": {"gpu": auto}}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    proxy_load(3)
    await apply(world, spec)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 3
    off = {"routing": "gpu", "gpuReplicas": 1, "autoscaling": {"gpu": {**auto, "enabled": False}}}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(off, generation=2)
    await apply(world, off, generation=2)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 1
    assert "autoscaling" not in latest(kmock, CONFIGS, "stt")["status"]


async def test_a_backend_an_hpa_or_keda_scales_is_left_alone(kmock, world, proxy_load) -> None:
    """``autoscaling.engine: keda``: the operator neither resets what KEDA asked for to the fixed
    count nor autoscales it too, even when the SttConfig says so, and reports KEDA's number."""
    world.rt.settings = OperatorSettings(externally_scaled="gpu")
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 3, 2)
    auto = {"enabled": True, "maxReplicas": 8, "targetStreamsPerReplica": 1}
    spec = {"routing": "gpu", "gpuReplicas": 1, "cpuReplicas": 2, "autoscaling": {"gpu": auto}}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    proxy_load(6)
    await apply(world, spec)
    await resync(world)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 3  # KEDA's, untouched
    assert latest(kmock, DEPLOYMENTS, "stt-base-cpu")["spec"]["replicas"] == 2  # still the operator's
    status = latest(kmock, CONFIGS, "stt")["status"]
    assert status["gpuReplicasDesired"] == 3 and "autoscaling" not in status
    assert not events(kmock)


async def test_a_model_change_rolls_the_transcriber_and_the_status_follows_the_rollout(kmock, world) -> None:
    env = [{"name": "STT_MODEL", "value": "base"}, {"name": "STT_DEVICE", "value": "cpu"}]
    kmock.objects[DEPLOYMENTS, NS, "stt-base-cpu"] = deployment("stt-base-cpu", "base", 1, 1, env)
    spec = {"routing": "cpu", "models": {"cpu": "tiny.en"}}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    await apply(world, spec)
    cpu = latest(kmock, DEPLOYMENTS, "stt-base-cpu")
    env_now = cpu["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "STT_MODEL", "value": "tiny.en"} in env_now
    assert {"name": "STT_DEVICE", "value": "cpu"} in env_now  # the rest untouched
    models = latest(kmock, CONFIGS, "stt")["status"]["models"]
    assert models == {"cpu": {"requested": "tiny.en", "template": "tiny.en", "rolledOut": False}}

    # the Deployment controller finished the rollout: every pod updated and ready
    cpu["metadata"]["generation"] = 2
    cpu["status"] = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1}
    kmock.objects[DEPLOYMENTS, NS, "stt-base-cpu"] = cpu
    await deployment_changed(world)
    assert latest(kmock, CONFIGS, "stt")["status"]["models"]["cpu"]["rolledOut"] is True
    patches = len(kmock["patch"])
    await apply(world, spec)  # in place: no second rollout
    assert not [r for r in list(kmock["patch"])[patches:] if "/deployments/" in str(r.url)]
