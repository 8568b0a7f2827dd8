"""How much of the dev set's speech the shipped detector lets through, per category.

The live path asks tiny's detector about every chunk the client cuts (3 s windows every 2 s,
the client's own :class:`client.chunker.Chunker` with the shipped settings), and a chunk it
calls "no speech" is never transcribed: its words are lost. So, for every dev-set clip
(:func:`corpus.devset.dev_set`), each chunk that holds more than ``MIN_SPEECH_S`` of
reference speech (``Clip.speech``) is asked of the detector, in this process, built exactly as
the service builds it (``services.tiny.app.load_detector`` with its settings and environment),
after the same 16-bit PCM round trip as a client upload. Recall is the share of those chunks
called speech, per category and per split (dev / held-out). Beside it, the same detector on the
non-speech set cut by the same chunker: every chunk it calls speech is a false positive.

``python -m bench.recall [--split dev|held-out|all] [--category C ...] [--out FILE]`` runs it
alone (~1 min on 2 cores for the whole set); ``python -m bench`` runs it as one phase.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.streaming import PREVIOUS_DEFAULT
from client.chunker import Chunker
from core.vocabulary import SAMPLE_RATE
from corpus.devset import CATEGORIES
from corpus.fetch import Clip

if TYPE_CHECKING:
    from services.tiny.detectors import Detector

MIN_SPEECH_S = 1.0
MISSES_KEPT = 12  # per category, in the results (the worst first)


def windows(
    samples: np.ndarray, chunk_s: float = PREVIOUS_DEFAULT.chunk_s, overlap_s: float = PREVIOUS_DEFAULT.overlap_s
):
    """(start second, samples) of every chunk the client would send for this audio."""
    chunker = Chunker(chunk_s, overlap_s)
    chunks = [*chunker.feed(np.asarray(samples, np.float32)), *chunker.flush()]
    return [(c.start, c.samples) for c in chunks]


def speech_seconds(regions: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of ``regions`` that fall inside ``[start, end)``."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in regions)


def dbfs(samples: np.ndarray) -> float:
    x = np.asarray(samples, np.float64)
    return round(float(10 * np.log10(np.mean(x**2) + 1e-12)), 1) if x.size else -120.0


def on_the_wire(samples: np.ndarray) -> np.ndarray:
    """The chunk as tiny decodes it from the client's 16-bit WAV upload."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").astype(np.float32) / 32768.0


def shipped_detector() -> Detector:
    """Silero as the tiny service builds it (its settings read STT_VAD_* from the environment)."""
    from services.common.settings import load_settings
    from services.tiny.app import load_detector
    from services.tiny.settings import DetectorSettings

    return load_detector("silero", load_settings(DetectorSettings))


def _speech_part(samples: np.ndarray, regions, start: float) -> np.ndarray:
    mask = np.zeros(samples.size, bool)
    for a, b in regions:
        lo, hi = int((a - start) * SAMPLE_RATE), int((b - start) * SAMPLE_RATE)
        mask[max(0, lo) : max(0, min(samples.size, hi))] = True
    return samples[mask]


def _grid(regions: Iterable[tuple[float, float]], seconds: float, step: float = 0.01) -> np.ndarray:
    """``regions`` as a boolean array of ``step``-second cells over ``seconds``."""
    cells = np.zeros(int(np.ceil(seconds / step)) + 1, bool)
    for a, b in regions:
        cells[max(0, round(a / step)) : max(0, round(b / step))] = True
    return cells


