"""base: Whisper transcription (``POST /transcribe-chunk``, ``POST /v1/audio/transcriptions``,
``POST /v1/audio/translations``, ``GET /v1/models``).

One image serves both the CPU and the GPU Deployment; ``STT_DEVICE`` picks. Settings:
:class:`services.base.settings.TranscriberSettings` (the ``STT_*`` variables: model and device,
batching and its admission, how file windows share the model with live chunks, the hang bound,
input limits and memory budgets; documented in docs/configuration.md), read once when this
module is imported (the process's start-up) and passed on: to the lifespan, the engine and the
handlers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager

import anyio
import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.audio import decode_audio
from core.errors import ApiError
from core.subtitles import to_srt, to_vtt
from core.vocabulary import MAX_BEAM_SIZE, SAMPLE_RATE, WHISPER_WINDOW_S
from services.base import metrics
from services.base.batcher import Batcher, Priority
from services.base.coverage import (
    GapRule,
    after_words,
    between_words,
    holes_between_words,
    neighbour_bounds,
    repair_span_around,
    splice,
    uncovered_speech,
)
from services.base.seams import SEAM_SPAN_S, carry_point, is_seam
from services.base.settings import TranscriberSettings
from services.base.transcriber import BatchTranscriber, DeviceInfo, Result, load_model
from services.base.transcriber import Request as Chunk
from services.common.app import app_settings, create_app, load_in_background, require_ready
from services.common.hangup import unless_caller_leaves
from services.common.limits import DEADLINE_HEADER
from services.common.memory import Budget, request_reservation
from services.common.metrics import MODEL_LOAD_SECONDS
from services.common.models import resolve_model
from services.common.openai_api import (
    check_stream_format,
    delta_event,
    deltas,
    done_event,
    error_event,
    model_list,
    parse_flag,
    served_models,
)
from services.common.settings import load_settings
from services.common.speech import shared_detector, speech_spans
from services.common.upload import form_text, read_upload
from services.common.whisper_internals import LANGUAGE_CODES

log = logging.getLogger("stt.base")

# Whisper conditions on at most ~224 prompt tokens; 2000 characters is more than that in any
# language, and the same bound as /transcribe-chunk's ``prompt`` query parameter.
MAX_PROMPT_CHARS = 2000
# The other text fields of /v1/audio/transcriptions hold one short word or number each.
FORM_FIELD_CHARS = {"model": 128, "language": 32, "response_format": 32, "temperature": 32, "stream": 8}
# A proxy or ingress in front must pass server-sent events on at once, not collect them.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
# A whole file is refused before its body is read when the decode budget has not this much left
# (a minute of samples): it would almost surely be refused after the upload anyway.
MIN_FILE_RESERVE = 60 * SAMPLE_RATE * 4
# The 499 answer, to nobody, of a request whose client hung up (services.common.hangup).
GONE = "the client went away; its queued work was cancelled"


class Engine:
    """The loaded model, its device facts and the batcher in front of it."""

    def __init__(self, settings: TranscriberSettings):
        start = time.perf_counter()
        requested = settings.device
        if requested == "auto":
            from services.base.transcriber import cuda_device_count

            requested = "cuda" if cuda_device_count() else "cpu"
        model, self.device = load_model(
            resolve_model(settings.model, settings.model_cache),
            requested,
            settings.compute_type,
            settings.cpu_threads,
            num_workers=2 if settings.live_lane else 1,
        )
        self.model_name = settings.model
        self.created = int(time.time())  # ``created`` of /v1/models: when this backend loaded it
        pad = settings.encoder_pad_seconds if settings.encoder_window == "trimmed" else None
        self.transcriber = BatchTranscriber(
            model,
            encoder_pad_seconds=pad,
            tokens_per_second=settings.max_tokens_per_second,
            beam_no_repeat_ngram=settings.beam_no_repeat_ngram,
        )
        self.load_seconds = time.perf_counter() - start
        # A model call cannot be interrupted: without the live lane a live chunk may wait for one
        # whole file call, and with it the two calls share the cores while they overlap. On a CPU
        # a call's time grows with every window in it (0.12 CPU-s per audio second whether 1 or 8
        # windows: docs/reliability.md), so file windows go one per call; a GPU runs a batch in
        # little more than one window's time.
        self.file_batch_max = settings.file_batch_max or (1 if self.device.device == "cpu" else settings.batch_max)
        self.file_windows_in_flight = settings.file_windows_in_flight or self.file_batch_max
        self.gap_rule = GapRule(min_gap_s=settings.skipped_speech_min_s) if settings.skipped_speech_min_s else None
        live_gap = settings.live_skipped_speech_min_s
        self.live_gap_rule = GapRule(min_gap_s=live_gap) if live_gap else None
        self.batcher = Batcher(
            self._run,
            settings.batch_max,
            settings.batch_window_ms,
            settings.max_queue,
            key=self.transcriber.batch_key,
            file_batch_max=self.file_batch_max,
            hang_seconds=settings.hang_seconds,
            hang_seconds_per_audio_second=settings.hang_seconds_per_audio_second,
            max_wait_s=settings.max_queue_wait_s,
            live_lane=settings.live_lane,
            lighten=greedy_under_load,
            lighten_after_s=settings.live_greedy_after_wait_s or None,
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
        for chunk, result in zip(batch, results, strict=True):
            metrics.CHUNKS_BY_BEAM_SIZE.labels(str(chunk.beam_size)).inc()
            if result.retried:
                metrics.UNSURE_RETRIED.labels(result.retried).inc()
        return results

    def describe(self) -> dict:
        info: DeviceInfo = self.device
        described: dict[str, object] = {
            "model": self.model_name,
            "device": info.device,
            "requested_device": info.requested,
            "compute_type": info.compute_type,
        }
        if info.fallback_reason:
            described["device_fallback_reason"] = info.fallback_reason
        if info.compute_type_timings:  # STT_COMPUTE_TYPE=auto: what the start-up probe measured
            described["compute_type_probe_ms"] = {c: round(s * 1000, 1) for c, s in info.compute_type_timings.items()}
        return described


def greedy_under_load(chunk: Chunk) -> Chunk:
    """The batcher's lighter form of a waiting live chunk: greedy instead of a beam search, which
    spends more decoder time on every window, and one beam size for all, so they batch together
    (docs/client.md, "Beams under load")."""
    if chunk.beam_size == 1:
        return chunk
    metrics.GREEDY_UNDER_LOAD.inc()
    return dataclasses.replace(chunk, beam_size=1)


def decoded_budget(settings: TranscriberSettings) -> Budget:
    """Whole files' samples, held from decoding to the end of their answer (services.common.memory)."""
    return Budget("base", "decoded", settings.decoded_bytes_in_flight, "STT_MAX_DECODED_BYTES_IN_FLIGHT")


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: TranscriberSettings = app.state.settings
    app.state.engine = None
    app.state.decoded = decoded_budget(settings)

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


