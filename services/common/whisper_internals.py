"""Every call the services make past faster-whisper's public API, in one place.

Pinned: ``faster-whisper==1.2.1`` (``pyproject.toml``, extras ``transcriber`` and ``detector``),
which brings the CTranslate2 whose ``models.Whisper`` these calls drive. Nothing here is
faster-whisper's public surface (that is ``WhisperModel(...)`` and ``WhisperModel.transcribe``):
these are its methods, attributes and module functions that a minor release may rename, move
or change the meaning of, so upgrading the pin means re-reading each function below against
the new source and re-running the transcriber's comparison against the previous version.
Nothing else under ``services/`` reaches into faster-whisper's or CTranslate2's internals;
what stays outside is public: ``WhisperModel(...)`` and ``WhisperModel.transcribe`` (loading,
warm-up) and CTranslate2's device queries (``get_cuda_device_count``,
``get_supported_compute_types``).

Why the public API is not enough: ``WhisperModel.transcribe`` takes one audio at a time, and
``BatchedInferencePipeline`` batches pieces of *one* file with one prompt and one language.
The service batches chunks of different streams, each with its own prompt and language, into
one encoder and one decoder call, and trims the encoder window to the audio it holds
(``services/base/transcriber.py`` says why). For that it needs the steps ``transcribe`` runs
inside, one by one:

- :func:`features`: the mel spectrogram (``WhisperModel.feature_extractor``), without the
  trailing frame, as ``transcribe`` drops it;
- :func:`frames_per_second`: mel frames per second, to size the encoder window;
- :func:`encode`: ``WhisperModel.encode`` on a batch of features of our own window length;
- :func:`detect_languages`: CTranslate2's ``detect_language`` on that encoder output, for every
  item of the batch at once (``WhisperModel.detect_language`` takes one audio and encodes again);
- :func:`tokenizer`, :func:`prompt`, :func:`suppressed_tokens`: faster-whisper's ``Tokenizer``,
  ``get_prompt`` and ``get_suppressed_tokens``, so the prompt a chunk gets is token for token
  the one ``transcribe`` would build;
- :func:`decode`: CTranslate2's ``generate`` over the whole batch with a prompt per item, greedy
  or by beam search, and the average log-probability computed as ``transcribe`` computes it;
- :func:`split_by_timestamps`: ``WhisperModel._split_segments_by_timestamps`` (private), which
  cuts the decoded tokens into segments at Whisper's timestamp tokens;
- :func:`align_words`: ``WhisperModel.add_word_timestamps`` (cross-attention alignment and its
  punctuation and duration heuristics) for every item of a batch in one call;
- :func:`decode_fixed_length`: a greedy decode of a set number of tokens, for the start-up
  probe that times compute types;
- :func:`silero_vad`: the Silero VAD model faster-whisper ships (``faster_whisper.vad.get_vad_model``,
  not exported), which the detector and the whole-file endpoint run frame by frame
  (:mod:`services.common.speech`) instead of through ``get_speech_timestamps``;
- :data:`LANGUAGE_CODES`: the language codes Whisper knows (``faster_whisper.tokenizer.
  _LANGUAGE_CODES``, private), to refuse an unknown ``language`` before any model work.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import ctranslate2
import faster_whisper
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens

from core.commit_policy import Word

log = logging.getLogger(__name__)

PINNED_VERSION = "1.2.1"
if faster_whisper.__version__ != PINNED_VERSION:  # pragma: no cover - only with a drifted install
    log.warning(
        "faster-whisper %s installed; services/common/whisper_internals.py was written against %s",
        faster_whisper.__version__,
        PINNED_VERSION,
    )

LANGUAGE_CODES: tuple[str, ...] = _LANGUAGE_CODES

EncoderOutput: TypeAlias = ctranslate2.StorageView

__all__ = [
    "LANGUAGE_CODES",
    "PINNED_VERSION",
    "Aligned",
    "Decoded",
    "EncoderOutput",
    "Span",
    "Tokenizer",
    "align_words",
    "decode",
    "decode_fixed_length",
    "detect_languages",
    "encode",
    "features",
    "frames_per_second",
    "is_multilingual",
    "prompt",
    "split_by_timestamps",
    "suppressed_tokens",
    "tokenizer",
]


@dataclass
class Decoded:
    """One item's decode: its tokens (timestamps included) and Whisper's two confidences."""

    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


@dataclass
class Span:
    """A stretch of decoded text between two timestamp tokens (seconds from the chunk's start)."""

    start: float
    end: float
    tokens: list[int]  # text tokens only: timestamps and special tokens removed
    text: str


@dataclass
class Aligned:
    """A span after word alignment: faster-whisper moves its edges onto the words it aligned."""

    start: float
    end: float
    words: list[Word]


def frames_per_second(model: WhisperModel) -> int:
    return model.frames_per_second


def is_multilingual(model: WhisperModel) -> bool:
    return model.model.is_multilingual


def features(model: WhisperModel, samples: np.ndarray) -> np.ndarray:
    """Mel features of ``samples`` (16 kHz mono), one frame per 10 ms."""
    return model.feature_extractor(samples)[..., :-1]


def encode(model: WhisperModel, features: np.ndarray) -> EncoderOutput:
    """Encoder output for a batch of features, all of one window length."""
    return model.encode(features)


def detect_languages(model: WhisperModel, encoder_output: EncoderOutput) -> list[tuple[str, float]]:
    """The most likely language of every item (code, probability)."""
    detected = model.model.detect_language(encoder_output)
    return [(d[0][0][2:-2], float(d[0][1])) for d in detected]


def tokenizer(model: WhisperModel, language: str | None, task: str) -> Tokenizer:
    return Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task=task, language=language)


