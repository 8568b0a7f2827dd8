"""Seams between a whole file's speech windows that fall inside speech.

A file is cut into windows of at most 30 s (``services.base.app.speech_windows``). Where speech
runs on without a pause for longer than that, the cut falls at the least speech-like frame, which
in continuous speech is a short gap between two words of one sentence: Whisper then hears the
sentence's first half without its end and its second half without its start, and guesses at
both ("He was not | an ill-disposed young man" came back as "an ill-sposed"). Plain
faster-whisper never cuts there: it decodes 30 s, keeps the segments that ended, and starts the
next window where the unfinished one began.

This module does the same at seams only: the segment of a window that runs into a seam is not
kept, and the next window starts where it began, so that sentence is heard whole once. Windows
that end in a pause are left as they are (and stay free to run in parallel).
"""

from __future__ import annotations

from core.vocabulary import WHISPER_WINDOW_S

SEAM_SPAN_S = 24.0  # speech without a pause is cut into pieces this long: 6 s of room to carry
TOUCH_S = 1.0  # a last segment ending this close to the seam ran into it
ONSET_MARGIN_S = 0.15  # start the next window this much before the carried segment's first word


def is_seam(windows: list[tuple[int, int]], index: int) -> bool:
    """Whether window ``index`` ends where the next one starts: a cut inside speech, not a pause."""
    return index + 1 < len(windows) and windows[index][1] == windows[index + 1][0]


def carry_point(segments: list[dict], window_s: float, next_window_s: float) -> float | None:
    """Seconds into a window (segments' times are relative to it) where the next window should
    start instead of at the seam, or None to keep the seam.

    The last segment is carried when it reaches the seam (ends within ``TOUCH_S`` of it), at
    least one segment stays (so every window makes progress), and the next window, made longer
    by the carried audio, still fits Whisper's 30 s window."""
    if len(segments) < 2 or segments[-1]["end"] < window_s - TOUCH_S:
        return None
    last, kept = segments[-1], segments[-2]
    words = last.get("words") or []
    onset = words[0]["start"] if words else last["start"]
    start = max(min(kept["end"], onset), onset - ONSET_MARGIN_S)
    if start <= 0 or start >= window_s or window_s - start + next_window_s > WHISPER_WINDOW_S:
        return None
    return start
