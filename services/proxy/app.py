"""proxy: the single entry point. Routes transcription to the CPU or GPU backend.

``/transcribe`` (and the OpenAI-compatible ``/v1/audio/transcriptions``) go to the backend the
routing mode picks, falling back to the other side when it is down or not ready; the answer
says which backend served (``X-STT-Backend`` header, ``backend`` field, metrics). ``/detect``
goes to the detector. ``/gpu-toggle`` changes the mode and needs the admin token. Settings:
:class:`services.proxy.settings.ProxySettings` (the backends' URLs, the routing mode and its
source, the admin token, timeouts, streaming session bounds, allowed web origins, API keys
(:mod:`services.proxy.api_keys`), ``STT_PUBLIC_DOCS`` and the ops port (:mod:`services.proxy.ops`);
documented in docs/configuration.md), read once when this module is imported (the process's
start-up: the ops port and ``STT_PUBLIC_DOCS`` decide which routes the app has) and passed on.

A caller that hangs up before its answer has the backend call closed at once
(:func:`services.proxy.upstream.unless_caller_leaves`), so the backend drops the work.
"""

from __future__ import annotations

import json
import logging
import secrets
from contextlib import asynccontextmanager

import aiohttp
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from core.audio import check_declared_type, parse_content_type
from core.errors import ApiError
from core.vocabulary import RoutingMode
from services.common.app import create_app
from services.common.openai_api import wants_stream
from services.common.settings import load_settings
from services.common.upload import read_body
from services.proxy import metrics, openai_relay
from services.proxy.api_keys import ApiKeyGuard, install_log_redaction, require_api_key
from services.proxy.backends import Backend, HealthChecker, choose
from services.proxy.ops import OpsServer, build_ops_app
from services.proxy.page import router as page_router
from services.proxy.realtime import router as realtime_router
from services.proxy.routing import RoutingStore, make_store
from services.proxy.settings import ProxySettings
from services.proxy.stream_ws import SessionGate
from services.proxy.stream_ws import router as stream_router
from services.proxy.upstream import Upstream, Upstreams, unless_caller_leaves

log = logging.getLogger("stt.proxy")


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: ProxySettings = app.state.settings
    app.state.admin_token = settings.resolved_admin_token()
    app.state.cpu = Backend("cpu", settings.cpu_backend_url)
    app.state.gpu = Backend("gpu", settings.gpu_backend_url)
    app.state.detector = Backend("detector", settings.detector_url)
    # aiohttp rather than httpx on this hot path: measured ~1 ms less per proxied request.
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_s, sock_read=settings.upstream_timeout_s
    )
    # No pool limit: the proxy's own admission (STT_MAX_CONCURRENCY requests, STT_MAX_SESSIONS
    # sessions, each answered 429 or 1013 past its cap) already bounds the connections, and a
    # pool wait would be silent and count against the connect timeout, so a busy proxy would
    # look like an unreachable backend.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    app.state.client = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)
    app.state.health = HealthChecker(
        app.state.client, [app.state.cpu, app.state.gpu, app.state.detector], settings.health_interval_s
    )
    app.state.api_keys = ApiKeyGuard.from_settings(
        settings.api_keys_file, settings.api_key_hashes, settings.api_key_rate, settings.api_key_burst
    )
    store = make_store(settings)
    app.state.routing = store
    app.state.session_settings = settings.sessions
    app.state.session_gate = SessionGate(settings.sessions)
    app.state.sessions = set()
    metrics.SESSION_MAX_LAG_SECONDS.set_function(lambda: max((s.lag_s for s in app.state.sessions), default=0.0))
    app.state.upstreams = Upstreams(
        app.state.client,
        app.state.cpu,
        app.state.gpu,
        app.state.detector,
        lambda: store.mode,
        chunk_timeout_s=settings.chunk_timeout_s,
        detect_timeout_s=settings.detect_timeout_s,
    )
    ops = None
    if OPS_PORT is not None:
        ops = OpsServer(build_ops_app(app, _status), settings.ops_host, OPS_PORT)
        await ops.start()  # first: a port already taken stops the start-up here, named
    await store.start()
    await app.state.health.check_all()
    app.state.health.start()
    _publish_mode(store.mode)
    app.state.readiness.set_ready()
    yield
    if ops is not None:  # after the public port drained: scrapes saw the drain to its end
        await ops.stop()
    await app.state.health.stop()
    await store.stop()
    await app.state.client.close()


