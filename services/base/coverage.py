"""Speech that Whisper left out of a window's transcript: found, and decoded again on its own.

Whisper sometimes skips a phrase in the middle of a long window: the text runs on past it as if
it were not there (a known failure of sequence-to-sequence decoding, most often on repeated or
list-like speech). Nothing downstream can notice, so a whole-file transcript would lose those
words without a trace, which is the one failure a transcription service must not have. The skip
shows in the word timestamps: a stretch of the window that Silero calls speech and no word covers.
Such a stretch, when it lasts at least ``min_gap_s``, is cut out with a little audio either side
and transcribed alone; the words that fall inside it are spliced into the window's segments.

Pure functions (no model, no I/O): the whole-file endpoint (:mod:`services.base.app`) runs the
model calls. Measured in docs/performance.md ("Skipped speech in whole files").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.vocabulary import SAMPLE_RATE
from services.common.speech import FRAME


@dataclass(frozen=True)
class GapRule:
    """When uncovered speech counts as skipped, and how much audio a repair sends around it.

    ``min_gap_s``: speech shorter than this between two words is a pause or one long word that
    the alignment stretched, not a skipped phrase (1.5 s holds four or five spoken words).
    ``threshold``: Silero's confident speech probability, as the detector's own (0.5).
    ``pad_s``: how far past a word's aligned edges its sound may reach (the alignment is at
    20 ms steps and clips long words). ``margin_s``: audio sent either side of the gap, so its
    first and last words are heard whole; words decoded in the margin are dropped again.
    """

    min_gap_s: float = 1.5
    threshold: float = 0.5
    pad_s: float = 0.2
    margin_s: float = 0.5


def uncovered_speech(
    words: list[dict], probs: np.ndarray, duration_s: float, rule: GapRule = GapRule()
) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of the window where Silero (``probs``, one value per 32 ms
    frame) hears speech and no word (widened by ``rule.pad_s``) lies, for at least
    ``rule.min_gap_s``. The start and end are speech frames; silence inside a stretch counts
    towards it only while most of the stretch is speech."""
    n = probs.size
    if not n:
        return []
    frame_s = FRAME / SAMPLE_RATE
    covered = np.zeros(n, bool)
    for w in words:
        a = max(0, int((w["start"] - rule.pad_s) / frame_s))
        b = min(n, int(np.ceil((w["end"] + rule.pad_s) / frame_s)))
        covered[a:b] = True
    speech = (probs >= rule.threshold) & ~covered
    gaps = []
    i = 0
    while i < n:
        if not speech[i]:
            i += 1
            continue
        j = i
        while j < n and not covered[j]:
            j += 1
        found = np.flatnonzero(speech[i:j])
        first, last = i + int(found[0]), i + int(found[-1]) + 1
        if (last - first) * frame_s >= rule.min_gap_s and speech[first:last].mean() > 0.5:
            gaps.append((round(first * frame_s, 3), round(min(duration_s, last * frame_s), 3)))
        i = j
    return gaps


def repair_span(gap: tuple[float, float], duration_s: float, rule: GapRule = GapRule()) -> tuple[float, float]:
    """The audio to send for ``gap``: the gap with ``rule.margin_s`` either side, within the window."""
    return max(0.0, gap[0] - rule.margin_s), min(duration_s, gap[1] + rule.margin_s)


def splice(segments: list[dict], gap: tuple[float, float], repaired: list[dict], offset_s: float) -> list[dict]:
    """``segments`` with the words of ``repaired`` (the gap's own transcript, times relative to
    ``offset_s`` into the window) that fall inside ``gap`` added as one new segment, in time
    order. A word belongs to the gap when its middle does: the margin's words are the window's
    already (the gap ends where the window's words, widened by ``rule.pad_s``, begin), and
    taking them again would double them. Nothing found: ``segments`` unchanged."""
    lo, hi = gap
    words = []
    for seg in repaired:
        for w in seg.get("words", []):
            start, end = w["start"] + offset_s, w["end"] + offset_s
            if lo <= (start + end) / 2 <= hi:
                words.append({**w, "start": round(start, 3), "end": round(end, 3)})
    if not words:
        return segments
    kept = [part for seg in segments for part in _split_at(seg, gap)]
    return sorted([*kept, _segment_of(repaired[0], words)], key=lambda s: s["start"])


def _segment_of(template: dict, words: list[dict]) -> dict:
    """A segment holding ``words``, its other fields (log-probability, ...) from ``template``."""
    return {
        **{k: v for k, v in template.items() if k not in ("words", "start", "end", "text")},
        "start": words[0]["start"],
        "end": words[-1]["end"],
        "text": "".join(w["word"] for w in words),
        "words": words,
    }


def _split_at(segment: dict, gap: tuple[float, float]) -> list[dict]:
    """``segment`` as it is, or in two when its words run on both sides of ``gap`` (the skipped
    phrase goes between them, not after the whole segment)."""
    words = segment.get("words", [])
    before = [w for w in words if (w["start"] + w["end"]) / 2 < gap[0]]
    after = [w for w in words if (w["start"] + w["end"]) / 2 > gap[1]]
    if not before or not after or len(before) + len(after) != len(words):
        return [segment]
    return [_segment_of(segment, before), _segment_of(segment, after)]
