"""Speech a window's decode skipped: found from word times and Silero, decoded again, spliced in.

The unit layer checks the rule on made-up words and probabilities; the slow test damages a real
base answer on real speech (removes a phrase, as Whisper's skip does) and checks that the real
service code finds the hole and the real model fills it, in the right place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import math
import re

import numpy as np
import pytest

from core.vocabulary import SAMPLE_RATE
from services.base.coverage import (
    GapRule,
    between_words,
    holes_between_words,
    neighbour_bounds,
    repair_span,
    repair_span_around,
    splice,
    uncovered_speech,
)
from services.common.speech import FRAME

FRAME_S = FRAME / SAMPLE_RATE


def probs_for(seconds: float, speech: list[tuple[float, float]]) -> np.ndarray:
    """Silero-like frame probabilities: 0.9 inside the ``speech`` spans, 0.05 elsewhere."""
    p = np.full(int(np.ceil(seconds / FRAME_S)), 0.05, np.float32)
    for a, b in speech:
        p[int(a / FRAME_S) : int(np.ceil(b / FRAME_S))] = 0.9
    return p


def word(text: str, start: float, end: float) -> dict:
    return {"word": f" {text}", "start": start, "end": end, "probability": 0.9}


def repair_of(texts: list[str], times: list[tuple[float, float]]) -> list[dict]:
    """A repair's answer: one segment of ``texts`` at ``times`` (relative to the repair's audio)."""
    words = [word(t, a, b) for t, (a, b) in zip(texts, times, strict=True)]
    return [{"start": words[0]["start"], "end": words[-1]["end"], "text": "", "words": words}]


def text_of(segments: list[dict]) -> str:
    return " ".join(w["word"].strip() for seg in segments for w in seg["words"])


def test_speech_no_word_covers_is_a_gap_and_a_pause_is_not() -> None:
    words = [word("one", 0.0, 0.5), word("two", 0.5, 1.0), word("nine", 5.0, 5.5)]
    probs = probs_for(6.0, [(0.0, 5.5)])  # speech throughout: 1.2-4.8 s holds no word
    [(start, end)] = uncovered_speech(words, probs, 6.0)
    assert start == pytest.approx(1.2, abs=FRAME_S) and end == pytest.approx(4.8, abs=FRAME_S)
    silence = probs_for(6.0, [(0.0, 1.0), (5.0, 5.5)])  # the same hole is a pause
    assert uncovered_speech(words, silence, 6.0) == []


def test_short_holes_and_the_words_own_edges_are_not_gaps() -> None:
    words = [word("a", 0.0, 1.0), word("b", 2.2, 3.0), word("c", 3.0, 4.0)]
    probs = probs_for(4.2, [(0.0, 4.2)])
    assert uncovered_speech(words, probs, 4.2) == []  # 1.2 - 2.0 s is under 1.5 s
    assert uncovered_speech(words, probs, 4.2, GapRule(min_gap_s=0.5)) != []


def test_a_hole_at_the_end_of_the_window_counts_and_no_words_is_all_gap() -> None:
    probs = probs_for(10.0, [(0.0, 10.0)])
    [(start, end)] = uncovered_speech([word("first", 0.0, 2.0)], probs, 10.0)
    assert start == pytest.approx(2.2, abs=FRAME_S) and end == 10.0
    assert uncovered_speech([], probs, 10.0) == [(0.0, 10.0)]
    assert uncovered_speech([], np.zeros(0, np.float32), 0.0) == []


def test_a_live_window_is_checked_between_its_first_and_last_word_only() -> None:
    rule = GapRule(min_gap_s=0.5)
    words = [word("connection", 1.9, 2.4), word("press", 3.6, 4.2), word("seven", 4.2, 4.6)]
    assert holes_between_words(words, rule)  # 1.2 s apart: room for 0.5 s of speech past the 0.2 s pads
    assert not holes_between_words([word("a", 0.0, 1.0), word("b", 1.8, 2.0)], rule)  # 0.8 s < 0.5 + 2 x 0.2
    assert not holes_between_words([word("only", 0.0, 0.4)], rule) and not holes_between_words([], rule)
    # a word that lies over the next one's start still closes the hole (times as aligned, unordered)
    assert not holes_between_words([word("b", 1.5, 2.0), word("long", 0.0, 1.8), word("c", 2.1, 2.5)], rule)
    probs = probs_for(6.0, [(0.0, 6.0)])  # speech before, between and after the words
    gaps = uncovered_speech(words, probs, 6.0, rule)
    assert len(gaps) == 3  # the window's start, the hole, and its edge after the last word
    [(start, end)] = between_words(gaps, words)
    assert start == pytest.approx(2.6, abs=FRAME_S) and end == pytest.approx(3.4, abs=FRAME_S)
    assert between_words(gaps, []) == []


def test_a_hole_between_words_takes_every_word_the_repair_heard_between_its_neighbours() -> None:
    # as measured on a real window: "press" aligned over "key" of the skipped phrase, so the gap
    # (speech no padded word covers) ends before "key" does
    window = [word("connection.", 1.9, 2.4), word("Press", 3.6, 4.2), word("7", 4.2, 4.6)]
    segments = [{"start": 1.9, "end": 4.6, "text": " connection. Press 7", "avg_logprob": -0.2, "words": window}]
    gap, offset = (2.69, 3.39), 2.19  # the repair heard 2.19-3.89 s of the window
    heard = ["connection.", "Followed", "by", "the", "pound", "key.", "Press"]
    times = [(0.0, 0.2), (0.25, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.05), (1.05, 1.4), (1.43, 1.62)]
    repaired = repair_of(heard, times)
    bounds = neighbour_bounds(window, gap, repaired, offset)
    assert text_of(splice(segments, gap, repaired, offset, bounds)) == "connection. Followed by the pound key. Press 7"
    assert text_of(splice(segments, gap, repaired, offset, gap)) == "connection. by the pound Press 7"  # the gap alone
    # neighbours the repair did not write: their middles bound it (a repeated "press" is not taken)
    repaired[0]["words"] = repaired[0]["words"][1:6]
    assert text_of(splice(segments, gap, repaired, offset, neighbour_bounds(window, gap, repaired, offset))) == (
        "connection. Followed by the pound key. Press 7"
    )


def test_a_hole_after_the_last_word_keeps_a_first_word_aligned_into_the_margin() -> None:
    # as measured on the continuous dev recording's whole file: the window's decode stopped at
    # "search.", and its repair wrote "feels" from the very start of its audio, so the word's
    # middle lay in the margin, before the gap, and the gap alone dropped it
    window = [word("your", 16.95, 17.2), word("search.", 17.2, 17.62)]
    segments = [{"start": 16.95, "end": 17.62, "text": " your search.", "avg_logprob": -0.2, "words": window}]
    gap = (17.7, 21.8)
    lo, hi = repair_span_around(window, gap, 22.0)
    assert (lo, hi) == (17.2, 22.0)  # the word before whole; nothing after to widen to
    heard = ["feels", "like", "these", "days", "go", "on", "forever."]
    times = [(0.0, 0.9), (0.9, 1.5), (1.5, 2.2), (2.2, 2.7), (2.7, 3.2), (3.2, 3.8), (3.8, 4.3)]
    repaired = repair_of(heard, times)
    assert (
        text_of(splice(segments, gap, repaired, lo, gap)) == "your search. like these days go on forever."
    )  # the gap alone
    bounds = neighbour_bounds(window, gap, repaired, lo)
    assert bounds[1] == math.inf
    assert text_of(splice(segments, gap, repaired, lo, bounds)) == "your search. feels like these days go on forever."
    # a repair that wrote the word before again: its copy is the bound, so it is not taken twice
    repaired[0]["words"] = [word("search.", 0.0, 0.4), *repaired[0]["words"]]
    repaired[0]["words"][1] = word("Feels", 0.66, 0.96)
    bounds = neighbour_bounds(window, gap, repaired, lo)
    assert text_of(splice(segments, gap, repaired, lo, bounds)) == "your search. Feels like these days go on forever."


def test_a_live_repair_refused_for_overload_leaves_the_answer_as_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from core.errors import ApiError
    from services.base import app
    from services.base.transcriber import Request, Result

    words = [word("connection", 1.9, 2.4), word("press", 3.6, 4.2)]
    segment = {"start": 1.9, "end": 4.2, "text": " connection press", "words": words}
    result = Result(" connection press", "en", 1.0, 6.0, [segment], beam_size=5)
    speech = SimpleNamespace(frame_probabilities=lambda audio: probs_for(6.0, [(0.0, 6.0)]))
    monkeypatch.setattr(app, "shared_detector", lambda: speech)
    asked: list[Request] = []

    async def overloaded(chunk: Request, priority, deadline=None, admitted=False):
        asked.append(chunk)
        raise ApiError(429, "overloaded", "busy")

    engine = SimpleNamespace(live_gap_rule=GapRule(min_gap_s=0.5), batcher=SimpleNamespace(submit=overloaded))
    chunk = Request(np.zeros(6 * SAMPLE_RATE, np.float32), "en", "earlier words", True, beam_size=5)
    assert asyncio.run(app.fill_skipped_live(engine, chunk, result, None)) is result
    # one repair was asked for: the hole's audio and both words around it, the chunk's settings, no prompt
    [again] = asked
    assert again.samples.size == pytest.approx(2.3 * SAMPLE_RATE, abs=0.05 * SAMPLE_RATE)
    assert (again.beam_size, again.language, again.prompt) == (5, "en", None)
    # a window the batcher decoded greedily under load is repaired greedily too
    under_load = dataclasses.replace(result, beam_size=1)
    assert asyncio.run(app.fill_skipped_live(engine, chunk, under_load, None)) is under_load
    assert asked[-1].beam_size == 1
    asked[1:] = []
    engine.live_gap_rule = None  # STT_LIVE_SKIPPED_SPEECH_MIN_S=0: not even asked
    assert asyncio.run(app.fill_skipped_live(engine, chunk, result, None)) is result and len(asked) == 1


def test_a_repair_hears_a_margin_either_side_within_the_window() -> None:
    assert repair_span((2.0, 4.0), 10.0) == (1.5, 4.5)
    assert repair_span((0.2, 9.9), 10.0) == (0.0, 10.0)
    # between two words: at least the margin, and both words whole
    words = [word("connection.", 1.9, 2.4), word("press", 3.6, 4.2)]
    assert repair_span_around(words, (2.69, 3.39), 6.0) == (1.9, 4.2)
    long_gap = [word("a", 0.0, 2.8), word("b", 5.2, 5.4)]
    assert repair_span_around(long_gap, (3.1, 4.9), 5.3) == (0.0, 5.3)  # within the window


def test_splice_puts_the_gap_words_between_the_words_around_it() -> None:
    segment = {
        "start": 0.0,
        "end": 6.0,
        "text": " press six to delete",
        "avg_logprob": -0.2,
        "words": [word("press", 0.0, 0.4), word("six", 0.4, 0.8), word("to", 4.8, 5.0), word("delete", 5.0, 6.0)],
    }
    # the gap's own decode, relative to its span (1.0 s into the window): the margin words are
    # the window's already and are dropped
    repaired = [
        {
            "start": 0.0,
            "end": 3.6,
            "text": " six to repeat this message",
            "avg_logprob": -0.3,
            "words": [
                word("six", 0.0, 0.3),
                word("to", 0.5, 0.7),
                word("repeat", 0.8, 1.3),
                word("this", 1.4, 1.8),
                word("message", 1.9, 3.2),
                word("to", 3.6, 3.8),
            ],
        }
    ]
    out = splice([segment], (1.2, 4.4), repaired, offset_s=1.0, bounds=(1.2, 4.4))
    assert [s["text"] for s in out] == [" press six", " to repeat this message", " to delete"]
    assert [w["start"] for s in out for w in s["words"]] == sorted(w["start"] for s in out for w in s["words"])
    assert out[1]["avg_logprob"] == -0.3 and out[1]["start"] == 1.5 and out[1]["end"] == 4.2
    assert out[0]["avg_logprob"] == -0.2  # the split halves keep their own fields
    assert splice([segment], (1.2, 4.4), [{"text": "", "words": []}], 1.0, (1.2, 4.4)) == [segment]


@pytest.mark.slow
def test_a_phrase_removed_from_a_real_answer_comes_back_from_the_real_model_in_a_file_and_a_live_chunk() -> None:
    from corpus import long_recording
    from services.base.app import Engine, FileJob, fill_skipped, fill_skipped_live
    from services.base.settings import TranscriberSettings
    from services.base.transcriber import Request

    samples = long_recording(20, seed=7, gap=0).samples()[: int(25 * SAMPLE_RATE)]
    engine = Engine(TranscriberSettings(compute_type="int8"))
    window = (0, samples.size)
    [full] = engine.transcriber.transcribe([Request(samples, "en", None, True)])
    words = [w for s in full.segments for w in s["words"]]
    assert len(words) > 30, full.text
    # a Whisper skip: every word between 30 % and 55 % of the words gone, and the text with it
    lo, hi = len(words) * 3 // 10, len(words) * 55 // 100
    removed = words[lo:hi]
    assert removed[-1]["end"] - removed[0]["start"] > 2.0
    kept = {id(w) for w in words[:lo] + words[hi:]}
    damaged_segments = []
    for seg in full.segments:
        left = [w for w in seg["words"] if id(w) in kept]
        if left:
            damaged_segments.append({**seg, "words": left, "text": "".join(w["word"] for w in left)})
    damaged = type(full)(
        text="".join(s["text"] for s in damaged_segments).strip(),
        language="en",
        language_probability=1.0,
        duration_s=full.duration_s,
        segments=damaged_segments,
    )
    job = FileJob(samples, [window], "en", None, "json", False, "transcribe")

    async def run() -> tuple:
        engine.batcher.start()
        try:
            repaired = await fill_skipped(engine, job, window, damaged, "en")
            # the same hole in a live chunk's answer (a session's window asks with fill_skipped)
            live = await fill_skipped_live(engine, Request(samples, "en", None, True, beam_size=5), damaged, None)
            engine.gap_rule = None
            return repaired, live, await fill_skipped(engine, job, window, damaged, "en")
        finally:
            await engine.batcher.stop()

    repaired, live, unchecked = asyncio.run(run())

    def norm(text: str) -> list[str]:
        return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()

    # the phrase back, in its place (order counts): as close to the undamaged answer as a second
    # decode of the same words can be ("one" may come back as "1")
    similar = difflib.SequenceMatcher(None, norm(full.text), norm(repaired.text)).ratio()
    before = difflib.SequenceMatcher(None, norm(full.text), norm(damaged.text)).ratio()
    assert similar > 0.9 and similar > before + 0.1, (repaired.text, full.text)
    assert all("words" not in s for s in repaired.segments)  # not asked for: not returned
    assert unchecked.text == damaged.text  # off: nothing is added
    live_similar = difflib.SequenceMatcher(None, norm(full.text), norm(live.text)).ratio()
    assert live_similar > 0.9 and live_similar > before + 0.1, (live.text, full.text)
    live_words = [w for s in live.segments for w in s["words"]]  # a live answer keeps its words, in order
    assert len(live_words) > len(words) - len(removed)
    assert [w["start"] for w in live_words] == sorted(w["start"] for w in live_words)


def stand_in_engine(
    monkeypatch: pytest.MonkeyPatch,
    window: list[dict],
    repaired: list[dict],
    speech: list[tuple[float, float]],
    rule: GapRule,
) -> tuple[object, list]:
    """A base engine whose model answers ``window`` to the first chunk and ``repaired`` to every
    later one (the repairs), with Silero hearing ``speech``; also the list of chunks it was asked."""
    from types import SimpleNamespace

    from services.base import app
    from services.base.transcriber import Request, Result

    asked: list[Request] = []

    async def submit(chunk: Request, priority, deadline=None, admitted=False):
        asked.append(chunk)
        words = window if len(asked) == 1 else repaired
        segment = {"start": words[0]["start"], "end": words[-1]["end"], "text": "", "words": words}
        segment["text"] = "".join(w["word"] for w in words)
        duration = chunk.samples.size / SAMPLE_RATE
        return Result(segment["text"].strip(), "en", 1.0, duration, [segment], beam_size=chunk.beam_size), 1

    detector = SimpleNamespace(frame_probabilities=lambda audio: probs_for(audio.size / SAMPLE_RATE, speech))
    monkeypatch.setattr(app, "shared_detector", lambda: detector)
    engine = SimpleNamespace(
        batcher=SimpleNamespace(submit=submit, hung=lambda: None),
        live_gap_rule=rule,
        describe=lambda: {"model": "stand-in"},
        model_name="stand-in",
    )
    return engine, asked


async def test_a_session_window_asking_fill_skipped_gets_the_skipped_words_back_over_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``/transcribe-chunk?fill_skipped=true`` through the real base app (a stand-in model): the
    hole between two words is sent again, from the word before it to the word after, and what came
    back between them is in the answer; without the flag the model is asked once."""
    from tests.services.base_harness import serving

    window = [word("connection.", 1.9, 2.4), word("Press", 3.6, 4.2)]
    heard = [word("connection.", 0.0, 0.5), word("followed", 0.55, 0.9), word("by", 0.9, 1.0)]
    heard += [word("the", 1.0, 1.1), word("pound", 1.1, 1.35), word("key", 1.35, 1.65), word("Press", 1.7, 2.2)]
    engine, asked = stand_in_engine(monkeypatch, window, heard, [(0.0, 6.0)], GapRule(min_gap_s=0.5))
    pcm = np.zeros(6 * SAMPLE_RATE, "<i2").tobytes()
    headers = {"content-type": "audio/pcm;rate=16000"}
    async with serving(engine) as client:
        plain = await client.post("/transcribe-chunk?language=en&beam_size=5", content=pcm, headers=headers)
        assert plain.status_code == 200 and len(asked) == 1
        assert plain.json()["text"] == "connection. Press"
        asked.clear()
        filled = await client.post(
            "/transcribe-chunk?language=en&beam_size=5&fill_skipped=true", content=pcm, headers=headers
        )
    assert filled.status_code == 200, filled.text
    assert filled.json()["text"] == "connection. followed by the pound key Press"
    assert filled.json()["beam_size"] == 5
    [_, again] = asked
    assert again.beam_size == 5 and again.samples.size == pytest.approx(2.3 * SAMPLE_RATE, abs=160)
    words = [w for s in filled.json()["segments"] for w in s["words"]]
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)


