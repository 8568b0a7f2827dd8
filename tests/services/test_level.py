"""Level setting before the models listen: unit checks, and quiet dev-set speech that the
transcriber cut short before quiet audio was raised."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.level import normalized, raised

SR = 16_000


def _rms_db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64)))))


def test_normalized_raises_quiet_audio_at_most_30_db_and_never_clips() -> None:
    rng = np.random.default_rng(0)
    quiet = (0.001 * rng.standard_normal(SR)).astype(np.float32)  # -60 dBFS
    louder = normalized(quiet)
    assert np.sqrt(np.mean(louder**2)) == pytest.approx(np.sqrt(np.mean(quiet**2)) * 10**1.5, rel=1e-3)
    loud_peak = np.zeros(SR, np.float32)
    loud_peak[::400] = 0.5  # quiet RMS, high peaks: the gain stops at full scale
    assert np.abs(normalized(loud_peak)).max() <= 0.99
    assert normalized(np.zeros(0, np.float32)).size == 0


def test_raised_lifts_quiet_audio_to_the_target_and_leaves_loud_audio_alone() -> None:
    rng = np.random.default_rng(1)
    quiet = (0.01 * rng.standard_normal(SR)).astype(np.float32)  # -40 dBFS
    assert _rms_db(raised(quiet)) == pytest.approx(-20.0, abs=0.05)
    loud = (0.2 * rng.standard_normal(SR)).astype(np.float32)  # -14 dBFS: above the target
    assert np.array_equal(raised(loud), loud)
    assert raised(np.zeros(0, np.float32)).size == 0
    silence = np.zeros(SR, np.float32)
    assert not np.any(raised(silence))  # nothing to raise: digital silence stays silence


@pytest.fixture(scope="module")
def transcriber():
    from services.base.transcriber import BatchTranscriber, load_model
    from services.common.models import provision

    model, _ = load_model(str(provision("base")), "cpu", "int8", cpu_threads=0)
    return BatchTranscriber(model)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "asterisk-simul-call-limit-reached~quiet",  # -40 dBFS: came back as "Simult"
        "ps-forever-2~quiet",  # -39 dBFS: came back as "Feels" from the whole-file endpoint
    ],
)
def test_quiet_speech_is_transcribed_to_the_end(transcriber, dev_clips, name: str) -> None:
    from bench.metrics import word_errors
    from services.base.transcriber import Request

    clip = dev_clips[name]
    samples = clip.samples()
    assert _rms_db(samples) < -35  # still the quiet copy this test is about
    text = transcriber.transcribe([Request(samples, "en")])[0].text
    errors = word_errors([clip.text], [text], ["en"])
    assert errors.deletions == 0, (clip.text, text)
    assert errors.wer <= 0.25, (clip.text, text)
