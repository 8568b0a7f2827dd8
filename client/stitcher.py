"""Merge overlapping chunk transcripts into one, using word timestamps.

Consecutive chunks share ``overlap`` seconds of audio, so the words spoken there come back
twice (once near the end of chunk A, once near the start of chunk B), and the copies near a
chunk's edge are the unreliable ones: a word cut in half is misheard, dropped or invented.
At each seam the stitcher:

1. takes the words of A and of B that fall in the shared window (plus a little slack, since
   Whisper's word times wander by ~0.1-0.3 s);
2. aligns the two word sequences on normalised text (``difflib``);
3. a word both heard at the same moment (text equal, times within ``max_shift_s``) is kept
   once, from the chunk where it lies farther from the edge (A before the middle of the
   overlap, B after it);
4. where they disagree (a substitution), each chunk is trusted only on its own side of the
   middle; a word only one chunk heard is kept (the other lost it at its edge).

Each spoken word is therefore taken exactly once: the time rule alone loses a word whose
two copies straddle the middle, text matching alone fuses genuine repeats.

Words of the newest chunk are *partial* (the next chunk may still replace its tail); all
words before them are *committed* and never change.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from client.api import Word

_NON_WORD = re.compile(r"[^\w']+")


def norm(text: str) -> str:
    """Compare words case- and punctuation-blind ("Hello," == "hello")."""
    return _NON_WORD.sub("", text.lower())


def join_words(words: list[Word]) -> str:
    return " ".join(w.text.strip() for w in words if w.text.strip())


class Stitcher:
    def __init__(self, slack_s: float = 0.3, max_shift_s: float = 0.5) -> None:
        self.slack_s = slack_s
        self.max_shift_s = max_shift_s
        self.committed: list[Word] = []
        self.partial: list[Word] = []
        self._partial_end: float | None = None  # end time of the chunk the partial words came from
        self.seams: list[dict] = []  # one record per seam: where and how it was cut (for evaluation)

    @property
    def committed_text(self) -> str:
        return join_words(self.committed)

    @property
    def partial_text(self) -> str:
        return join_words(self.partial)

    def words(self) -> list[Word]:
        return self.committed + self.partial

    def text(self) -> str:
        return join_words(self.words())

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
        a_win, b_win = a[a0:], b[:b1]
        keep_a, keep_b = list(a[:a0]), []
        matcher = SequenceMatcher(None, [norm(w.text) for w in a_win], [norm(w.text) for w in b_win], autojunk=False)
        counts = {"equal": 0, "replace": 0, "delete": 0, "insert": 0}
        for op, i1, i2, j1, j2 in matcher.get_opcodes():
            counts[op] += max(i2 - i1, j2 - j1)
            if op == "equal":
                for wa, wb in zip(a_win[i1:i2], b_win[j1:j2], strict=True):
                    if abs(wa.mid - wb.mid) <= self.max_shift_s:
                        # The same word heard by both: one copy, from the chunk where it is farther from the edge.
                        (keep_a.append(wa) if (wa.mid + wb.mid) / 2 < center else keep_b.append(wb))
                    else:  # same text at different times: two different utterances of it
                        self._by_side(wa, wb, center, keep_a, keep_b)
            elif op == "replace":
                # The chunks disagree: trust each only on its own side of the middle of the overlap.
                keep_a.extend(w for w in a_win[i1:i2] if w.mid < center)
                keep_b.extend(w for w in b_win[j1:j2] if w.mid >= center)
            else:
                # Heard by one chunk only ("delete": A, "insert": B): keep it, whichever side it is on.
                keep_a.extend(a_win[i1:i2])
                keep_b.extend(b_win[j1:j2])
        keep_b.extend(b[b1:])
        self.seams.append({"start": ov_start, "end": ov_end, "center": center, **counts})
        return keep_a, keep_b

    @staticmethod
    def _by_side(wa: Word, wb: Word, center: float, keep_a: list[Word], keep_b: list[Word]) -> None:
        if wa.mid < center:
            keep_a.append(wa)
        if wb.mid >= center:
            keep_b.append(wb)
