"""Whisper transcription of many chunks in one model call.

Whisper's encoder always works on a 30 s window, so a 3 s chunk costs nearly what a 30 s one
does; one call over a batch of chunks from different streams amortises that (CTranslate2
runs the batch through the encoder and decoder together). This module does the batched
call with per-chunk prompts and languages, which faster-whisper's own
``BatchedInferencePipeline`` does not offer, reusing faster-whisper's tokenizer, feature
extractor, timestamp splitting and word alignment so results match its single-file path.
Those are not faster-whisper's public API: every call into them is in
:mod:`services.common.whisper_internals`, which says which version they were written against.
The measurements behind the choices here are in docs/performance.md ("The transcriber's
design decisions").
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel

from core.commit_policy import Word
from core.vocabulary import SAMPLE_RATE, WHISPER_WINDOW_S
from services.common import whisper_internals as whisper
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
    # Encode in Whisper's whole 30 s window, as plain faster-whisper does, whatever the
    # transcriber's ``encoder_pad_seconds``: whole-file windows, where a transcript as close to
    # offline as possible matters more than the encoder time a live chunk saves.
    full_window: bool = False
    # Beams of the first decode: 1 is greedy (what plain faster-whisper's ``beam_size=1`` does);
    # more is a beam search from the start, which a streaming session may ask for: its windows
    # hear a few seconds each, where greedy decoding misses more words than on a whole file
    # (docs/client.md, "Beam search for session windows").
    beam_size: int = 1

    @property
    def group_key(self) -> tuple:
        # Alignment runs once per batch with one tokenizer, so batches share a language setting;
        # CTranslate2 needs <|startoftranscript|> at the same position in every prompt of a batch,
        # so only chunks with the same prompt (usually none) share a batch. The task token is part
        # of every prompt, so a batch also shares its task; one decode call has one beam size.
        return (self.language, self.word_timestamps, self.prompt or None, self.task, self.beam_size)


@dataclass
class Result:
    text: str
    language: str
    language_probability: float
    duration_s: float
    segments: list[dict] = field(default_factory=list)
    # The retry's outcome: None (the greedy decode passed), "passed" (the beam
    # search's decode passed the checks) or "surest" (it did not either; the surer one was kept).
    retried: str | None = None
    # Beams of the first decode as run: what the request asked for, or 1 where the batcher
    # lightened it under load (services/base/batcher.py).
    beam_size: int = 1


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
    frames = int(PROBE_WINDOW_SECONDS * whisper.frames_per_second(model))
    features = np.ascontiguousarray(fit_window(whisper.features(model, samples), frames)[None])
    tokenizer = whisper.tokenizer(model, "en", "transcribe")
    prompt = whisper.prompt(model, tokenizer, None)

    def run() -> None:
        whisper.decode_fixed_length(model, whisper.encode(model, features), prompt, tokenizer, PROBE_TOKENS)

    return run


def time_model(model: WhisperModel, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of the fastest of PROBE_RUNS probe runs by ``clock``, after one untimed run
    (which pays one-off set-up, such as kernel compilation for a new compute type on a GPU).
    The fastest, not the median: other work on the machine only ever adds time, so the fastest
    run is the best estimate of what the type itself costs."""
    run = probe_run(model)
    run()
    times: list[float] = []
    deadline = time.perf_counter() + PROBE_BUDGET_SECONDS
    while len(times) < PROBE_RUNS and (not times or time.perf_counter() < deadline):
        start = clock()
        run()
        times.append(clock() - start)
    return min(times)


def probe_clock(device: str) -> Callable[[], float]:
    """What a probe run costs: on CPU the CPU seconds of this process (all its threads), which
    other processes' work does not add to, so pods starting beside each other cannot tip the
    choice (wall time did: docs/performance.md, "The transcriber's design decisions"); on a GPU,
    wall time."""
    return time.process_time if device == "cpu" else time.perf_counter


