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
from starlette.types import Receive

from core.errors import ApiError
from core.vocabulary import RoutingMode
from services.common import hangup
from services.common.limits import DEADLINE_HEADER
from services.proxy import metrics
from services.proxy.backends import Backend, Route, choose

# What is sent upstream: bytes, or an upload's one buffer as a payload (openai_relay.UploadPayload).
Body = bytes | aiohttp.payload.Payload


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
# Backend headers worth passing to the caller: backpressure hints, and the model that answered.
PASSED_HEADERS = ("retry-after", "x-stt-model")
# Answers that mean "not now, here": the other side is tried when it is ready.
BUSY_STATUSES = (429, 503)
# Paths whose callers wait with a short timeout of their own (the client's 180 s per chunk,
# 5 s per detection): the proxy's wait for them is bounded by ``chunk_timeout_s``.
CHUNK_PATHS = ("/transcribe-chunk",)


async def _resend_if_dropped(send: Callable[[Backend], Awaitable[T]], backend: Backend) -> T:
    """``send``, and once more if the connection drops before an answer.

    A backend pod that begins to drain (a rollout, a scale-down) closes its idle kept-alive
    connections; a request that the pool put on one at that moment never reached the service.
    The second try gets a fresh connection, which the Service sends to a pod that is staying.
    """
    try:
        return await send(backend)
    except aiohttp.ServerDisconnectedError:
        metrics.UPSTREAM_ERRORS.labels(backend.name, "dropped").inc()
        return await send(backend)


def _with_read_timeout(base: aiohttp.ClientTimeout, sock_read: float) -> aiohttp.ClientTimeout:
    """``base`` with another read timeout (a request's timeout replaces the session's whole)."""
    return aiohttp.ClientTimeout(
        total=base.total,
        connect=base.connect,
        sock_read=sock_read,
        sock_connect=base.sock_connect,
        ceil_threshold=base.ceil_threshold,
    )


async def unless_caller_leaves(receive: Receive, work: Awaitable[T], route: str) -> T:
    """Await ``work`` (a backend call); if the caller hangs up first, cancel it, count it and
    answer 499 (:mod:`services.common.hangup`). Cancelling an aiohttp request that has no
    complete answer closes its connection (it cannot go back to the pool half-read), so the
    backend sees its caller leave and drops the work; a fallback not yet tried is not tried."""
    return await hangup.unless_caller_leaves(
        receive,
        work,
        "the caller went away before the answer; the backend call was closed",
        metrics.CALLER_HANGUPS.labels(route).inc,
    )


