"""Byte budgets per process for what requests hold in memory at once: 429 past them, at once.

``STT_MAX_CONCURRENCY`` bounds how many requests a worker holds, not how many bytes: 256
requests of 50 MB each are 12.8 GB, and the chart gives the proxy 384 MiB. So every service
also keeps a **body budget** (``STT_MAX_BODY_BYTES_IN_FLIGHT``): a request with a body reserves
its declared ``Content-Length`` (capped at ``STT_MAX_UPLOAD_BYTES``: a larger one is answered
413 unread and holds nothing) when its head arrives; a chunked body reserves its bytes as they
arrive. A request the budget cannot hold is answered ``429 overloaded`` with ``Retry-After``
before any of its body is read; the body is then dropped as it arrives
(:func:`services.common.limits.refuse_unread`). The reservation is
released when the request ends, however it ends (answer, error, client gone).

The base service also keeps a **decode budget** (``STT_MAX_DECODED_BYTES_IN_FLIGHT``) for the
float32 samples of whole files (``/v1/audio/*``), which are held for the whole transcription:
an hour is 230 MB, five times the upload that carried it. A file reserves what its header says
it decodes to before any decoding (429 at once when that does not fit), and more if it turns
out longer. Live chunks (at most 30 s, 2 MB) are bounded by ``STT_MAX_CONCURRENCY`` instead, so
whole files can never crowd them out.

The defaults are derived from the chart's memory limits in docs/reliability.md ("Memory under
upload floods"), where the peaks under a flood are measured. ``/healthz``, ``/readyz`` and
``/metrics`` carry no body and are never refused.
"""

from __future__ import annotations

import json
import threading

from prometheus_client import Counter, Gauge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import ApiError, error_body
from services.common.limits import EXEMPT_PATHS, RETRY_AFTER_S, refuse_unread

MIB = 1024 * 1024
# Every service's STT_MAX_UPLOAD_BYTES default (read once, in the service's settings model, for
# its handlers and this budget alike: a body over it, answered 413 without being read, reserves nothing).
DEFAULT_MAX_UPLOAD_BYTES = 50 * MIB
# Per service, when STT_MAX_BODY_BYTES_IN_FLIGHT is unset: at least two maximal uploads, so one
# 50 MB upload is always taken by an idle worker, and with the idle RSS measured under the
# chart's memory limits with room to spare (docs/reliability.md, "Memory under upload floods"):
# - proxy (limit 384Mi): 128 MiB. Idle 90 MiB; a body is held once (read into one buffer and
#   sent on from it), so a full budget peaks near 220 MiB (measured 199 MiB under a flood).
# - base (2Gi): 160 MiB. Idle 360 MiB with the model; bodies plus the decode budget below plus
#   the model's working memory stay near 1.3 GiB (measured 965-1063 MiB under a flood).
# - tiny (1Gi): 128 MiB. Idle 190 MiB with both detectors; it decodes at most 31 s per request
#   (measured 294 MiB under a flood).
DEFAULT_BODY_BYTES_IN_FLIGHT = {"proxy": 128 * MIB, "base": 160 * MIB, "tiny": 128 * MIB}
# base: the float32 samples of whole files held at once. 512 MiB is 2.3 hours of audio: two
# files at the one-hour limit (230 MB each) at once, or dozens of usual ones.
DEFAULT_DECODED_BYTES_IN_FLIGHT = 512 * MIB
# A chunked body is reserved in steps of this many bytes as it arrives (fewer lock round trips).
CHUNKED_STEP = 1 * MIB
# Where a request's reservations live in its ASGI scope, released when the request ends.
SCOPE_KEY = "stt.reservations"

BUDGET_BYTES = Gauge("stt_memory_budget_bytes", "Bytes a budget allows in flight", ["service", "budget"])
BUDGET_IN_USE = Gauge("stt_memory_budget_in_use_bytes", "Bytes reserved in a budget now", ["service", "budget"])
BUDGET_REJECTIONS = Counter(
    "stt_memory_budget_rejections_total",
    "Requests refused with 429 because a memory budget (body: STT_MAX_BODY_BYTES_IN_FLIGHT, "
    "decoded: STT_MAX_DECODED_BYTES_IN_FLIGHT) could not hold them",
    ["service", "budget"],
)


