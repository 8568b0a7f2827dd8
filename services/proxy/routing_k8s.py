"""Routing mode kept in the ``SttConfig`` resource: the cluster, not proxy memory, is the truth.

Every proxy replica watches the same SttConfig (``STT_STTCONFIG_NAME`` in ``POD_NAMESPACE``)
and routes by its ``spec.routing``; ``/gpu-toggle`` PATCHes that field. So ``kubectl edit
sttconfig`` and ``/gpu-toggle`` are the same write, every replica follows it within the watch
latency (well under a second), nothing restarts, and a restarted proxy reads the mode back from
the resource. When the API cannot be reached the proxy keeps serving with the last mode it saw,
logs it loudly and keeps re-listing (with back-off); a toggle then fails with 503 rather than
changing one replica only.

Settings (fields of :class:`services.proxy.settings.ProxySettings`, passed in by the proxy's app):
``STT_STTCONFIG_NAME`` (``stt``), ``POD_NAMESPACE`` (the ServiceAccount's namespace),
``STT_ROUTING_WATCH_TIMEOUT_S`` (300: server-side watch length before a routine re-watch), and the
API server Kubernetes names in ``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``.
Credentials: the pod's ServiceAccount (token re-read on every request, as bound tokens rotate),
or the kubeconfig (``KUBECONFIG``) when the proxy runs outside a cluster. The ServiceAccount
needs only get/list/watch/patch on this one ``sttconfigs`` object.

Finding the API server, its TLS and the credentials, the pod's namespace and the SttConfig's
paths are :mod:`kubeapi`'s, shared with the operator. The calls themselves are ``httpx`` (async)
here, not the official client the operator uses: the watch runs on the proxy's asyncio event loop,
next to the requests it serves, where a blocking client would stall them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import httpx

from core.errors import ApiError
from core.vocabulary import RoutingMode
from kubeapi import ApiAccess, pod_namespace, sttconfig_path
from services.proxy import metrics

log = logging.getLogger("stt.proxy.routing")


class KubernetesRoutingStore:
    """Same interface as :class:`services.proxy.routing.LocalRoutingStore`, backed by the SttConfig."""

    source = "kubernetes"

    def __init__(
        self,
        initial: RoutingMode,
        name: str | None = None,
        namespace: str | None = None,
        access: ApiAccess | None = None,
        watch_timeout_s: int | None = None,
        sync_timeout_s: float = 5.0,
        api_host: str | None = None,
        api_port: str | None = None,
    ):
        self._mode = initial
        self.name = name or "stt"
        self.namespace = namespace or pod_namespace()
        self._access = access
        self._api_host, self._api_port = api_host or None, api_port or None
        self.watch_timeout_s = watch_timeout_s or 300
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task | None = None
        self.sync_timeout_s = sync_timeout_s
        self.synced = asyncio.Event()  # set once the API answered (the mode read, or the object missing)
        self.resource_version: str | None = None

    @property
    def mode(self) -> RoutingMode:
        return self._mode

    @property
    def collection_path(self) -> str:
        return sttconfig_path(self.namespace)

    def _set(self, obj: dict[str, Any], why: str) -> None:
        raw = (obj.get("spec") or {}).get("routing", RoutingMode.CPU.value)
        try:
            mode = RoutingMode(raw)
        except ValueError:
            log.error("SttConfig %s/%s has spec.routing=%r; keeping %s", self.namespace, self.name, raw, self._mode)
            return
        self.resource_version = obj.get("metadata", {}).get("resourceVersion", self.resource_version)
        if mode is not self._mode:
            log.info("routing mode %s -> %s (%s, SttConfig %s/%s)", self._mode, mode, why, self.namespace, self.name)
        self._mode = mode
        for m in RoutingMode:
            metrics.MODE.labels(m.value).set(1 if m is mode else 0)
        self.synced.set()

    async def start(self) -> None:
        if self._access is None:
            # the settings' host and port, never the environment behind them: none given, the kubeconfig
            self._access = ApiAccess.discover(self._api_host or "", self._api_port or "")
        self._client = httpx.AsyncClient(
            base_url=self._access.server,
            verify=self._access.verify,  # the cluster's CA, and the client certificate of such a kubeconfig user
            timeout=httpx.Timeout(10.0, read=self.watch_timeout_s + 30.0),
        )
        self._task = asyncio.create_task(self._run(), name="sttconfig-watch")
        # Serve with the resource's mode from the first request when the API answers quickly;
        # otherwise start with the initial mode and let the watch catch up (never block start-up).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.synced.wait(), timeout=self.sync_timeout_s)
        if not self.synced.is_set():
            log.error(
                "could not read SttConfig %s/%s yet; routing with %s until the API answers",
                self.namespace,
                self.name,
                self._mode,
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _list(self) -> str:
        """Read the object (a list filtered by name, so a missing object is not an error) -> resourceVersion."""
        assert self._client is not None and self._access is not None
        r = await self._client.get(
            self.collection_path,
            params={"fieldSelector": f"metadata.name={self.name}"},
            headers=self._access.headers(),
        )
        r.raise_for_status()
        body = r.json()
        items = body.get("items") or []
        if items:
            self._set(items[0], "list")
        else:
            log.error("SttConfig %s/%s does not exist; routing with %s", self.namespace, self.name, self._mode)
            self.synced.set()
        return body["metadata"]["resourceVersion"]

    async def _watch(self, resource_version: str) -> None:
        assert self._client is not None and self._access is not None
        params = {
            "fieldSelector": f"metadata.name={self.name}",
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(self.watch_timeout_s),
            "allowWatchBookmarks": "true",
        }
        async with self._client.stream("GET", self.collection_path, params=params, headers=self._access.headers()) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind in ("ADDED", "MODIFIED"):
                    self._set(obj, "watch")
                elif kind == "DELETED":
                    log.error("SttConfig %s/%s was deleted; keeping routing %s", self.namespace, self.name, self._mode)
                elif kind == "ERROR":
                    # 410 Gone: our resourceVersion is too old; re-list (the caller does).
                    raise RuntimeError(f"watch error: {obj.get('code')} {obj.get('message')}")

    async def _run(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while True:
            try:
                rv = await self._list()
                backoff = 0.5
                started = loop.time()
                await self._watch(rv)  # returns at the server-side timeout: re-list and re-watch
                if loop.time() - started < 1.0:  # a server that closes watches at once: no busy loop
                    await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "watching SttConfig %s/%s failed (%s: %s); keeping routing %s, retrying in %.1fs",
                    self.namespace,
                    self.name,
                    type(exc).__name__,
                    exc,
                    self._mode,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def set_mode(self, mode: RoutingMode) -> RoutingMode:
        """PATCH ``spec.routing``: exactly what ``kubectl edit sttconfig`` does."""
        if self._client is None or self._access is None:
            raise ApiError(503, "routing_store_unavailable", "the routing store has not started yet; retry shortly")
        url = sttconfig_path(self.namespace, self.name)
        try:
            r = await self._client.patch(
                url,
                content=json.dumps({"spec": {"routing": mode.value}}),
                headers={**self._access.headers(), "Content-Type": "application/merge-patch+json"},
                timeout=10.0,
            )
        except httpx.HTTPError as exc:
            raise ApiError(
                503,
                "routing_store_unavailable",
                f"the Kubernetes API did not answer ({type(exc).__name__}); routing unchanged, retry shortly",
                headers={"Retry-After": "2"},
            ) from None
        if r.status_code == 404:
            raise ApiError(
                503,
                "routing_store_unavailable",
                f"SttConfig {self.namespace}/{self.name} does not exist; create it (helm upgrade) and retry",
            )
        if r.status_code >= 300:
            raise ApiError(
                503,
                "routing_store_unavailable",
                f"the Kubernetes API refused the change (HTTP {r.status_code}: {r.text[:200]}); routing unchanged",
            )
        self._set(r.json(), "gpu-toggle")
        return self._mode
