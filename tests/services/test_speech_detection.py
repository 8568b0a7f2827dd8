"""The shared speech detector (services/common/speech.py): its weak path recovers band-limited and
quiet speech the confident path misses, without calling chimes or music speech, and the
whole-file windows keep every piece the live path keeps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.recall import on_the_wire, windows
from services.common import speech
from services.common.speech import Decision, speech_regions, speech_spans, tonal_steadiness

SR = 16_000


def test_a_held_tone_is_steady_and_a_hopping_peak_is_not() -> None:
    t = np.arange(3 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 880 * t) * np.exp(-t)  # a chime: one decaying partial
    assert tonal_steadiness(tone.astype(np.float32)) > 0.95
    # the strongest peak moving every 30 ms (as formants and harmonics do in running speech)
    freqs = np.random.default_rng(1).uniform(400, 3000, 100).repeat(480)[: t.size]
    hopping = 0.3 * np.sin(2 * np.pi * np.cumsum(freqs) / SR)
    assert tonal_steadiness(hopping.astype(np.float32)) < 0.85
    assert tonal_steadiness(np.zeros(100, np.float32)) == 1.0  # too short to tell: counted steady


def test_chunk_starts_are_the_live_clients_chunks() -> None:
    for seconds in (2.0, 3.0, 7.5, 10.0):
        x = np.zeros(int(seconds * SR), np.float32)
        assert [int(s * SR) for s, _ in windows(x)] == speech._chunk_starts(x.size)


class StubDetector:
    """Calls a chunk speech when any sample in it is non-zero."""

    def decide(self, samples: np.ndarray) -> Decision:
        said = bool(np.any(samples))
        return Decision(said, float(said), [(0, samples.size)] if said else [], np.zeros(-(-samples.size // 512)))


def test_speech_spans_keep_whole_chunks_join_them_and_split_past_29_s() -> None:
    x = np.zeros(120 * SR, np.float32)
    x[10 * SR : 11 * SR] = 1.0  # a word at 10 s
    x[40 * SR : 100 * SR] = 1.0  # a minute of talk
    spans = speech_spans(x, StubDetector())
    assert spans[0] == (8 * SR, 13 * SR)  # the client's chunks 8-11 s and 10-13 s hold the word: kept whole
    assert all(b - a <= 29 * SR for a, b in spans)
    assert all(a2 >= b1 for (_, b1), (a2, _) in itertools.pairwise(spans))
    covered = np.zeros(x.size, bool)
    for a, b in spans:
        covered[a:b] = True
    assert covered[x > 0].all()  # nothing the detector called speech is dropped
    assert (
        not covered[: 8 * SR].any() and not covered[13 * SR : 38 * SR].any() and not covered[101 * SR :].any()
    )  # silence stays out
    assert speech_spans(np.zeros(30 * SR, np.float32), StubDetector()) == []


def test_speech_regions_still_need_confident_frames() -> None:
    probs = np.array([0.0, 0.9, 0.9, 0.0] + [0.0] * 10, np.float32)  # 64 ms: a click
    assert speech_regions(probs, 0.5, min_speech_ms=250, min_silence_ms=100, pad_ms=0) == []


# --- the real model on the real dev set -------------------------------------------------------


@pytest.fixture(scope="module")
def detector():
    from services.tiny.detectors import SileroDetector

    return SileroDetector()


def _chunk(clip, start_s: float) -> np.ndarray:
    return on_the_wire(next(c for s, c in windows(clip.samples()) if abs(s - start_s) < 0.01))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "start_s"),
    [
        ("ps-cards-005~telephone", 0.0),  # G.711 at -23 dBFS: Silero peaked at 0.39
        ("ps-forever-4~telephone", 2.0),  # G.711: 0.44
        ("ami-trn07", 16.0),  # a distant meeting voice at -38 dBFS: 0.38
    ],
)
def test_speech_the_confident_path_missed_is_now_detected(detector, dev_clips, name, start_s) -> None:
    chunk = _chunk(dev_clips[name], start_s)
    probs = detector.frame_probabilities(chunk)
    assert speech_regions(probs, 0.5, 250, 100, 30) == []  # the old rule dropped these words
    found = detector.detect(chunk)
    assert found.speech and found.regions
    assert tonal_steadiness(chunk) < 0.85


@pytest.mark.slow
def test_no_non_speech_chunk_is_called_speech(detector, nonspeech_clips) -> None:
    said = [
        (clip.name, start)
        for clip in nonspeech_clips
        for start, chunk in windows(clip.samples())
        if detector.detect(on_the_wire(chunk)).speech
    ]
    assert said == []
    assert all(speech_spans(clip.samples(), speech.shared_detector()) == [] for clip in nonspeech_clips)


@pytest.mark.slow
def test_whole_file_windows_cover_the_telephone_speech_the_old_vad_dropped(dev_clips) -> None:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    from services.base.app import speech_windows

    clip = dev_clips["ps-cards-005~telephone"]
    x = clip.samples()
    old = get_speech_timestamps(x, VadOptions(max_speech_duration_s=29, min_silence_duration_ms=500))
    assert old == []  # the whole-file endpoint used to answer this sentence with no text
    spans = speech_windows(x)
    covered = np.zeros(x.size, bool)
    for a, b in spans:
        covered[a:b] = True
    for a, b in clip.speech:
        assert covered[int(a * SR) : int(b * SR)].mean() > 0.99
