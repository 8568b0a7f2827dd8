"""Speech timing for the dev set's real recordings that come without it.

``python -m corpus.timing`` runs Whisper base (the project's own model, ``make models``) with
word timestamps over each recording whose ``timing`` is ``whisper-base`` and writes
``corpus/timing.json``: per clip the sha256 of the source file and the speech regions (words
closer than ``MERGE_GAP_S`` merged). The table is committed, so building the dev set needs no
model, and the build refuses a source file whose sha256 is not the one the timing was made on.

This timing is a model's, not a person's: a word Whisper missed is counted as no speech (that
chunk may then drop out of the recall measurement), and one it invented as speech.
"""

from __future__ import annotations

import json
import re
import sys

from corpus.devset import RECORDINGS, TIMING_TABLE, _source_path, download, recording_samples
from corpus.fetch import sha256_of

MERGE_GAP_S = 0.3


def word_regions(samples, model, language: str) -> list[tuple[float, float]]:
    segments, _ = model.transcribe(
        samples, language=language, beam_size=1, word_timestamps=True, condition_on_previous_text=False
    )
    regions: list[list[float]] = []
    for segment in segments:
        for word in segment.words or []:
            if regions and word.start - regions[-1][1] < MERGE_GAP_S:
                regions[-1][1] = max(regions[-1][1], word.end)
            else:
                regions.append([word.start, word.end])
    return [(round(a, 2), round(b, 2)) for a, b in regions if b > a]


def main() -> int:
    from faster_whisper import WhisperModel

    from services.common.models import resolve_model

    model = WhisperModel(resolve_model("base"), device="cpu", compute_type="int8")
    base, tree = download()
    table = {}
    for rec in RECORDINGS:
        if rec.timing != "whisper-base":
            continue
        regions = word_regions(recording_samples(rec, base, tree), model, rec.language)
        table[rec.name] = {"sha256": sha256_of(_source_path(rec, base, tree)), "regions": regions}
        print(f"{rec.name}: {len(regions)} regions, {sum(b - a for a, b in regions):.1f} s of speech", flush=True)
    meta = {"_about": "speech regions from Whisper base word timestamps (python -m corpus.timing)"}
    TIMING_TABLE.write_text(dumps(meta | dict(sorted(table.items()))))
    return 0


def dumps(table: dict) -> str:
    """JSON with one ``[start, end]`` pair per line (reviewable diffs)."""
    text = json.dumps(table, indent=1)
    return re.sub(r"\[\s*(-?[\d.]+),\s*(-?[\d.]+)\s*\]", r"[\1, \2]", text) + "\n"


if __name__ == "__main__":
    sys.exit(main())
