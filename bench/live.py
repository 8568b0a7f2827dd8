"""One live stream through a ``/v1/stream`` session at real-time pace, timed from the client's side.

The figures the goals compare with the previous default's one real-time stream
(:mod:`bench.designs`) on the same audio:

- first partial: the frame holding a step's last sample sent → that step's partial received
  (what the person watching waits for something new on screen);
- commit: the frame holding a word's end sent → the event committing that word;
- service CPU seconds per second of audio (tiny + base + proxy).
"""

from __future__ import annotations

import asyncio

import numpy as np

from bench.metrics import scrape, summarize_ms, word_errors
from bench.sessions import FRAME_S, pcm16, session_text, step_latencies, stream_session, word_latencies, ws_url
from bench.stacks import BenchStack, cpu_delta


def compute_type(stack: BenchStack) -> str:
    """The compute type the stack's transcriber runs (``auto`` is resolved at its start-up), so
    that the offline baseline decodes with the same arithmetic."""
    for labels, value in scrape(stack.base_url, "stt_device_info"):
        if value == 1:
            return labels["compute_type"]
    raise RuntimeError(f"{stack.base_url}/metrics has no stt_device_info")


def session(stack: BenchStack, samples: np.ndarray, text: str, language: str = "en") -> dict:
    before = stack.cpu_seconds()
    timed = asyncio.run(stream_session(ws_url(stack.proxy_url, language=language), pcm16(samples)))
    cpu = cpu_delta(before, stack.cpu_seconds())
    audio_s = samples.size / 16_000
    steps = step_latencies(timed)
    words = word_latencies(timed)
    return {
        "wer": round(word_errors([text], [session_text(timed)], [language]).wer, 4),
        "first_partial_ms": summarize_ms(steps),
        "first_shown_ms": summarize_ms(words["first_shown"]),
        "commit_ms": summarize_ms(words["committed"]),
        "cpu_s_per_audio_s": round(sum(cpu.values()) / audio_s, 4),
        "service_cpu_s": cpu,
        "source": {"audio_s": round(audio_s, 1), "streams": 1, "frame_s": FRAME_S, "pacing": "real time"},
        "_first_partial": steps,
        "_commit": words["committed"],
    }
