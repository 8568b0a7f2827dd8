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
from dataclasses import dataclass, field

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from services.common.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30.0
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


def cuda_device_count() -> int:
    try:
        return ctranslate2.get_cuda_device_count()
    except Exception:  # a CPU-only CTranslate2 build raises instead of answering 0
        return 0


def load_model(
    path: str, requested_device: str, compute_type: str, cpu_threads: int
) -> tuple[WhisperModel, DeviceInfo]:
    """Load on the requested device; if CUDA is asked for but absent, load on CPU and say why."""
    device, reason = requested_device, None
    if requested_device == "cuda" and cuda_device_count() == 0:
        device, reason = "cpu", "CUDA requested but no CUDA device is visible to CTranslate2"
    if compute_type == "auto":
        compute_type = "float16" if device == "cuda" else "int8"
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
    if reason:
        log.error("SERVING ON CPU: %s", reason)
    return model, DeviceInfo(requested_device, device, compute_type, reason)


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
        full = int(WINDOW_SECONDS * fps)
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
        raw = [self.model.feature_extractor(r.samples)[..., :-1] for r in batch]
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
