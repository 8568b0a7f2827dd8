"""Speech detection shared by tiny's ``/detect`` (3 s chunks) and base's whole-file windows.

Silero VAD v6 (the ONNX model faster-whisper ships) decides in two steps on each chunk:

1. **Confident path** (unchanged from the first detector): hysteresis over Silero's frame
   probabilities, entered at ``threshold`` (0.5); a region counts when it holds ``min_speech_ms``
   (250 ms) of frames at or above the threshold. Music, chimes and noise rarely pass it.
2. **Weak path**, only when the first found nothing (so its cost is paid on non-speech and hard
   speech only): Silero again on the chunk *level-normalised* to -26 dBFS (at most +30 dB, never
   clipping), entered at ``weak_threshold`` (0.3) with ``weak_min_speech_ms`` (96 ms) of such
   frames, and accepted only when the chunk is not *tonally steady*: the strongest 300-3400 Hz
   spectral peak stays within one bin (40 Hz) from one 10 ms hop to the next in less than
   ``max_steadiness`` (0.85) of the hops. A chime or a held musical note keeps its peak (0.9-1.0);
   a voice's pitch harmonics and formants move (dev-set speech: median 0.71).

The weak path is what recovers quiet distant meeting speech (-40 to -50 dBFS, where Silero's
probabilities stay under 0.5) and band-limited telephone speech (8 kHz, G.711 µ-law: nothing above
4 kHz, Silero peaks at 0.14-0.5 at normal level). The model here takes 16 kHz input only
(``input`` is ``[seq_len, 576]``: 512 samples + 64 of context); the original Silero's 8 kHz mode
(256-sample frames) is not in this export, so band-limited audio is handled by the weak path
rather than by running Silero at 8 kHz. ``python -m bench.recall`` measures it per category.

:func:`speech_spans` runs the same chunk decision over a whole recording, cut like the live
client cuts it (3 s every 2 s), and keeps every piece called speech whole, so the whole-file
endpoint keeps exactly what the live path keeps.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from core.vocabulary import SAMPLE_RATE
from services.common.level import normalized

FRAME = 512  # Silero's window at 16 kHz (32 ms)
FRAME_MS = FRAME * 1000 / SAMPLE_RATE

CHUNK_S = 3.0  # the live client's chunk and step (client/chunker.py with the shipped settings)
STEP_S = 2.0

_HOP, _WIN = 160, 400  # 10 ms hop, 25 ms window for the steadiness measure
_WINDOW = np.hanning(_WIN)
_FREQS = np.fft.rfftfreq(_WIN, 1 / SAMPLE_RATE)
_BAND = (_FREQS >= 300) & (_FREQS <= 3400)


@dataclass
class Decision:
    """One chunk's verdict: regions in samples of the chunk, and Silero's frame probabilities."""

    speech: bool
    probability: float
    regions: list[tuple[int, int]] = field(default_factory=list)
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    path: str = "none"  # "confident", "weak" or "none"


def speech_regions(
    probs: np.ndarray, threshold: float, min_speech_ms: int, min_silence_ms: int, pad_ms: int
) -> list[dict[str, int]]:
    """Hysteresis over frame probabilities (enter at ``threshold``, leave at threshold-0.15)."""
    leave = max(threshold - 0.15, 0.01)
    regions: list[list[int]] = []
    start: int | None = None
    silent_since: int | None = None
    for i, p in enumerate(probs):
        if start is None:
            if p >= threshold:
                start, silent_since = i, None
            continue
        if p < leave:
            silent_since = i if silent_since is None else silent_since
            if (i - silent_since) * FRAME_MS >= min_silence_ms:
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
        if confident * FRAME_MS >= min_speech_ms:
            out.append({"start_ms": max(0, int(begin * FRAME_MS - pad_ms)), "end_ms": int(end * FRAME_MS + pad_ms)})
    return out


def tonal_steadiness(samples: np.ndarray) -> float:
    """Share of 10 ms hops (digital silence left out) where the strongest 300-3400 Hz spectral
    peak moves by at most one bin (40 Hz). Chimes and held notes: ~0.9-1.0;
    speech: ~0.4-0.8. 1.0 for audio too short to tell."""
    x = np.asarray(samples, np.float64)
    count = (x.size - _WIN) // _HOP + 1
    if count < 3:
        return 1.0
    frames = np.lib.stride_tricks.sliding_window_view(x, _WIN)[::_HOP][:count] * _WINDOW
    band = (np.abs(np.fft.rfft(frames, axis=1)) ** 2)[:, _BAND]
    level = np.log(band.sum(axis=1) + 1e-10)
    active = (level > level.max() - 30)[1:]  # every hop but digital silence (30 nepers: 130 dB)
    if not active.any():
        return 1.0
    steady = np.abs(np.diff(band.argmax(axis=1))) <= 1
    return float(np.mean(steady[active]))


@dataclass
class SpeechDetector:
    """Silero VAD with the confident and the weak path (module docstring): one instance is
    thread-safe (the ONNX session is; the detector keeps no state between calls)."""

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    pad_ms: int = 30
    weak_threshold: float = 0.3
    weak_min_speech_ms: int = 96
    max_steadiness: float = 0.85

    def __post_init__(self) -> None:
        from services.common.whisper_internals import silero_vad  # loads CTranslate2: only where used

        self._model = silero_vad()

    def frame_probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Silero's probability for every 32 ms frame of ``samples`` (the last one zero-padded)."""
        x = np.asarray(samples, np.float32)
        if not x.size:
            return np.zeros(0, np.float32)
        padded = np.pad(x, (0, (-x.size) % FRAME))
        return np.asarray(self._model(padded), dtype=np.float32).reshape(-1)

    def decide(self, samples: np.ndarray) -> Decision:
        """Speech or not for one chunk (a few seconds), with its regions in samples."""
        probs = self.frame_probabilities(samples)
        best = float(probs.max()) if probs.size else 0.0
        found = speech_regions(probs, self.threshold, self.min_speech_ms, self.min_silence_ms, self.pad_ms)
        path = "confident" if found else "none"
        if not found and probs.size and self.weak_threshold < self.threshold:
            weak = self.frame_probabilities(normalized(samples))
            found = speech_regions(weak, self.weak_threshold, self.weak_min_speech_ms, self.min_silence_ms, self.pad_ms)
            if found and tonal_steadiness(samples) >= self.max_steadiness:
                found = []
            if found:
                path, best = "weak", max(best, float(weak.max()))
        size = np.asarray(samples).size
        regions = [
            (min(size, r["start_ms"] * SAMPLE_RATE // 1000), min(size, r["end_ms"] * SAMPLE_RATE // 1000))
            for r in found
        ]
        return Decision(bool(regions), best, regions, probs, path)


@functools.cache
def shared_detector() -> SpeechDetector:
    """One detector with the shipped settings, loaded on first use (the whole-file endpoint's)."""
    return SpeechDetector()


def _chunk_starts(size: int) -> list[int]:
    """Where the live client's 3 s chunks (every 2 s, the tail extended back) start."""
    chunk, step = int(CHUNK_S * SAMPLE_RATE), int(STEP_S * SAMPLE_RATE)
    if size <= chunk:
        return [0]
    starts = list(range(0, size - chunk + 1, step))
    if starts[-1] + chunk < size:
        starts.append(size - chunk)
    return starts


def speech_spans(
    samples: np.ndarray, detector: SpeechDetector, max_span_s: float = 29.0, min_silence_ms: int = 500
) -> list[tuple[int, int]]:
    """Speech in a whole recording as sorted ``(start, end)`` sample spans, each at most
    ``max_span_s``: the recording is cut as the live client cuts it (3 s every 2 s), and every
    piece ``detector`` calls speech is kept whole, as the live path would transcribe it whole;
    kept pieces closer than ``min_silence_ms`` are joined, and a span too long is split at its
    least speech-like frame. Speech is thus dropped here only where the live path drops it too
    (what ``python -m bench.recall`` counts as speech lost)."""
    x = np.asarray(samples, np.float32)
    if not x.size:
        return []
    chunk = int(CHUNK_S * SAMPLE_RATE)
    frames = -(-x.size // FRAME)
    file_probs = np.zeros(frames, np.float32)
    kept: list[list[int]] = []
    for start in _chunk_starts(x.size):
        end = min(x.size, start + chunk)
        decision = detector.decide(x[start:end])
        first = start // FRAME
        seen = decision.probs[: frames - first]
        file_probs[first : first + seen.size] = np.maximum(file_probs[first : first + seen.size], seen)
        if not decision.speech:
            continue
        if kept and start - kept[-1][1] < min_silence_ms * SAMPLE_RATE // 1000:
            kept[-1][1] = end
        else:
            kept.append([start, end])
    limit = int(max_span_s * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    for a, b in kept:
        while b - a > limit:
            cut = _quietest_cut(file_probs, a + limit // 2, a + limit)
            out.append((a, cut))
            a = cut
        out.append((a, b))
    return out


def _quietest_cut(probs: np.ndarray, lo: int, hi: int) -> int:
    """A sample in ``[lo, hi]`` on a frame boundary where Silero was least sure of speech (the
    latest such frame, so pieces stay long)."""
    first, last = -(-lo // FRAME), hi // FRAME
    if last <= first:
        return hi
    window = probs[first:last]
    i = int(window.size - 1 - np.argmin(window[::-1]))
    return (first + i) * FRAME
