"""Streaming commit policy: which words of a rolling Whisper window are final (LocalAgreement-2
and right context).

Whisper decides better the more audio it hears around a word. The overlap stitcher
(``client.stitcher``) sends short fixed windows and merges their edges; this policy instead
re-decodes everything not yet final as one growing window and lets two consecutive decodes
vote, as whisper_streaming's LocalAgreement-2 does:

- every step (3 s of new audio by default) the caller decodes :meth:`CommitPolicy.window`:
  all *uncommitted* audio (at most ``max_window_s`` of it) plus ``context_s`` of already
  committed audio before it, so Whisper hears how the sentence began;
- :meth:`CommitPolicy.update` drops the words the window repeats from committed text, then
  commits the longest prefix on which this hypothesis and the previous one agree (normalised
  text, times within ``max_shift_s``): a word two decodes with different right edges both
  wrote is not an artefact of where the audio was cut;
- it also commits, from this decode alone, the words that end at least ``settle_s`` before the
  window's end: Whisper heard that much after them, which settles a word about as well as a
  second decode does, a step sooner (agreement alone made words wait 3-6 s, and 12 s behind a
  word that flipped between two spellings; docs/client.md, "Settle and trim");
- the window is then trimmed where committed text ends a sentence or a Whisper segment, and,
  once it holds more than ``trim_words_after_s`` of uncommitted audio, at the last committed
  word, with ``context_s`` of committed audio kept before: a short sentence is decoded from its
  start each time, a long run of speech in windows of little more than a step;
- if agreement stalls (a word flips between two spellings), words older than the bound are
  committed anyway (*forced*), so no window exceeds ``max_window_s`` and latency is bounded;
- a decode whose first new word starts more than ``max_gap_s`` after the last committed word
  is not agreed on (Whisper skipped the start of the window; agreeing would lose those words);
- a step the detector calls non-speech after speech ends the utterance: the window is decoded
  once more (it now ends in silence, where Whisper is most sure) and committed whole;
  further silent steps are not decoded at all.

Committed words never change and are handed out once; the others are *partial*.

The module is pure (state in, words out: no I/O, clocks, threads or asyncio) and imports only
the standard library, so the client (``client/``) and a server-side streaming session in the
proxy (``services/proxy``) can share it; it lives in ``core``, which every role may import and
which imports no role. Settings and the measured comparison with the stitcher are in
docs/client.md.

It also holds what both transcript paths need: :func:`join_words` (word pieces into text for
every script) and :func:`drop_hallucinations` (Whisper's stock phrases on silence).
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.vocabulary import SAMPLE_RATE, WHISPER_WINDOW_S

SENTENCE_END = (".", "?", "!", "。", "？", "！", "…", "।", "؟")
# A decode with this many words in a row inside this span has looped (see _loops).
COLLAPSED_WORDS, COLLAPSED_S = 3, 0.1


@dataclass
class Word:
    """One word with absolute times (seconds from the start of the stream)."""

    start: float
    end: float
    text: str  # as Whisper wrote it: a leading space starts a new word, none continues the one before
    probability: float = 1.0

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


@dataclass
class Segment:
    """One Whisper segment of a hypothesis, with the confidence the service reports for it."""

    start: float
    end: float
    words: list[Word]
    no_speech_prob: float = 0.0  # Whisper's probability that the window held no speech (one per decode)
    avg_logprob: float = 0.0

    @property
    def text(self) -> str:
        return join_words(self.words)

    @classmethod
    def parse(cls, segments: Iterable[dict], offset: float = 0.0) -> list[Segment]:
        """Segments as ``/transcribe`` returns them (times from the start of the audio sent),
        moved to stream time by ``offset`` (where that audio began)."""
        out = []
        for seg in segments or []:
            s0, s1 = offset + float(seg.get("start", 0.0)), offset + float(seg.get("end", 0.0))
            if seg.get("words"):
                words = [
                    Word(offset + w["start"], offset + w["end"], w["word"], w.get("probability", 1.0))
                    for w in seg["words"]
                ]
            elif seg.get("text", "").strip():
                # No word timestamps (an older server): spread the segment's words evenly over its span.
                tokens = seg["text"].split()
                span = (s1 - s0) / max(len(tokens), 1)
                words = [Word(s0 + i * span, s0 + (i + 1) * span, " " + tok) for i, tok in enumerate(tokens)]
            else:
                continue
            out.append(cls(s0, s1, words, float(seg.get("no_speech_prob", 0.0)), float(seg.get("avg_logprob", 0.0))))
        return out


# ---------------------------------------------------------------------------------------------
# Text


_NON_WORD = re.compile(r"[^\w']+")


def norm(text: str) -> str:
    """Compare words case- and punctuation-blind ("Hello," == "hello")."""
    return _NON_WORD.sub("", text.lower())


def word_key(word: Word) -> str:
    """What two hypotheses must agree on: the normalised word, or the raw piece where normalising
    leaves nothing (a Thai vowel sign, a lone "%")."""
    return norm(word.text) or word.text.strip()


def join_words(words: Iterable[Word]) -> str:
    """Words as one line, in every script.

    Whisper marks the start of a word with a leading space; a piece without one continues the
    word before it. In English that is "-hearted" or "'s"; in languages Whisper splits by
    character (Chinese, Japanese, Thai, ...) it is every piece ("我们" "今天" → "我们今天"), and a
    Korean word decoded with such a language's tokenizer comes back as pieces too
    (" 시청" "해주" "셔서" → "시청해주셔서"). So pieces are glued unless they start with a space,
    and nothing is ever inserted that Whisper did not write.
    """
    out = ""
    for word in words:
        text = word.text.strip()
        if not text:
            continue
        out += " " + text if out and word.text[:1].isspace() else text
    return out


class Transcript:
    """Committed words (final) and partial words (may still change) shown as text.

    What both transcript builders show: this module's :class:`CommitPolicy` and the client's
    overlap stitcher; each keeps ``committed`` and ``partial`` up to date.
    """

    committed: list[Word]
    partial: list[Word]

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


def phrase_key(text: str) -> str:
    """A phrase compared letter for letter: case, spaces and punctuation ignored."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


