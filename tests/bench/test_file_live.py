"""``bench.file_live``'s bookkeeping: each answered chunk is placed in time, so a slow stretch
can be told from a slow piece of audio."""

from __future__ import annotations

from bench.file_live import Phase


def test_each_answered_chunk_is_kept_with_when_it_was_sent_and_refusals_are_counted() -> None:
    phase = Phase(began=100.0)
    phase.add(200, 3.5, sent=121.0)
    phase.add(200, 0.8, sent=103.0)
    phase.add(429, 0.01, sent=104.0)
    summary = phase.summary()
    assert summary["timeline"] == [(3.0, 0.8), (21.0, 3.5)]  # in the order they were sent
    assert summary["chunks"] == 2 and summary["refusals"] == {"429": 1}
    assert summary["p95_s"] > 3.0