async def test_the_last_window_of_a_stream_gets_the_speech_after_its_last_word_back_with_fill_tail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A beam search can end its decode early and leave the window's last phrase out (on an AVX2
    CPU the last window of a continuous recording came back "… 8 of spades" without "4 of clubs
    7 of hearts"). Between-word repair cannot see that, and no later window follows a stream's
    last one: with ``fill_tail=true`` the speech after the last word is decoded again on its own
    and comes back; with ``fill_skipped`` alone (every other window, whose end the next window
    decodes again) the model is asked once."""
    from tests.services.base_harness import serving

    window = [word("8", 0.5, 0.8), word("of", 0.8, 0.95), word("spades", 0.95, 1.5)]
    heard = [word("spades", 0.0, 0.3), word("4", 0.6, 0.9), word("of", 0.9, 1.0), word("clubs", 1.0, 1.5)]
    heard += [word("7", 1.7, 2.0), word("of", 2.0, 2.1), word("hearts", 2.1, 2.7)]
    engine, asked = stand_in_engine(monkeypatch, window, heard, [(0.4, 4.3)], GapRule())
    pcm = np.zeros(5 * SAMPLE_RATE, "<i2").tobytes()
    headers = {"content-type": "audio/pcm;rate=16000"}
    query = "/transcribe-chunk?language=en&beam_size=5&fill_skipped=true"
    async with serving(engine) as client:
        inner = await client.post(query, content=pcm, headers=headers)
        assert inner.status_code == 200 and len(asked) == 1
        assert inner.json()["text"] == "8 of spades"
        asked.clear()
        last = await client.post(query + "&fill_tail=true", content=pcm, headers=headers)
    assert last.status_code == 200, last.text
    assert last.json()["text"] == "8 of spades 4 of clubs 7 of hearts"
    [_, again] = asked
    assert again.beam_size == 5
    words = [w for s in last.json()["segments"] for w in s["words"]]
    assert [w["word"].strip() for w in words].count("spades") == 1  # the margin's word is the window's already
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