app = create_app(
    "base",
    "Whisper transcription of audio chunks and whole files (faster-whisper).",
    lifespan,
    settings=load_settings(TranscriberSettings),  # once; a bad value stops the start here, named
)


class ModelHeader:
    """``X-STT-Model`` on every answer once the model is loaded, whatever its format (a plain
    ``text`` or ``srt`` transcript has no field to carry it), so that every transcript says
    which model produced it, also across a model swap. Pure ASGI: the body streams through
    untouched and ``receive`` is not wrapped (the hang-up watch reads it)."""

    def __init__(self, app: ASGIApp) -> None:  # Starlette passes it by this name (0.36)
        self.inner = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # scope["app"] is this service's FastAPI app, set before the middleware stack runs.
        engine = scope["app"].state.engine if scope["type"] == "http" else None
        if engine is None:
            await self.inner(scope, receive, send)
            return
        model = engine.model_name.encode("latin-1", "replace")

        async def send_with_model(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-stt-model", model)]
            await send(message)

        await self.inner(scope, receive, send_with_model)


app.add_middleware(ModelHeader)


def model_call_hung() -> str | None:
    """Why the model call running now counts as hung, or None: a ``Readiness.watch`` check, so a
    hung call makes ``/readyz`` and ``/healthz`` answer 503 (see :meth:`Batcher.hung`)."""
    engine: Engine | None = getattr(app.state, "engine", None)
    return engine.batcher.hung() if engine is not None else None


app.state.readiness.watch(model_call_hung)


def request_deadline(request: Request, default_s: float | None) -> float | None:
    """The ``time.perf_counter()`` value after which this request's queued work is not worth
    starting: ``X-Request-Deadline-Ms`` (milliseconds from now) when sent, else ``default_s``
    (None or 0: no deadline)."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None or raw.strip() == "":
        return time.perf_counter() + default_s if default_s else None
    try:
        ms = float(raw)
    except ValueError:
        ms = math.nan
    if not math.isfinite(ms):
        raise ApiError(400, "bad_deadline", f"X-Request-Deadline-Ms must be a number of milliseconds, not {raw[:40]!r}")
    return time.perf_counter() + ms / 1000


def check_language(language: str | None) -> str | None:
    if language is None or language.strip() == "":
        return None
    code = language.strip().lower()
    if code not in LANGUAGE_CODES:
        shown = language if len(language) <= 32 else language[:32] + "..."
        raise ApiError(
            400, "unknown_language", f"language {shown!r} is not a Whisper language code (e.g. en, ko, de, fr)"
        )
    return code


def has_speech(samples: np.ndarray) -> bool:
    """Whether any 3 s piece of ``samples`` holds speech, by tiny's detector
    (:mod:`services.common.speech`)."""
    return bool(speech_spans(samples, shared_detector()))


@app.post("/transcribe-chunk", tags=["transcribe"], summary="Transcribe one chunk (at most 30 s)")
async def transcribe_chunk(
    request: Request,
    language: str | None = Query(None, max_length=32, description="language code, e.g. en; detected when absent"),
    prompt: str | None = Query(None, max_length=MAX_PROMPT_CHARS, description="text that came just before this audio"),
    word_timestamps: bool = Query(True, description="return per-word timings (needed for stitching)"),
    vad: bool = Query(False, description="skip the model when Silero VAD hears no speech"),
    beam_size: int = Query(
        1, ge=1, le=MAX_BEAM_SIZE, description="1: greedy; more: a beam search this wide (costs decoder time)"
    ),
    fill_skipped: bool = Query(
        False,
        description="decode again, on its own, speech between two words that the decode left out, and splice "
        "its words in (needs word_timestamps; streaming sessions ask for it)",
    ),
    fill_tail: bool = Query(
        False,
        description="with fill_skipped: also speech after the last word (a session's last window before a flush "
        "or the end of its stream, which no later window decodes again)",
    ),
    settings: TranscriberSettings = Depends(app_settings),
) -> dict:
    """Body: audio bytes (Content-Type names the format) or multipart field ``file``."""
    require_ready(app)
    engine: Engine = app.state.engine
    deadline = request_deadline(request, settings.live_deadline_s)  # from arrival, not after decoding
    lang = check_language(language)
    upload = await read_upload(request, settings.max_upload_bytes)
    samples = await anyio.to_thread.run_sync(decode_audio, upload.data, upload.content_type, settings.chunk_limits)
    metrics.AUDIO_RECEIVED_SECONDS.inc(samples.size / SAMPLE_RATE)
    start = time.perf_counter()
    if vad and not await anyio.to_thread.run_sync(has_speech, samples):
        result, batch_size = Result("", lang or "", 0.0, round(samples.size / SAMPLE_RATE, 3)), 0
    else:
        chunk = Chunk(samples, lang, prompt, word_timestamps, beam_size=beam_size)
        result, batch_size = await unless_caller_leaves(
            request.receive,
            engine.batcher.submit(chunk, Priority.LIVE, deadline=deadline),
            GONE,
        )
        if fill_skipped and word_timestamps:
            repairing = fill_skipped_live(engine, chunk, result, deadline, tail=fill_tail)
            result = await unless_caller_leaves(request.receive, repairing, GONE)
    return {
        "text": result.text,
        "language": result.language,
        "language_probability": result.language_probability,
        "duration_s": result.duration_s,
        "processing_ms": round((time.perf_counter() - start) * 1000, 1),
        "segments": result.segments,
        **engine.describe(),
        "batch_size": batch_size,
        "beam_size": result.beam_size,
    }


def speech_windows(samples: np.ndarray) -> list[tuple[int, int]]:
    """Cut a long recording at pauses into pieces of at most 30 s, like faster-whisper's batched
    pipeline; silence between pieces is never sent to the model. Speech is found by the same
    detector as the live path's (:func:`services.common.speech.speech_spans`: every 3 s piece the
    client would send), so a stretch the live path would transcribe is never dropped here. Speech
    longer than ``SEAM_SPAN_S`` without a pause is cut into pieces of at most that, which leaves
    the piece after a cut room for the sentence carried over it (:mod:`services.base.seams`)."""
    windows: list[tuple[int, int]] = []
    limit = int(WHISPER_WINDOW_S * SAMPLE_RATE)
    for start, end in speech_spans(samples, shared_detector(), max_span_s=SEAM_SPAN_S, min_silence_ms=500):
        if windows and end - windows[-1][0] <= limit:
            windows[-1] = (windows[-1][0], end)
        else:
            windows.append((start, end))
    return windows


@dataclasses.dataclass
class FileJob:
    """A validated OpenAI-style whole-file request, decoded and cut into speech windows."""

    samples: np.ndarray
    windows: list[tuple[int, int]]
    language: str | None
    prompt: str | None
    response_format: str
    want_words: bool
    task: str
    deadline: float | None = None  # time.perf_counter() value (X-Request-Deadline-Ms); None: none

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE


async def read_file_job(request: Request, task: str) -> tuple[FileJob, bool]:
    """Check every field of an OpenAI multipart form, then decode the audio and find its speech
    windows; returns the job and whether ``stream=true`` was asked for. Every refusal happens
    here, before a byte of the answer is sent, so a streamed answer never starts and then fails
    on a bad field."""
    settings: TranscriberSettings = request.app.state.settings
    deadline = request_deadline(request, None)
    decoded: Budget = app.state.decoded
    if decoded.used + MIN_FILE_RESERVE > decoded.limit:  # full: refused before the body is read
        raise decoded.overloaded(MIN_FILE_RESERVE)
    upload = await read_upload(request, settings.max_upload_bytes)
    if upload.fields is None:
        raise ApiError(400, "multipart_required", "send multipart/form-data with the audio in field 'file'")
    field = {name: form_text(upload.fields, name, limit) for name, limit in FORM_FIELD_CHARS.items()}
    prompt = form_text(upload.fields, "prompt", MAX_PROMPT_CHARS)
    response_format = field["response_format"] or "json"
    if response_format not in {"json", "text", "srt", "vtt", "verbose_json"}:
        raise ApiError(400, "bad_response_format", "response_format must be json, text, srt, vtt or verbose_json")
    stream = parse_flag("stream", field["stream"])
    if stream and task != "transcribe":
        raise ApiError(
            400,
            "stream_unsupported",
            "stream=true is supported on /v1/audio/transcriptions only (as at OpenAI); send translations without it",
        )
    if stream:
        check_stream_format(response_format)
    granularities = set()
    for name in GRANULARITY_FIELDS:
        form_text(upload.fields, name, 16)
        granularities.update(upload.fields.get(name, []))
    if granularities - {"segment", "word"}:
        raise ApiError(400, "bad_granularity", "timestamp_granularities[] may hold only 'segment' and 'word'")
    lang = check_language(field["language"])
    # Held until the answer ends (a streamed one too): the reservation is the request's.
    reserve = request_reservation(request.scope, decoded).grow_to
    samples = await anyio.to_thread.run_sync(
        decode_audio, upload.data, upload.content_type, settings.file_limits, reserve
    )
    del upload  # the encoded bytes are not needed any more: not held through the speech search
    metrics.AUDIO_RECEIVED_SECONDS.inc(samples.size / SAMPLE_RATE)
    windows = await anyio.to_thread.run_sync(speech_windows, samples)
    # Word timings of a translation would align English words to foreign speech: never asked for.
    want_words = "word" in granularities and task == "transcribe"
    return FileJob(samples, windows, lang, prompt, response_format, want_words, task, deadline), stream


def shifted(segments: list[dict], offset: float) -> list[dict]:
    """A window's segments (and words) with times made absolute in the file."""
    out = []
    for seg in segments:
        moved = {**seg, "start": round(seg["start"] + offset, 3), "end": round(seg["end"] + offset, 3)}
        if "words" in seg:
            moved["words"] = [
                {**w, "start": round(w["start"] + offset, 3), "end": round(w["end"] + offset, 3)} for w in seg["words"]
            ]
        out.append(moved)
    return out


