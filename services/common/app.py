"""The FastAPI application every service is built from.

It wires what all three services share, once: JSON errors, HTTP metrics, structured logs,
the per-process cap on requests in flight (``services.common.limits``, 429 past it),
the Origin check on every POST (``services.common.origin``), ``/healthz`` (the process is
alive), ``/readyz`` (503 until the model or backends are usable, so Kubernetes routes no
traffic to a pod still loading) and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from core.errors import ApiError, error_body
from services.common.errors import install_error_handlers
from services.common.http_protocol import configure_head_limits
from services.common.limits import ConcurrencyLimitMiddleware
from services.common.logs import configure_logging
from services.common.memory import BodyBudgetMiddleware
from services.common.metrics import READY, VERSION, HttpMetricsMiddleware, metrics_response
from services.common.origin import require_trusted_origin
from services.common.settings import ServiceSettings, load_settings

log = logging.getLogger(__name__)


# The exit status of a process whose models failed to load: Kubernetes restarts it and shows
# CrashLoopBackOff with the reason in the log, where a live but never-ready pod shows nothing.
LOAD_FAILED_EXIT = 3


class Readiness:
    """Whether the service can do its job now, and if not, why (shown by /readyz).

    Besides the state set by loading and shutdown, *watches* report on work in progress: a
    watch returns None while all is well, or why the process is stuck (a model call that never
    returns). A stuck process is neither ready (the kubelet stops routing to it within seconds)
    nor alive (its liveness probe fails, so it is restarted): a hang in C cannot be undone from
    Python, only by a new process.
    """

    def __init__(self, service: str):
        self.service = service
        self.reason: str | None = "starting"
        self._watches: list[Callable[[], str | None]] = []
        READY.labels(service).set(0)

    def watch(self, check: Callable[[], str | None]) -> None:
        """Add a check of work in progress; see the class docstring."""
        self._watches.append(check)

    @property
    def stuck(self) -> str | None:
        """Why the process is stuck, or None."""
        for check in self._watches:
            if (reason := check()) is not None:
                return reason
        return None

    @property
    def ready(self) -> bool:
        if self.reason is not None:
            return False
        stuck = self.stuck
        READY.labels(self.service).set(0 if stuck else 1)
        return stuck is None

    @property
    def why_not(self) -> str:
        """The reason the service is not ready (loading, shutting down or stuck)."""
        return self.reason or self.stuck or "not ready"

    def set_ready(self) -> None:
        self.reason = None
        READY.labels(self.service).set(1)

    def set_not_ready(self, reason: str) -> None:
        self.reason = reason
        READY.labels(self.service).set(0)


def load_in_background(app: FastAPI, load: Callable[[], Awaitable[None]]) -> asyncio.Task:
    """Start loading models after the server is listening, so ``/readyz`` can answer 503 while
    they load (a load that ran inside start-up would leave the port closed instead).

    A failed load ends the process with :data:`LOAD_FAILED_EXIT`: a pod that stays alive and
    never ready hides the fault (no restart count, no CrashLoopBackOff), and a retry in a fresh
    process is what fixes a transient cause such as a volume not yet mounted."""
    readiness: Readiness = app.state.readiness

    async def run() -> None:
        try:
            await load()
        except Exception as exc:
            log.exception("loading failed; exiting with status %d so the pod is restarted", LOAD_FAILED_EXIT)
            readiness.set_not_ready(f"loading failed: {exc}")
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            # Not sys.exit: this runs in a task, where SystemExit would only end the task. Nothing
            # is in flight (the service was never ready), so there is nothing to drain.
            os._exit(LOAD_FAILED_EXIT)
        readiness.set_ready()

    return asyncio.create_task(run(), name="load-models")


def app_settings(request: Request) -> Any:
    """The app's settings model, read once at start-up: a FastAPI dependency for handlers
    (``settings: Annotated[DetectorSettings, Depends(app_settings)]``), so no handler reads the
    environment and a test can swap ``app.state.settings``."""
    return request.app.state.settings


def require_ready(app: FastAPI) -> None:
    """Answer 503 (with the reason) to work that arrives before the models are loaded."""
    from core.errors import ApiError

    readiness: Readiness = app.state.readiness
    if not readiness.ready:
        raise ApiError(
            503,
            "not_ready",
            f"the service is not ready yet ({readiness.why_not}); retry shortly",
            headers={"Retry-After": "1"},
        )


def create_app(
    service: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    serve_metrics: bool = True,
    settings: ServiceSettings | None = None,
) -> FastAPI:
    """The service's app with the shared wiring (module docstring).

    ``settings`` is the service's settings model, read once by its app module; it is kept as
    ``app.state.settings`` for the lifespan and the handlers (:func:`app_settings`). None (tests
    of the shared wiring): the shared fields alone, read from the environment.

    ``serve_metrics=False`` is for a service that serves ``/metrics`` on an internal port of
    its own (the proxy with ``STT_OPS_PORT``): on this one the path then answers 404 with a
    hint, so an old scrape config fails visibly rather than reading a page that is not there.
    """
    if settings is None:
        settings = load_settings(ServiceSettings)
    configure_logging(service, settings.log_level, settings.log_format)
    configure_head_limits(settings.max_header_bytes, settings.max_header_fields)
    # A dependency rather than a middleware: it runs after routing, so a refused request is
    # still counted under its route in the HTTP metrics, and before the endpoint reads the body.
    app = FastAPI(
        title=f"stt-{service}",
        description=description,
        version=VERSION,
        lifespan=lifespan,
        dependencies=[Depends(require_trusted_origin)],
    )
    app.state.readiness = Readiness(service)
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(HttpMetricsMiddleware, service=service)
    # Bodies held at once, in bytes (services.common.memory): 429 before a body is read.
    app.add_middleware(
        BodyBudgetMiddleware,
        service=service,
        limit=settings.max_body_bytes_in_flight,
        upload_limit=settings.max_upload_bytes,
    )
    # Added last, so outermost: a refusal costs no routing, metrics or logging, only its own
    # counter (stt_http_overload_rejections_total).
    app.add_middleware(ConcurrencyLimitMiddleware, service=service, limit=settings.max_concurrency)

    @app.get("/healthz", tags=["ops"], summary="The process is alive (503 when stuck: restart it)")
    async def healthz() -> JSONResponse:
        stuck = app.state.readiness.stuck
        if stuck is not None:
            return JSONResponse(error_body("stuck", stuck), status_code=503)
        return JSONResponse({"status": "ok", "service": service, "version": VERSION})

    @app.get("/readyz", tags=["ops"], summary="The service can take traffic (model loaded, not stuck)")
    async def readyz() -> JSONResponse:
        readiness: Readiness = app.state.readiness
        if readiness.ready:
            return JSONResponse({"status": "ready", "service": service})
        return JSONResponse(error_body("not_ready", readiness.why_not), status_code=503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics():
        if not serve_metrics:
            raise ApiError(
                404,
                "not_found",
                "/metrics is not served on this public port; scrape the service's internal ops port "
                "(STT_OPS_PORT) instead",
            )
        return metrics_response()

    return app