class Budget:
    """A count of bytes reserved against a limit. Thread-safe: decoding reserves from a worker
    thread while the event loop reserves bodies."""

    def __init__(self, service: str, name: str, limit: int, setting: str):
        self.service, self.name, self.limit, self.setting = service, name, limit, setting
        self.used = 0
        self._lock = threading.Lock()
        self._in_use = BUDGET_IN_USE.labels(service, name)
        self._rejections = BUDGET_REJECTIONS.labels(service, name)
        BUDGET_BYTES.labels(service, name).set(limit)

    def try_reserve(self, size: int) -> bool:
        with self._lock:
            if size > 0 and self.used + size > self.limit:
                return False
            self.used += size
        self._in_use.set(self.used)
        return True

    def release(self, size: int) -> None:
        with self._lock:
            self.used -= size
        self._in_use.set(self.used)

    def overloaded(self, size: int) -> ApiError:
        """The 429 for a request that needed ``size`` more bytes than this budget has left
        (counted in ``stt_memory_budget_rejections_total``)."""
        self._rejections.inc()
        return ApiError(
            429,
            "overloaded",
            f"this worker holds {self.used // MIB} MiB of {self.name} already and this request needs "
            f"{-(-size // MIB)} MiB more, over its {self.limit // MIB} MiB ({self.setting}); retry shortly, "
            "or send compressed audio (FLAC, Opus), which holds less",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


class Reservation:
    """Bytes one request holds in a :class:`Budget`; grown as needed, released once, at the end
    of the request (:class:`BodyBudgetMiddleware` releases every reservation in its scope)."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        """Hold ``size`` bytes in all; raises the 429 when the budget cannot hold them."""
        more = size - self.size
        if more > 0:
            if not self.budget.try_reserve(more):
                raise self.budget.overloaded(more)
            self.size = size

    def release(self) -> None:
        size, self.size = self.size, 0
        if size:
            self.budget.release(size)


def request_reservation(scope: Scope, budget: Budget) -> Reservation:
    """A reservation in ``budget`` released when the request of ``scope`` ends, also when its
    answer is streamed after the endpoint returned (the samples are held until then)."""
    reservation = Reservation(budget)
    scope.setdefault(SCOPE_KEY, []).append(reservation)
    return reservation


def _declared_length(scope: Scope) -> int | None:
    """The request's Content-Length as a number, or None (absent, chunked, or not a number:
    ``read_body`` answers the last with 400)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyBudgetMiddleware:
    """Reserve each request body in the process's body budget; 429 ``overloaded`` past it.

    Raw ASGI, like :class:`services.common.limits.ConcurrencyLimitMiddleware`: the refusal is
    sent before the body is read, so a refused 50 MB upload costs a few hundred bytes.
    """

    def __init__(self, app: ASGIApp, service: str, limit: int, upload_limit: int):
        self.app = app
        self.budget = Budget(service, "body", limit, "STT_MAX_BODY_BYTES_IN_FLIGHT")
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        chunked = declared is None and any(n == b"transfer-encoding" for n, _ in scope.get("headers", ()))
        body = Reservation(self.budget)
        scope[SCOPE_KEY] = [body]
        try:
            if declared is not None and declared <= self.upload_limit:
                try:
                    body.grow_to(declared)
                except ApiError as refusal:
                    payload = json.dumps(error_body(refusal.code, refusal.message)).encode()
                    headers = [(k.lower().encode(), v.encode()) for k, v in refusal.headers.items()]
                    await refuse_unread(scope, receive, send, refusal.status, payload, headers)
                    return
            if chunked:
                receive = self._counting(receive, body)
            await self.app(scope, receive, send)
        finally:
            for reservation in scope.get(SCOPE_KEY, ()):
                reservation.release()

    def _counting(self, receive: Receive, body: Reservation) -> Receive:
        """``receive`` that reserves a chunked body's bytes as they arrive (up to the upload
        limit, past which ``read_body`` answers 413); raises the 429 when the budget is full,
        which the app's error handler answers."""
        arrived = 0

        async def counted() -> Message:
            nonlocal arrived
            message = await receive()
            if message["type"] == "http.request":
                arrived += len(message.get("body", b""))
                wanted = min(arrived, self.upload_limit + 1)
                if wanted > body.size:
                    body.grow_to(min(self.upload_limit + 1, max(wanted, body.size + CHUNKED_STEP)))
            return message

        return counted
