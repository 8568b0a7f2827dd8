"""Seams: whole-file windows cut inside speech, where the sentence that ran into the cut is
decoded again, whole, at the start of the next window (services/base/seams.py).

The unit layer checks the rule on made-up segments; the slow test runs the real model over
continuous speech (sentences running on without pauses) cut inside words and compares the
transcript with the one the same windows give when every seam is kept as it was cut.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from core.vocabulary import SAMPLE_RATE, WHISPER_WINDOW_S
from services.base.seams import ONSET_MARGIN_S, TOUCH_S, carry_point, is_seam


def seg(start: float, end: float, words: list[tuple[float, float]] | None = None) -> dict:
    out: dict = {"start": start, "end": end, "text": " x"}
    if words is not None:
        out["words"] = [{"word": " w", "start": a, "end": b, "probability": 0.9} for a, b in words]
    return out


def test_only_windows_that_end_where_the_next_begins_are_seams() -> None:
    windows = [(0, 100), (100, 200), (250, 300)]
    assert [is_seam(windows, i) for i in range(3)] == [True, False, False]


def test_the_segment_running_into_the_seam_is_carried_from_its_first_word() -> None:
    segments = [seg(0.0, 9.0), seg(9.4, 19.9, words=[(9.6, 10.0), (10.0, 19.9)])]
    point = carry_point(segments, window_s=20.0, next_window_s=10.0)
    assert point == pytest.approx(9.6 - ONSET_MARGIN_S)
    # without word times, from the segment's start; never back into the segment kept
    assert carry_point([seg(0.0, 9.0), seg(9.4, 20.0)], 20.0, 10.0) == pytest.approx(9.4 - ONSET_MARGIN_S)
    assert carry_point([seg(0.0, 9.5), seg(9.5, 20.0)], 20.0, 10.0) == pytest.approx(9.5)


def test_a_seam_is_kept_when_nothing_runs_into_it_or_nothing_would_be_left() -> None:
    ended = [seg(0.0, 9.0), seg(9.4, 20.0 - TOUCH_S - 0.5)]
    assert carry_point(ended, 20.0, 10.0) is None  # the last segment ended before the cut
    assert carry_point([seg(0.0, 20.0)], 20.0, 10.0) is None  # one segment: no progress
    assert carry_point([], 20.0, 10.0) is None


def test_a_seam_is_kept_when_the_next_window_would_outgrow_whisper_s_window() -> None:
    segments = [seg(0.0, 9.0), seg(14.0, 20.0)]
    assert carry_point(segments, 20.0, WHISPER_WINDOW_S - 6.0) is None  # 6 + 24 + margin > 30
    assert carry_point(segments, 20.0, WHISPER_WINDOW_S - 7.0) is not None


@pytest.mark.slow
def test_continuous_speech_cut_inside_a_word_comes_out_better_carried_than_cut() -> None:
    """Four recordings of sentences running on without pauses, each cut into three windows in
    the middle of a word near 20 s and 40 s (where a long file's windows are cut when speech
    does not pause). Carrying the sentence that ran into each cut decodes it whole in the next
    window; keeping the cuts leaves both halves of the word to Whisper. Summed over the four,
    carried makes fewer errors. (Where the speech windows themselves cut, between two prompts,
    both ways read the same on some CPUs and differ only in words elsewhere in the windows:
    those cuts are no test of the rule.)"""
    from bench.metrics import word_errors
    from corpus import long_recording
    from services.base import app as base
    from services.base.settings import TranscriberSettings

    engine = base.Engine(TranscriberSettings(compute_type="int8"))

    async def answer(samples: np.ndarray, windows: list[tuple[int, int]], words: bool = False) -> dict:
        job = base.FileJob(samples, windows, "en", None, "verbose_json" if words else "json", words, "transcribe")
        return await base.whole_file_answer(engine, job)

    async def one(seed: int) -> tuple[str, str, str]:
        clip = long_recording(60, seed=seed, gap=0)  # LibriVox and IVR sentences running on
        samples = clip.samples()
        windows = base.speech_windows(samples)
        assert any(is_seam(windows, i) for i in range(len(windows))), windows  # real files are cut in speech
        spoken = [w for w in (await answer(samples, windows, words=True))["words"] if w["end"] - w["start"] >= 0.25]
        cuts = []
        for near in (20.0, 40.0):
            word = min(spoken, key=lambda w: abs((w["start"] + w["end"]) / 2 - near))
            cuts.append(round((word["start"] + word["end"]) / 2 * SAMPLE_RATE))
        bounds = [0, *cuts, samples.size]
        inside = list(itertools.pairwise(bounds))
        assert all(is_seam(inside, i) for i in range(2))
        carried = (await answer(samples, inside))["text"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(base, "carry_point", lambda *_: None)
            cut = (await answer(samples, inside))["text"]
        return clip.text, carried, cut

    async def all_of(seeds: range) -> list[tuple[str, str, str]]:
        engine.batcher.start()
        try:
            return [await one(seed) for seed in seeds]
        finally:
            await engine.batcher.stop()

    results = asyncio.run(all_of(range(1, 5)))
    references = [r[0] for r in results]
    carried, cut = (word_errors(references, [r[i] for r in results]).errors for i in (1, 2))
    assert carried < cut, results
