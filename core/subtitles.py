"""SRT and WebVTT rendering of timed segments (used by the OpenAI-compatible endpoint and the client)."""

from __future__ import annotations

from collections.abc import Iterable


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def to_srt(segments: Iterable[dict]) -> str:
    blocks = []
    for index, seg in enumerate(segments, start=1):
        start, end = _timestamp(seg["start"], ","), _timestamp(seg["end"], ",")
        blocks.append(f"{index}\n{start} --> {end}\n{seg['text'].strip()}\n")
    return "\n".join(blocks)


def to_vtt(segments: Iterable[dict]) -> str:
    blocks = ["WEBVTT\n"]
    for seg in segments:
        blocks.append(f"{_timestamp(seg['start'], '.')} --> {_timestamp(seg['end'], '.')}\n{seg['text'].strip()}\n")
    return "\n".join(blocks)