def measure_clip(detector, clip: Clip, samples: np.ndarray | None = None) -> dict:
    """Ask the detector about every chunk of ``clip`` that holds any reference speech.

    ``rows``: one per chunk holding more than MIN_SPEECH_S of speech (what recall counts);
    ``speech_s`` / ``lost_s``: the clip's reference speech, and how much of it the detector
    threw away: inside chunks, but in none called speech (words the live path can never
    transcribe, whatever the overlap; a final scrap the chunker never sends is not counted)."""
    samples = clip.samples() if samples is None else samples
    seconds = samples.size / SAMPLE_RATE
    rows, kept, asked = [], [], []
    for start, chunk in windows(samples):
        end = start + chunk.size / SAMPLE_RATE
        asked.append((start, end))
        speech_s = speech_seconds(clip.speech, start, end)
        if speech_s <= 0:
            continue
        wire = on_the_wire(chunk)
        probs = detector.frame_probabilities(wire)
        said = detector.detect(wire).speech
        if said:
            kept.append((start, end))
        if speech_s <= MIN_SPEECH_S:
            continue
        rows.append(
            {
                "clip": clip.name,
                "category": clip.category,
                "condition": clip.condition,
                "held_out": clip.held_out,
                "start_s": round(start, 2),
                "speech_s": round(speech_s, 2),
                "speech": said,
                "max_prob": round(float(probs.max()) if probs.size else 0.0, 3),
                "frames_over_threshold_ms": int(np.count_nonzero(probs >= detector.threshold) * 32),
                "chunk_dbfs": dbfs(wire),
                "speech_dbfs": dbfs(_speech_part(wire, clip.speech, start)),
            }
        )
    speech = _grid(clip.speech, seconds)
    lost = speech & _grid(asked, seconds) & ~_grid(kept, seconds)
    return {
        "rows": rows,
        "speech_s": round(float(speech.sum()) * 0.01, 2),
        "lost_s": round(float(lost.sum()) * 0.01, 2),
    }


def _share(rows: list[dict]) -> dict:
    hit = sum(r["speech"] for r in rows)
    return {"chunks": len(rows), "called_speech": hit, "recall": round(hit / len(rows), 4) if rows else None}


