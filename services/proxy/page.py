"""The browser page: ``GET /`` and ``/static/<file>``, plain files from ``services/proxy/static``.

The page (``index.html``, ``app.js``, the AudioWorklet ``pcm-worklet.js``, ``style.css``)
captures the microphone, resamples it to 16 kHz in an AudioWorklet and streams it over the
native WebSocket (``/v1/stream``, :mod:`services.proxy.stream_ws`) from the same origin, so the
WebSocket's Origin check accepts it with no ``STT_ALLOWED_ORIGINS`` entry. There is no build
step and nothing is loaded from another site. The page itself is served without an API key (it
holds nothing secret); when the proxy has keys on, the key typed into the page is kept in the
tab's ``sessionStorage`` and offered as the WebSocket subprotocol
``openai-insecure-api-key.<key>`` (:mod:`services.proxy.api_keys`).

Only the files in that folder with a known type are served (a fixed table, so no path from the
request ever reaches the file system), each with:

- ``Content-Security-Policy``: scripts, styles, images, fonts and worklets from this origin
  only, no inline script or style; ``connect-src`` is this origin plus the WebSocket URL of the
  host the page was loaded from (``ws://host`` and ``wss://host``: older browsers do not let
  ``'self'`` match a WebSocket URL). A Host header that is not a plain ``host[:port]`` gets
  ``'self'`` alone, so nothing from the request is ever spliced into the policy unchecked;
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  ``Permissions-Policy`` allowing the microphone to this origin only, and framing refused;
- ``Cache-Control: no-cache`` with an ``ETag``: a browser revalidates (304) after an upgrade.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from core.errors import ApiError

router = APIRouter()

STATIC_DIR = Path(__file__).with_name("static")
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# host[:port]: a DNS name or IPv4 address, or a bracketed IPv6 literal; nothing else may reach the policy
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")


def _files() -> dict[str, Path]:
    """The servable files by name (the table the URL is looked up in)."""
    return {
        p.name: p
        for p in STATIC_DIR.iterdir()
        if p.is_file() and p.suffix in CONTENT_TYPES and not p.name.startswith(".")
    }


def content_security_policy(host: str | None) -> str:
    connect = "'self'"
    if host and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            f"connect-src {connect}",
            "media-src 'none'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


def security_headers(request: Request) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request.headers.get("host")),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Permissions-Policy": "microphone=(self), camera=(), geolocation=(), payment=(), usb=()",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cache-Control": "no-cache",
    }


def _serve(request: Request, name: str) -> Response:
    path = _files().get(name)
    if path is None:
        raise ApiError(404, "not_found", f"no such file: /static/{name[:80]}")
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {**security_headers(request), "ETag": etag}
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    return Response(body, 200, headers, media_type=CONTENT_TYPES[path.suffix])


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def index(request: Request) -> Response:
    """The live transcription page."""
    return _serve(request, "index.html")


@router.api_route("/static/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def static(request: Request, name: str) -> Response:
    """The page's scripts, worklet and style sheet."""
    return _serve(request, name)
