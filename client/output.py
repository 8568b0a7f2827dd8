"""Write the final transcript as .txt, .jsonl (segments with absolute times), .srt or .vtt.

Segments are formed from the stitched words, not taken from any one chunk: a chunk's
segments end wherever the chunk did, which is nowhere meaningful. A new segment starts at a
pause, after a sentence end once the segment has some length, or when it grows too long to
read as a subtitle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from client.api import Word
from client.stitcher import join_words
from core.subtitles import to_srt, to_vtt

FORMATS = (".txt", ".jsonl", ".srt", ".vtt")


@dataclass
class Segment:
    start: float
    end: float
    words: list[Word]

    @property
    def text(self) -> str:
        return join_words(self.words)


def segments(words: list[Word], pause_s: float = 0.8, sentence_min_s: float = 1.5, max_s: float = 7.0) -> list[Segment]:
    out: list[Segment] = []
    current: list[Word] = []
    for word in words:
        if current:
            prev = current[-1]
            length = prev.end - current[0].start
            ends_sentence = prev.text.strip().endswith((".", "?", "!"))
            if word.start - prev.end > pause_s or (ends_sentence and length >= sentence_min_s) or length >= max_s:
                out.append(Segment(current[0].start, prev.end, current))
                current = []
        current.append(word)
    if current:
        out.append(Segment(current[0].start, current[-1].end, current))
    return out


def render(words: list[Word], fmt: str) -> str:
    """The transcript in one of :data:`FORMATS`."""
    if fmt == ".txt":
        return join_words(words) + "\n"
    segs = segments(words)
    if fmt == ".jsonl":
        lines = []
        for i, seg in enumerate(segs):
            record = {
                "id": i,
                "start": round(seg.start, 3),
                "end": round(seg.end, 3),
                "text": seg.text,
                "words": [
                    {
                        "start": round(w.start, 3),
                        "end": round(w.end, 3),
                        "word": w.text.strip(),
                        "probability": round(w.probability, 3),
                    }
                    for w in seg.words
                ],
            }
            lines.append(json.dumps(record, ensure_ascii=False))
        return "".join(line + "\n" for line in lines)
    if fmt in (".srt", ".vtt"):
        timed = [{"start": seg.start, "end": seg.end, "text": seg.text} for seg in segs]
        return to_srt(timed) if fmt == ".srt" else to_vtt(timed)
    raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(FORMATS)}")


def write(path: Path, words: list[Word]) -> None:
    """Write atomically (temp file + rename): a Ctrl-C during the write leaves no half file."""
    fmt = path.suffix.lower()
    text = render(words, fmt)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