class Upstreams:
    """The backends behind this proxy and the one HTTP client that reaches them."""

    def __init__(
        self,
        client: aiohttp.ClientSession,
        cpu: Backend,
        gpu: Backend,
        detector: Backend,
        mode: Callable[[], RoutingMode],
        chunk_timeout_s: float | None = None,
        detect_timeout_s: float | None = None,
    ) -> None:
        """``chunk_timeout_s`` bounds the wait for one chunk's answer, ``detect_timeout_s`` for a
        detection; None keeps the session's read timeout (the one whole files get)."""
        self.client = client
        self.cpu, self.gpu, self.detector = cpu, gpu, detector
        self._mode = mode
        self._timeouts: dict[str, aiohttp.ClientTimeout] = {}
        self._headers: dict[str, dict[str, str]] = {}
        if chunk_timeout_s is not None:
            # The backend drops a chunk still queued when the proxy stops waiting for it, so a
            # chunk the client sends again is never computed twice (services/base/batcher.py).
            deadline = {DEADLINE_HEADER: str(int(chunk_timeout_s * 1000))}
            self._headers.update(dict.fromkeys(CHUNK_PATHS, deadline))
            self._timeouts.update(dict.fromkeys(CHUNK_PATHS, _with_read_timeout(client.timeout, chunk_timeout_s)))
        if detect_timeout_s is not None:
            self._timeouts["/detect"] = _with_read_timeout(client.timeout, detect_timeout_s)

    def _post(self, backend: Backend, path: str, body: Body, content_type: str, query: str):
        url = f"{backend.url}{path}" + (f"?{query}" if query else "")
        # A path without a timeout of its own gets the session's (what aiohttp uses by default).
        timeout = self._timeouts.get(path, self.client.timeout)
        headers = {"content-type": content_type, **self._headers.get(path, {})}
        return self.client.post(url, data=body, headers=headers, timeout=timeout)

    @property
    def mode(self) -> RoutingMode:
        return self._mode()

    def route(self) -> Route:
        return choose(self.mode, self.cpu, self.gpu)

    async def call(
        self, backend: Backend, path: str, body: Body, content_type: str, query: str, route: str
    ) -> Upstream:
        start = time.perf_counter()
        try:
            async with self._post(backend, path, body, content_type, query) as response:
                payload = await response.read()
                passed = {k: response.headers[k] for k in PASSED_HEADERS if k in response.headers}
                return Upstream(response.status, payload, response.headers.get("content-type", ""), passed)
        finally:
            metrics.UPSTREAM_SECONDS.labels(backend.name, route).observe(time.perf_counter() - start)

    async def routed(
        self, path: str, body: Body, content_type: str, query: str, route_label: str
    ) -> tuple[Upstream, Backend, str | None]:
        """Send to the backend the routing mode picks; when it cannot be reached, is busy or
        times out, to the other side (see :meth:`_with_fallback`).

        Returns the answer, the backend that gave it, and why it is not the one the mode
        wanted (None when it is).
        """
        return await self._with_fallback(
            lambda backend: self.call(backend, path, body, content_type, query, route_label), lambda _: None
        )

    async def open_stream(
        self, path: str, body: Body, content_type: str, query: str, route_label: str
    ) -> tuple[aiohttp.ClientResponse, Backend, str | None]:
        """Like :meth:`routed`, but hand back the backend's response as soon as its headers
        arrive, body unread, so a server-sent event stream can be passed on as it comes.

        Same routing, fallback, metrics and errors as :meth:`routed` (a busy answer is
        released unread before the other side is tried).
        ``stt_proxy_upstream_seconds`` counts up to the headers (a stream lasts as long
        as its audio). The caller owns the response: it must ``release()`` or ``close()`` it.
        """

        async def send(backend: Backend) -> aiohttp.ClientResponse:
            start = time.perf_counter()
            try:
                return await self._post(backend, path, body, content_type, query)
            finally:
                metrics.UPSTREAM_SECONDS.labels(backend.name, route_label).observe(time.perf_counter() - start)

        return await self._with_fallback(send, lambda response: response.release())

    async def _with_fallback(
        self, send: Callable[[Backend], Awaitable[T]], discard: Callable[[T], None]
    ) -> tuple[T, Backend, str | None]:
        """``send`` to the backend the routing mode picks, else to the other side.

        The other side is tried when the first cannot be reached (nothing was sent), and, when
        the other side is ready, also when the first answers 429 or 503 (it did no work) or
        does not answer within its timeout (it is stuck, or far behind: the chunk timeout is
        shorter than the client's, so the client is still waiting for this answer rather than
        sending the chunk again). Without a ready other side the busy answer is passed on, with
        its ``Retry-After``, and a timeout is a 504.

        An aiohttp connect timeout is a connection failure, not a read timeout: the connector
        has no pool limit (the proxy's own admission caps connections), so it can only mean
        that the backend did not accept the connection in time.

        Returns the answer, the backend that gave it, and why it is not the one the mode
        wanted (None when it is).
        """
        mode = self.mode
        route = choose(mode, self.cpu, self.gpu)
        reason = route.fallback_reason
        for index, backend in enumerate(route.order):
            other = next((b for b in route.order[index + 1 :] if b.ready), None)
            try:
                response = await _resend_if_dropped(send, backend)
            except aiohttp.ConnectionTimeoutError:
                metrics.UPSTREAM_ERRORS.labels(backend.name, "connect").inc()
                backend.mark(False, "connect timeout during a request")
                if index + 1 < len(route.order):
                    reason = f"{backend.name} backend unreachable"
                continue
            except (aiohttp.SocketTimeoutError, TimeoutError):
                metrics.UPSTREAM_ERRORS.labels(backend.name, "timeout").inc()
                if other is not None:
                    reason = f"{backend.name} backend timed out"
                    continue
                raise ApiError(
                    504,
                    "backend_timeout",
                    f"the {backend.name} backend did not answer in time; retry or send less audio",
                    headers={"Retry-After": "2"},
                ) from None
            except CONNECT_ERRORS as exc:
                metrics.UPSTREAM_ERRORS.labels(backend.name, "connect").inc()
                backend.mark(False, f"{type(exc).__name__} during a request")
                if index + 1 < len(route.order):
                    reason = f"{backend.name} backend unreachable"
                continue
            status = getattr(response, "status", 200)
            if status in BUSY_STATUSES and other is not None:
                metrics.UPSTREAM_ERRORS.labels(backend.name, f"busy_{status}").inc()
                discard(response)
                reason = f"{backend.name} backend busy ({status})"
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

    async def detect(self, body: Body, content_type: str, query: str = "") -> Upstream:
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
