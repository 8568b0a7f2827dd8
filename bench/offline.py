"""The baseline a user would write themselves: one faster-whisper pass over each whole file,
in this process, with the model and decoding settings the service uses (same model
directory, int8 on CPU / float16 on CUDA, greedy decoding with transcribe's default temperature
fallback, language given).

The file is the 16-bit WAV the whole-file endpoint is sent (a session gets the same 16-bit
samples), read by faster-whisper itself, as ``model.transcribe("recording.wav")`` reads it. The
dev set's clips are made as float samples, finer than any recording a user has; decoded from
those, Whisper wrote some words differently from the file's, so the goals compared every path
against audio that only the baseline heard (docs/performance.md, "The offline baseline reads
the file")."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import ctranslate2
from faster_whisper import WhisperModel

from bench.data import Item
from bench.metrics import word_errors
from core.audio import to_wav_bytes
from services.common.models import provision

SEED = 2026


def run(items: list[Item], device: str, tick: Callable[[], None], compute_type: str | None = None) -> dict:
    """``compute_type``: what the service resolved ``auto`` to (the same arithmetic on both sides)."""
    compute_type = compute_type or ("float16" if device == "cuda" else "int8")
    # transcribe's temperature fallback samples (a few files in a hundred): seeded before the
    # model's threads first draw, so the baseline is the same from run to run, not only its mean.
    ctranslate2.set_random_seed(SEED)
    model = WhisperModel(str(provision("base")), device=device, compute_type=compute_type, cpu_threads=0)
    texts, seconds = [], 0.0
    cpu_before = time.process_time()
    for item in items:
        wav = io.BytesIO(to_wav_bytes(item.samples))  # the file the whole-file path uploads, a user's recording
        start = time.perf_counter()  # timed from the file: writing it is the bench's work, not the baseline's
        segments, _ = model.transcribe(wav, language=item.language, beam_size=1)
        texts.append(" ".join(s.text.strip() for s in segments))  # the generator does the work
        seconds += time.perf_counter() - start
        tick()
    cpu = time.process_time() - cpu_before
    audio = sum(i.seconds for i in items)
    counts = word_errors([i.text for i in items], texts, [i.language for i in items])
    del model
    return {
        **counts.as_dict(),
        "rtf": round(seconds / audio, 4),
        "audio_s": round(audio, 1),
        "processing_s": round(seconds, 2),
        "cpu_s_per_audio_s": round(cpu / audio, 4),
        "files": len(items),
        "settings": {
            "model": "base",
            "compute_type": compute_type,
            "beam_size": 1,
            "language": "each file's own",
            "input": "16-bit WAV",
        },
        "_texts": texts,
    }
