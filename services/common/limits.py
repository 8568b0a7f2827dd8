"""A cap on the HTTP requests one worker process handles at once: past it, an immediate 429.

Without it a burst is accepted whole: every request buffers its upload and waits, memory
grows with the queue, and callers learn they were too many only when they time out. With it
the worker answers ``429 overloaded`` with ``Retry-After`` in well under a millisecond, before
the body is read, so the client (or the proxy, which passes 429 on) can back off or go to
another replica, and Kubernetes' probes keep getting answers.

What is never counted nor refused: ``/healthz``, ``/readyz`` and ``/metrics`` (a refused probe
would restart or unroute a pod that is merely busy) and WebSocket sessions (the proxy caps them
itself with ``STT_MAX_SESSIONS``). The count is per process: with ``uvicorn --workers N`` a
pod takes N times ``STT_MAX_CONCURRENCY``.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import error_body
from services.common.metrics import HTTP_OVERLOAD_REJECTIONS

# How long the caller will still wait, in milliseconds from when the request arrives: the proxy
# sends its chunk timeout, and the base service drops work still queued when it passes (504),
# so a chunk its client sends again is never computed twice.
DEADLINE_HEADER = "X-Request-Deadline-Ms"

# Per service, when STT_MAX_CONCURRENCY is unset (the defaults of the services' settings models).
# - base: 64, the depth of its live-chunk queue (STT_MAX_QUEUE; file windows have their own);
#   past that the batcher refuses chunks anyway, so this cap only adds a bound on what the
#   batcher never sees (uploads still arriving, whole files decoding) and on the uploads held in
#   memory.
# - tiny: 64; a detection takes milliseconds, so 64 waiting is already a backlog of seconds.
# - proxy: 256; its requests mostly wait on the network for several backends (CPU and GPU, each
#   with several replicas), so it holds more of them at the same cost per request.
DEFAULT_MAX_CONCURRENCY = {"base": 64, "tiny": 64, "proxy": 256}
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 1


class ConcurrencyLimitMiddleware:
    """Count in-flight HTTP requests; answer 429 ``overloaded`` to those past ``limit``.

    Raw ASGI (no Starlette ``BaseHTTPMiddleware``): it runs on every request of the proxy's hot
    path, and the refusal must not wait on anything. A request counts from its head until the
    app returns, which includes the time its body takes to arrive (a slow upload holds a slot,
    as it holds memory).
    """

    def __init__(self, app: ASGIApp, service: str, limit: int):
        self.app = app
        self.service = service
        self.limit = limit
        self.in_flight = 0
        message = f"this worker is handling {limit} requests already (STT_MAX_CONCURRENCY); retry shortly"
        self._body = json.dumps(error_body("overloaded", message)).encode()
        self._rejections = HTTP_OVERLOAD_REJECTIONS.labels(service)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self._rejections.inc()
            headers = [(b"retry-after", str(RETRY_AFTER_S).encode())]
            await refuse_unread(scope, receive, send, 429, self._body, headers)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def refuse_unread(
    scope: Scope, receive: Receive, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    """Answer ``status`` with the JSON ``body`` at once, before reading the request's body.

    The answer is sent whole (its Content-Length says so), but the response is completed only
    once the request's body has arrived, each piece dropped as it comes: uvicorn starts its
    keep-alive timeout (5 s) when a response completes, and closing a connection the client is
    still writing to makes the kernel send RST, which loses the answer (a 50 MB upload refused
    this way was a connection reset, not a 429, for clients that read the answer after
    sending). A client that sent ``Expect: 100-continue`` never gets its "100 Continue" and so
    sends no body: its answer is completed at once.
    """
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    expects = any(n == b"expect" and v.lower() == b"100-continue" for n, v in scope.get("headers", ()))
    if expects:
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.body", "body": body, "more_body": True})
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    await send({"type": "http.response.body", "body": b""})
