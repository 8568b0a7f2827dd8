"""tiny: the speech detector (``POST /detect``).

Cheap and fast by design: the client asks it about every chunk so that only chunks with
speech reach the expensive transcriber. Settings: :class:`services.tiny.settings.DetectorSettings`
(the ``STT_*`` variables, documented in docs/configuration.md), read once when this module is
imported (the process's start-up) and passed on: to the lifespan, and to handlers as a dependency.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import anyio
from fastapi import Depends, FastAPI, Query, Request

from core.audio import decode_audio
from core.errors import ApiError
from core.vocabulary import SAMPLE_RATE
from services.common.app import app_settings, create_app, load_in_background, require_ready
from services.common.metrics import MODEL_LOAD_SECONDS
from services.common.models import resolve_model
from services.common.settings import load_settings
from services.common.upload import read_upload
from services.tiny.detectors import Detector, SileroDetector, WhisperTinyDetector, timed
from services.tiny.metrics import AUDIO_SECONDS, DECISIONS, DETECT_SECONDS
from services.tiny.settings import DetectorSettings

log = logging.getLogger("stt.tiny")


def load_detector(name: str, settings: DetectorSettings) -> Detector:
    start = time.perf_counter()
    if name == "silero":
        detector: Detector = SileroDetector(threshold=settings.vad_threshold, min_speech_ms=settings.vad_min_speech_ms)
    else:
        detector = WhisperTinyDetector(resolve_model(settings.tiny_model, settings.model_cache))
    MODEL_LOAD_SECONDS.labels("tiny", name).set(time.perf_counter() - start)
    log.info("loaded detector %s in %.2f s", name, time.perf_counter() - start)
    return detector


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: DetectorSettings = app.state.settings
    app.state.detectors = {}
    app.state.limiters = {}

    async def load() -> None:
        for name in settings.detectors:
            app.state.readiness.set_not_ready(f"loading detector {name}")
            # Whisper decodes one chunk at a time per model; Silero runs are independent.
            app.state.limiters[name] = anyio.CapacityLimiter(1 if name == "whisper-tiny" else 2)
            app.state.detectors[name] = await anyio.to_thread.run_sync(load_detector, name, settings)

    loading = load_in_background(app, load)
    yield
    loading.cancel()


app = create_app(
    "tiny",
    "Speech detection: does this audio chunk hold speech?",
    lifespan,
    settings=load_settings(DetectorSettings),  # once; a bad value stops the start here, named
)


@app.post("/detect", tags=["detect"], summary="Does this chunk hold speech? Where?")
async def detect(
    request: Request,
    detector: str | None = Query(None, max_length=32, description="silero (default) or whisper-tiny"),
    settings: DetectorSettings = Depends(app_settings),
) -> dict:
    """Body: audio bytes (Content-Type names the format) or multipart field ``file``."""
    require_ready(app)
    name = detector or settings.detector
    if name not in app.state.detectors:
        raise ApiError(
            400,
            "unknown_detector",
            f"detector {name!r} is not loaded here; loaded: {', '.join(app.state.detectors)}",
        )
    upload = await read_upload(request, settings.max_upload_bytes)
    try:
        samples = await anyio.to_thread.run_sync(decode_audio, upload.data, upload.content_type, settings.limits)
    except ApiError:
        DECISIONS.labels(name, "error").inc()
        raise
    result, elapsed_ms = await anyio.to_thread.run_sync(
        timed, app.state.detectors[name], samples, limiter=app.state.limiters[name]
    )
    DETECT_SECONDS.labels(name).observe(elapsed_ms / 1000)
    AUDIO_SECONDS.labels(name).inc(samples.size / SAMPLE_RATE)
    DECISIONS.labels(name, "speech" if result.speech else "no_speech").inc()
    return {
        **result.as_dict(),
        "detector": name,
        "duration_s": round(samples.size / SAMPLE_RATE, 3),
        "processing_ms": round(elapsed_ms, 2),
    }
