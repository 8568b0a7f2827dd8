"""The bench's arithmetic: percentiles, word error rate, and the stream-count search.

Kept free of I/O so that ``tests/bench`` can check it quickly; every number in the report
passes through here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from num2words import num2words
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

_NORMALIZER = EnglishTextNormalizer()
_BASIC = BasicTextNormalizer()  # other languages: case, punctuation and symbols only
_NUMBER = re.compile(r"\b\d+\b")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics
    (numpy's default), so that p50 of an even-sized sample is the mean of the middle two."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max in milliseconds of durations given in seconds, plus the count."""
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {"n": 0}
    out = {f"p{q}": round(percentile(ms, q), 1) for q in (50, 95, 99)}
    out["mean"] = round(sum(ms) / len(ms), 1)
    out["max"] = round(max(ms), 1)
    out["n"] = len(ms)
    return out


def normalize(text: str, language: str = "en") -> str:
    """Whisper's English normalizer: case, punctuation, spelling and number forms ("press 4" ==
    "press four") must not count as errors; the Asterisk references mix both. Other languages
    get Whisper's basic normalizer (English spelling rules would mangle them) after their whole
    numbers are spelled out (:func:`spell_numbers`). A token with no letter or digit is dropped:
    the English normalizer keeps the "." of a trailing "..." (for decimals), which would count
    "The number I have is..." as one word too many."""
    normalized = _NORMALIZER(text) if language == "en" else _BASIC(spell_numbers(text, language))
    words = normalized.split()
    return " ".join(word for word in words if any(ch.isalnum() for ch in word))


def spell_numbers(text: str, language: str) -> str:
    """Whole numbers written out in ``language`` ("appuyez sur 2" -> "appuyez sur deux"), as the
    English normalizer writes number words as digits: Whisper writes a key's number either way
    (one decode "premere due", the next "premere 2"), and so do the references; before
    2026-12-05 only English scored both forms as one word. Digits stay where num2words does not
    know the language."""
    if not _spells(language):
        return text
    return _NUMBER.sub(lambda m: f" {num2words(int(m.group()), lang=language)} ", text)


@functools.cache
def _spells(language: str) -> bool:
    """Whether num2words knows ``language`` (asked once per language, not per utterance)."""
    try:
        num2words(0, lang=language)
    except NotImplementedError:
        return False
    return True


@dataclass
class WerCounts:
    """Edit counts summed over many utterances: corpus WER weights each word equally, so a
    long file is not outvoted by many two-word prompts."""

    reference_words: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / self.reference_words if self.reference_words else math.nan

    def as_dict(self) -> dict:
        return {
            "wer": round(self.wer, 4),
            "reference_words": self.reference_words,
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
        }


def word_errors(
    references: Sequence[str], hypotheses: Sequence[str], languages: Sequence[str] | None = None
) -> WerCounts:
    """Corpus-level word errors after normalizing both sides (each pair in its language; English
    when ``languages`` is not given)."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    languages = languages or ["en"] * len(references)
    counts = WerCounts()
    for ref, hyp, language in zip(references, hypotheses, languages, strict=True):
        ref_n, hyp_n = normalize(ref, language), normalize(hyp, language)
        ref_words = len(ref_n.split())
        if ref_words == 0:
            counts.insertions += len(hyp_n.split())
            continue
        if not hyp_n:
            counts.reference_words += ref_words
            counts.deletions += ref_words
            continue
        out = jiwer.process_words(ref_n, hyp_n)
        counts.reference_words += ref_words
        counts.substitutions += out.substitutions
        counts.deletions += out.deletions
        counts.insertions += out.insertions
    return counts


@dataclass
class CapacitySearch:
    """Find the largest stream count that passes, stepping up then bisecting.

    Counts double from ``start`` until one fails (or ``limit`` is reached), then the gap
    between the last pass and the first failure is bisected, so the answer costs
    O(log n) load steps instead of n while still being "the most streams that passed".
    Call :meth:`next_count`, run that many streams, then :meth:`record` the verdict.
    """

    start: int = 1
    limit: int = 64
    results: dict[int, bool] = field(default_factory=dict)

    @property
    def best(self) -> int:
        """Largest count that passed below the smallest that failed (0 if even ``start`` failed)."""
        fail = self.first_failure
        passed = [n for n, ok in self.results.items() if ok and (fail is None or n < fail)]
        return max(passed, default=0)

    @property
    def first_failure(self) -> int | None:
        return min((n for n, ok in self.results.items() if not ok), default=None)

    def record(self, count: int, passed: bool) -> None:
        self.results[count] = passed

    def next_count(self) -> int | None:
        """The next stream count to try, or None when the answer is known."""
        if not self.results:
            return self.start
        fail = self.first_failure
        best = self.best
        if fail is None:
            if best >= self.limit:
                return None
            return min(self.limit, max(best * 2, best + 1))
        if fail - best <= 1:
            return None
        return (best + fail) // 2 if best else None


def scrape(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called ``name`` on a service's ``/metrics`` page."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [(s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