# Read once, at import: STT_OPS_PORT and STT_PUBLIC_DOCS decide which routes the public app has.
# A bad value stops the start here, with the variable named.
SETTINGS = load_settings(ProxySettings)
OPS_PORT = SETTINGS.ops_listen_port
app = create_app(
    "proxy",
    "Single entry point: routes speech to the CPU or GPU Whisper backend.",
    lifespan,
    serve_metrics=OPS_PORT is None,
    settings=SETTINGS,
)
install_log_redaction()  # before the first WebSocket line uvicorn logs with its query string
# Routes that spend backend time (or name its models, which OpenAI's SDK asks for with the key):
# an API key when keys are configured (services/proxy/api_keys.py). /healthz, /readyz, the page
# and /gpu-status stay open; /gpu-toggle has the admin token.
KEYED = [Depends(require_api_key)]


def _hide_docs(app: FastAPI) -> None:
    """Drop the API description routes FastAPI added at construction (``STT_PUBLIC_DOCS=false``):
    on a public port they tell anyone every route and parameter."""
    hidden = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in hidden]
    app.openapi_url = app.docs_url = app.redoc_url = app.swagger_ui_oauth2_redirect_url = None


if not SETTINGS.public_docs:
    _hide_docs(app)
app.include_router(stream_router, tags=["streaming"])
app.include_router(realtime_router, tags=["streaming"])
app.include_router(page_router)  # the browser page at / (services/proxy/page.py)


def _publish_mode(mode: RoutingMode) -> None:
    for m in RoutingMode:
        metrics.MODE.labels(m.value).set(1 if m is mode else 0)


def _check_audio_type(request: Request) -> None:
    """415 for a raw body declared as text, JSON, ...: answered here, before the body is read
    and sent on to a backend that would refuse it the same way. Multipart is left to the
    backend, which sees the file part's own type."""
    content_type = request.headers.get("content-type")
    if parse_content_type(content_type)[0] != "multipart/form-data":
        check_declared_type(content_type)


async def _route_and_call(request: Request, path: str, route_label: str) -> tuple[Upstream, Backend, str | None]:
    settings: ProxySettings = app.state.settings
    _check_audio_type(request)
    content_type = request.headers.get("content-type", "application/octet-stream")
    body = openai_relay.UploadPayload(await read_body(request, settings.max_upload_bytes), content_type)
    routed = app.state.upstreams.routed(path, body, content_type, request.url.query, route_label)
    return await unless_caller_leaves(request.receive, routed, route_label)


def _served_headers(backend: Backend, reason: str | None, response: Upstream) -> dict[str, str]:
    headers = {"X-STT-Backend": backend.name, **response.headers}
    if reason:
        headers["X-STT-Fallback"] = reason
    return headers


@app.post("/transcribe", tags=["transcribe"], summary="Transcribe a chunk on the routed backend", dependencies=KEYED)
async def transcribe(request: Request) -> Response:
    """Same body and query as the backend's ``/transcribe-chunk``; adds ``backend`` to the answer."""
    response, backend, reason = await _route_and_call(request, "/transcribe-chunk", "/transcribe")
    body = response.body
    if response.status == 200 and body[:1] == b"{":
        # Prepend the routing facts to the backend's JSON object instead of parsing and
        # re-serialising a body full of word timings: this is the proxy's hot path.
        extra = {"backend": backend.name, **({"fallback_reason": reason} if reason else {})}
        body = b"{" + json.dumps(extra, separators=(",", ":"))[1:-1].encode() + b"," + body[1:]
    return Response(body, response.status, _served_headers(backend, reason, response), response.content_type)


@app.post(
    "/v1/audio/transcriptions", tags=["openai"], summary="OpenAI-compatible, on the routed backend", dependencies=KEYED
)
async def openai_transcriptions(request: Request) -> Response:
    """``stream=true`` answers are passed on event by event (:mod:`services.proxy.openai_relay`)."""
    settings: ProxySettings = app.state.settings
    _check_audio_type(request)
    raw = await read_body(request, settings.max_upload_bytes)
    content_type = request.headers.get("content-type", "application/octet-stream")
    body = openai_relay.UploadPayload(raw, content_type)  # the one buffer, sent on uncopied
    if wants_stream(raw):
        # Up to the backend's headers; after them StreamingResponse notices a hang-up itself.
        opened = openai_relay.stream_transcription(app.state.upstreams, body, content_type, request.url.query)
        return await unless_caller_leaves(request.receive, opened, "/v1/audio/transcriptions")
    path = "/v1/audio/transcriptions"
    routed = app.state.upstreams.routed(path, body, content_type, request.url.query, path)
    response, backend, reason = await unless_caller_leaves(request.receive, routed, path)
    return Response(response.body, response.status, _served_headers(backend, reason, response), response.content_type)


