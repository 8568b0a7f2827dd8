"""The proxy's internal ops listener: ``/metrics``, the detailed ``/gpu-status`` and ``/docs``.

The proxy's port is the platform's public entry point. What an operator or Prometheus reads
there (every metric series, the backends' URLs and health, the detector's state, the API
description) tells a stranger how the release is built, so with ``STT_OPS_PORT`` set those
move to a second port that the chart's NetworkPolicy opens to Prometheus only (and that an
operator reaches with ``kubectl port-forward``); the public port then answers ``/metrics`` 404
and ``/gpu-status`` with a summary (see ``services.proxy.app``). Unset, everything stays on the
public port, as ``make up`` and the local tests expect.

The second listener is a second ``uvicorn.Server`` in the same process and event loop, started
and stopped by the proxy's lifespan: the ops answers read the proxy's live state (backend
health, routing mode, the process' metrics registry) directly, which a sidecar or a second
process could not. The proxy runs one worker (the image's ``CMD`` passes no ``--workers``),
so there is one ops listener per pod. Settings:

- ``STT_OPS_PORT`` (unset): the ops port; unset or 0 keeps today's single port.
- ``STT_OPS_HOST`` (0.0.0.0): the address it listens on (the pod's; a NetworkPolicy guards it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.common.errors import install_error_handlers
from services.common.http_protocol import BoundedHttpToolsProtocol
from services.common.metrics import metrics_response
from services.common.settings import SettingsError

log = logging.getLogger(__name__)
# A scrape or a status read is one short request: the ops listener does not need the proxy's
# long drain, and it stops only after the public listener has drained (lifespan shutdown).
OPS_GRACEFUL_SHUTDOWN_S = 2


def build_ops_app(public: FastAPI, status: Callable[[], dict]) -> FastAPI:
    """The ops routes: Prometheus metrics, ``status()`` (the detailed routing and backend
    state) and the public app's API description, served whether or not ``public`` hides it
    (``STT_PUBLIC_DOCS=false``): on this port only operators can read it.

    Deliberately bare (no concurrency cap, no HTTP metrics, no Origin check): a scrape must
    still succeed when the public port is saturated and refusing requests with 429, and it is
    not traffic to count in the request metrics."""
    ops = FastAPI(
        title=f"{public.title} (ops)",
        version=public.version,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(ops)

    @ops.get("/metrics")
    async def metrics() -> Response:
        return metrics_response()

    @ops.get("/gpu-status")
    async def gpu_status() -> dict:
        return status()

    @ops.get("/openapi.json")
    async def openapi() -> JSONResponse:
        return JSONResponse(public.openapi())

    @ops.get("/docs")
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{public.title} - API")

    return ops


class _OpsProtocol(BoundedHttpToolsProtocol):
    """The public port's bound on request heads, counted under ``service="proxy"`` (this app
    has no import string, from which the label is otherwise taken)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._service = "proxy"


class _EmbeddedServer(uvicorn.Server):
    """A ``uvicorn.Server`` that leaves the process' signals to the server that runs it.

    ``Server.serve`` replaces the SIGINT/SIGTERM handlers with its own for as long as it
    runs; a second server doing so would get SIGTERM first and close the ops port at once,
    before the public listener drains, so the drain (up to ``shutdown.drainSeconds``) could
    not be scraped. This one is stopped by the proxy's lifespan, after the drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound here so that a port already in use stops the proxy at
    start-up with the variable's name in the message (uvicorn would ``sys.exit`` from a task)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise SettingsError(
            f"STT_OPS_PORT={port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "choose a free port other than the public one, or unset STT_OPS_PORT"
        ) from None
    sock.setblocking(False)
    return sock


class OpsServer:
    """The ops listener, run as a task of the proxy's event loop."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.host, self.port = host, port
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # keep the proxy's logging (services.common.logs) as it is
            access_log=False,  # a scrape every 15 s would drown the request log
            http=_OpsProtocol,
            timeout_graceful_shutdown=OPS_GRACEFUL_SHUTDOWN_S,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Listen, or raise :class:`SettingsError` when the port cannot be had."""
        sock = _bind(self.host, self.port)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="ops-listener")
        while not self._server.started:
            if self._task.done():  # failed before listening: surface why
                self._task.result()
                raise RuntimeError("the ops listener stopped before it started")
            await asyncio.sleep(0.01)
        log.info("ops listener (/metrics, /gpu-status, /docs) on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
