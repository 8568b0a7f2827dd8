"""KubernetesRoutingStore against kmock's Kubernetes emulator: the proxy's routing mode comes
from the SttConfig, /gpu-toggle writes to it, and API trouble never changes the mode silently."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import REGISTRY

from core.errors import ApiError
from core.vocabulary import RoutingMode
from kubeapi import ApiAccess
from services.proxy.routing import make_store
from services.proxy.routing_k8s import KubernetesRoutingStore
from services.proxy.settings import ProxySettings

NS = "stt"
CONFIGS = "stt.platform.io/v1alpha1/sttconfigs"


def sttconfig(routing: str) -> dict:
    return {
        "apiVersion": "stt.platform.io/v1alpha1",
        "kind": "SttConfig",
        "metadata": {"name": "stt", "namespace": NS},
        "spec": {"routing": routing, "gpuReplicas": 1},
    }


def store_for(url: str, initial: RoutingMode = RoutingMode.CPU, sync_timeout_s: float = 5.0) -> KubernetesRoutingStore:
    access = ApiAccess(url.rstrip("/"), False, token="t")
    return KubernetesRoutingStore(
        initial, name="stt", namespace=NS, access=access, watch_timeout_s=2, sync_timeout_s=sync_timeout_s
    )


async def eventually(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_make_store_builds_the_kubernetes_store() -> None:
    store = make_store(ProxySettings(routing_source="kubernetes", routing_mode=RoutingMode.GPU))
    assert isinstance(store, KubernetesRoutingStore) and store.source == "kubernetes" and store.mode is RoutingMode.GPU


async def test_mode_comes_from_the_sttconfig_and_follows_changes(kmock) -> None:
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig("gpu")
    store = store_for(str(kmock.url), initial=RoutingMode.CPU)
    await store.start()
    try:
        assert store.mode is RoutingMode.GPU  # the resource wins over the process's initial mode
        assert REGISTRY.get_sample_value("stt_proxy_routing_mode", {"mode": "gpu"}) == 1
        kmock.objects[CONFIGS, NS, "stt"] = sttconfig("auto")  # someone ran kubectl edit
        await eventually(lambda: store.mode is RoutingMode.AUTO)
        assert REGISTRY.get_sample_value("stt_proxy_routing_mode", {"mode": "gpu"}) == 0
    finally:
        await store.stop()
    requests = [str(r.url) for r in kmock["get"]]
    assert any("fieldSelector=metadata.name%3Dstt" in u and "watch=1" in u for u in requests)
    assert all(r.headers.get("Authorization") == "Bearer t" for r in kmock["get"])


async def test_set_mode_patches_spec_routing(kmock) -> None:
    kmock.objects[CONFIGS, NS, "stt"] = sttconfig("cpu")
    store = store_for(str(kmock.url))
    await store.start()
    try:
        assert await store.set_mode(RoutingMode.GPU) is RoutingMode.GPU
        assert kmock.objects[CONFIGS, NS, "stt"].raw["spec"] == {"routing": "gpu", "gpuReplicas": 1}
        (patch,) = list(kmock["patch"])
        assert patch.headers["Content-Type"] == "application/merge-patch+json"
        assert patch.data == {"spec": {"routing": "gpu"}}  # only the routing field: nothing else overwritten
    finally:
        await store.stop()


async def test_missing_sttconfig_keeps_the_initial_mode_and_refuses_toggles(kmock) -> None:
    store = store_for(str(kmock.url), initial=RoutingMode.AUTO)
    await store.start()
    try:
        assert store.mode is RoutingMode.AUTO
        with pytest.raises(ApiError) as err:
            await store.set_mode(RoutingMode.GPU)
        assert err.value.status == 503
        assert store.mode is RoutingMode.AUTO
        kmock.objects[CONFIGS, NS, "stt"] = sttconfig("gpu")  # created later (Helm's post-install hook)
        await eventually(lambda: store.mode is RoutingMode.GPU, timeout=8)
    finally:
        await store.stop()


async def test_unreachable_api_keeps_last_mode_and_toggle_fails_with_503() -> None:
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = store_for(f"http://127.0.0.1:{port}", initial=RoutingMode.GPU, sync_timeout_s=0.5)
    await store.start()  # must not hang or crash the proxy's start-up
    try:
        assert store.mode is RoutingMode.GPU and not store.synced.is_set()
        with pytest.raises(ApiError) as err:
            await store.set_mode(RoutingMode.CPU)
        assert err.value.status == 503 and err.value.code == "routing_store_unavailable"
        assert store.mode is RoutingMode.GPU
    finally:
        await store.stop()
