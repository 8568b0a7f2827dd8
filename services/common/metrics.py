"""Prometheus metrics shared by every service: HTTP traffic, readiness, build and model info.

Service-specific metrics live beside their service (``services/<name>/metrics.py``); the
ones here are what an operator compares across services. The HTTP middleware is raw ASGI
rather than Starlette's BaseHTTPMiddleware because it sits on the proxy's hot path.
"""

from __future__ import annotations

import time
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

try:
    VERSION = version("stt-platform")
except PackageNotFoundError:  # running from a source tree without installing
    VERSION = "0.0.0+source"

# Buckets span a 1 ms proxy hop up to a 30 s whole-file transcription.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60)

HTTP_REQUESTS = Counter(
    "stt_http_requests_total",
    "HTTP requests answered, by route and status code",
    ["service", "route", "method", "code"],
)
HTTP_LATENCY = Histogram(
    "stt_http_request_duration_seconds",
    "Time from request start to the last byte of the response",
    ["service", "route", "method"],
    buckets=HTTP_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("stt_http_requests_in_flight", "Requests being handled now", ["service", "route"])
HTTP_OVERLOAD_REJECTIONS = Counter(
    "stt_http_overload_rejections_total",
    "HTTP requests refused with 429 because STT_MAX_CONCURRENCY requests were in flight",
    ["service"],
)
HTTP_HEADER_REJECTIONS = Counter(
    "stt_http_header_rejections_total",
    "Request heads refused with 431 (reason: bytes over STT_MAX_HEADER_BYTES, or fields)",
    ["service", "reason"],
)
BUILD_INFO = Gauge("stt_build_info", "Always 1; labels carry the build", ["service", "version"])
READY = Gauge("stt_ready", "1 when the service answers /readyz with 200", ["service"])
MODEL_LOAD_SECONDS = Gauge("stt_model_load_seconds", "Seconds the last model load took", ["service", "model"])


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class HttpMetricsMiddleware:
    """Count and time every request by its route template (bounded label cardinality)."""

    def __init__(self, app: ASGIApp, service: str):
        self.app = app
        self.service = service
        BUILD_INFO.labels(service, VERSION).set(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        path = scope.get("path", "")
        route = path if path in _FIXED_ROUTES else None

        in_flight = HTTP_IN_FLIGHT.labels(self.service, route or "api")
        in_flight.inc()
        try:
            await self.app(scope, receive, _Sender(send, status))
        finally:
            in_flight.dec()
            if route is None:
                matched = scope.get("route")
                route = getattr(matched, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            HTTP_REQUESTS.labels(self.service, route, method, str(status["code"])).inc()
            HTTP_LATENCY.labels(self.service, route, method).observe(time.perf_counter() - start)


class _Sender:
    """Wraps ASGI ``send`` to remember the response status."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send, status: dict):
        self.send = send
        self.status = status

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status["code"] = message["status"]
        await self.send(message)


_FIXED_ROUTES = {"/metrics", "/healthz", "/readyz"}
