"""Goal verdicts and chunk cutting (fast: no models, no processes)."""

import numpy as np

from bench.data import chunks_of
from bench.goals import check


def _path(wer: float, telephone: float, **extra) -> dict:
    return {"wer": wer, "categories": {"read": {"wer": 0.02}, "telephone": {"wer": telephone}}, **extra}


def _results(
    sessions: int = 6,
    baseline: int = 2,
    previous: int = 4,
    streamed: float = 0.035,
    telephone: float = 0.06,
    p50: float = 1.5,
    served: tuple[float, float] = (6.0, 2.0),
) -> dict:
    quiet = {"words": 0, "clips": 20}
    return {
        "capacity": {
            "baseline": {"realtime_streams": baseline, "served_audio_s_per_s": served[1]},
            "design": {"realtime_streams": previous, "served_audio_s_per_s": 4.0},
            "design_session": {"realtime_streams": sessions, "served_audio_s_per_s": served[0]},
        },
        "offline": _path(0.03, 0.055),
        "whole_file": _path(0.032, 0.058, nonspeech=quiet),
        "streamed": _path(
            streamed,
            telephone,
            nonspeech=quiet,
            latency_ms={"p95": 2400.0},
            commit_latency_ms={"p95": 7000.0},
            cpu_s_per_audio_s_one_stream=0.5,
        ),
        "previous_default": _path(
            0.05,
            0.09,
            latency_ms={"p95": 2000.0},
            commit_latency_ms={"p95": 5000.0},
            cpu_s_per_audio_s_one_stream=0.45,
        ),
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


def _verdicts(results: dict) -> dict[str, bool]:
    return {v["goal"]: v["pass"] for v in check(results)}


def test_each_goal_fails_on_its_own_bad_number() -> None:
    verdicts = _verdicts(_results(sessions=5, streamed=0.041, p50=2.5))
    assert not verdicts["capacity (sessions) >= 3x the seed design's"]
    assert not verdicts["streamed.wer within 1.0 pt of offline.wer, overall and per category"]
    assert not verdicts["proxy overhead p50 <= 2 ms"]
    assert verdicts["proxy overhead p99 <= 10 ms"]
    assert verdicts["capacity (sessions) >= the previous default's"]


def test_one_category_over_the_gap_fails_the_accuracy_goal() -> None:
    verdicts = _verdicts(_results(telephone=0.07))  # overall fine, telephone 1.5 pt over offline
    assert not verdicts["streamed.wer within 1.0 pt of offline.wer, overall and per category"]


def test_latency_cpu_and_nonspeech_goals() -> None:
    results = _results()
    results["streamed"]["latency_ms"]["p95"] = 2600.0  # 1.3x of 2000
    results["streamed"]["commit_latency_ms"]["p95"] = 8100.0  # +3100 ms
    results["streamed"]["cpu_s_per_audio_s_one_stream"] = 0.6  # 1.33x
    results["whole_file"]["nonspeech"] = {"words": 2, "clips": 20}
    verdicts = _verdicts(results)
    assert not verdicts["first partial p95 <= 1.25x the previous default's chunk latency p95"]
    assert not verdicts["commit latency p95 <= the previous default's + 3000 ms"]
    assert not verdicts["service CPU per audio second, one stream <= 1.3x the previous default's"]
    assert not verdicts["non-speech recordings: no text from the whole-file endpoint or a session"]


def test_capacity_against_a_zero_baseline_uses_the_served_audio() -> None:
    slow = _verdicts(_results(sessions=1, baseline=0, served=(1.0, 0.5)))
    assert not slow["capacity (sessions) >= 3x the seed design's"]  # 2x the served audio, not "1 vs 0"
    fast = _verdicts(_results(sessions=1, baseline=0, served=(1.6, 0.5)))
    assert fast["capacity (sessions) >= 3x the seed design's"]


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
