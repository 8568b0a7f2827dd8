"""Calls from the proxy to its backends: one place for routing, fallback and error mapping.

Used by the HTTP routes (``/transcribe``, ``/v1/audio/*``, ``/detect``) and by the streaming
sessions (:mod:`services.proxy.sessions`), so a live session's windows are routed, fall back
and count in the metrics exactly like a chunk the client posts itself.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp

from services.common.errors import ApiError
from services.proxy import metrics
from services.proxy.backends import Backend, Route, choose
from services.proxy.routing import Mode


class Upstream:
    """A backend's whole answer (small JSON or text; event streams go through :meth:`Upstreams.open_stream`)."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = headers or {}


# Refused, unreachable, connect timeout, or the connection died before any answer (read
# timeouts are caught before these): safe to retry on the other backend.
CONNECT_ERRORS = (aiohttp.ClientConnectionError,)
T = TypeVar("T")
# Backend headers worth passing to the caller (backpressure hints).
PASSED_HEADERS = ("retry-after",)


class Upstreams:
    """The backends behind this proxy and the one HTTP client that reaches them."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        cpu: Backend,
        gpu: Backend,
        detector: Backend,
        mode: Callable[[], Mode],
    ) -> None:
        self.client = client
        self.cpu, self.gpu, self.detector = cpu, gpu, detector
        self._mode = mode

    @property
    def mode(self) -> Mode:
        return self._mode()

    def route(self) -> Route:
        return choose(self.mode, self.cpu, self.gpu)

    async def call(
        self, backend: Backend, path: str, body: bytes, content_type: str, query: str, route: str
    ) -> Upstream:
        url = f"{backend.url}{path}" + (f"?{query}" if query else "")
        start = time.perf_counter()
        try:
            async with self.client.post(url, data=body, headers={"content-type": content_type}) as response:
                payload = await response.read()
                passed = {k: response.headers[k] for k in PASSED_HEADERS if k in response.headers}
                return Upstream(response.status, payload, response.headers.get("content-type", ""), passed)
        finally:
            metrics.UPSTREAM_SECONDS.labels(backend.name, route).observe(time.perf_counter() - start)

    async def routed(
        self, path: str, body: bytes, content_type: str, query: str, route_label: str
    ) -> tuple[Upstream, Backend, str | None]:
        """Send to the backend the routing mode picks; on a connection failure try the other.

        Returns the answer, the backend that gave it, and why it is not the one the mode
        wanted (None when it is). A read timeout is never resent: the backend may be working.
        """
        return await self._first_that_connects(
            lambda backend: self.call(backend, path, body, content_type, query, route_label)
        )

    async def open_stream(
        self, path: str, body: bytes, content_type: str, query: str, route_label: str
    ) -> tuple[aiohttp.ClientResponse, Backend, str | None]:
        """Like :meth:`routed`, but hand back the backend's response as soon as its headers
        arrive, body unread, so a server-sent event stream can be passed on as it comes.

        Same routing, fallback, metrics and errors as :meth:`routed`: only a failure to connect
        is retried on the other backend (nothing was sent back yet), a timeout before the headers
        is a 504. ``stt_proxy_upstream_seconds`` counts up to the headers (a stream lasts as long
        as its audio). The caller owns the response: it must ``release()`` or ``close()`` it.
        """

        async def send(backend: Backend) -> aiohttp.ClientResponse:
            url = f"{backend.url}{path}" + (f"?{query}" if query else "")
            start = time.perf_counter()
            try:
                return await self.client.post(url, data=body, headers={"content-type": content_type})
            finally:
                metrics.UPSTREAM_SECONDS.labels(backend.name, route_label).observe(time.perf_counter() - start)

        return await self._first_that_connects(send)

    async def _first_that_connects(self, send: Callable[[Backend], Awaitable[T]]) -> tuple[T, Backend, str | None]:
        """``send`` to the backend the routing mode picks; on a connection failure, to the other.

        Returns the answer, the backend that gave it, and why it is not the one the mode
        wanted (None when it is). A read timeout is never resent: the backend may be working.
        """
        mode = self.mode
        route = choose(mode, self.cpu, self.gpu)
        reason = route.fallback_reason
        for index, backend in enumerate(route.order):
            try:
                response = await send(backend)
            except (aiohttp.SocketTimeoutError, TimeoutError):
                metrics.UPSTREAM_ERRORS.labels(backend.name, "timeout").inc()
                raise ApiError(
                    504,
                    "backend_timeout",
                    f"the {backend.name} backend did not answer in time; retry or send less audio",
                ) from None
            except CONNECT_ERRORS as exc:
                metrics.UPSTREAM_ERRORS.labels(backend.name, "connect").inc()
                backend.mark(False, f"{type(exc).__name__} during a request")
                if index + 1 < len(route.order):
                    reason = f"{backend.name} backend unreachable"
                continue
            metrics.ROUTED.labels(backend.name, mode.value).inc()
            if backend.name == route.wanted:
                return response, backend, None
            reason = reason or f"{route.wanted} backend unavailable"
            metrics.FALLBACKS.labels(reason).inc()
            return response, backend, reason
        raise ApiError(
            503,
            "no_backend",
            "no transcription backend is reachable ("
            + "; ".join(f"{b.name}: {b.last_error or 'not ready'}" for b in route.order)
            + "); retry shortly",
            headers={"Retry-After": "2"},
        )

    async def detect(self, body: bytes, content_type: str, query: str = "") -> Upstream:
        try:
            return await self.call(self.detector, "/detect", body, content_type, query, "/detect")
        except (aiohttp.ClientError, TimeoutError) as exc:
            metrics.UPSTREAM_ERRORS.labels("detector", "connect").inc()
            self.detector.mark(False, type(exc).__name__)
            raise ApiError(
                503,
                "detector_unavailable",
                "the speech detector is unreachable; retry shortly",
                headers={"Retry-After": "2"},
            ) from None
