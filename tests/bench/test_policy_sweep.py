"""``bench.policy_sweep``'s replay in stream time, on scripted answers (the services' part is
what ``make bench`` and the session tests run for real)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.data import Item
from bench.policy_sweep import replay
from core.commit_policy import PolicyConfig

SR = 16_000


class Scripted:
    """Speech everywhere; every window is answered with one word per second of its audio, each
    decode taking ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.windows: list[int] = []

    def detect(self, pcm: bytes) -> bool:
        return True

    def transcribe(self, pcm: bytes, language: str) -> tuple[list[dict], float]:
        n = len(pcm) // 2 // SR
        self.windows.append(len(pcm) // 2)
        words = [{"start": i + 0.1, "end": i + 0.6, "word": f" w{i}", "probability": 0.9} for i in range(n)]
        return [{"start": 0.0, "end": float(n), "words": words}], self.seconds


@pytest.mark.parametrize("settle_s", [2.0, math.inf])
def test_latencies_are_stream_time_plus_the_decode(settle_s: float) -> None:
    item = Item("x", np.zeros(12 * SR, np.float32), "")
    answers = Scripted(0.25)
    run = replay(answers, PolicyConfig(settle_s=settle_s), item)  # type: ignore[arg-type]
    assert run.first_partial_s == pytest.approx([0.25] * len(run.first_partial_s))
    assert run.decoded_s == pytest.approx(sum(answers.windows) / SR)
    # a word is committed by the decode that first hears settle_s after it, or by the next one
    assert min(run.commit_s) >= min(settle_s, 3.0) and max(run.commit_s) <= 6.0 + 0.25 + 0.5
    if settle_s < math.inf:
        assert max(run.commit_s) <= settle_s + 3.0 + 0.25 + 0.5
