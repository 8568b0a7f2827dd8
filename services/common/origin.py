"""Refuse state-changing requests that a web page on another site makes a browser send.

Any page a user visits can make their browser POST to ``http://127.0.0.1:5001`` or to a
cluster-internal address: a "simple" cross-origin request (``text/plain`` or multipart
body, no custom headers) needs no CORS preflight, so the service would do the work (burn
CPU/GPU on transcription, flip ``/gpu-toggle`` with a token the page guessed) even though
the page can never read the answer. Browsers always mark such a request with an ``Origin``
header, so a POST whose ``Origin`` is neither this service's own origin nor in
``STT_ALLOWED_ORIGINS`` is answered 403 before anything is read or computed.

Requests without ``Origin`` pass: curl, the Python client and the proxy's calls to its
backends send none, and a browser never omits it on a cross-origin POST.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from core.errors import ApiError
from services.common.settings import DEFAULT_PORTS, normalize_origin

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def own_origin(request: HTTPConnection) -> str | None:
    """The origin this request was addressed to: the connection's scheme and the Host header.

    Behind a TLS-terminating ingress the scheme seen here is ``http`` while the browser's
    page is ``https``; such a deployment lists its public origin in ``STT_ALLOWED_ORIGINS``.
    """
    host = request.headers.get("host")
    scheme = {"ws": "http", "wss": "https"}.get(request.url.scheme, request.url.scheme)
    if not host or scheme not in DEFAULT_PORTS:
        return None
    return normalize_origin(f"{scheme}://{host}")


def origin_allowed(origin: str, connection: HTTPConnection, allowed: tuple[str, ...]) -> bool:
    """The page at ``origin`` may use this service: it is this service's own origin or listed."""
    normalized = normalize_origin(origin)
    return normalized is not None and (normalized == own_origin(connection) or normalized in allowed)


async def require_trusted_origin(request: HTTPConnection) -> None:
    """FastAPI dependency on every route: 403 for a non-safe method from a foreign Origin.

    WebSocket routes check the Origin themselves (:func:`origin_allowed`): their refusal is a
    close code, not an HTTP error."""
    if request.scope["type"] != "http" or request.scope["method"] in SAFE_METHODS:
        return
    origin = request.headers.get("origin")
    if origin is None:
        return
    settings = getattr(request.app.state, "settings", None)
    allowed: tuple[str, ...] = getattr(settings, "allowed_origins", ())
    if origin_allowed(origin, request, allowed):
        return
    shown = origin if len(origin) <= 100 else origin[:100] + "..."
    raise ApiError(
        403,
        "origin_not_allowed",
        f"requests from web pages at origin {shown!r} are refused; a browser may call this service only "
        "from its own origin or one listed in STT_ALLOWED_ORIGINS. Clients that send no Origin header "
        "(curl, stt-client, other services) are not affected",
    )
