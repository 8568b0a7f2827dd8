"""The dev set's realistic conditions, on synthetic arrays (fast: no corpus, no models)."""

import itertools

import numpy as np
import pytest

from corpus.augment import (
    SAMPLE_RATE,
    at_level,
    continuous,
    mix_at_snr,
    power_db,
    speech_extent,
    telephone_band,
)


def _tone(freq: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _burst(seconds: float = 1.0, pad: float = 0.5, seed: int = 0) -> np.ndarray:
    """A 'word': a voiced-like harmonic burst with room tone around it."""
    rng = np.random.default_rng(seed)
    word = sum(_tone(f, seconds, 0.1) for f in (180, 360, 540, 720)) * np.hanning(int(seconds * SAMPLE_RATE))
    room = rng.normal(0, 1e-4, int((seconds + 2 * pad) * SAMPLE_RATE)).astype(np.float32)
    room[int(pad * SAMPLE_RATE) : int((pad + seconds) * SAMPLE_RATE)] += word.astype(np.float32)
    return room


@pytest.mark.parametrize("size", [0, 1, 2, 7, 16_000, 16_001, 48_123])
def test_telephone_band_keeps_length_and_dtype(size: int) -> None:
    x = np.random.default_rng(size).normal(0, 0.1, size).astype(np.float32)
    y = telephone_band(x)
    assert y.shape == x.shape
    assert y.dtype == np.float32


def test_telephone_band_passes_the_voice_band_and_cuts_the_rest() -> None:
    for freq, lo, hi in ((1000, -0.5, 0.5), (2000, -0.5, 0.5), (100, -200, -30), (5000, -200, -30), (7000, -200, -30)):
        x = _tone(freq, 1.0)
        change = power_db(telephone_band(x)[2000:-2000]) - power_db(x[2000:-2000])
        assert lo < change < hi, (freq, change)


def _measured_snr(mixed: np.ndarray, speech: np.ndarray, bed: np.ndarray, mask: np.ndarray) -> float:
    """Split the mix back into a*speech + b*noise (least squares) and compare their powers."""
    (a, b), *_ = np.linalg.lstsq(np.stack([speech, bed], axis=1).astype(np.float64), mixed, rcond=None)
    return power_db(a * speech[mask]) - power_db(b * bed)


@pytest.mark.parametrize("snr", [20.0, 10.0, 5.0, 0.0, -5.0])
def test_mix_at_snr_hits_the_asked_ratio_within_half_a_db(snr: float) -> None:
    rng = np.random.default_rng(int(snr) + 50)
    speech = _burst(2.0, 0.5)
    noise = rng.normal(0, 0.05, SAMPLE_RATE).astype(np.float32)  # shorter than the speech: looped
    regions = speech_extent(speech)
    mixed = mix_at_snr(speech, noise, snr, regions)
    assert mixed.shape == speech.shape
    mask = np.zeros(speech.size, bool)
    for a, b in regions:
        mask[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)] = True
    bed = np.resize(noise, speech.size)
    assert abs(_measured_snr(mixed, speech, bed, mask) - snr) < 0.5
    # Over the whole clip when no regions are given.
    whole = mix_at_snr(speech, noise, snr)
    assert abs(_measured_snr(whole, speech, bed, np.ones(speech.size, bool)) - snr) < 0.5


def test_mix_at_snr_scales_down_instead_of_clipping_and_keeps_the_ratio() -> None:
    speech = _tone(300, 1.0, 0.9)
    noise = np.random.default_rng(3).normal(0, 0.3, SAMPLE_RATE).astype(np.float32)
    mixed = mix_at_snr(speech, noise, 0.0)
    assert np.abs(mixed).max() <= 0.99 + 1e-6
    assert abs(_measured_snr(mixed, speech, noise, np.ones(speech.size, bool))) < 0.5
    with pytest.raises(ValueError):
        mix_at_snr(speech, np.zeros(100, np.float32), 10.0)


def test_at_level_lowers_power_by_the_asked_amount() -> None:
    x = _tone(500, 1.0, 0.3)
    assert power_db(at_level(x, -20.0)) - power_db(x) == pytest.approx(-20.0, abs=0.01)


def test_speech_extent_finds_the_word_in_room_tone() -> None:
    regions = speech_extent(_burst(1.0, 0.5))
    assert len(regions) == 1
    start, end = regions[0]
    assert 0.5 <= start < 0.65 and 1.35 < end <= 1.5  # the Hann-shaped burst is quiet at its very edges
    assert speech_extent(np.zeros(10, np.float32)) == []


def _longest_silence(samples: np.ndarray, floor_db: float = -50.0, frame: int = 160) -> float:
    count = samples.size // frame
    level = 10 * np.log10(
        np.mean(samples[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1) + 1e-12
    )
    longest = run = 0
    for quiet in level < floor_db:
        run = run + 1 if quiet else 0
        longest = max(longest, run)
    return longest * frame / SAMPLE_RATE


def test_continuous_joins_have_no_silent_gap_over_a_tenth_of_a_second() -> None:
    pieces = [_burst(0.8 + 0.1 * i, pad=0.6, seed=i) for i in range(6)]
    assert all(_longest_silence(p) > 0.4 for p in pieces)  # each source has long pauses around it
    extents = [speech_extent(p) for p in pieces]
    joined, regions = continuous(pieces, extents)
    assert _longest_silence(joined) <= 0.1
    expected = sum(e[-1][1] - e[0][0] + 0.06 for e in extents) - 5 * 0.02  # margins in, crossfades out
    assert joined.size / SAMPLE_RATE == pytest.approx(expected, abs=0.02)
    assert len(regions) == 6
    assert all(b2 > a2 >= b1 - 0.03 for (_, b1), (a2, b2) in itertools.pairwise(regions))
    for a, b in regions:  # every carried-over region is where the sound is
        assert power_db(joined[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)]) > -40
    assert regions[-1][1] <= joined.size / SAMPLE_RATE + 1e-6