def suppressed_tokens(tokenizer: Tokenizer) -> list[int]:
    """The tokens ``transcribe`` suppresses by default (``suppress_tokens=[-1]``)."""
    return get_suppressed_tokens(tokenizer, [-1])


def prompt(model: WhisperModel, tokenizer: Tokenizer, previous_text: str | None) -> list[int]:
    """The decoder prompt for one item: ``previous_text`` as prior context (as
    ``initial_prompt`` is), then start of transcript, language, task, timestamps on."""
    previous = tokenizer.encode(" " + previous_text.strip()) if previous_text and previous_text.strip() else []
    return model.get_prompt(tokenizer, previous_tokens=previous, without_timestamps=False)


def decode(
    model: WhisperModel,
    encoder_output: EncoderOutput,
    prompts: Sequence[list[int]],
    suppress: list[int],
    beam_size: int = 1,
    max_tokens: int | None = None,
    no_repeat_ngram_size: int = 0,
) -> list[Decoded]:
    """Decode every item with its own prompt, in one CTranslate2 call: greedy, or a beam search
    with ``beam_size`` beams (the best hypothesis kept, as ``transcribe`` keeps it). At most
    ``max_tokens`` tokens per item (None: the model's own limit, as ``transcribe`` has it).
    ``no_repeat_ngram_size``: no run of that many tokens is written twice in one item (0: any
    may be, as in ``transcribe``)."""
    max_length = model.max_length
    if max_tokens is not None:
        # CTranslate2 writes at most min(max_length // 2, max_length - len(prompt) + 1) tokens for
        # Whisper (448 gives Whisper's 224 after a short prompt; a 227-token prompt and a length of
        # 214 gave none: measured), so the length that allows max_tokens depends on the prompt.
        longest = max((len(p) for p in prompts), default=0)
        max_length = min(model.max_length, max(2 * max_tokens, longest + max_tokens - 1))
    results = model.model.generate(
        encoder_output,
        list(prompts),
        beam_size=beam_size,
        max_length=max_length,
        no_repeat_ngram_size=no_repeat_ngram_size,
        suppress_blank=True,
        suppress_tokens=suppress,
        return_scores=True,
        return_no_speech_prob=True,
    )
    decoded = []
    for res in results:
        tokens = res.sequences_ids[0]
        # CTranslate2 scores are the summed log-probability over len(tokens) (length_penalty 1);
        # transcribe divides the sum by len(tokens) + 1, and its thresholds assume that.
        avg_logprob = res.scores[0] * (len(tokens) ** 1.0) / (len(tokens) + 1)
        decoded.append(Decoded(tokens, avg_logprob, res.no_speech_prob))
    return decoded