# Whisper's stock phrases on silence and noise (what ended its training videos). Each is also
# something a person may really say, so it is dropped only with evidence that nobody said it.
HALLUCINATIONS = frozenset(
    phrase_key(p)
    for p in (
        "Thank you.",
        "Thank you very much.",
        "Thank you so much.",
        "Thanks.",
        "Thanks for watching!",
        "Thank you for watching.",
        "Thank you so much for watching.",
        "Thanks for watching and see you next time.",
        "Please subscribe.",
        "Please like and subscribe.",
        "Don't forget to like and subscribe.",
        "Subscribe to my channel.",
        "See you next time.",
        "See you in the next video.",
        "Bye.",
        "Bye-bye.",
        "You",
        "I'm sorry.",
        "시청해주셔서 감사합니다.",
        "시청해 주셔서 감사합니다.",
        "감사합니다.",
        "구독과 좋아요 부탁드립니다.",
        "구독과 좋아요 알림설정 부탁드립니다.",
        "다음 영상에서 만나요.",
        "ご視聴ありがとうございました。",
        "ありがとうございました。",
        "谢谢观看。",
        "谢谢大家。",
        "谢谢。",
        "请不吝点赞 订阅 转发 打赏支持明镜与点点栏目",
        "Vielen Dank.",
        "Danke fürs Zuschauen.",
        "Merci.",
        "Merci d'avoir regardé.",
        "Gracias.",
        "Gracias por ver.",
        "Obrigado.",
        "Grazie.",
        "Продолжение следует...",
        "Спасибо за внимание.",
    )
)
# Subtitle credits: a description of the video, never speech; dropped wherever they appear.
CREDITS = tuple(
    phrase_key(p)
    for p in (
        "Amara.org",
        "Subtitles by",
        "Captions by",
        "Subtitled by",
        "Transcription by",
        "字幕由",
        "字幕提供",
        "中文字幕",
        "자막 제공",
        "자막by",
        "Untertitel im Auftrag",
        "Untertitelung",
        "Sous-titres réalisés",
        "Sous-titrage",
        "Subtítulos realizados",
        "Subtítulos por",
        "Sottotitoli creati",
        "Legendas pela comunidade",
        "Редактор субтитров",
        "Субтитры сделал",
    )
)