def probe_compute_types(
    path: str, device: str, cpu_threads: int, default_model: WhisperModel, default: str, num_workers: int = 1
) -> tuple[WhisperModel, Probe] | None:
    """Time the supported candidates on ``device`` (``default_model`` is ``default``, already
    loaded) and return the fastest, loaded; None when there is nothing to compare."""
    candidates = auto_candidates(device)
    if candidates[0] != default or len(candidates) < 2:
        return None
    models = {default: default_model}

    def measure(compute_type: str) -> float:
        if compute_type not in models:
            models[compute_type] = WhisperModel(
                path, device=device, compute_type=compute_type, cpu_threads=cpu_threads, num_workers=num_workers
            )
        return time_model(models[compute_type], clock=probe_clock(device))

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
    path: str, requested_device: str, compute_type: str, cpu_threads: int, num_workers: int = 1
) -> tuple[WhisperModel, DeviceInfo]:
    """Load on the requested device; if CUDA is asked for but absent, load on CPU and say why.

    ``num_workers``: model calls that can run at once from different threads (CTranslate2
    shares the weights between the workers of one device).

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
        model = WhisperModel(
            path, device=device, compute_type=compute_type, cpu_threads=cpu_threads, num_workers=num_workers
        )
        warm_up(model)
    except (RuntimeError, ValueError, OSError) as exc:
        if device != "cuda":
            raise
        # e.g. libcublas missing in the image: serve from CPU rather than crash-loop or fail every request.
        reason = f"CUDA load failed: {exc}"
        device, compute_type = "cpu", "int8"
        model = WhisperModel(
            path, device=device, compute_type=compute_type, cpu_threads=cpu_threads, num_workers=num_workers
        )
        warm_up(model)
        auto = False  # a fallback from a broken CUDA set-up serves at once, unprobed
    timings: dict[str, float] = {}
    if auto:
        try:
            probed = probe_compute_types(path, device, cpu_threads, model, compute_type, num_workers)
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
    prebuilt kernels it compiles them then, which takes long enough to matter (how long, on
    which GPU: docs/performance.md). Done here, that wait falls before ``/readyz`` turns ready
    instead of on the first chunk, and a CUDA setup that cannot run (no libcublas in the
    image) is caught while falling back to CPU is still possible."""
    segments, _ = model.transcribe(np.zeros(SAMPLE_RATE, np.float32), language="en", beam_size=1)
    list(segments)


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


# Whisper's quality checks, with faster-whisper's transcribe defaults (the offline baseline's):
# a decode whose text compresses more than this is a repetition loop; one whose average
# log-probability is under the transcriber's threshold is unsure. transcribe then samples the
# best of 5 at temperatures 0.2 to 1.0 until one passes; a retry here is one beam search
# instead, which is deterministic and measured more accurate (docs/performance.md, "Unsure
# decodes").
COMPRESSION_RATIO_THRESHOLD = 2.4
RETRY_BEAM_SIZE = 5
# Tokens one decode may write per second of audio, plus a floor. Whisper's own limit is 224
# tokens whatever the audio, so a 3 s chunk that loops ("Prrrrrr…" for a cut-off "Press") writes
# all of them, again in its beam retry, and every chunk batched with it waits as long. Speech
# needs about half the bound (the densest reference in the corpus), so it cuts only loops
# (docs/performance.md, "A token budget per decode").
TOKENS_PER_SECOND, TOKENS_AT_LEAST = 25.0, 32


def token_budget(duration_s: float, tokens_per_second: float = TOKENS_PER_SECOND) -> int | None:
    """Most tokens a decode of ``duration_s`` of audio may write (see :data:`TOKENS_PER_SECOND`);
    None when ``tokens_per_second`` is 0 (Whisper's own limit)."""
    if tokens_per_second <= 0:
        return None
    return math.ceil(tokens_per_second * duration_s) + TOKENS_AT_LEAST


def is_silent(decoded: whisper.Decoded, no_speech_threshold: float, logprob_threshold: float) -> bool:
    """Whisper's silence rule (transcribe's): it expects no speech and is unsure of its words,
    so none of them is kept."""
    return decoded.no_speech_prob > no_speech_threshold and decoded.avg_logprob < logprob_threshold


def needs_retry(decoded: whisper.Decoded, text: str, no_speech_threshold: float, logprob_threshold: float) -> bool:
    """Whether a decode fails the checks: too repetitive, or too unsure, unless it is silence
    (:func:`is_silent`: nothing is kept anyway)."""
    if is_silent(decoded, no_speech_threshold, logprob_threshold):
        return False
    return decoded.avg_logprob < logprob_threshold or compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD


