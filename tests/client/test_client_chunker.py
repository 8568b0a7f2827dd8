"""Chunking: fixed length, fixed step, absolute start times that never drift, nothing uncovered."""

from __future__ import annotations

import numpy as np
import pytest

from client.chunker import Chunker
from core.vocabulary import SAMPLE_RATE


def ramp(seconds: float) -> np.ndarray:
    """Samples whose value encodes their own index, so any slice can be checked exactly."""
    return np.arange(round(seconds * SAMPLE_RATE), dtype=np.float32)


def feed_in_blocks(chunker: Chunker, samples: np.ndarray, block: int) -> list:
    out = []
    for i in range(0, samples.size, block):
        out += list(chunker.feed(samples[i : i + block]))
    return out + list(chunker.flush())


def test_chunks_have_fixed_length_step_and_exact_content() -> None:
    samples = ramp(10.0)
    chunks = feed_in_blocks(Chunker(3.0, 1.0), samples, 1600)
    starts = [c.start for c in chunks[:-1]]
    assert starts == [0.0, 2.0, 4.0, 6.0]
    for c in chunks:
        lo = round(c.start * SAMPLE_RATE)
        np.testing.assert_array_equal(c.samples, samples[lo : lo + c.samples.size])
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(c.duration == pytest.approx(3.0) for c in chunks)


def test_block_size_does_not_change_the_chunks() -> None:
    samples = ramp(7.3)
    a = feed_in_blocks(Chunker(3.0, 0.5), samples, 160)
    b = feed_in_blocks(Chunker(3.0, 0.5), samples, 7919)  # a prime: blocks straddle every boundary
    assert [(c.start, c.samples.size) for c in a] == [(c.start, c.samples.size) for c in b]


def test_last_chunk_is_extended_backwards_and_reaches_the_end() -> None:
    samples = ramp(7.5)
    chunks = feed_in_blocks(Chunker(3.0, 1.0), samples, 1600)
    last = chunks[-1]
    assert [c.start for c in chunks[:-1]] == [0.0, 2.0, 4.0]
    assert last.final
    assert last.end == pytest.approx(7.5)
    assert last.duration == pytest.approx(3.0)  # 4.5..7.5, not a 0.5 s scrap from 7.0
    assert last.start == pytest.approx(4.5)


def test_every_sample_is_covered_without_overlap_too() -> None:
    samples = ramp(9.5)
    chunks = feed_in_blocks(Chunker(3.0, 0.0), samples, 1000)
    covered = np.zeros(samples.size, bool)
    for c in chunks:
        lo = round(c.start * SAMPLE_RATE)
        covered[lo : lo + c.samples.size] = True
    assert covered.all()


def test_no_tail_chunk_when_the_stream_ends_on_a_boundary() -> None:
    chunks = feed_in_blocks(Chunker(3.0, 1.0), ramp(5.0), 1600)
    assert [c.start for c in chunks] == [0.0, 2.0]


def test_a_stream_shorter_than_one_chunk_still_gives_one_chunk() -> None:
    chunks = feed_in_blocks(Chunker(3.0, 1.0), ramp(1.2), 1600)
    assert len(chunks) == 1 and chunks[0].duration == pytest.approx(1.2)


def test_start_times_do_not_drift_over_an_hour() -> None:
    chunker = Chunker(3.0, 0.7)
    block = np.zeros(SAMPLE_RATE * 60, np.float32)
    last = None
    for _ in range(60):
        for c in chunker.feed(block):
            last = c
    assert last is not None
    assert last.start == pytest.approx(last.index * 2.3, abs=1e-9)


@pytest.mark.parametrize(("chunk", "overlap"), [(3.0, 3.0), (3.0, -0.1), (0.0, 0.0)])
def test_impossible_settings_are_refused(chunk: float, overlap: float) -> None:
    with pytest.raises(ValueError):
        Chunker(chunk, overlap)


def test_each_chunk_carries_the_second_before_it_as_lead_in() -> None:
    samples = ramp(7.5)
    chunks = feed_in_blocks(Chunker(3.0, 1.0), samples, 1600)
    assert chunks[0].lead.size == 0
    for c in chunks[1:]:
        lo = round(c.start * SAMPLE_RATE)
        np.testing.assert_array_equal(c.lead, samples[lo - SAMPLE_RATE : lo])


def test_chunks_carry_the_left_context_asked_for() -> None:
    """With ``context_s`` 2.0 each chunk carries the 2 s before it (less at the very start),
    the flushed tail included, however the audio arrives."""
    samples = ramp(9.7)
    chunks = feed_in_blocks(Chunker(3.0, 1.0, context_s=2.0), samples, 1000)
    assert chunks[-1].final
    for c in chunks:
        lo = round(c.start * SAMPLE_RATE)
        np.testing.assert_array_equal(c.lead, samples[max(0, lo - 2 * SAMPLE_RATE) : lo])
    assert [c.lead.size for c in chunks[:3]] == [0, 2 * SAMPLE_RATE, 2 * SAMPLE_RATE]


def test_context_longer_than_the_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="context"):
        Chunker(3.0, 1.0, context_s=3.5)