def _sentences(segment: Segment) -> Iterable[list[Word]]:
    """A segment cut after each word that ends a sentence (Whisper often appends its phrase)."""
    current: list[Word] = []
    for word in segment.words:
        current.append(word)
        if word.text.strip().endswith(SENTENCE_END):
            yield current
            current = []
    if current:
        yield current


def _overlap(lo: float, hi: float, spans: Sequence[tuple[float, float]]) -> float:
    return sum(max(0.0, min(hi, b) - max(lo, a)) for a, b in spans)


def drop_hallucinations(
    segments: Sequence[Segment],
    silence: Sequence[tuple[float, float]] = (),
    no_speech_threshold: float = 0.5,
    min_probability: float = 0.5,
) -> tuple[list[Segment], list[Word]]:
    """Remove Whisper's silence phrases where the audio holds no such speech.

    A sentence that is one of :data:`HALLUCINATIONS` goes when there is evidence nobody said
    it: Whisper itself thought the window held no speech (``no_speech_prob`` at least
    ``no_speech_threshold``), or it was unsure of the words (mean word probability under
    ``min_probability``), or the speech detector called the audio under it non-speech
    (``silence``: spans of stream time). A real "Thank you." is said into audio the detector
    calls speech, and Whisper writes it with word probabilities above 0.9 (docs/client.md).
    Subtitle credits (:data:`CREDITS`) go always. Returns the segments kept and the words dropped.
    """
    kept: list[Segment] = []
    dropped: list[Word] = []
    for seg in segments:
        words: list[Word] = []
        for sentence in _sentences(seg):
            key = phrase_key(join_words(sentence))
            if key and any(c in key for c in CREDITS):
                dropped += sentence
                continue
            if key in HALLUCINATIONS:
                lo, hi = sentence[0].start, sentence[-1].end
                unsure = sum(w.probability for w in sentence) / len(sentence) < min_probability
                silent = hi > lo and _overlap(lo, hi, silence) >= 0.5 * (hi - lo)
                if seg.no_speech_prob >= no_speech_threshold or unsure or silent:
                    dropped += sentence
                    continue
            words += sentence
        if words:
            kept.append(Segment(words[0].start, words[-1].end, words, seg.no_speech_prob, seg.avg_logprob))
    return kept, dropped


# ---------------------------------------------------------------------------------------------
# The policy