def surest(attempts: list[tuple[whisper.Decoded, str]]) -> whisper.Decoded:
    """When no decode passed: the surest of those that are not repetition loops (of all, when
    each is one), as transcribe keeps when every temperature failed."""
    passing = [a for a in attempts if compression_ratio(a[1]) <= COMPRESSION_RATIO_THRESHOLD] or attempts
    return max(passing, key=lambda a: a[0].avg_logprob)[0]


def fit_window(features: np.ndarray, frames: int) -> np.ndarray:
    """``features`` cut or zero-padded to ``frames`` frames: the encoder window of a batch."""
    if features.shape[-1] < frames:
        features = np.pad(features, ((0, 0), (0, frames - features.shape[-1])))
    return features[..., :frames]


@dataclass
class DecodedSegment:
    """One Whisper segment of one chunk, as decoded (times in seconds from the chunk's start).

    Not :class:`core.commit_policy.Segment`: that one's text is made from its words, while
    this one's text is the tokenizer's decoding of ``tokens`` and exists without words (a
    request may not ask for word timestamps); the tokens are what word alignment needs.
    Its words are :class:`core.commit_policy.Word`, the type clients parse them into."""

    start: float
    end: float
    tokens: list[int]
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: list[Word] | None = None  # None: word timestamps were not asked for

    def as_dict(self, index: int) -> dict:
        """The segment as ``/transcribe`` returns it (keys in the order clients have always seen)."""
        out: dict = {
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
        }
        if self.words is not None:
            out["words"] = [
                {"start": w.start, "end": w.end, "word": w.text, "probability": w.probability} for w in self.words
            ]
        out["id"] = index
        return out


@dataclass
class EncodedBatch:
    """A batch on its way through the model: the requests, their features in one encoder
    window, and the encoder output once computed."""

    requests: list[Request]
    features: np.ndarray
    encoder_output: whisper.EncoderOutput = None

    @property
    def durations(self) -> list[float]:
        return [r.samples.size / SAMPLE_RATE for r in self.requests]


