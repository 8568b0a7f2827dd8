"""The operator's handlers against kmock's Kubernetes emulator (HTTP-level, stateful): the real
kubernetes client, real requests, no monkey-patching. The full kopf wiring against a real
API server and kubelet is covered by tests/e2e."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from controller import kube
from controller import operator as op

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


@pytest.fixture
def cluster(kmock) -> Iterator[kube.Cluster]:
    kmock.objects[DEPLOYMENTS, NS, "stt-base-cpu"] = deployment("stt-base-cpu", "base", 1, 1)
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 0, 0)
    kmock.objects[DEPLOYMENTS, NS, "stt-tiny"] = deployment(
        "stt-tiny", "tiny", 1, 1, [{"name": "STT_DETECTORS", "value": "silero"}]
    )
    c = kube.Cluster(client.ApiClient(client.Configuration(host=str(kmock.url).rstrip("/"))))
    saved = op._cluster
    op._cluster = c
    op._known.clear()
    op._errors.clear()
    yield c
    op._cluster = saved


async def apply(spec: dict[str, Any], generation: int = 1) -> None:
    meta = {"name": "stt", "namespace": NS, "generation": generation}
    await asyncio.to_thread(op.apply, spec=spec, meta=meta, name="stt", namespace=NS, logger=op.log)


async def test_gpu_routing_scales_gpu_sets_detector_and_reports_degraded(kmock, cluster) -> None:
    spec = {"routing": "gpu", "gpuReplicas": 2, "gpuIdleReplicas": 0, "cpuReplicas": 1, "detector": "whisper-tiny"}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec, generation=3)
    before = counter("success")
    await apply(spec, generation=3)

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


async def test_gpu_pods_becoming_ready_update_the_status(kmock, cluster) -> None:
    spec = {"routing": "gpu", "gpuReplicas": 1}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    await apply(spec)
    assert latest(kmock, CONFIGS, "stt")["status"]["activeBackend"] == "cpu"

    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 1, 1)
    await asyncio.to_thread(op.deployment_changed, namespace=NS)
    status = latest(kmock, CONFIGS, "stt")["status"]
    assert status["activeBackend"] == "gpu" and status["gpuReplicasReady"] == 1
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Degraded"]["status"] == "False" and conds["GpuReady"]["status"] == "True"
    assert REGISTRY.get_sample_value("stt_controller_gpu_replicas_ready") == 1


async def test_back_to_cpu_scales_gpu_to_idle_count_and_writes_nothing_when_in_place(kmock, cluster) -> None:
    kmock.objects[DEPLOYMENTS, NS, "stt-base-gpu"] = deployment("stt-base-gpu", "base", 2, 2)
    spec = {"routing": "cpu", "gpuReplicas": 2, "gpuIdleReplicas": 0, "detector": "silero"}
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec, generation=7)
    await apply(spec, generation=7)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0
    assert latest(kmock, CONFIGS, "stt")["status"]["observedGeneration"] == 7

    patches_before = len(kmock["patch"])
    await apply(spec, generation=7)  # a resync / operator restart: already in place
    new_patches = list(kmock["patch"])[patches_before:]
    assert not [r for r in new_patches if "/deployments/" in str(r.url)], "no needless rollouts or scaling"


async def test_invalid_spec_is_reported_not_applied(kmock, cluster) -> None:
    spec = {"routing": "sideways"}  # the CRD refuses this; the operator must not guess either
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig(spec)
    before = counter("error")
    with pytest.raises(kopf.PermanentError):
        await apply(spec)
    assert latest(kmock, DEPLOYMENTS, "stt-base-gpu")["spec"]["replicas"] == 0
    degraded = next(c for c in latest(kmock, CONFIGS, "stt")["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "ApplyFailed" and "sideways" in degraded["message"]
    assert counter("error") == before + 1
