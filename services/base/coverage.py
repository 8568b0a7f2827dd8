"""Speech that Whisper left out of a window's transcript: found, and decoded again on its own.

Whisper sometimes skips a phrase in the middle of a long window: the text runs on past it as if
it were not there (a known failure of sequence-to-sequence decoding, most often on repeated or
list-like speech). Nothing downstream can notice, so a whole-file transcript would lose those
words without a trace, which is the one failure a transcription service must not have. The skip
shows in the word timestamps: a stretch of the window that Silero calls speech and no word covers.
Such a stretch, when it lasts at least ``min_gap_s``, is cut out with the words either side of it
and transcribed alone; the words it holds between those two are spliced into the window's
segments.

A streaming session's window is checked too (``/transcribe-chunk?fill_skipped=true``), between
its first and last word: speech before the first word is committed context or the policy's
``max_gap_s`` case, and speech after the last is the window's edge, which the next step decodes
again. The last window before a flush or at the end of the stream has no next step, so the
session asks for its tail as well (``fill_tail=true``): a phrase its decode left out at the end
would otherwise be lost for good.

Pure functions (no model, no I/O): :mod:`services.base.app` runs the model calls. Measured in
docs/performance.md ("Skipped speech in whole files") and docs/client.md ("Skipped speech in
session windows").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.commit_policy import norm
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
    first and last words are heard whole (at least; the words either side are heard whole too).
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


def holes_between_words(words: list[dict], rule: GapRule = GapRule()) -> bool:
    """Whether two consecutive words (in time) lie far enough apart for :func:`uncovered_speech`
    to find ``rule.min_gap_s`` between them: the check that spares a window with none the
    detector's pass over its audio."""
    spans = sorted((w["start"], w["end"]) for w in words)
    reach = -math.inf
    for start, end in spans:
        if reach > -math.inf and start - reach >= rule.min_gap_s + 2 * rule.pad_s:
            return True
        reach = max(reach, end)
    return False


def between_words(gaps: list[tuple[float, float]], words: list[dict]) -> list[tuple[float, float]]:
    """The ``gaps`` that have a word before and a word after them."""
    if not words:
        return []
    first_end = min(w["end"] for w in words)
    last_start = max(w["start"] for w in words)
    return [(lo, hi) for lo, hi in gaps if lo >= first_end and hi <= last_start]


def after_words(gaps: list[tuple[float, float]], words: list[dict]) -> list[tuple[float, float]]:
    """The ``gaps`` that begin after the last word ends (the window's tail)."""
    if not words:
        return []
    last_end = max(w["end"] for w in words)
    return [(lo, hi) for lo, hi in gaps if lo >= last_end]


def repair_span(gap: tuple[float, float], duration_s: float, rule: GapRule = GapRule()) -> tuple[float, float]:
    """The audio to send for ``gap``: the gap with ``rule.margin_s`` either side, within the window."""
    return max(0.0, gap[0] - rule.margin_s), min(duration_s, gap[1] + rule.margin_s)


def neighbours(words: list[dict], gap: tuple[float, float]) -> tuple[dict | None, dict | None]:
    """The word just before ``gap`` and the word just after it; None on a side with no word (a
    gap at the start or the end of the window's words)."""
    before = max((w for w in words if w["end"] <= gap[0]), key=lambda w: w["end"], default=None)
    after = min((w for w in words if w["start"] >= gap[1]), key=lambda w: w["start"], default=None)
    return before, after


def repair_span_around(
    words: list[dict], gap: tuple[float, float], duration_s: float, rule: GapRule = GapRule()
) -> tuple[float, float]:
    """:func:`repair_span`, widened to hear the words either side of the gap whole: a repair
    that begins inside the word before can write the first skipped word wrong (docs/client.md,
    "Skipped speech in session windows")."""
    before, after = neighbours(words, gap)
    lo, hi = repair_span(gap, duration_s, rule)
    if before is not None:
        lo = max(0.0, min(lo, before["start"]))
    if after is not None:
        hi = min(duration_s, max(hi, after["end"]))
    return lo, hi


EXCLUSIVE_S = 1e-3  # moves an exclusive bound inside, for an inclusive test (times are in ms)


def neighbour_bounds(
    words: list[dict], gap: tuple[float, float], repaired: list[dict], offset_s: float
) -> tuple[float, float]:
    """Where the words of a repair (``repaired``, as for :func:`splice`) belong: after the
    window's word before ``gap`` and before its word after it; unbounded on a side with no word.

    The gap itself is too narrow a bound: the alignment can stretch a neighbour over the first
    or last skipped word (docs/client.md, "Skipped speech in session windows"), and a repair's
    first word is often aligned from the very start of its audio, inside the margin (the
    whole-file case in docs/performance.md, "A repair's first word in the margin"). The repair hears
    the neighbours in its margins: where it wrote one (same word), that is the bound, so it is
    not taken twice; where it did not, the neighbour's middle is. Exclusive bounds, for
    :func:`splice`'s inclusive test."""
    before, after = neighbours(words, gap)
    heard = [(norm(w["word"]), _mid(w) + offset_s) for seg in repaired for w in seg.get("words", [])]
    lo, hi = -math.inf, math.inf
    if before is not None:
        lo = max([_mid(before), *(m for text, m in heard if text == norm(before["word"]) and m < gap[0])])
    if after is not None:
        hi = min([_mid(after), *(m for text, m in heard if text == norm(after["word"]) and m > gap[1])])
    return lo + EXCLUSIVE_S, hi - EXCLUSIVE_S


def _mid(word: dict) -> float:
    return (word["start"] + word["end"]) / 2


def splice(
    segments: list[dict],
    gap: tuple[float, float],
    repaired: list[dict],
    offset_s: float,
    bounds: tuple[float, float],
) -> list[dict]:
    """``segments`` with the words of ``repaired`` (the gap's own transcript, times relative to
    ``offset_s`` into the window) whose middles lie within ``bounds`` (:func:`neighbour_bounds`:
    the repair's words outside them are the window's already, and taking them again would double
    them) added as one new segment, in time order; a segment that runs across ``gap`` is split
    around it. Nothing found: ``segments`` unchanged."""
    lo, hi = bounds
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
