"""tiny: the speech detector (``POST /detect``).

Cheap and fast by design: the client asks it about every chunk so that only chunks with
speech reach the expensive transcriber. Settings (environment):

- ``STT_DETECTOR`` (``silero``): detector used when the request names none.
- ``STT_DETECTORS`` (``silero,whisper-tiny``): detectors to load at start-up.
- ``STT_TINY_MODEL`` (``tiny.en``): model for ``whisper-tiny`` (known name, directory or hub name).
- ``STT_VAD_THRESHOLD`` (0.5), ``STT_VAD_MIN_SPEECH_MS`` (250): Silero decision settings.
- ``STT_MAX_CHUNK_SECONDS`` (30), ``STT_MAX_UPLOAD_BYTES`` (52428800): input limits;
  ``STT_MAX_BODY_BYTES_IN_FLIGHT`` (128 MiB): bodies held at once (:mod:`services.common.memory`).
- ``STT_ALLOWED_ORIGINS`` (empty): web origins besides this service's own allowed to POST here.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Query, Request

from core.audio import AudioLimits, decode_audio
from core.errors import ApiError
from core.settings import env_float, env_int, env_str
from core.vocabulary import DEFAULT_DETECTOR, DETECTORS, WHISPER_WINDOW_S
from services.common.app import create_app, load_in_background, require_ready
from services.common.memory import max_upload_bytes
from services.common.metrics import MODEL_LOAD_SECONDS
from services.common.models import resolve_model
from services.common.settings import env_origins
from services.common.upload import read_upload
from services.tiny.detectors import Detector, SileroDetector, WhisperTinyDetector, timed
from services.tiny.metrics import AUDIO_SECONDS, DECISIONS, DETECT_SECONDS

log = logging.getLogger("stt.tiny")


class Settings:
    def __init__(self) -> None:
        self.default_detector = env_str("STT_DETECTOR", DEFAULT_DETECTOR)
        self.enabled = [d.strip() for d in env_str("STT_DETECTORS", ",".join(DETECTORS)).split(",") if d.strip()]
        unknown = [d for d in [*self.enabled, self.default_detector] if d not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; choose from {DETECTORS}")
        if self.default_detector not in self.enabled:
            self.enabled.append(self.default_detector)
        self.tiny_model = env_str("STT_TINY_MODEL", "tiny.en")
        self.vad_threshold = env_float("STT_VAD_THRESHOLD", 0.5, minimum=0.0)
        self.vad_min_speech_ms = env_int("STT_VAD_MIN_SPEECH_MS", 250, minimum=0)
        self.limits = AudioLimits(max_seconds=env_float("STT_MAX_CHUNK_SECONDS", WHISPER_WINDOW_S, minimum=1.0))
        self.max_upload_bytes = max_upload_bytes()
        self.allowed_origins = env_origins("STT_ALLOWED_ORIGINS")


def load_detector(name: str, settings: Settings) -> Detector:
    start = time.perf_counter()
    if name == "silero":
        detector: Detector = SileroDetector(threshold=settings.vad_threshold, min_speech_ms=settings.vad_min_speech_ms)
    else:
        detector = WhisperTinyDetector(resolve_model(settings.tiny_model))
    MODEL_LOAD_SECONDS.labels("tiny", name).set(time.perf_counter() - start)
    log.info("loaded detector %s in %.2f s", name, time.perf_counter() - start)
    return detector


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings()
    app.state.settings = settings
    app.state.detectors = {}
    app.state.limiters = {}

    async def load() -> None:
        for name in settings.enabled:
            app.state.readiness.set_not_ready(f"loading detector {name}")
            # Whisper decodes one chunk at a time per model; Silero runs are independent.
            app.state.limiters[name] = anyio.CapacityLimiter(1 if name == "whisper-tiny" else 2)
            app.state.detectors[name] = await anyio.to_thread.run_sync(load_detector, name, settings)

    loading = load_in_background(app, load)
    yield
    loading.cancel()


app = create_app("tiny", "Speech detection: does this audio chunk hold speech?", lifespan)


@app.post("/detect", tags=["detect"], summary="Does this chunk hold speech? Where?")
async def detect(
    request: Request,
    detector: str | None = Query(None, max_length=32, description="silero (default) or whisper-tiny"),
) -> dict:
    """Body: audio bytes (Content-Type names the format) or multipart field ``file``."""
    settings: Settings = app.state.settings
    require_ready(app)
    name = detector or settings.default_detector
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
    AUDIO_SECONDS.labels(name).inc(samples.size / 16000)
    DECISIONS.labels(name, "speech" if result.speech else "no_speech").inc()
    return {
        **result.as_dict(),
        "detector": name,
        "duration_s": round(samples.size / 16000, 3),
        "processing_ms": round(elapsed_ms, 2),
    }