@dataclass(frozen=True)
class PolicyConfig:
    """How the policy cuts windows. Defaults measured in docs/client.md ("Agreement policy")."""

    step_s: float = 3.0  # new audio per decision: the design's cadence
    max_window_s: float = 15.0  # most uncommitted audio in one decode; older words are forced out
    context_s: float = 2.0  # committed audio decoded before the uncommitted part
    trim_after_s: float = 0.0  # trim at committed sentence/segment ends once the window is longer than this
    max_shift_s: float = 1.0  # two hypotheses agree on a word only if they place it this close
    max_gap_s: float = 3.0  # a decode starting later than this after the last commit is not agreed on
    settle_s: float = 2.0  # a word ending this long before the window's end is committed from one decode
    trim_words_after_s: float = 4.0  # a window longer than this is trimmed at committed words too
    no_speech_threshold: float = 0.5  # for drop_hallucinations
    min_probability: float = 0.5  # for drop_hallucinations
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def local_agreement(cls, **settings: Any) -> PolicyConfig:
        """LocalAgreement-2 alone (the default before 2026-12-05): nothing is committed from one
        decode, and windows are trimmed only at sentence and segment ends."""
        return cls(**{"settle_s": math.inf, "trim_words_after_s": math.inf, **settings})

    def __post_init__(self) -> None:
        if self.step_s <= 0:
            raise ValueError("step_s must be positive")
        if self.max_window_s < 2 * self.step_s:
            raise ValueError(f"max_window_s must hold at least two steps ({2 * self.step_s:g} s) to agree on anything")
        if self.settle_s < 0 or self.trim_words_after_s < 0:
            raise ValueError("settle_s and trim_words_after_s must not be negative")
        if self.context_s < 0 or self.trim_after_s < 0:
            raise ValueError("context_s and trim_after_s must not be negative")
        if self.max_window_s + self.context_s > WHISPER_WINDOW_S:
            raise ValueError("max_window_s + context_s may not exceed Whisper's 30 s window")


@dataclass
class Update:
    """What one decode changed: words that just became final, and the partial words now."""

    committed: list[Word] = field(default_factory=list)  # new, in order; never change again
    partial: list[Word] = field(default_factory=list)  # replaces the previous partial words
    forced: int = 0  # how many of ``committed`` the window bound forced out without agreement
    dropped: list[Word] = field(default_factory=list)  # hallucinations removed from this hypothesis


