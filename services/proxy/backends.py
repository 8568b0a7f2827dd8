"""The backends behind the proxy, their health, and the choice of which one serves.

Health is checked in the background (``/readyz`` every ``interval`` seconds) so routing never
waits on a probe; a connection failure during a real request marks the backend down at
once, and the request is retried on the other side (only connection failures are retried:
a request that reached a backend may have done work there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from core.vocabulary import CPU, GPU, RoutingMode, serving_backend
from services.proxy.metrics import BACKEND_READY

log = logging.getLogger(__name__)


@dataclass
class Backend:
    name: str  # "cpu", "gpu" or "detector"
    url: str | None
    ready: bool = False
    last_check: float = 0.0
    last_error: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def mark(self, ready: bool, error: str | None = None) -> None:
        if ready != self.ready:
            log.info("backend %s is now %s", self.name, "ready" if ready else f"NOT ready: {error}")
        self.ready, self.last_error, self.last_check = ready, error, time.monotonic()
        BACKEND_READY.labels(self.name).set(1 if ready else 0)

    def status(self) -> dict:
        return {
            "url": self.url,
            "ready": self.ready,
            "last_check_s": round(time.monotonic() - self.last_check, 1) if self.last_check else None,
            "error": self.last_error,
        }


@dataclass
class Route:
    """Which backends to try, in order, and why the first is not the one the mode wanted."""

    order: list[Backend]
    wanted: str  # the backend the mode asks for ("cpu" or "gpu")
    fallback_reason: str | None = None


def choose(mode: RoutingMode, cpu: Backend, gpu: Backend) -> Route:
    """The order to try the backends in: the one :func:`core.vocabulary.serving_backend` names
    first (the CPU side when nothing is ready: it is tried anyway), the other as the fallback."""
    if serving_backend(mode, cpu.ready, gpu.ready) == GPU:
        order = [gpu, cpu]
    else:
        order = [cpu, gpu] if gpu.configured else [cpu]
    # in auto mode, serving on CPU without a ready GPU is the plan, not a fallback
    wanted = GPU if mode is RoutingMode.GPU or (mode is RoutingMode.AUTO and gpu.ready) else CPU
    if order[0].name == wanted:
        return Route(order, wanted)
    if wanted == CPU:
        return Route(order, wanted, "cpu backend not ready")
    return Route(order, wanted, "gpu backend not configured" if not gpu.configured else "gpu backend not ready")


class HealthChecker:
    def __init__(self, client: aiohttp.ClientSession, backends: list[Backend], interval: float):
        self.client = client
        self.backends = [b for b in backends if b.configured]
        self.interval = interval
        self._task: asyncio.Task | None = None
        for backend in backends:
            BACKEND_READY.labels(backend.name).set(0)

    async def check(self, backend: Backend) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=min(2.0, self.interval))
            async with self.client.get(f"{backend.url}/readyz", timeout=timeout) as response:
                ok = response.status == 200
            backend.mark(ok, None if ok else f"/readyz answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            backend.mark(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(b) for b in self.backends))

    async def _loop(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="health")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
