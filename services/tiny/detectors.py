"""Speech detectors behind one interface: does this chunk hold speech, and where?

- ``silero``: Silero VAD v6 (ONNX, shipped inside faster-whisper), decided as in
  :mod:`services.common.speech` (a confident path, then a level-normalised weak path guarded
  against tonal sounds). ~5-12 ms per 3 s chunk on one thread. The default.
- ``whisper-tiny``: the design document's original idea, Whisper ``tiny.en`` transcribing the chunk
  and calling it speech when it produces confident text. ~40x dearer, and Whisper is known to
  hallucinate ("Thank you.") on music and silence, so it is kept for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from core.vocabulary import SAMPLE_RATE
from services.common.speech import FRAME, SpeechDetector, speech_regions

__all__ = ["FRAME", "Detection", "Detector", "SileroDetector", "WhisperTinyDetector", "speech_regions", "timed"]


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
class SileroDetector(SpeechDetector):
    """Silero with a confident and a weak path (:class:`services.common.speech.SpeechDetector`,
    shared with the whole-file endpoint), answering in the ``/detect`` shape.

    A confident region needs ``min_speech_ms`` of frames at ``threshold``: a door slam or a key
    click is a few frames loud, a word is not shorter than ~200 ms. A chunk with none is asked
    again level-normalised at ``weak_threshold``, and kept only when it is not tonally steady.
    """

    name: str = "silero"

    def detect(self, samples: np.ndarray) -> Detection:
        decision = self.decide(samples)
        regions = [
            {"start_ms": a * 1000 // SAMPLE_RATE, "end_ms": b * 1000 // SAMPLE_RATE} for a, b in decision.regions
        ]
        return Detection(decision.speech, decision.probability, regions)


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