class CommitPolicy(Transcript):
    """LocalAgreement-2 and settled words over a bounded rolling window. One instance per stream.

    Usage (the caller keeps the audio, the policy only counts samples)::

        policy.advance(end_sample, speech=detector_says)   # audio now reaches end_sample
        if (span := policy.window()) is not None:          # (start, end) samples to decode
            update = policy.update(segments, span[0] / SAMPLE_RATE)   # words in stream time
        ...
        policy.finish()                                    # end of stream: the rest is final
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self.committed: list[Word] = []
        self.partial: list[Word] = []  # the newest hypothesis past the committed words
        self.forced_words = 0
        self.dropped: list[Word] = []
        self.windows = 0
        self._sr = self.config.sample_rate
        self._end = 0  # samples of audio received
        self._start = 0  # first sample of the uncommitted audio
        self._context_start = 0  # first sample of the context before it (see _move_start)
        self._decoded_end = 0  # end of the last window decoded
        self._pending: tuple[int, int] | None = None  # handed out by window(), not yet answered
        self._commit_s = -math.inf  # end of the last committed word
        self._cut_s = -math.inf  # end of the last committed word that closed a sentence or segment
        self._speech = False  # the detector heard speech since the utterance was last committed whole
        self._flush_end: int | None = None  # ... then silence up to here: decode to here, commit everything
        self._speech_after_flush = False  # speech arrived after that silence, before its decode
        self._silence: list[tuple[float, float]] = []  # stream time the detector called non-speech
        self._without_context = False  # the last decode stopped early: try the next one without context

    @classmethod
    def resumed(cls, config: PolicyConfig | None, audio_from: int, committed_until: int) -> CommitPolicy:
        """A policy for a stream taken over from another (a reconnect to another server).

        The audio sent now begins at sample ``audio_from``; everything before
        ``committed_until`` was committed by the previous policy (the caller has those words),
        so that audio is only context and a word heard there is not committed again.
        """
        if not 0 <= audio_from <= committed_until:
            raise ValueError("resuming needs 0 <= audio_from <= committed_until")
        policy = cls(config)
        policy._end = policy._decoded_end = policy._context_start = audio_from
        policy._start = committed_until
        policy._commit_s = policy._cut_s = committed_until / policy._sr
        return policy

    @property
    def settled(self) -> int:
        """Samples before this are final: their words are committed (or there were none), so
        a stream taken over by another policy resumes here (:meth:`resumed`)."""
        settled = max(self._commit_s * self._sr, self._start if not self.partial else 0)
        return min(self._end, max(0, round(settled)))

    # -- audio in ---------------------------------------------------------------------------

    def advance(self, end_sample: int, speech: bool = True) -> None:
        """Audio now reaches ``end_sample``; ``speech``: what the detector said about the new part."""
        if end_sample <= self._end:
            return
        if speech:
            self._speech = True
            if self._flush_end is not None:
                self._speech_after_flush = True
        else:
            self._silence.append((self._end / self._sr, end_sample / self._sr))
            if self._speech and self._flush_end is None:
                self._flush_end = end_sample
        self._end = end_sample

    def due(self) -> bool:
        """A decode is worth doing now: a step of new audio, or an utterance just ended."""
        new = self._end - self._decoded_end
        flush = self._flush_end is not None and self._flush_end > self._decoded_end
        return self._pending is None and (new >= round(self.config.step_s * self._sr) or flush)

    @property
    def utterance_end(self) -> int | None:
        """Where the current utterance ended (a non-speech step after speech), from then until
        the decode that commits it whole; None otherwise. A caller that groups words by
        utterance (the proxy's OpenAI Realtime adapter) sees it go back to None in that
        :meth:`update`."""
        return self._flush_end

    @property
    def keep_from(self) -> int:
        """The first sample the caller still needs (a later window starts no earlier)."""
        return self._context_start

    # -- decisions --------------------------------------------------------------------------

    def window(self) -> tuple[int, int] | None:
        """(start, end) samples to decode now, or None when there is nothing to decode.

        The end is the newest sample (or the bound, when a backlog arrived at once: the oldest
        audio is decoded first, nothing is skipped); the start is ``context_s`` before the
        uncommitted audio. Asking again before :meth:`update` returns the same window.
        """
        if self._pending is not None:
            return self._pending
        if self._end <= self._decoded_end:
            return None
        if not self._speech:
            # Only non-speech since the last utterance was committed: nothing to decode, and
            # nothing before here will be (it stays available as context).
            self._decoded_end = self._end
            self._move_start(self._end)
            return None
        end = min(self._end, self._start + round(self.config.max_window_s * self._sr))
        if self._flush_end is not None:
            end = min(end, self._flush_end)  # the utterance ends here; what follows is the next one
        self._pending = (self._start if self._without_context else self.keep_from, end)
        return self._pending

    def window_ahead(self, end_sample: int) -> tuple[int, int] | None:
        """The window :meth:`window` will hand out once :meth:`advance` brings the audio to
        ``end_sample``, when that does not depend on what the detector says of the new audio;
        None when it does, or when nothing would be decoded. Inside an utterance it never does
        (speech continues it, silence ends it there, and either way the window ends at
        ``end_sample``), so a caller may start that decode while the detector still listens."""
        if self._pending is not None:
            return None
        spans = set()
        for speech in (True, False):
            trial = copy.copy(self)
            trial._silence = list(self._silence)  # the only state advance() changes in place
            trial.advance(end_sample, speech)
            spans.add(trial.window())
        return spans.pop() if len(spans) == 1 else None

    def update(self, hypothesis: Sequence[Segment] | Sequence[Word], window_start_s: float) -> Update:
        """Take Whisper's answer for the window last handed out; words carry stream times.

        ``window_start_s`` is where the decoded audio began; it must be the window's start
        (the answer of another window cannot be compared with the hypothesis before it).
        """
        if self._pending is None:
            raise RuntimeError("update() without a window() to answer")
        start, end = self._pending
        if abs(window_start_s * self._sr - start) > self._sr * 0.01:
            raise ValueError(f"answer for a window at {window_start_s:.2f} s, expected {start / self._sr:.2f} s")
        self._pending = None
        self._decoded_end = end
        self.windows += 1
        cfg = self.config

        segments, dropped = drop_hallucinations(
            _as_segments(hypothesis), self._silence, cfg.no_speech_threshold, cfg.min_probability
        )
        self.dropped += dropped
        words = [w for seg in segments for w in seg.words]
        # Whisper sometimes writes nothing, or a word or two, for a window that begins inside
        # speech, and does so again for the same window: then nothing agrees until the bound.
        # The next window starts elsewhere (without the context, or with it again).
        stopped = not words or words[-1].end < end / self._sr - cfg.step_s
        # Segment ends are places to trim the window, except the last one: the window's edge cut it.
        closes = {id(seg.words[-1]) for seg in segments[:-1]}
        words = self._past_committed(words)
        # Whisper also starts an answer seconds into a window that is speech all along, leaving
        # out what it heard first, and may do so twice in a row; agreeing then loses those words
        # for good (a dev-set prompt lost 15 words so). Such a decode is shown but not agreed on,
        # and the next window starts elsewhere, as after an early stop.
        skipped = bool(words) and words[0].start - max(self._commit_s, self._start / self._sr) > cfg.max_gap_s
        self._without_context = (stopped or skipped) and not self._without_context

        agreed = 0 if skipped else _agreed_prefix(self.partial, words, cfg.max_shift_s)
        settled = end / self._sr - cfg.settle_s
        # Settled words need a word after them in the same decode (Whisper that stops writing
        # seconds before the window ends may have made up an ending), and none from a decode
        # that loops: one sentence twice in a row ("He died. He died. He died." was written for
        # the first words of "He might even have been made amiable himself", a LibriVox test
        # sentence), or words piled onto one instant ("7 or 9 to 2 3 4 5 5 5 5 5 5", all at
        # 9.64 s, in an Asterisk prompt). Agreement still commits such words if the next decode
        # writes them too.
        if not (stopped or skipped) and words and words[-1].end > settled and not _loops(words):
            agreed = max(agreed, next(i for i, w in enumerate(words) if w.end > settled))
        newly, rest = words[:agreed], words[agreed:]
        if stopped and len(self.partial) - agreed > len(rest):
            rest = self.partial[agreed:]  # an early stop is no evidence against what the decode before heard
        forced = 0
        utterance_ended = self._flush_end is not None and end >= self._flush_end
        if utterance_ended:
            newly, rest = newly + rest, []  # all of it: an early stop keeps what the decode before heard
        else:
            # The next window (one more step) must fit in the bound: older words go now.
            limit = end + round((cfg.step_s - cfg.max_window_s) * self._sr)
            if limit > self._start:
                old = next((i for i, w in enumerate(rest) if w.mid * self._sr >= limit), len(rest))
                forced = old
                newly, rest = newly + rest[:old], rest[old:]
        self._commit(newly, closes)
        self.forced_words += forced
        self.partial = rest

        if utterance_ended:
            self._move_start(end)
            self._without_context = False
            self._speech, self._flush_end, self._speech_after_flush = self._speech_after_flush, None, False
        else:
            held_s = (end - self._start) / self._sr  # uncommitted audio in this window
            cut_s = self._commit_s if held_s > cfg.trim_words_after_s else self._cut_s
            cut = round(cut_s * self._sr) if cut_s > -math.inf else -1
            if cut > self._start and held_s > cfg.trim_after_s:
                self._move_start(cut)
            if limit > self._start:
                self._move_start(max(limit, min(end, round(self._commit_s * self._sr))))
        return Update(newly, list(self.partial), forced, dropped)

    def cancel(self) -> None:
        """The window handed out will not be answered (the service refused it): forget it. The
        next window starts at the same place and so covers its audio again."""
        self._pending = None

    def finish(self) -> Update:
        """End of stream: the newest hypothesis is all there will be; its words become final."""
        newly = self.partial
        self._commit(newly, set())
        self.partial = []
        self._pending = None
        self._decoded_end = self._end
        self._move_start(self._end)
        self._speech, self._flush_end, self._speech_after_flush = False, None, False
        return Update(newly, [])

    # -- internals --------------------------------------------------------------------------

    def _commit(self, words: list[Word], closes: set[int]) -> None:
        for w in words:
            self.committed.append(w)
            self._commit_s = max(self._commit_s, w.end)
            if id(w) in closes or w.text.strip().endswith(SENTENCE_END):
                self._cut_s = w.end

    def _past_committed(self, words: list[Word]) -> list[Word]:
        """Words of this decode that are not already committed: the window re-hears its context
        (and, until trimmed, committed words of the current sentence).

        Times alone cannot say where committed text ends in a new decode: Whisper moves the same
        word by a few tenths of a second from one decode to the next, so a committed word placed
        late pushes the cut into the next word. So the last committed words are looked for in
        the new decode first (same text, close in time) and everything after them is new; only
        if they are not there (trimmed away, or written differently) does time decide.
        """
        if not self.committed:
            return [w for w in words if w.mid > self._commit_s]  # all of them, unless resumed
        last = self.committed[-1]
        for k in range(min(3, len(self.committed)), 0, -1):
            tail = [word_key(w) for w in self.committed[-k:]]
            near = self.config.max_shift_s if k > 1 else self.config.max_shift_s / 2
            ends = [
                i
                for i in range(k - 1, len(words))
                if abs(words[i].mid - last.mid) <= near and [word_key(w) for w in words[i - k + 1 : i + 1]] == tail
            ]
            if ends:
                anchor = min(ends, key=lambda i: abs(words[i].mid - last.mid))
                return words[anchor + 1 :]
        return [w for w in words if w.mid > self._commit_s]

    def _move_start(self, start: int) -> None:
        """The uncommitted audio now begins at ``start``; its context ``context_s`` before that,
        moved forward into the pause after a committed word it would cut: decoding from half a
        word, Whisper often writes the fragment and stops, and a hypothesis that stops early has
        nothing for the next one to agree with (docs/client.md, "Agreement policy"). Forward,
        not back, so a window never exceeds ``max_window_s + context_s``."""
        self._start = start
        lo = max(0, start - round(self.config.context_s * self._sr))
        t = lo / self._sr
        self._context_start = lo
        for i in range(len(self.committed) - 1, -1, -1):
            w = self.committed[i]
            if w.end <= t:
                break  # t lies in a pause (or after every committed word)
            if w.start < t:
                after = self.committed[i + 1].start if i + 1 < len(self.committed) else w.end
                self._context_start = min(start, round((w.end + max(w.end, after)) / 2 * self._sr))
                break
        self._silence = [(a, b) for a, b in self._silence if b > self._context_start / self._sr]


def _as_segments(hypothesis: Sequence[Segment] | Sequence[Word]) -> list[Segment]:
    segments = [s for s in hypothesis if isinstance(s, Segment)]
    if segments or not hypothesis:
        return segments
    words = [w for w in hypothesis if isinstance(w, Word)]  # plain words: one segment of unknown confidence
    return [Segment(words[0].start, words[-1].end, words)]


def _loops(words: Sequence[Word]) -> bool:
    """Whisper's repetition loop: the words hold the same sentence twice in a row, or
    ``COLLAPSED_WORDS`` words in a row within ``COLLAPSED_S`` (no one says three words in a
    tenth of a second: Whisper ran out of audio for its timestamps and went on writing)."""
    keys = [phrase_key(join_words(sentence)) for sentence in _sentences(Segment(0.0, 0.0, list(words)))]
    if any(a and a == b for a, b in itertools.pairwise(keys)):
        return True
    n = COLLAPSED_WORDS
    return any(words[i + n - 1].end - words[i].start < COLLAPSED_S for i in range(len(words) - n + 1))


def _agreed_prefix(previous: Sequence[Word], new: Sequence[Word], max_shift_s: float) -> int:
    n = 0
    for a, b in zip(previous, new, strict=False):
        if word_key(a) != word_key(b) or abs(a.mid - b.mid) > max_shift_s:
            break
        n += 1
    return n
