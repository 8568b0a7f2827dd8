"""The goals the project reports against, checked on a results dict (missing: FAIL)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    measure: Callable[[dict], tuple[bool, str]]


def _get(results: dict, path: str):
    node = results
    for key in path.split("."):
        node = node[key]
    return node


def _capacity(r: dict) -> tuple[bool, str]:
    cap = r["capacity"]
    ratio = cap["ratio_vs_baseline"]
    base, design = cap["baseline"]["realtime_streams"], cap["design"]["realtime_streams"]
    if not base:
        return design > 0, f"{design} streams vs baseline 0"
    return ratio >= 3, f"{design} vs {base} streams = {ratio}x"


def _wer(r: dict) -> tuple[bool, str]:
    gap = (r["streamed"]["wer"] - r["offline"]["wer"]) * 100
    return gap <= 1.0, f"streamed {r['streamed']['wer']:.2%} vs offline {r['offline']['wer']:.2%} ({gap:+.2f} pt)"


def _detector_cost(r: dict) -> tuple[bool, str]:
    ratio = r["detector"]["cost_ratio_whisper_tiny_over_silero"]
    return ratio >= 30, f"{ratio}x cheaper"


def _detector_fp(r: dict) -> tuple[bool, str]:
    d = r["detector"]["silero"]
    fp = round(d["nonspeech_false_positive_rate"] * d["nonspeech_chunks"])
    return fp == 0, f"{fp} of {d['nonspeech_chunks']} non-speech chunks"


def _detector_recall(r: dict) -> tuple[bool, str]:
    recall = r["detector"]["silero"]["speech_recall"]
    return recall >= 0.99, f"{recall:.2%} of {r['detector']['silero']['speech_chunks']} speech chunks"


def _recall_by_category(r: dict) -> tuple[bool, str]:
    """Every dev-set category (dev and held-out chunks together) at >= 99 %, and the same
    in-process detector calls no non-speech chunk speech."""
    rec = r["detector_recall"]
    if rec.get("reason"):
        return False, f"not measured ({rec['reason']})"
    cats = {name: c for name, c in rec["categories"].items() if c["chunks"]}
    fp, chunks = rec["nonspeech"]["false_positives"], rec["nonspeech"]["chunks"]
    if not cats or not chunks:
        return False, "no dev-set chunks measured"
    worst = min(cats, key=lambda name: cats[name]["recall"])
    below = [f"{name} {c['recall']:.1%}" for name, c in cats.items() if c["recall"] < 0.99]
    value = f"worst {worst} {cats[worst]['recall']:.1%} of {cats[worst]['chunks']} chunks"
    if below:
        value += f" (below 99 %: {', '.join(below)})"
    value += f"; {fp} false positives in {chunks} non-speech chunks"
    return not below and fp == 0, value


def _proxy(q: str, limit: float) -> Callable[[dict], tuple[bool, str]]:
    def check(r: dict) -> tuple[bool, str]:
        value = _get(r, f"proxy.overhead_ms.{q}")
        return value <= limit, f"{value:.2f} ms"

    return check


GOALS = [
    Goal("capacity.realtime_streams >= 3x baseline", ">= 3x", _capacity),
    Goal("streamed.wer within 1.0 pt of offline.wer", "<= +1.0 pt", _wer),
    Goal("default detector >= 30x cheaper than Whisper tiny", ">= 30x", _detector_cost),
    Goal("default detector: no false positive on non-speech", "0", _detector_fp),
    Goal("default detector: speech recall >= 99 %", ">= 99 %", _detector_recall),
    Goal(
        "default detector, dev set: recall >= 99 % in every category, no false positive",
        ">= 99 % each; 0",
        _recall_by_category,
    ),
    Goal("proxy overhead p50 <= 2 ms", "<= 2 ms", _proxy("p50", 2.0)),
    Goal("proxy overhead p99 <= 10 ms", "<= 10 ms", _proxy("p99", 10.0)),
]


def check(results: dict) -> list[dict]:
    verdicts = []
    for goal in GOALS:
        try:
            ok, value = goal.measure(results)
        except (KeyError, TypeError, ZeroDivisionError) as exc:
            ok, value = False, f"not measured ({type(exc).__name__}: {exc})"
        verdicts.append({"goal": goal.name, "target": goal.target, "value": value, "pass": bool(ok)})
    return verdicts
