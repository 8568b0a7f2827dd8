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


def _vs(cap: dict, name: str, other: str, ratio: float) -> tuple[bool, str]:
    """Stream counts compared, or the continuous served-audio figure when the other side
    managed no stream at all (a slow machine must not pass against 0)."""
    a, b = cap[name]["realtime_streams"], cap[other]["realtime_streams"]
    if b:
        return a >= ratio * b, f"{a} vs {b} streams = {a / b:.2f}x"
    sa, sb = cap[name]["served_audio_s_per_s"], cap[other]["served_audio_s_per_s"]
    ok = bool(sb) and sa >= ratio * sb
    return ok, f"{a} vs 0 streams; served audio {sa} vs {sb} s/s" + (f" = {sa / sb:.2f}x" if sb else "")


def _capacity(r: dict) -> tuple[bool, str]:
    return _vs(r["capacity"], "design_session", "baseline", 3.0)


def _capacity_vs_previous(r: dict) -> tuple[bool, str]:
    return _vs(r["capacity"], "design_session", "design", 1.0)


def _gap(path: str, limit_pt: float) -> Callable[[dict], tuple[bool, str]]:
    """``path``'s WER within ``limit_pt`` points of offline, overall and in every category."""

    def check(r: dict) -> tuple[bool, str]:
        ours, off = r[path], r["offline"]
        gaps = {"all": (ours["wer"] - off["wer"]) * 100}
        for cat, c in off["categories"].items():
            gaps[cat] = (ours["categories"][cat]["wer"] - c["wer"]) * 100
        worst = max(gaps, key=lambda k: gaps[k])
        over = [f"{k} {g:+.2f}" for k, g in gaps.items() if g > limit_pt]
        value = f"{ours['wer']:.2%} vs offline {off['wer']:.2%} ({gaps['all']:+.2f} pt)"
        value += f"; worst {worst} {gaps[worst]:+.2f} pt"
        if over:
            value += f" (over: {', '.join(over)})"
        return not over, value

    return check


def _first_partial(r: dict) -> tuple[bool, str]:
    new, old = r["streamed"]["latency_ms"]["p95"], r["previous_default"]["latency_ms"]["p95"]
    return new <= 1.25 * old, f"{new:.0f} ms vs previous chunk latency p95 {old:.0f} ms ({new / old:.2f}x)"


def _commit(r: dict) -> tuple[bool, str]:
    new, old = r["streamed"]["commit_latency_ms"]["p95"], r["previous_default"]["commit_latency_ms"]["p95"]
    return new <= old + 3000, f"{new:.0f} ms vs previous {old:.0f} ms ({new - old:+.0f} ms)"


def _cpu(r: dict) -> tuple[bool, str]:
    new = r["streamed"]["cpu_s_per_audio_s_one_stream"]
    old = r["previous_default"]["cpu_s_per_audio_s_one_stream"]
    return new <= 1.3 * old, f"{new:.3f} vs previous {old:.3f} CPU s per audio s ({new / old:.2f}x)"


def _nonspeech_text(r: dict) -> tuple[bool, str]:
    found = {p: r[p]["nonspeech"]["words"] for p in ("whole_file", "streamed")}
    clips = r["streamed"]["nonspeech"]["clips"]
    return not any(found.values()), ", ".join(f"{p}: {n} words" for p, n in found.items()) + f" in {clips} clips"


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
    Goal("streamed.wer within 1.0 pt of offline.wer, overall and per category", "<= +1.0 pt", _gap("streamed", 1.0)),
    Goal(
        "whole-file endpoint WER within 0.5 pt of offline.wer, overall and per category",
        "<= +0.5 pt",
        _gap("whole_file", 0.5),
    ),
    Goal("first partial p95 <= 1.25x the previous default's chunk latency p95", "<= 1.25x", _first_partial),
    Goal("commit latency p95 <= the previous default's + 3000 ms", "<= +3000 ms", _commit),
    Goal("capacity (sessions) >= the previous default's", ">= 1x", _capacity_vs_previous),
    Goal("service CPU per audio second, one stream <= 1.3x the previous default's", "<= 1.3x", _cpu),
    Goal("non-speech recordings: no text from the whole-file endpoint or a session", "0 words", _nonspeech_text),
    Goal("capacity (sessions) >= 3x the seed design's", ">= 3x", _capacity),
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