@app.post(
    "/v1/audio/translations",
    tags=["openai"],
    summary="OpenAI-compatible translation, on the routed backend",
    dependencies=KEYED,
)
async def openai_translations(request: Request) -> Response:
    response, backend, reason = await _route_and_call(request, "/v1/audio/translations", "/v1/audio/translations")
    return Response(response.body, response.status, _served_headers(backend, reason, response), response.content_type)


@app.get("/v1/models", tags=["openai"], summary="Models of the ready backends (OpenAI list)", dependencies=KEYED)
async def openai_models() -> dict:
    return await openai_relay.list_models(app.state.upstreams)


@app.get("/v1/models/{model_id:path}", tags=["openai"], summary="One model of /v1/models", dependencies=KEYED)
async def openai_model(model_id: str) -> dict:
    return await openai_relay.get_model(app.state.upstreams, model_id)


@app.post("/detect", tags=["detect"], summary="Speech detection (passed to the detector service)", dependencies=KEYED)
async def detect(request: Request) -> Response:
    settings: ProxySettings = app.state.settings
    _check_audio_type(request)
    content_type = request.headers.get("content-type", "application/octet-stream")
    body = openai_relay.UploadPayload(await read_body(request, settings.max_upload_bytes), content_type)
    detected = app.state.upstreams.detect(body, content_type, request.url.query)
    response = await unless_caller_leaves(request.receive, detected, "/detect")
    return Response(response.body, response.status, response.headers, media_type=response.content_type)


def _status(detail: bool = True) -> dict:
    """The routing state. In full (``detail``): backend URLs and health, the detector's, for
    operators (the ops port when ``STT_OPS_PORT`` is set, else ``/gpu-status``; and
    ``/gpu-toggle``'s answer). Else what a user of the service needs: the mode, by which side a
    transcription would be served now and whether one would be; nothing about how the release
    is built (URLs, errors, detector)."""
    mode: RoutingMode = app.state.routing.mode
    route = choose(mode, app.state.cpu, app.state.gpu)
    status = {"mode": mode.value, "source": app.state.routing.source, "active_backend": route.order[0].name}
    if not detail:
        return {**status, "available": any(b.ready for b in route.order)}
    return {
        **status,
        "fallback_reason": route.fallback_reason,
        "backends": {"cpu": app.state.cpu.status(), "gpu": app.state.gpu.status()},
        "detector": app.state.detector.status(),
    }


@app.get("/gpu-status", tags=["admin"], summary="Routing mode and backend health")
async def gpu_status() -> dict:
    """In full without ``STT_OPS_PORT``; with it, a summary here and in full on the ops port."""
    return _status(detail=OPS_PORT is None)


def _check_admin(request: Request) -> None:
    token: str = app.state.admin_token
    if not token:
        metrics.ADMIN_ACTIONS.labels("gpu-toggle", "disabled").inc()
        raise ApiError(503, "admin_disabled", "no admin token is configured (set STT_ADMIN_TOKEN); toggling is off")
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        metrics.ADMIN_ACTIONS.labels("gpu-toggle", "unauthenticated").inc()
        raise ApiError(
            401,
            "unauthenticated",
            "send the admin token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(header[7:].strip().encode(), token.encode()):
        metrics.ADMIN_ACTIONS.labels("gpu-toggle", "forbidden").inc()
        raise ApiError(403, "forbidden", "the admin token is wrong")


@app.post("/gpu-toggle", tags=["admin"], summary="Set the routing mode (admin token required)")
async def gpu_toggle(request: Request) -> dict:
    """Body ``{"mode": "cpu"|"gpu"|"auto"}``; an empty body flips between cpu and gpu."""
    _check_admin(request)
    raw = await read_body(request, 4096)
    store: RoutingStore = app.state.routing
    if raw.strip():
        try:
            payload = json.loads(raw)
            mode = RoutingMode(payload["mode"])
        except (ValueError, TypeError, KeyError):
            metrics.ADMIN_ACTIONS.labels("gpu-toggle", "bad_request").inc()
            raise ApiError(
                400, "bad_mode", 'send JSON like {"mode": "gpu"} with mode cpu, gpu or auto, or an empty body to flip'
            ) from None
    else:
        mode = RoutingMode.CPU if store.mode in (RoutingMode.GPU, RoutingMode.AUTO) else RoutingMode.GPU
    try:
        await store.set_mode(mode)
    except ApiError:
        metrics.ADMIN_ACTIONS.labels("gpu-toggle", "error").inc()
        raise
    _publish_mode(store.mode)
    metrics.ADMIN_ACTIONS.labels("gpu-toggle", "ok").inc()
    log.info("routing mode set to %s via /gpu-toggle (source %s)", mode.value, store.source)
    return _status()
