"""Realistic conditions made from clean speech, each still measurable against the clean reference.

Everything works on float32 mono samples at 16 kHz in [-1, 1], keeps the input's length (so the
clean source's speech timing stays valid), and needs only numpy:

- :func:`telephone_band`: a phone line — band-pass 300 to 3400 Hz, down to 8 kHz, G.711 µ-law
  (:mod:`core.g711`, the codec the proxy decodes for Realtime clients), back to 16 kHz;
- :func:`at_level`: a quieter (or louder) talker;
- :func:`mix_at_snr`: noise or music added at a given signal-to-noise ratio;
- :func:`continuous`: read sentences back to back, each trimmed to its speech and crossfaded
  into the next, so a stream has no pause where a chunk boundary could hide;
- :func:`speech_extent`: where a clean recording holds speech (frame energy), the timing the
  other functions carry along.
"""

from __future__ import annotations

import numpy as np

from core.g711 import ulaw_decode, ulaw_encode
from core.vocabulary import SAMPLE_RATE

Regions = list[tuple[float, float]]


def _lowpass(cutoff_hz: float, rate: int, taps: int = 255, beta: float = 8.0) -> np.ndarray:
    """Linear-phase windowed-sinc low-pass FIR (odd length, unit DC gain)."""
    n = np.arange(taps) - (taps - 1) / 2
    h = 2 * cutoff_hz / rate * np.sinc(2 * cutoff_hz / rate * n) * np.kaiser(taps, beta)
    return h / h.sum()


def _filter(samples: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Zero-delay FIR filtering (symmetric odd-length taps, ``same`` alignment)."""
    return np.convolve(samples, h, mode="same")


def telephone_band(samples: np.ndarray, low_hz: float = 300.0, high_hz: float = 3400.0) -> np.ndarray:
    """16 kHz in, 16 kHz out, as if the audio had crossed a G.711 µ-law telephone line."""
    x = np.asarray(samples, np.float64)
    if x.size == 0:
        return np.zeros(0, np.float32)
    band = _lowpass(high_hz, SAMPLE_RATE) - _lowpass(low_hz, SAMPLE_RATE)
    narrow = _filter(x, band)[::2]  # nothing above 3.4 kHz is left to alias at 8 kHz
    line = ulaw_decode(ulaw_encode(narrow)).astype(np.float64)
    up = np.zeros(line.size * 2)
    up[::2] = line
    wide = _filter(up, 2 * _lowpass(3800.0, SAMPLE_RATE))  # interpolate back to 16 kHz
    return np.clip(wide[: x.size], -1.0, 1.0).astype(np.float32)


def at_level(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """The same audio ``gain_db`` louder (negative: quieter)."""
    return (np.asarray(samples, np.float32) * np.float32(10 ** (gain_db / 20))).clip(-1.0, 1.0)


def _mask(size: int, regions: Regions | None) -> np.ndarray:
    if not regions:
        return np.ones(size, bool)
    mask = np.zeros(size, bool)
    for start, end in regions:
        mask[max(0, int(start * SAMPLE_RATE)) : max(0, int(end * SAMPLE_RATE))] = True
    return mask if mask.any() else np.ones(size, bool)


def power_db(samples: np.ndarray) -> float:
    x = np.asarray(samples, np.float64)
    return float(10 * np.log10(np.mean(x**2) + 1e-20)) if x.size else -200.0


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr_db: float, regions: Regions | None = None, offset: int = 0
) -> np.ndarray:
    """``speech`` plus ``noise`` (looped or cut to length from ``offset``) scaled so that the
    speech power over ``regions`` (the whole clip if None) is ``snr_db`` above the noise power.
    Both are scaled down together if the sum would clip, which keeps the ratio."""
    s = np.asarray(speech, np.float64)
    n = np.asarray(noise, np.float64)
    if s.size == 0:
        return np.zeros(0, np.float32)
    if n.size == 0 or not np.any(n):
        raise ValueError("noise must hold some signal")
    bed = np.resize(np.roll(n, -offset), s.size)
    speech_db = power_db(s[_mask(s.size, regions)])
    gain = 10 ** ((speech_db - snr_db - power_db(bed)) / 20)
    mixed = s + gain * bed
    peak = np.abs(mixed).max()
    if peak > 0.99:
        mixed *= 0.99 / peak
    return mixed.astype(np.float32)


def speech_extent(
    samples: np.ndarray, frame_s: float = 0.01, below_peak_db: float = 45.0, min_gap_s: float = 0.3
) -> Regions:
    """Where a clean recording holds speech: 10 ms frames within ``below_peak_db`` of the loudest
    frame and at least 10 dB above the recording's own floor (its 10th percentile), pauses under
    ``min_gap_s`` bridged (as a person marking speech would), islands under 50 ms dropped.
    Meant for studio recordings (room tone, not music or crowds)."""
    x = np.asarray(samples, np.float64)
    size = int(frame_s * SAMPLE_RATE)
    count = x.size // size
    if count == 0:
        return []
    frames = x[: count * size].reshape(count, size)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    threshold = max(level.max() - below_peak_db, np.percentile(level, 10) + 10.0, -70.0)
    active = level > threshold
    regions: list[list[int]] = []
    for i in map(int, np.flatnonzero(active)):
        if regions and (i - regions[-1][1]) * frame_s <= min_gap_s:
            regions[-1][1] = i + 1
        else:
            regions.append([i, i + 1])
    return [(round(a * frame_s, 3), round(b * frame_s, 3)) for a, b in regions if (b - a) * frame_s >= 0.05]


def continuous(
    pieces: list[np.ndarray], extents: list[Regions], crossfade_s: float = 0.02, margin_s: float = 0.03
) -> tuple[np.ndarray, Regions]:
    """Join recordings back to back with no pause between them: each is cut to its speech
    (first region start to last region end, plus ``margin_s``) and crossfaded into the next.
    Returns the samples and the speech regions carried over to the joined timeline."""
    fade = int(crossfade_s * SAMPLE_RATE)
    out = np.zeros(0, np.float64)
    regions: Regions = []
    for samples, extent in zip(pieces, extents, strict=True):
        if not extent:
            continue
        lo = max(0, int((extent[0][0] - margin_s) * SAMPLE_RATE))
        hi = min(samples.size, int((extent[-1][1] + margin_s) * SAMPLE_RATE))
        piece = np.asarray(samples[lo:hi], np.float64)
        overlap = min(fade, out.size, piece.size)
        offset = out.size - overlap  # where this piece starts on the joined timeline
        if overlap:
            ramp = np.linspace(0.0, 1.0, overlap, endpoint=False)
            out[offset:] = out[offset:] * (1 - ramp) + piece[:overlap] * ramp
            piece = piece[overlap:]
        out = np.concatenate([out, piece])
        shift = offset / SAMPLE_RATE - lo / SAMPLE_RATE
        regions += [(round(a + shift, 3), round(b + shift, 3)) for a, b in extent]
    return np.clip(out, -1.0, 1.0).astype(np.float32), regions
