"""Whisper transcription of many chunks in one model call.

Whisper's encoder always works on a 30 s window, so a 3 s chunk costs nearly what a 30 s one
does; one call over a batch of chunks from different streams amortises that (CTranslate2
runs the batch through the encoder and decoder together). This module does the batched
call with per-chunk prompts and languages, which faster-whisper's own
``BatchedInferencePipeline`` does not offer, reusing faster-whisper's tokenizer, feature
extractor, timestamp splitting and word alignment so results match its single-file path.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from core.vocabulary import SAMPLE_RATE, WHISPER_WINDOW_S
from services.common.level import raised

log = logging.getLogger(__name__)


HOP_SAMPLES = 160  # one mel frame: Whisper's feature extractor gives len(samples) // 160 frames
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"


@dataclass
class Request:
    """One chunk to transcribe (at most 30 s of 16 kHz mono audio)."""

    samples: np.ndarray
    language: str | None = None
    prompt: str | None = None
    word_timestamps: bool = True
    # Whisper's task token: "transcribe" (in the language spoken) or "translate" (into English,
    # multilingual models only). Last, so positional construction elsewhere is unchanged.
    task: str = "transcribe"

    @property
    def group_key(self) -> tuple:
        # Alignment runs once per batch with one tokenizer, so batches share a language setting;
        # CTranslate2 needs <|startoftranscript|> at the same position in every prompt of a batch,
        # so only chunks with the same prompt (usually none) share a batch. The task token is part
        # of every prompt, so a batch also shares its task.
        return (self.language, self.word_timestamps, self.prompt or None, self.task)


@dataclass
class Result:
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: list[dict] = field(default_factory=list)


@dataclass
class DeviceInfo:
    requested: str
    device: str
    compute_type: str
    fallback_reason: str | None = None
    # STT_COMPUTE_TYPE=auto: seconds per probe run of each compute type measured, in probe order
    # (empty when the type was named, only one candidate is supported, or the probe failed).
    compute_type_timings: dict[str, float] = field(default_factory=dict)


# STT_COMPUTE_TYPE=auto times these (those CTranslate2 supports on the device) and keeps the
# fastest. The first is the default: the one loaded first and kept unless another beats it by
# PROBE_MARGIN. On CPU "int8" *is* int8_float32 (CTranslate2 resolves it so), so that alias is
# not timed twice.
AUTO_CANDIDATES = {
    "cpu": ("int8", "float32", "int8_bfloat16", "bfloat16"),
    "cuda": ("float16", "int8_float16", "bfloat16", "int8_bfloat16", "int8"),
}
# The probe workload: a 3 s chunk in the encoder window the service gives it by default
# (chunk + STT_ENCODER_PAD_SECONDS=8), then a fixed number of greedy decoder steps (the end
# token is suppressed, so every type decodes the same length whatever it hears).
PROBE_AUDIO_SECONDS = 3.0
PROBE_WINDOW_SECONDS = 11
PROBE_TOKENS = 16
PROBE_RUNS = 3  # timed runs per type (the fastest counts), after one untimed run...
PROBE_BUDGET_SECONDS = 3.0  # ...and fewer when they take longer than this (at least one)
PROBE_MARGIN = 0.10  # another type must be >10 % faster than the default to replace it


@dataclass
class Probe:
    chosen: str
    timings: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)


def choose_compute_type(
    candidates: Sequence[str],
    measure: Callable[[str], float],
    release: Callable[[str], None] = lambda _: None,
    margin: float = PROBE_MARGIN,
) -> Probe:
    """Measure each candidate and pick the fastest; ``candidates[0]`` is the default.

    ``measure(compute_type)`` returns seconds per run (lower is better) or raises. The
    default's failure propagates (nothing to compare against); another type's failure is
    recorded and skipped. The default wins ties and anything within ``margin`` of the fastest:
    a switch must be worth its noise. ``release(compute_type)`` is called for each candidate as
    soon as it is out of the running, so a caller holding loaded models holds at most two."""
    if not candidates:
        raise ValueError("no compute type to choose from")
    default = candidates[0]
    timings: dict[str, float] = {}
    errors: dict[str, str] = {}
    best: str | None = None

    def score(compute_type: str) -> float:
        return timings[compute_type] / (1 + margin) if compute_type == default else timings[compute_type]

    for compute_type in candidates:
        try:
            timings[compute_type] = measure(compute_type)
        except Exception as exc:
            if compute_type == default:
                raise
            errors[compute_type] = f"{type(exc).__name__}: {exc}"
            release(compute_type)
            continue
        if best is None or score(compute_type) < score(best):
            if best is not None:
                release(best)
            best = compute_type
        else:
            release(compute_type)
    assert best is not None
    return Probe(best, timings, errors)


def auto_candidates(device: str) -> list[str]:
    """The compute types ``auto`` times on ``device``, default first; just the default when
    CTranslate2 cannot say what the device supports."""
    preferred = AUTO_CANDIDATES[device]
    try:
        supported = set(ctranslate2.get_supported_compute_types(device))
    except Exception:
        return [preferred[0]]
    return [preferred[0]] + [c for c in preferred[1:] if c in supported]


def probe_run(model: WhisperModel) -> Callable[[], None]:
    """One probe run for ``model``: encode a fixed synthetic chunk, decode PROBE_TOKENS tokens."""
    rng = np.random.default_rng(0)
    samples = (0.05 * rng.standard_normal(int(PROBE_AUDIO_SECONDS * SAMPLE_RATE))).astype(np.float32)
    raw = model.feature_extractor(samples)[..., :-1]
    frames = int(PROBE_WINDOW_SECONDS * model.frames_per_second)
    features = np.ascontiguousarray(BatchTranscriber._fit(raw, frames)[None])
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
    prompt = model.get_prompt(tokenizer, previous_tokens=[], without_timestamps=False)

    def run() -> None:
        encoded = model.encode(features)
        model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=2 * PROBE_TOKENS,  # CTranslate2 decodes at most max_length // 2 for Whisper
            suppress_blank=False,
            suppress_tokens=[-1, tokenizer.eot],
        )

    return run


def time_model(model: WhisperModel) -> float:
    """Seconds of the fastest of PROBE_RUNS probe runs, after one untimed run (which pays
    one-off set-up, such as kernel compilation for a new compute type on a GPU). The fastest,
    not the median: other work on the machine only ever adds time, so the fastest run is the
    best estimate of what the type itself costs. Types are timed one after another, so load
    that comes and goes between them can still tip a close call: PROBE_MARGIN absorbs some."""
    run = probe_run(model)
    run()
    times: list[float] = []
    deadline = time.perf_counter() + PROBE_BUDGET_SECONDS
    while len(times) < PROBE_RUNS and (not times or time.perf_counter() < deadline):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def probe_compute_types(
    path: str, device: str, cpu_threads: int, default_model: WhisperModel, default: str
) -> tuple[WhisperModel, Probe] | None:
    """Time the supported candidates on ``device`` (``default_model`` is ``default``, already
    loaded) and return the fastest, loaded; None when there is nothing to compare."""
    candidates = auto_candidates(device)
    if candidates[0] != default or len(candidates) < 2:
        return None
    models = {default: default_model}

    def measure(compute_type: str) -> float:
        if compute_type not in models:
            models[compute_type] = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        return time_model(models[compute_type])

    start = time.perf_counter()
    probe = choose_compute_type(candidates, measure, release=lambda c: models.pop(c, None))
    log.info(
        "compute type probe on %s took %.1f s: %s; chose %s%s",
        device,
        time.perf_counter() - start,
        ", ".join(f"{c} {s * 1000:.0f} ms" for c, s in probe.timings.items()),
        probe.chosen,
        "".join(f"; {c} failed ({e})" for c, e in probe.errors.items()),
    )
    return models[probe.chosen], probe


def cuda_device_count() -> int:
    try:
        return ctranslate2.get_cuda_device_count()
    except Exception:  # a CPU-only CTranslate2 build raises instead of answering 0
        return 0


def load_model(
    path: str, requested_device: str, compute_type: str, cpu_threads: int
) -> tuple[WhisperModel, DeviceInfo]:
    """Load on the requested device; if CUDA is asked for but absent, load on CPU and say why.

    ``compute_type="auto"`` loads the device's default (int8 on CPU, float16 on CUDA), then
    times it against the other supported types (:data:`AUTO_CANDIDATES`) and keeps the fastest
    (:func:`choose_compute_type`); a named type is loaded as it is."""
    device, reason = requested_device, None
    if requested_device == "cuda" and cuda_device_count() == 0:
        device, reason = "cpu", "CUDA requested but no CUDA device is visible to CTranslate2"
    auto = compute_type == "auto"
    if auto:
        compute_type = AUTO_CANDIDATES[device][0]
    if device == "cpu" and compute_type == "float16":
        compute_type = "int8"
    try:
        model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        warm_up(model)
    except (RuntimeError, ValueError, OSError) as exc:
        if device != "cuda":
            raise
        # e.g. libcublas missing in the image: serve from CPU rather than crash-loop or fail every request.
        reason = f"CUDA load failed: {exc}"
        device, compute_type = "cpu", "int8"
        model = WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        warm_up(model)
        auto = False  # a fallback from a broken CUDA set-up serves at once, unprobed
    timings: dict[str, float] = {}
    if auto:
        try:
            probed = probe_compute_types(path, device, cpu_threads, model, compute_type)
        except Exception:  # the default itself could not be timed: serve it rather than fail
            log.exception("compute type probe failed; serving %s", compute_type)
            probed = None
        if probed:
            model, probe = probed
            if probe.chosen != compute_type:
                warm_up(model)  # through faster-whisper's own path too, as the default was
            compute_type, timings = probe.chosen, probe.timings
    if reason:
        log.error("SERVING ON CPU: %s", reason)
    return model, DeviceInfo(requested_device, device, compute_type, reason, timings)


def warm_up(model: WhisperModel) -> None:
    """Run 1 s of silence through the encoder and decoder before the service says it is ready.

    CTranslate2 opens cuBLAS only at the first matrix product, and on GPUs newer than its
    prebuilt kernels it compiles them then: the first call took 18 s on an H200 (0.6 s for the
    next compute type, `python -m bench.cuda_check`). Done here, that wait falls before
    ``/readyz`` turns ready instead of on the first chunk, and a CUDA setup that cannot run
    (no libcublas in the image) is caught while falling back to CPU is still possible."""
    segments, _ = model.transcribe(np.zeros(SAMPLE_RATE, np.float32), language="en", beam_size=1)
    list(segments)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


class BatchTranscriber:
    """Runs :class:`Request` batches through one WhisperModel. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        model: WhisperModel,
        encoder_pad_seconds: float | None = 8.0,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
    ):
        """``encoder_pad_seconds``: encode only the audio plus this much silence instead of the
        full 30 s window (``None``: always 30 s). Both the encoder and every decoder step
        (cross-attention over the encoded frames) cost in proportion to the window: a 5 s
        request (3 s chunk + 2 s context) took ~325 ms with 10 s of padding, ~240 ms with 8 s,
        ~225 ms with 6 s. Streamed through the real client and services, the bench's 47 files
        (1044 words) came back with 37/35/40 errors at 10/8/6 s (docs/performance.md)."""
        self.model = model
        self.encoder_pad_seconds = encoder_pad_seconds
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.multilingual = model.model.is_multilingual
        self._suppress = get_suppressed_tokens(self._tokenizer("en"), [-1])

    def _tokenizer(self, language: str | None, task: str = "transcribe") -> Tokenizer:
        return Tokenizer(
            self.model.hf_tokenizer,
            self.multilingual,
            task=task,
            language=language if self.multilingual else "en",
        )

    def batch_key(self, request: Request) -> tuple:
        """What the chunks of one batch share: language, word timestamps and prompt
        (``Request.group_key``), and the encoder window. The window is set by a batch's longest
        chunk, and the same chunk encoded in a longer window can come back with other words,
        so chunks are batched only with chunks that get the window they would get alone: a
        transcript never depends on what other streams sent at the same moment (before this,
        the bench's streamed WER varied between 37 and 40 errors from run to run)."""
        return (*request.group_key, self.window_frames(request.samples.size // HOP_SAMPLES))

    def window_frames(self, longest: int) -> int:
        """Encoder input length for a batch whose longest item has ``longest`` feature frames."""
        fps = self.model.frames_per_second
        full = int(WHISPER_WINDOW_S * fps)
        if self.encoder_pad_seconds is None:
            return full
        wanted = longest + int(self.encoder_pad_seconds * fps)
        return min(full, -(-wanted // fps) * fps)  # whole seconds, so batches reuse few shapes

    @staticmethod
    def _fit(features: np.ndarray, frames: int) -> np.ndarray:
        if features.shape[-1] < frames:
            features = np.pad(features, ((0, 0), (0, frames - features.shape[-1])))
        return features[..., :frames]

    def transcribe(self, batch: list[Request]) -> list[Result]:
        if not batch:
            return []
        language = batch[0].language
        word_timestamps = batch[0].word_timestamps
        task = batch[0].task
        if any(r.group_key != batch[0].group_key for r in batch):
            raise ValueError("a batch must share language, word_timestamps, prompt and task")
        if task != "transcribe" and not self.multilingual:
            # An English-only model has no task tokens: it would silently transcribe instead.
            raise ValueError(f"task {task!r} needs a multilingual model")
        # Quiet chunks raised to -20 dBFS first: in the trimmed window Whisper stopped after a word
        # or two of them (services/common/level.py says why).
        raw = [self.model.feature_extractor(raised(r.samples))[..., :-1] for r in batch]
        window = self.window_frames(max(f.shape[-1] for f in raw))
        features = np.ascontiguousarray(np.stack([self._fit(f, window) for f in raw]))
        encoder_output = self.model.encode(features)

        languages: list[tuple[str, float]]
        if language or not self.multilingual:
            languages = [(language or "en", 1.0)] * len(batch)
        else:
            detected = self.model.model.detect_language(encoder_output)
            languages = [(d[0][0][2:-2], float(d[0][1])) for d in detected]

        tokenizers = [self._tokenizer(lang, task) for lang, _ in languages]
        prompts = []
        for req, tok in zip(batch, tokenizers, strict=True):
            previous = tok.encode(" " + req.prompt.strip()) if req.prompt and req.prompt.strip() else []
            prompts.append(self.model.get_prompt(tok, previous_tokens=previous, without_timestamps=False))

        results = self.model.model.generate(
            encoder_output,
            prompts,
            beam_size=1,
            max_length=self.model.max_length,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            return_scores=True,
            return_no_speech_prob=True,
        )

        per_item: list[list[dict]] = []
        frame_counts = []
        for req, tok, res in zip(batch, tokenizers, results, strict=True):
            duration = req.samples.size / SAMPLE_RATE
            frames = min(int(duration * self.model.frames_per_second), features.shape[-1])
            frame_counts.append(frames)
            tokens = res.sequences_ids[0]
            avg_logprob = res.scores[0] * (len(tokens) ** 1.0) / (len(tokens) + 1)
            silent = res.no_speech_prob > self.no_speech_threshold and avg_logprob < self.logprob_threshold
            subsegments, _, _ = self.model._split_segments_by_timestamps(
                tokenizer=tok, tokens=tokens, time_offset=0.0, segment_size=frames, segment_duration=duration, seek=0
            )
            segments = []
            for sub in subsegments:
                text_tokens = [t for t in sub["tokens"] if t < tok.eot]
                text = tok.decode(text_tokens)
                if silent or not text.strip() or compression_ratio(text) > 2.4:
                    continue  # silence, or a repetition loop: Whisper's two classic hallucinations
                segments.append(
                    {
                        "seek": 0,
                        "start": round(max(0.0, sub["start"]), 3),
                        "end": round(min(duration, sub["end"]), 3),
                        "tokens": text_tokens,
                        "text": text,
                        "avg_logprob": round(float(avg_logprob), 4),
                        "no_speech_prob": round(float(res.no_speech_prob), 4),
                    }
                )
            per_item.append(segments)

        if word_timestamps:
            self._add_words(per_item, tokenizers[0], encoder_output, frame_counts)
            for req, segments in zip(batch, per_item, strict=True):
                self._drop_words_past_the_end(segments, req.samples.size / SAMPLE_RATE)

        out = []
        for req, (lang, prob), segments in zip(batch, languages, per_item, strict=True):
            for i, seg in enumerate(segments):
                seg["id"] = i
                seg.pop("tokens", None)
                seg.pop("seek", None)
            out.append(
                Result(
                    text="".join(s["text"] for s in segments).strip(),
                    language=lang,
                    language_probability=round(prob, 4),
                    duration_s=round(req.samples.size / SAMPLE_RATE, 3),
                    segments=segments,
                )
            )
        return out

    @staticmethod
    def _drop_words_past_the_end(segments: list[dict], duration: float) -> None:
        """Words timed after the audio ends were invented (Whisper repeating itself into the
        padding); drop them and rebuild the segment text from the words that remain."""
        kept = []
        for seg in segments:
            words = [w for w in seg.get("words", []) if w["start"] < duration - 0.02]
            if len(words) != len(seg.get("words", [])):
                if not words:
                    continue
                seg["words"] = words
                seg["text"] = "".join(w["word"] for w in words)
                seg["end"] = min(seg["end"], words[-1]["end"])
            kept.append(seg)
        segments[:] = kept

    def _add_words(
        self, per_item: list[list[dict]], tokenizer: Tokenizer, encoder_output, frame_counts: list[int]
    ) -> None:
        """Word timings by cross-attention alignment (faster-whisper's), for every item at once."""
        # faster-whisper's aligner expects every item to have at least one segment.
        present = [i for i, segs in enumerate(per_item) if segs]
        if not present:
            return
        if len(present) < len(per_item):
            for segs in per_item:
                if not segs:
                    segs.append({"seek": 0, "start": 0.0, "end": 0.0, "tokens": [], "text": "", "_empty": True})
        self.model.add_word_timestamps(
            per_item, tokenizer, encoder_output, frame_counts, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
        )
        for segs in per_item:
            if segs and segs[0].get("_empty"):
                segs.clear()
            for seg in segs:
                seg["words"] = [
                    {
                        "start": float(w["start"]),
                        "end": float(w["end"]),
                        "word": w["word"],
                        "probability": round(float(w["probability"]), 4),
                    }
                    for w in seg.get("words", [])
                ]


def timed_transcribe(transcriber: BatchTranscriber, batch: list[Request]) -> tuple[list[Result], float]:
    start = time.perf_counter()
    results = transcriber.transcribe(batch)
    return results, time.perf_counter() - start