async def transcribe_windows(engine: Engine, job: FileJob) -> AsyncGenerator[tuple[float, Result]]:
    """Each speech window's result with its offset in seconds, in order, each as soon as it and
    every window before it are done (a stream can send it then).

    The first window goes alone: it carries the prompt and, with no language given, decides the
    language of the rest. It is the file's admission: a full file queue refuses it with 429. The
    rest are submitted a few at a time (``Engine.file_windows_in_flight``, by default one file
    batch), as file work that live chunks overtake, and never refused: so a file of any length
    transcribes on an idle server, and a long one never fills the queue that live chunks and
    other files need. A window that starts at a seam inside speech waits for the one before it,
    which may move its start back to the sentence that ran into the seam
    (:mod:`services.base.seams`). Windows still waiting when the caller stops (an error, a
    hang-up) are cancelled, which removes them from the queue unrun."""
    if not job.windows:
        return
    windows = list(job.windows)
    submit = engine.batcher.submit
    words = job.want_words or gap_rule(engine, job) is not None  # fill_skipped needs word times; seams use them
    start, end = windows[0]
    first, _ = await submit(
        Chunk(job.samples[start:end], job.language, job.prompt, words, job.task, full_window=True),
        Priority.FILE,
        deadline=job.deadline,
    )
    lang = job.language or first.language
    in_flight: deque[tuple[int, asyncio.Future]] = deque()
    upcoming = 1

    def admit() -> None:
        nonlocal upcoming
        while len(in_flight) < engine.file_windows_in_flight and upcoming < len(windows):
            if in_flight and is_seam(windows, upcoming - 1):
                return  # its start depends on the window before it
            s, e = windows[upcoming]
            chunk = Chunk(job.samples[s:e], lang, None, words, job.task, full_window=True)
            work = submit(chunk, Priority.FILE, deadline=job.deadline, admitted=True)
            in_flight.append((upcoming, asyncio.ensure_future(work)))
            upcoming += 1

    try:
        index, result = 0, first
        while True:
            window = windows[index]
            if is_seam(windows, index):
                window, result = carry_over_seam(windows, index, result)
            admit()  # before yielding: the model need not wait for a slow reader
            yield window[0] / SAMPLE_RATE, await fill_skipped(engine, job, window, result, lang)
            if not in_flight:
                return
            index, pending = in_flight.popleft()
            result, _ = await pending
    finally:
        for _, pending in in_flight:
            pending.cancel()


