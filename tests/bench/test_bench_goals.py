"""Goal verdicts and chunk cutting (fast: no models, no processes)."""

import numpy as np

from bench.data import chunks_of
from bench.goals import check


def _results(design: int = 6, baseline: int = 2, streamed: float = 0.035, p50: float = 1.5) -> dict:
    return {
        "capacity": {
            "ratio_vs_baseline": design / baseline if baseline else None,
            "baseline": {"realtime_streams": baseline},
            "design": {"realtime_streams": design},
        },
        "offline": {"wer": 0.03},
        "streamed": {"wer": streamed},
        "detector": {
            "cost_ratio_whisper_tiny_over_silero": 300.0,
            "silero": {
                "nonspeech_false_positive_rate": 0.0,
                "nonspeech_chunks": 120,
                "speech_recall": 1.0,
                "speech_chunks": 120,
            },
        },
        "detector_recall": {
            "categories": {"read": {"recall": 1.0, "chunks": 120}, "telephone": {"recall": 0.995, "chunks": 150}},
            "nonspeech": {"false_positives": 0, "chunks": 145},
        },
        "proxy": {"overhead_ms": {"p50": p50, "p99": 4.0}},
    }


def test_all_goals_pass_on_good_numbers() -> None:
    assert all(v["pass"] for v in check(_results()))


def test_each_goal_fails_on_its_own_bad_number() -> None:
    verdicts = {v["goal"]: v["pass"] for v in check(_results(design=5, streamed=0.041, p50=2.5))}
    assert not verdicts["capacity.realtime_streams >= 3x baseline"]
    assert not verdicts["streamed.wer within 1.0 pt of offline.wer"]
    assert not verdicts["proxy overhead p50 <= 2 ms"]
    assert verdicts["proxy overhead p99 <= 10 ms"]


def test_a_missing_measurement_fails_instead_of_crashing() -> None:
    results = _results()
    del results["proxy"]
    verdicts = check(results)
    proxy = [v for v in verdicts if v["goal"].startswith("proxy")]
    assert proxy and not any(v["pass"] for v in proxy)
    assert "not measured" in proxy[0]["value"]


def test_chunks_of_pads_a_long_enough_tail_and_drops_a_scrap() -> None:
    samples = np.ones(int(16_000 * 7.5), dtype=np.float32)
    chunks = chunks_of(samples, 3.0, min_tail_s=1.0)
    assert [c.size for c in chunks] == [48_000] * 3
    assert chunks[-1][24_000:].sum() == 0  # 1.5 s of audio, then silence
    assert len(chunks_of(np.ones(16_000 * 6 + 8_000, dtype=np.float32), 3.0, min_tail_s=1.0)) == 2
    assert len(chunks_of(np.ones(8_000, dtype=np.float32), 3.0)) == 1  # a short clip still gives one chunk