class BatchTranscriber:
    """Runs :class:`Request` batches through one WhisperModel. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        model: WhisperModel,
        encoder_pad_seconds: float | None = 8.0,
        no_speech_threshold: float = 0.6,
        logprob_threshold: float = -1.0,
        tokens_per_second: float = TOKENS_PER_SECOND,
        beam_no_repeat_ngram: int = 12,
    ):
        """``beam_no_repeat_ngram``: in a beam search a request asks for (``Request.beam_size``
        > 1), no run of this many tokens is written twice (0: off, as in transcribe; the retry's
        search and greedy decodes keep transcribe's behaviour whatever it is). Ranked by mean
        log-probability, a beam that loops grows surer with every repeat and outranks the one
        that ended: it was kept, ran to the token budget (slow) and was then dropped whole as a
        loop, its words with it (docs/performance.md, "Loops in a beam search").

        ``encoder_pad_seconds``: encode only the audio plus this much silence instead of the
        full 30 s window (``None``: always 30 s). Both the encoder and every decoder step
        (cross-attention over the encoded frames) cost in proportion to the window, while too
        little padding costs accuracy; the default is where the measured trade-off landed
        (docs/performance.md, "The transcriber's design decisions")."""
        self.model = model
        self.encoder_pad_seconds = encoder_pad_seconds
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.tokens_per_second = tokens_per_second  # the decode's token budget (token_budget); 0: none
        self.beam_no_repeat_ngram = beam_no_repeat_ngram
        self.multilingual = whisper.is_multilingual(model)
        self._suppress = whisper.suppressed_tokens(self._tokenizer("en"))

    def _tokenizer(self, language: str | None, task: str = "transcribe") -> whisper.Tokenizer:
        return whisper.tokenizer(self.model, language if self.multilingual else "en", task)

    def batch_key(self, request: Request) -> tuple:
        """What the chunks of one batch share: language, word timestamps and prompt
        (``Request.group_key``), and the encoder window. The window is set by a batch's longest
        chunk, and the same chunk encoded in a longer window can come back with other words,
        so chunks are batched only with chunks that get the window they would get alone: a
        transcript never depends on what other streams sent at the same moment (before this,
        the bench's streamed WER changed from run to run: docs/performance.md)."""
        return (*request.group_key, self.window_frames(request.samples.size // HOP_SAMPLES, request.full_window))

    def window_frames(self, longest: int, full_window: bool = False) -> int:
        """Encoder input length for a batch whose longest item has ``longest`` feature frames."""
        fps = whisper.frames_per_second(self.model)
        full = int(WHISPER_WINDOW_S * fps)
        if self.encoder_pad_seconds is None or full_window:
            return full
        wanted = longest + int(self.encoder_pad_seconds * fps)
        return min(full, -(-wanted // fps) * fps)  # whole seconds, so batches reuse few shapes

    def transcribe(self, batch: list[Request]) -> list[Result]:
        """Transcribe every chunk of ``batch`` (which share :meth:`batch_key`) in one model call."""
        if not batch:
            return []
        self._check(batch)
        first = batch[0]
        encoded = self._encode(batch)
        languages = self._languages(encoded)
        tokenizers = [self._tokenizer(lang, first.task) for lang, _ in languages]
        prompts = [whisper.prompt(self.model, tok, req.prompt) for req, tok in zip(batch, tokenizers, strict=True)]
        decoded, retries = self._decode(encoded, prompts, tokenizers)
        frame_counts = self._frame_counts(encoded)
        segments = [
            self._segments(tok, dec, frames, duration)
            for tok, dec, frames, duration in zip(tokenizers, decoded, frame_counts, encoded.durations, strict=True)
        ]
        if first.word_timestamps:
            self._add_words(segments, tokenizers[0], encoded, frame_counts)
            segments = [self._drop_words_past_the_end(s, d) for s, d in zip(segments, encoded.durations, strict=True)]
        return [
            self._result(req, language, segs, retried)
            for req, language, segs, retried in zip(batch, languages, segments, retries, strict=True)
        ]

    def _check(self, batch: list[Request]) -> None:
        if any(r.group_key != batch[0].group_key for r in batch):
            raise ValueError("a batch must share language, word_timestamps, prompt, task and beam size")
        if batch[0].task != "transcribe" and not self.multilingual:
            # An English-only model has no task tokens: it would silently transcribe instead.
            raise ValueError(f"task {batch[0].task!r} needs a multilingual model")

    def _encode(self, batch: list[Request]) -> EncodedBatch:
        """Features of every chunk in the batch's encoder window, through the encoder at once."""
        # Quiet chunks raised to -20 dBFS first: in the trimmed window Whisper stopped after a word
        # or two of them (services/common/level.py says why); in the full window, telephone-band
        # file windows lost 1.2 WER points without it (docs/performance.md, "Seams and the full
        # window in whole files").
        raw = [whisper.features(self.model, raised(r.samples)) for r in batch]
        window = self.window_frames(max(f.shape[-1] for f in raw), batch[0].full_window)
        encoded = EncodedBatch(batch, np.ascontiguousarray(np.stack([fit_window(f, window) for f in raw])))
        encoded.encoder_output = whisper.encode(self.model, encoded.features)
        return encoded

    def _decode(
        self, encoded: EncodedBatch, prompts: list[list[int]], tokenizers: list[whisper.Tokenizer]
    ) -> tuple[list[whisper.Decoded], list[str | None]]:
        """The batch's own beam size (greedy unless its chunks asked for more); then the items
        that failed the checks (:func:`needs_retry`) by a beam search of ``RETRY_BEAM_SIZE``, in
        one more call, unless the first decode already searched as wide. They are encoded again
        on their own: CTranslate2's encoder output cannot be sliced on every device, and retries
        are rare enough (docs/performance.md, "Unsure decodes") that the chunks batched with one
        seldom wait."""
        budget = token_budget(max(encoded.durations), self.tokens_per_second)
        beam_size = encoded.requests[0].beam_size
        ngram = self.beam_no_repeat_ngram if beam_size > 1 else 0
        decoded = whisper.decode(self.model, encoded.encoder_output, prompts, self._suppress, beam_size, budget, ngram)
        outcomes: list[str | None] = [None] * len(decoded)
        greedy: dict[int, str] = {}
        for i, d in enumerate(decoded):
            text = tokenizers[i].decode(d.tokens).strip()
            if needs_retry(d, text, self.no_speech_threshold, self.logprob_threshold):
                greedy[i] = text
        if not greedy or beam_size >= RETRY_BEAM_SIZE:
            return decoded, outcomes
        pending = list(greedy)
        output = whisper.encode(self.model, np.ascontiguousarray(encoded.features[pending]))
        beams = whisper.decode(
            self.model, output, [prompts[i] for i in pending], self._suppress, RETRY_BEAM_SIZE, max_tokens=budget
        )
        for i, beam in zip(pending, beams, strict=True):
            text = tokenizers[i].decode(beam.tokens).strip()
            if needs_retry(beam, text, self.no_speech_threshold, self.logprob_threshold):
                decoded[i], outcomes[i] = surest([(decoded[i], greedy[i]), (beam, text)]), "surest"
            else:
                decoded[i], outcomes[i] = beam, "passed"
        return decoded, outcomes

    def _languages(self, encoded: EncodedBatch) -> list[tuple[str, float]]:
        """Each chunk's language and its probability: the one asked for, or Whisper's guess."""
        language = encoded.requests[0].language
        if language or not self.multilingual:
            return [(language or "en", 1.0)] * len(encoded.requests)
        return whisper.detect_languages(self.model, encoded.encoder_output)

    def _frame_counts(self, encoded: EncodedBatch) -> list[int]:
        """Feature frames of each chunk's own audio (the rest of the window is padding)."""
        fps = whisper.frames_per_second(self.model)
        return [min(int(duration * fps), encoded.features.shape[-1]) for duration in encoded.durations]

    def _segments(
        self, tokenizer: whisper.Tokenizer, decoded: whisper.Decoded, frames: int, duration: float
    ) -> list[DecodedSegment]:
        """One chunk's decode cut into segments, without Whisper's two classic hallucinations."""
        silent = is_silent(decoded, self.no_speech_threshold, self.logprob_threshold)
        segments = []
        for span in whisper.split_by_timestamps(self.model, tokenizer, decoded.tokens, frames, duration):
            if silent or not span.text.strip() or compression_ratio(span.text) > COMPRESSION_RATIO_THRESHOLD:
                continue  # silence, or a repetition loop
            segments.append(
                DecodedSegment(
                    start=round(max(0.0, span.start), 3),
                    end=round(min(duration, span.end), 3),
                    tokens=span.tokens,
                    text=span.text,
                    avg_logprob=round(float(decoded.avg_logprob), 4),
                    no_speech_prob=round(float(decoded.no_speech_prob), 4),
                )
            )
        return segments

    @staticmethod
    def _drop_words_past_the_end(segments: list[DecodedSegment], duration: float) -> list[DecodedSegment]:
        """Words timed after the audio ends were invented (Whisper repeating itself into the
        padding); drop them and rebuild the segment text from the words that remain."""
        kept = []
        for seg in segments:
            all_words = seg.words or []
            words = [w for w in all_words if w.start < duration - 0.02]
            if len(words) != len(all_words):
                if not words:
                    continue
                seg.words = words
                seg.text = "".join(w.text for w in words)
                seg.end = min(seg.end, words[-1].end)
            kept.append(seg)
        return kept

    def _add_words(
        self,
        segments: list[list[DecodedSegment]],
        tokenizer: whisper.Tokenizer,
        encoded: EncodedBatch,
        frame_counts: list[int],
    ) -> None:
        """Word timings by cross-attention alignment (faster-whisper's), for every chunk at once;
        alignment also moves a segment's edges onto its first and last word."""
        spans = [[whisper.Span(s.start, s.end, s.tokens, s.text) for s in segs] for segs in segments]
        aligned = whisper.align_words(
            self.model,
            spans,
            tokenizer,
            encoded.encoder_output,
            frame_counts,
            PREPEND_PUNCTUATIONS,
            APPEND_PUNCTUATIONS,
        )
        for segs, item in zip(segments, aligned, strict=True):
            for seg, al in zip(segs, item, strict=True):
                seg.start, seg.end = al.start, al.end
                seg.words = [Word(w.start, w.end, w.text, round(w.probability, 4)) for w in al.words]

    @staticmethod
    def _result(
        request: Request, language: tuple[str, float], segments: list[DecodedSegment], retried: str | None
    ) -> Result:
        lang, probability = language
        return Result(
            text="".join(s.text for s in segments).strip(),
            language=lang,
            language_probability=round(probability, 4),
            duration_s=round(request.samples.size / SAMPLE_RATE, 3),
            segments=[seg.as_dict(i) for i, seg in enumerate(segments)],
            retried=retried,
            beam_size=request.beam_size,
        )


def timed_transcribe(transcriber: BatchTranscriber, batch: list[Request]) -> tuple[list[Result], float]:
    start = time.perf_counter()
    results = transcriber.transcribe(batch)
    return results, time.perf_counter() - start