def carry_over_seam(windows: list[tuple[int, int]], index: int, result: Result) -> tuple[tuple[int, int], Result]:
    """Window ``index`` (which ends at a seam) and its result, without the segment that ran into
    the seam when the next window can take it: that window then starts where the segment began
    (``windows`` is changed in place)."""
    (start, end), (_, after) = windows[index], windows[index + 1]
    point = carry_point(result.segments, (end - start) / SAMPLE_RATE, (after - end) / SAMPLE_RATE)
    if point is None:
        return windows[index], result
    cut = start + int(point * SAMPLE_RATE)
    windows[index + 1] = (cut, after)
    kept = result.segments[:-1]
    metrics.SEAMS_CARRIED.inc()
    return (start, cut), with_segments(result, kept)


def with_segments(result: Result, segments: list[dict]) -> Result:
    """``result`` holding ``segments`` instead, its text made from them."""
    return dataclasses.replace(result, segments=segments, text="".join(s["text"] for s in segments).strip())


def gap_rule(engine: Engine, job: FileJob) -> GapRule | None:
    """The skipped-speech check for ``job``, if it has one: not for a translation, whose English
    words would be aligned to foreign speech."""
    return engine.gap_rule if job.task == "transcribe" else None


async def repair_skipped(
    audio: np.ndarray,
    segments: list[dict],
    rule: GapRule,
    decode: Callable[[np.ndarray], Awaitable[Result]],
    between: bool = False,
    tail: bool = False,
) -> tuple[list[dict], list[str]]:
    """``segments`` (one window's, times from the start of ``audio``) with each stretch of speech
    that no word covers decoded again by ``decode`` and spliced in (:mod:`services.base.coverage`);
    ``between``: only stretches between two words, and with ``tail`` also those after the last
    word. Also each repair's outcome: ``recovered`` (words came back) or ``empty`` (the second
    decode found none either)."""
    spoken = [w for s in segments for w in s.get("words", [])]
    if not spoken or (between and not tail and not holes_between_words(spoken, rule)):
        return segments, []
    duration = audio.size / SAMPLE_RATE
    probs = await anyio.to_thread.run_sync(shared_detector().frame_probabilities, audio)
    gaps = uncovered_speech(spoken, probs, duration, rule)
    # a live window's edges are decoded again by the next step; a file window has no next step
    chosen = (between_words(gaps, spoken) + (after_words(gaps, spoken) if tail else [])) if between else gaps
    outcomes = []
    for gap in chosen:  # each heard with the words either side of it whole, and taken between them
        lo, hi = repair_span_around(spoken, gap, duration, rule)
        repaired = await decode(audio[int(lo * SAMPLE_RATE) : int(hi * SAMPLE_RATE)])
        before = len(segments)
        bounds = neighbour_bounds(spoken, gap, repaired.segments, lo)
        segments = splice(segments, gap, repaired.segments, lo, bounds)
        outcomes.append("recovered" if len(segments) > before else "empty")
        log.info("skipped speech %.1f-%.1f s into a window: %s", gap[0], gap[1], outcomes[-1])
    return segments, outcomes


