"""Where the routing mode (cpu / gpu / auto) lives.

The proxy never keeps the mode as its own truth when it runs in a cluster: there the
``SttConfig`` resource is the source of truth, ``/gpu-toggle`` writes to it, and every proxy
replica follows it (see :mod:`services.proxy.routing_k8s`). Outside a cluster the mode lives in
this process (``local``). Both implement :class:`RoutingStore`.
"""

from __future__ import annotations

from typing import Protocol

from core.vocabulary import RoutingMode
from services.proxy.settings import ProxySettings


class RoutingStore(Protocol):
    source: str

    @property
    def mode(self) -> RoutingMode: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_mode(self, mode: RoutingMode) -> RoutingMode:
        """Change the mode at its source of truth; returns the mode now in force."""
        ...


class LocalRoutingStore:
    """Mode kept in this process; for the local stack and tests."""

    source = "local"

    def __init__(self, initial: RoutingMode):
        self._mode = initial

    @property
    def mode(self) -> RoutingMode:
        return self._mode

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def set_mode(self, mode: RoutingMode) -> RoutingMode:
        self._mode = mode
        return mode


def make_store(settings: ProxySettings) -> RoutingStore:
    """The store ``STT_ROUTING_SOURCE`` names, starting from ``STT_ROUTING_MODE``."""
    if settings.routing_source == "kubernetes":
        from services.proxy.routing_k8s import KubernetesRoutingStore  # the Kubernetes client: only here

        return KubernetesRoutingStore(
            settings.routing_mode,
            name=settings.sttconfig_name,
            namespace=settings.pod_namespace or None,
            watch_timeout_s=settings.routing_watch_timeout_s,
            api_host=settings.kubernetes_service_host,
            api_port=settings.kubernetes_service_port,
        )
    return LocalRoutingStore(settings.routing_mode)