def summarize(
    measured: list[tuple[Clip, dict]],
    nonspeech: list[dict],
    detector_settings: dict,
    misses_kept: int | None = MISSES_KEPT,
) -> dict:
    """Per category: recall over chunks (all, dev, held-out, per condition), the speech seconds
    no chunk called speech covers, and the misses (lowest Silero probability first)."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    lost: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for clip, m in measured:
        by_cat[clip.category] += m["rows"]
        lost[clip.category][0] += m["speech_s"]
        lost[clip.category][1] += m["lost_s"]
    categories = {}
    order = {name: i for i, name in enumerate(CATEGORIES)}
    for cat in sorted(by_cat.keys() | lost.keys(), key=lambda name: (order.get(name, len(order)), name)):
        cat_rows = by_cat[cat]
        misses = sorted((r for r in cat_rows if not r["speech"]), key=lambda r: r["max_prob"])
        hits = [r for r in cat_rows if r["speech"]]
        by_condition: dict[str, list[dict]] = defaultdict(list)
        for r in cat_rows:
            by_condition[r["condition"]].append(r)
        categories[cat] = {
            **_share(cat_rows),
            "dev": _share([r for r in cat_rows if not r["held_out"]]),
            "held_out": _share([r for r in cat_rows if r["held_out"]]),
            "by_condition": {c: _share(rs) for c, rs in sorted(by_condition.items())},
            "speech_s": round(lost[cat][0], 1),
            "speech_lost_s": round(lost[cat][1], 1),
            "miss_max_prob_median": _median([r["max_prob"] for r in misses]),
            "miss_speech_dbfs_median": _median([r["speech_dbfs"] for r in misses]),
            "hit_speech_dbfs_median": _median([r["speech_dbfs"] for r in hits]),
            "misses": misses[:misses_kept],
        }
    false = [r for r in nonspeech if r["speech"]]
    rows = [r for rs in by_cat.values() for r in rs]
    return {
        "detector": detector_settings,
        "min_speech_s": MIN_SPEECH_S,
        "chunk_s": PREVIOUS_DEFAULT.chunk_s,
        "overlap_s": PREVIOUS_DEFAULT.overlap_s,
        "categories": categories,
        "all": _share(rows),
        "nonspeech": {
            "chunks": len(nonspeech),
            "false_positives": len(false),
            "false_positives_by_kind": {
                k: sum(r["kind"] == k for r in false) for k in sorted({r["kind"] for r in false})
            },
            "false_positives_list": false[:misses_kept],
        },
    }


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def nonspeech_chunks(detector, clips: list[Clip]) -> list[dict]:
    rows = []
    for clip in clips:
        for start, chunk in windows(clip.samples()):
            wire = on_the_wire(chunk)
            probs = detector.frame_probabilities(wire)
            rows.append(
                {
                    "clip": clip.name,
                    "kind": clip.kind,
                    "start_s": round(start, 2),
                    "speech": detector.detect(wire).speech,
                    "max_prob": round(float(probs.max()) if probs.size else 0.0, 3),
                }
            )
    return rows


def run(
    clips: list[Clip],
    nonspeech: list[Clip],
    tick: Callable[[], None] = lambda: None,
    detector=None,
    misses_kept: int | None = MISSES_KEPT,
) -> dict:
    """Recall per category over ``clips`` and false positives over ``nonspeech``; ``tick``
    once per clip."""
    detector = detector or shipped_detector()
    began = time.monotonic()
    measured = []
    for clip in clips:
        measured.append((clip, measure_clip(detector, clip)))
        tick()
    false = nonspeech_chunks(detector, nonspeech)
    settings = {"name": "silero", "threshold": detector.threshold, "min_speech_ms": detector.min_speech_ms}
    for weak in ("weak_threshold", "weak_min_speech_ms", "max_steadiness"):  # services/common/speech.py
        if hasattr(detector, weak):
            settings[weak] = getattr(detector, weak)
    out = summarize(measured, false, settings, misses_kept)
    out["clips"] = len(clips)
    out["wall_s"] = round(time.monotonic() - began, 1)
    return out


def table(result: dict) -> str:
    """Plain-text table of a result, for the terminal."""
    head = f"{'category':<16} {'recall':>8} {'chunks':>7} {'dev':>16} {'held-out':>16} {'speech lost':>14}"
    lines = [head + "  misses: median max prob / speech dBFS"]

    def cell(share: dict) -> str:
        return "-" if not share["chunks"] else f"{share['recall']:.1%} of {share['chunks']}"

    for cat, c in result["categories"].items():
        miss = (
            f"{c['miss_max_prob_median']:.2f} / {c['miss_speech_dbfs_median']:.1f}"
            if c["miss_max_prob_median"] is not None
            else "-"
        )
        lost = f"{c['speech_lost_s']:.1f} of {c['speech_s']:.0f} s"
        lines.append(
            f"{cat:<16} {c['recall']:>8.1%} {c['chunks']:>7} {cell(c['dev']):>16} {cell(c['held_out']):>16}"
            f" {lost:>14}  {miss}"
        )
    ns = result["nonspeech"]
    lines.append(
        f"non-speech: {ns['false_positives']} false positives of {ns['chunks']} chunks {ns['false_positives_by_kind']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from corpus import nonspeech_clips
    from corpus.devset import dev_set

    parser = argparse.ArgumentParser(prog="python -m bench.recall", description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("dev", "held-out", "all"), default="all")
    parser.add_argument("--category", action="append", choices=CATEGORIES, help="only these (repeatable)")
    parser.add_argument("--out", type=Path, help="write the full result (every miss) as JSON here")
    args = parser.parse_args(argv)
    clips = dev_set(args.split, tuple(args.category) if args.category else None)
    result = run(clips, nonspeech_clips(), misses_kept=None if args.out else MISSES_KEPT)
    print(table(result))
    print(f"{len(clips)} clips, {result['wall_s']} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
