"""Merge overlapping chunk transcripts into one, using word timestamps.

Consecutive chunks share ``overlap`` seconds of audio, so the words spoken there come back
twice (once near the end of chunk A, once near the start of chunk B), and the copies near a
chunk's edge are the unreliable ones: a word cut in half is misheard, dropped or invented.
At each seam the stitcher:

1. takes the words of A and of B that fall in the shared window (plus a little slack, since
   Whisper's word times wander by ~0.1-0.3 s);
2. places each word by its time, correcting Whisper's edge habit: the first word of a chunk
   is pinned to the chunk's start (and the last may be stretched to its end), so a word that
   touches an edge is placed by its other end;
3. aligns the two word sequences on normalised text (``difflib``): a run of words both heard
   at the same moment (text equal, times within ``max_shift_s``) is kept once, each word from
   the chunk where it lies farther from the edge (A before the middle of the overlap, B after);
4. everywhere else the chunks disagree, and each is trusted only on its own side of the
   middle, except that a fragment cut by a chunk's edge goes when the other chunk kept a word
   covering its time.

Text matching makes the cut robust to time jitter (two copies of one word that straddle
the middle are still one word); the time rule keeps genuine repeats ("press 1, press 1")
and throws away what a chunk invented at its edge. Measured on real chunk transcripts
(docs/client.md), this gives no duplicated and no lost words at the seams.

Words of the newest chunk are *partial* (the next chunk may still replace its tail); all
words before them are *committed* and never change.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

from client.api import Word
from core.commit_policy import Transcript, join_words, norm

__all__ = ["Stitcher", "join_words", "norm"]


class Stitcher(Transcript):
    def __init__(self, slack_s: float = 0.3, max_shift_s: float = 0.5) -> None:
        self.slack_s = slack_s
        self.max_shift_s = max_shift_s
        self.committed: list[Word] = []
        self.partial: list[Word] = []
        self._partial_end: float | None = None  # end time of the chunk the partial words came from
        self.seams: list[dict] = []  # one record per seam: where and how it was cut (for evaluation)

    def add(self, start: float, end: float, words: list[Word] | None) -> list[Word]:
        """Add the next chunk's words (None: the chunk was skipped); return the newly committed words."""
        words = list(words or [])  # Whisper's order is authoritative; times may wobble, order does not
        prev_end = self._partial_end
        if prev_end is None or prev_end <= start or not self.partial:
            keep_a, keep_b = self.partial, self._after_committed(words)
            if prev_end is not None and prev_end > start:
                # Previous chunk had no words: B's words in the overlap are new.
                self.seams.append({"start": start, "end": prev_end, "cut": None, "how": "one-sided"})
        elif not words:
            keep_a, keep_b = self.partial, []
            self.seams.append({"start": start, "end": prev_end, "cut": None, "how": "one-sided"})
        else:
            keep_a, keep_b = self._seam(self.partial, words, start, prev_end)
        self.committed.extend(keep_a)
        self.partial = keep_b
        self._partial_end = end
        return keep_a

    def finish(self) -> list[Word]:
        """The stream ended: the partial words become final."""
        newly = self.partial
        self.committed.extend(newly)
        self.partial = []
        return newly

    def _after_committed(self, words: list[Word]) -> list[Word]:
        # Guard against a chunk whose words start before text already committed (clock wobble).
        if not self.committed:
            return words
        last = self.committed[-1].end
        return [w for w in words if w.mid > last]

    def _seam(self, a: list[Word], b: list[Word], ov_start: float, ov_end: float) -> tuple[list[Word], list[Word]]:
        """Split the shared window between A (committed now) and B (the new partial words)."""
        center = (ov_start + ov_end) / 2
        a0 = next((i for i, w in enumerate(a) if w.end > ov_start - self.slack_s), len(a))
        b1 = next((j for j in range(len(b) - 1, -1, -1) if b[j].start < ov_end + self.slack_s), -1) + 1
        a_win = [_Placed(w, *_span(w, ov_start, ov_end)) for w in a[a0:]]
        b_win = [_Placed(w, *_span(w, ov_start, ov_end)) for w in b[:b1]]
        keep_a, keep_b = list(a[:a0]), []
        matcher = SequenceMatcher(
            None, [norm(p.word.text) for p in a_win], [norm(p.word.text) for p in b_win], autojunk=False
        )
        counts = {"equal": 0, "replace": 0, "delete": 0, "insert": 0}
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            counts[op] += max(i2 - i1, j2 - j1)
            if op == "equal" and all(
                abs(pa.mid - pb.mid) <= self.max_shift_s for pa, pb in zip(a_win[i1:i2], b_win[j1:j2], strict=True)
            ):
                # The same words heard by both: one copy, from the chunk where they are farther from the edge.
                for pa, pb in zip(a_win[i1:i2], b_win[j1:j2], strict=True):
                    (keep_a.append(pa.word) if (pa.mid + pb.mid) / 2 < center else keep_b.append(pb.word))
            else:
                self._resolve(a_win[i1:i2], b_win[j1:j2], ov_start, ov_end, keep_a, keep_b)
        keep_b.extend(b[b1:])
        self.seams.append({"start": ov_start, "end": ov_end, "center": center, **counts})
        return keep_a, keep_b

    @staticmethod
    def _resolve(
        a_part: list[_Placed], b_part: list[_Placed], ov_start: float, ov_end: float, keep_a: list, keep_b: list
    ) -> None:
        """Words the chunks disagree on: each chunk is trusted only on its own side of the middle.

        Except a word cut by its chunk's edge (it touches A's end or B's start): when the other
        chunk kept a word covering most of its time, it is the fragment of that word and goes.
        """
        center = (ov_start + ov_end) / 2
        from_a = [p for p in a_part if p.mid < center]
        from_b = [p for p in b_part if p.mid >= center]
        keep_a.extend(p.word for p in from_a if not (p.word.end >= ov_end - 0.05 and _covered(p.word, from_b)))
        keep_b.extend(p.word for p in from_b if not (p.word.start <= ov_start + 0.05 and _covered(p.word, from_a)))


@dataclass
class _Placed:
    """A word with the span used to place it: Whisper's times, corrected at the chunk's edges."""

    word: Word
    lo: float
    hi: float

    @property
    def mid(self) -> float:
        return (self.lo + self.hi) / 2


MAX_EDGE_WORD_S = 0.5


def _covered(word: Word, others: list[_Placed]) -> bool:
    """Does another chunk's kept word cover at least half of this word's (raw) time?"""
    length = max(0.01, word.end - word.start)
    return any(min(word.end, o.word.end) - max(word.start, o.word.start) >= 0.5 * length for o in others)


def _span(w: Word, ov_start: float, ov_end: float) -> tuple[float, float]:
    """Whisper pins the first word of a chunk to the chunk's start (and may stretch the last to its
    end), which makes a word that began 0.5 s later look as if it sat on the edge. A word touching
    the edge is placed by its other, reliable end, assuming at most ``MAX_EDGE_WORD_S`` of length."""
    lo, hi = w.start, w.end
    if abs(lo - ov_start) < 0.02 and hi - lo > MAX_EDGE_WORD_S:
        lo = hi - MAX_EDGE_WORD_S
    if abs(hi - ov_end) < 0.02 and hi - lo > MAX_EDGE_WORD_S:
        hi = lo + MAX_EDGE_WORD_S
    return lo, hi
