"""Signal level, set before a model listens.

Silero and Whisper both hear speech at conversational level best. A quiet or distant microphone
(-40 to -50 dBFS RMS) leaves Silero's probabilities under its threshold and makes Whisper stop
early in the transcriber's trimmed encoder window: faster-whisper pads log-mel features with 0,
which is log-mel -4, louder than the speech in such a chunk, so the decoder takes the padding for
the louder part of the recording and ends after a word or two. Raising quiet audio fixes both
(docs/performance.md, "Quiet speech"); loud audio is left as it is.
"""

from __future__ import annotations

import numpy as np


def _rms_peak(x: np.ndarray) -> tuple[float, float]:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9, float(np.abs(x).max()) + 1e-9


def normalized(samples: np.ndarray, target_dbfs: float = -26.0, max_gain_db: float = 30.0) -> np.ndarray:
    """``samples`` scaled to ``target_dbfs`` RMS, by at most ``max_gain_db``, never past full scale."""
    x = np.asarray(samples, np.float32)
    if not x.size:
        return x
    rms, peak = _rms_peak(x)
    gain = min(10 ** ((target_dbfs - 20 * np.log10(rms)) / 20), 10 ** (max_gain_db / 20), 0.99 / peak)
    return (x * gain).astype(np.float32)


def raised(samples: np.ndarray, target_dbfs: float = -20.0, max_gain_db: float = 30.0) -> np.ndarray:
    """``samples`` raised to ``target_dbfs`` RMS when quieter (by at most ``max_gain_db``, never
    past full scale); louder audio comes back unchanged."""
    x = np.asarray(samples, np.float32)
    if not x.size or 20 * np.log10(_rms_peak(x)[0]) >= target_dbfs:
        return x
    return normalized(x, target_dbfs, max_gain_db)