async def fill_skipped_live(
    engine: Engine, chunk: Chunk, result: Result, deadline: float | None, tail: bool = False
) -> Result:
    """``result`` with the speech its decode skipped between two words (and with ``tail`` after
    the last one) decoded again and spliced in, as live work with the chunk's own settings and
    deadline. A repair refused (overload) or too late leaves the answer as decoded: it is still
    the best there is for this window."""
    rule = engine.live_gap_rule
    if rule is None or chunk.task != "transcribe":
        return result

    async def decode(piece: np.ndarray) -> Result:
        again = dataclasses.replace(chunk, samples=piece, prompt=None, beam_size=result.beam_size)
        return (await engine.batcher.submit(again, Priority.LIVE, deadline=deadline, admitted=True))[0]

    try:
        segments, outcomes = await repair_skipped(chunk.samples, result.segments, rule, decode, between=True, tail=tail)
    except ApiError as exc:
        log.info("skipped speech in a live chunk left as it is: %s", exc.message)
        return result
    for outcome in outcomes:
        metrics.LIVE_SKIPPED_SPEECH_REPAIRED.labels(outcome).inc()
    return result if segments is result.segments else with_segments(result, segments)


async def fill_skipped(
    engine: Engine, job: FileJob, window: tuple[int, int], result: Result, lang: str | None
) -> Result:
    """``result`` with the speech its decode skipped transcribed again on its own and spliced in
    (:mod:`services.base.coverage`), as file work; the words dropped again unless asked for."""
    segments = result.segments
    if (rule := gap_rule(engine, job)) is not None:

        async def decode(piece: np.ndarray) -> Result:
            chunk = Chunk(piece, lang, None, True, job.task, full_window=True)
            return (await engine.batcher.submit(chunk, Priority.FILE, deadline=job.deadline, admitted=True))[0]

        segments, outcomes = await repair_skipped(job.samples[window[0] : window[1]], segments, rule, decode)
        for outcome in outcomes:
            metrics.SKIPPED_SPEECH_REPAIRED.labels(outcome).inc()
    if not job.want_words:
        segments = [{k: v for k, v in s.items() if k != "words"} for s in segments]
    if segments is result.segments:
        return result
    return with_segments(result, segments)


