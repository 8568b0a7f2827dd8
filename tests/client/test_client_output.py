"""Output formats and the live view."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from client.api import Word
from client.display import Display, meter, progress
from client.output import render, segments, write
from client.stats import Stats

WORDS = [
    Word(0.5, 0.9, " Hello"),
    Word(0.9, 1.3, " there."),
    Word(3.0, 3.4, " Press"),
    Word(3.4, 3.6, " 1."),
    Word(3661.0, 3661.5, " Late"),
]


def test_segments_break_at_pauses_and_sentence_ends() -> None:
    segs = segments(WORDS)
    assert [s.text for s in segs] == ["Hello there.", "Press 1.", "Late"]
    assert (segs[0].start, segs[0].end) == (0.5, 1.3)


def test_txt_is_the_plain_transcript() -> None:
    assert render(WORDS, ".txt") == "Hello there. Press 1. Late\n"


def test_jsonl_has_one_segment_a_line_with_absolute_times_and_words() -> None:
    lines = [json.loads(line) for line in render(WORDS, ".jsonl").splitlines()]
    assert [(r["start"], r["end"], r["text"]) for r in lines] == [
        (0.5, 1.3, "Hello there."),
        (3.0, 3.6, "Press 1."),
        (3661.0, 3661.5, "Late"),
    ]
    assert lines[0]["words"][0] == {"start": 0.5, "end": 0.9, "word": "Hello", "probability": 1.0}


def test_srt_and_vtt_timestamps() -> None:
    srt = render(WORDS, ".srt")
    assert srt.startswith("1\n00:00:00,500 --> 00:00:01,300\nHello there.\n\n2\n")
    assert "3\n01:01:01,000 --> 01:01:01,500\nLate\n" in srt
    vtt = render(WORDS, ".vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.500 --> 00:00:01.300\nHello there.\n")


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.srt"):
        write(tmp_path / "out.docx", WORDS)


def test_write_leaves_no_partial_file(tmp_path: Path) -> None:
    write(tmp_path / "t.vtt", WORDS)
    assert [p.name for p in tmp_path.iterdir()] == ["t.vtt"]


def test_plain_display_prints_committed_lines_and_outage_status() -> None:
    stream, stats = io.StringIO(), Stats()
    clock = iter(range(0, 1000, 1)).__next__
    display = Display(stats, stream=stream, tty=False, clock=lambda: float(clock()))
    display.commit(WORDS[:2])
    stats.backend_down, stats.chunks_held, stats.audio_captured_s = True, 7, 20.0
    display.refresh()
    stats.backend_down, stats.audio_done_s = False, 4.0
    display.refresh()  # leaving the outage is printed at once, not 5 s later
    display.close()
    out = stream.getvalue()
    assert "[0:00] Hello there.\n" in out
    assert "service unreachable, holding 7 chunks (20s of audio)" in out
    assert "catching up: 16s behind, 7 chunks queued" in out
    assert "\x1b[" not in out  # no escape codes when stderr is not a terminal
    assert "0 dropped" in out


def test_tty_display_redraws_in_place_with_partial_text_dimmed() -> None:
    stream = io.StringIO()
    display = Display(Stats(), stream=stream, tty=True)
    display.partial = "and then"
    display.refresh()
    display.refresh()
    out = stream.getvalue()
    assert "\x1b[2mand then\x1b[0m" in out and "\x1b[2K" in out


def test_meter_and_progress_bar() -> None:
    assert meter(-100) == "·" * 10 and meter(0) == "█" * 10 and meter(-30) == "█" * 5 + "·" * 5
    assert progress(30, 120, 10) == "[#####---------------]  25% of 2:00 · 3.0x real time · ETA 0:30"
    assert progress(0, 120, 10).endswith("ETA ?")


def test_display_glues_word_pieces_like_the_transcript() -> None:
    """The live view shows "cold-hearted" as the final transcript does, not "cold -hearted"."""
    stream = io.StringIO()
    display = Display(Stats(), stream=stream, tty=False, clock=lambda: 0.0)
    display.commit([Word(0.0, 0.4, " cold"), Word(0.4, 0.8, "-hearted"), Word(0.8, 1.2, " people.")])
    display.close()
    assert "[0:00] cold-hearted people.\n" in stream.getvalue()
