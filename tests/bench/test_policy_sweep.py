"""``bench.policy_sweep``'s replay in stream time, on scripted answers (the services' part is
what ``make bench`` and the session tests run for real)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.data import Item
from bench.policy_sweep import joined_by_language, replay
from core.commit_policy import PolicyConfig

SR = 16_000


class Scripted:
    """Speech everywhere; every window is answered with one word per second of its audio, each
    decode taking ``seconds``."""

    def __init__(self, seconds: float, detections: list[tuple[str, float]] | None = None) -> None:
        self.seconds = seconds
        self.windows: list[int] = []
        self.asked: list[str | None] = []
        self.lasts: list[bool] = []
        self.detections = detections or []  # (language, probability) of the windows asked without one

    def detect(self, pcm: bytes) -> bool:
        return True

    def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> tuple[list[dict], float, str, float]:
        n = len(pcm) // 2 // SR
        self.windows.append(len(pcm) // 2)
        self.asked.append(language)
        self.lasts.append(last)
        words = [{"start": i + 0.1, "end": i + 0.6, "word": f" w{i}", "probability": 0.9} for i in range(n)]
        detected, probability = (language, 1.0) if language else (self.detections or [("es", 0.95)]).pop(0)
        return [{"start": 0.0, "end": float(n), "words": words}], self.seconds, detected, probability


@pytest.mark.parametrize("settle_s", [2.0, math.inf])
def test_latencies_are_stream_time_plus_the_decode(settle_s: float) -> None:
    item = Item("x", np.zeros(12 * SR, np.float32), "")
    answers = Scripted(0.25)
    run = replay(answers, PolicyConfig(settle_s=settle_s), item)  # type: ignore[arg-type]
    assert run.first_partial_s == pytest.approx([0.25] * len(run.first_partial_s))
    assert answers.lasts[-1] and not any(answers.lasts[:-1])  # fill_tail on the stream's last window only
    assert run.decoded_s == pytest.approx(sum(answers.windows) / SR)
    # a word is committed by the decode that first hears settle_s after it, or by the next one
    assert min(run.commit_s) >= min(settle_s, 3.0) and max(run.commit_s) <= 6.0 + 0.25 + 0.5
    if settle_s < math.inf:
        assert max(run.commit_s) <= settle_s + 3.0 + 0.25 + 0.5


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("given", ["fr"] * 4), ("detected", [None] * 4), ("locked", [None, None, "es", "es"])],
)
def test_the_language_is_given_detected_or_locked(mode: str, expected: list) -> None:
    answers = Scripted(0.1, detections=[("it", 0.6), ("es", 0.95), ("it", 0.99)])
    replay(answers, PolicyConfig(trim_words_after_s=0.0), Item("x", np.zeros(12 * SR, np.float32), "", "fr"), mode)  # type: ignore[arg-type]
    assert answers.asked[:4] == expected


def test_other_language_clips_are_joined_per_language_in_order() -> None:
    def clip(name: str, language: str, seconds: float, category: str = "other-languages") -> Item:
        return Item(name, np.full(round(seconds * SR), 0.1, np.float32), name, language, category)

    items = [clip("e1", "es", 50), clip("en", "en", 99, "read"), clip("e2", "es", 50), clip("f1", "fr", 10)]
    items += [clip("e3", "es", 20)]
    joined = {item.name: item for item in joined_by_language(items, 90)}
    assert sorted(joined) == ["es-0", "fr-0"]  # the 20 s rest joined the last stream; English left out
    assert joined["es-0"].text == "e1 e2 e3" and joined["es-0"].language == "es"
    assert joined["es-0"].seconds == pytest.approx(120 + 3 * 0.4)