async def whole_file_answer(engine: Engine, job: FileJob) -> Response | dict:
    """The non-streamed answer in the asked-for format, once every window is done."""
    lang = job.language
    segments: list[dict] = []
    async with aclosing(transcribe_windows(engine, job)) as results:
        async for offset, result in results:
            lang = lang or result.language
            segments.extend(shifted(result.segments, offset))
    for i, seg in enumerate(segments):
        seg["id"] = i
    text = " ".join(s["text"].strip() for s in segments).strip()
    if job.response_format == "text":
        return PlainTextResponse(text + "\n")
    if job.response_format == "srt":
        return PlainTextResponse(to_srt(segments), media_type="application/x-subrip")
    if job.response_format == "vtt":
        return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
    if job.response_format == "json":
        return {"text": text}
    body: dict = {"task": job.task, "language": lang or "", "duration": round(job.duration, 3), "text": text}
    body["segments"] = [{k: v for k, v in s.items() if k != "words"} for s in segments]
    if job.want_words:
        body["words"] = [w for s in segments for w in s.get("words", [])]
    body.update(engine.describe())
    return body


async def streamed_answer(engine: Engine, job: FileJob, request: Request) -> StreamingResponse:
    """``text/event-stream``: one ``transcript.text.delta`` per segment as its window is done, in
    order, then ``transcript.text.done`` with the whole text (the deltas joined).

    The first window is decoded before the answer starts, so the usual errors (overloaded, not
    ready, a failed first batch) still come back as an HTTP status; a failure after that ends
    the stream with an ``error`` event, which OpenAI's SDKs raise as ``APIError``. A client that
    hangs up while the first window waits has it removed (``services.common.hangup``); once the
    stream has begun, Starlette notices a hang-up and cancels the generator, which cancels the
    windows still queued."""
    results = transcribe_windows(engine, job)
    try:
        first = await unless_caller_leaves(request.receive, anext(results, None), GONE)
    except BaseException:
        await results.aclose()
        raise

    async def events() -> AsyncIterator[bytes]:
        pieces: list[str] = []
        try:
            item = first
            while item is not None:
                for delta in deltas((s["text"] for s in item[1].segments), bool(pieces)):
                    pieces.append(delta)
                    yield delta_event(delta)
                item = await anext(results, None)
            yield done_event("".join(pieces))
        except ApiError as exc:
            yield error_event(exc.code, exc.message)
        except Exception as exc:
            log.exception("streamed transcription failed")
            yield error_event("internal_error", f"{type(exc).__name__}: the service failed on this request")
        finally:
            await results.aclose()

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@app.post("/v1/audio/transcriptions", tags=["openai"], summary="OpenAI-compatible whole-file transcription")
async def openai_transcriptions(request: Request):
    """Multipart: ``file``, ``model`` (ignored; this server's model answers), ``language``,
    ``prompt``, ``response_format`` (json, text, srt, vtt, verbose_json), ``timestamp_granularities[]``,
    ``stream`` (true: server-sent ``transcript.text.delta`` events as windows are decoded, then
    ``transcript.text.done``; json or text only)."""
    require_ready(app)
    engine: Engine = app.state.engine
    job, stream = await read_file_job(request, "transcribe")
    if stream:
        return await streamed_answer(engine, job, request)
    return await unless_caller_leaves(request.receive, whole_file_answer(engine, job), GONE)


