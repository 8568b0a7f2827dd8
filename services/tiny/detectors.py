"""Speech detectors behind one interface: does this chunk hold speech, and where?

- ``silero``: Silero VAD v6 (ONNX, shipped inside faster-whisper). ~1 ms per 30 ms frame on one
  thread, trained to reject music and noise. The default.
- ``whisper-tiny``: the design document's original idea, Whisper ``tiny.en`` transcribing the chunk
  and calling it speech when it produces confident text. ~40x dearer, and Whisper is known to
  hallucinate ("Thank you.") on music and silence, so it is kept for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from services.common.audio import SAMPLE_RATE

FRAME = 512  # Silero's window at 16 kHz (32 ms)


@dataclass
class Detection:
    speech: bool
    probability: float
    regions: list[dict[str, int]] = field(default_factory=list)  # [{"start_ms", "end_ms"}]

    def as_dict(self) -> dict:
        return {"speech": self.speech, "probability": round(self.probability, 4), "regions": self.regions}


class Detector(Protocol):
    name: str

    def detect(self, samples: np.ndarray) -> Detection: ...


@dataclass
class SileroDetector:
    """Frame probabilities from Silero, then hysteresis into speech regions.

    A region needs ``min_speech_ms`` of speech: a door slam or a key click is a few frames
    loud, a word is not shorter than ~200 ms.
    """

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    pad_ms: int = 30
    name: str = "silero"

    def __post_init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._model = get_vad_model()

    def frame_probabilities(self, samples: np.ndarray) -> np.ndarray:
        padded = np.pad(samples, (0, (-samples.size) % FRAME))
        return np.asarray(self._model(padded), dtype=np.float32).reshape(-1)

    def detect(self, samples: np.ndarray) -> Detection:
        probs = self.frame_probabilities(samples)
        regions = speech_regions(probs, self.threshold, self.min_speech_ms, self.min_silence_ms, self.pad_ms)
        limit_ms = int(samples.size * 1000 / SAMPLE_RATE)
        for region in regions:
            region["end_ms"] = min(region["end_ms"], limit_ms)
        return Detection(bool(regions), float(probs.max()) if probs.size else 0.0, regions)


def speech_regions(
    probs: np.ndarray, threshold: float, min_speech_ms: int, min_silence_ms: int, pad_ms: int
) -> list[dict[str, int]]:
    """Hysteresis over frame probabilities (enter at ``threshold``, leave at threshold-0.15)."""
    frame_ms = FRAME * 1000 / SAMPLE_RATE
    leave = max(threshold - 0.15, 0.01)
    regions: list[list[float]] = []
    start: int | None = None
    silent_since: int | None = None
    for i, p in enumerate(probs):
        if start is None:
            if p >= threshold:
                start, silent_since = i, None
            continue
        if p < leave:
            silent_since = i if silent_since is None else silent_since
            if (i - silent_since) * frame_ms >= min_silence_ms:
                regions.append([start, silent_since])
                start, silent_since = None, None
        else:
            silent_since = None
    if start is not None:
        regions.append([start, silent_since if silent_since is not None else len(probs)])
    out = []
    for begin, end in regions:
        # Count only confident frames: hysteresis stretches a 150 ms chime to half a second,
        # while even a one-word utterance has well over 250 ms of frames above the threshold.
        confident = int(np.count_nonzero(probs[begin:end] >= threshold))
        if confident * frame_ms >= min_speech_ms:
            out.append({"start_ms": max(0, int(begin * frame_ms - pad_ms)), "end_ms": int(end * frame_ms + pad_ms)})
    return out


@dataclass
class WhisperTinyDetector:
    """Whisper tiny.en as a detector: speech when it writes confident, non-trivial text."""

    model_path: str
    no_speech_threshold: float = 0.6
    cpu_threads: int = 0
    name: str = "whisper-tiny"

    def __post_init__(self) -> None:
        from faster_whisper import WhisperModel

        self._model = WhisperModel(self.model_path, device="cpu", compute_type="int8", cpu_threads=self.cpu_threads)

    def detect(self, samples: np.ndarray) -> Detection:
        segments, _ = self._model.transcribe(
            samples, language="en", beam_size=1, condition_on_previous_text=False, without_timestamps=False
        )
        regions, best = [], 0.0
        for seg in segments:
            confident = 1.0 - seg.no_speech_prob
            if seg.text.strip() and seg.no_speech_prob < self.no_speech_threshold and seg.avg_logprob > -1.0:
                regions.append({"start_ms": int(seg.start * 1000), "end_ms": int(seg.end * 1000)})
                best = max(best, confident)
        return Detection(bool(regions), best, regions)


def timed(detector: Detector, samples: np.ndarray) -> tuple[Detection, float]:
    start = time.perf_counter()
    result = detector.detect(samples)
    return result, (time.perf_counter() - start) * 1000