def decode_fixed_length(
    model: WhisperModel, encoder_output: EncoderOutput, prompt: list[int], tokenizer: Tokenizer, tokens: int
) -> None:
    """Decode exactly ``tokens`` tokens greedily (the end token is suppressed), whatever the audio."""
    model.model.generate(
        encoder_output,
        [prompt],
        beam_size=1,
        max_length=2 * tokens,  # CTranslate2 decodes at most max_length // 2 for Whisper
        suppress_blank=False,
        suppress_tokens=[-1, tokenizer.eot],
    )


def split_by_timestamps(
    model: WhisperModel, tokenizer: Tokenizer, tokens: list[int], frames: int, duration: float
) -> list[Span]:
    """Cut one item's decoded tokens at its timestamp tokens into timed spans of text."""
    subsegments, _, _ = model._split_segments_by_timestamps(
        tokenizer=tokenizer, tokens=tokens, time_offset=0.0, segment_size=frames, segment_duration=duration, seek=0
    )
    spans = []
    for sub in subsegments:
        text_tokens = [t for t in sub["tokens"] if t < tokenizer.eot]
        spans.append(Span(sub["start"], sub["end"], text_tokens, tokenizer.decode(text_tokens)))
    return spans


def align_words(
    model: WhisperModel,
    items: Sequence[Sequence[Span]],
    tokenizer: Tokenizer,
    encoder_output: EncoderOutput,
    frame_counts: list[int],
    prepend_punctuations: str,
    append_punctuations: str,
) -> list[list[Aligned]]:
    """Word timings for every span of every item of a batch, in one alignment call.

    ``add_word_timestamps`` works on dicts in place and expects every item to hold at least
    one segment, so an item without spans gets an empty placeholder, removed again after.
    It carries the time of the last word from one item to the next, as it does from one
    window to the next in ``transcribe``: kept as it is, so results match the batched call
    the service always made."""
    dicts: list[list[dict[str, Any]]] = [
        [{"seek": 0, "start": s.start, "end": s.end, "tokens": s.tokens, "text": s.text} for s in spans]
        for spans in items
    ]
    if not any(dicts):
        return [[] for _ in items]
    placeholders = {i for i, segs in enumerate(dicts) if not segs}
    for i in placeholders:
        dicts[i].append({"seek": 0, "start": 0.0, "end": 0.0, "tokens": [], "text": ""})
    model.add_word_timestamps(
        dicts, tokenizer, encoder_output, frame_counts, prepend_punctuations, append_punctuations, 0.0
    )
    return [
        []
        if i in placeholders
        else [
            Aligned(
                seg["start"],
                seg["end"],
                [Word(float(w["start"]), float(w["end"]), w["word"], float(w["probability"])) for w in seg["words"]],
            )
            for seg in segs
        ]
        for i, segs in enumerate(dicts)
    ]


def silero_vad() -> Any:
    """faster-whisper's Silero VAD model (ONNX), loaded once per process by faster-whisper itself.

    Called with 16 kHz float32 samples (a multiple of 512), it returns one speech probability per
    512-sample frame. :mod:`services.common.speech` needs the probabilities themselves (its
    decision rules differ from ``get_speech_timestamps``), which the public API does not give.
    """
    from faster_whisper.vad import get_vad_model

    return get_vad_model()