@app.post("/v1/audio/translations", tags=["openai"], summary="OpenAI-compatible translation into English")
async def openai_translations(request: Request):
    """Whisper's ``translate`` task: speech in any language, English text back. Multipart:
    ``file``, ``model`` (ignored), ``prompt`` (in English), ``response_format`` (json, text, srt,
    vtt, verbose_json), ``temperature`` (ignored), ``language`` (optional: the language spoken,
    detected when absent). Needs a multilingual model (``base``, not ``base.en``)."""
    require_ready(app)
    engine: Engine = app.state.engine
    if not engine.transcriber.multilingual:
        raise ApiError(
            400,
            "translation_unsupported",
            f"the loaded model {engine.model_name!r} is English-only and cannot translate; "
            "serve a multilingual model (e.g. STT_MODEL=base) for /v1/audio/translations",
        )
    job, _ = await read_file_job(request, "translate")
    return await unless_caller_leaves(request.receive, whole_file_answer(engine, job), GONE)


@app.get("/v1/models", tags=["openai"], summary="OpenAI-compatible list of the loaded model")
async def list_models() -> dict:
    """The loaded model and ``whisper-1``, an alias for it (any ``model`` is served by it)."""
    require_ready(app)
    engine: Engine = app.state.engine
    return model_list(served_models(engine.model_name, engine.created))


@app.get("/v1/models/{model_id:path}", tags=["openai"], summary="One model of /v1/models")
async def get_model(model_id: str) -> dict:
    require_ready(app)
    engine: Engine = app.state.engine
    for model in served_models(engine.model_name, engine.created):
        if model["id"] == model_id:
            return model
    raise ApiError(404, "model_not_found", f"model {model_id[:128]!r} is not served here; GET /v1/models lists them")
