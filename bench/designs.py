"""The design document's pipeline as written against what the project ships, on the same
audio, one real-time stream each, run back to back.

- seed: fixed 3 s chunks without overlap, Whisper tiny as the detector, one request per
  chunk, the full 30 s encoder window, no batching;
- this: 3 s chunks with 1 s overlap and word-timestamp stitching, Silero VAD, the trimmed
  encoder window, dynamic batching.

CPU seconds per audio second counts every service process (tiny, base, proxy).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from bench.metrics import summarize_ms, word_errors
from bench.stacks import BenchStack, cpu_delta
from bench.streaming import PREVIOUS_DEFAULT, SEED, Client, StreamResult, stream


def _one(stack: BenchStack, client: Client, samples: np.ndarray, text: str) -> tuple[dict, StreamResult]:
    before = stack.cpu_seconds()
    result = asyncio.run(stream(stack.proxy_url, samples, client, realtime=True))
    cpu = cpu_delta(before, stack.cpu_seconds())
    return {
        **{k: v for k, v in word_errors([text], [result.text]).as_dict().items() if k == "wer"},
        "latency_ms": summarize_ms(result.latencies_s),
        "commit_latency_ms": summarize_ms(result.commit_latencies_s),
        "cpu_s_per_audio_s": round(sum(cpu.values()) / result.audio_s, 4),
        "service_cpu_s": cpu,
        "chunks": result.chunks,
        "retries": result.retries,
        "text": result.text,
        "chunks_nonspeech": result.chunks_nonspeech,
        "_latencies": result.latencies_s,
        "client": {
            "chunk_s": client.chunk_s,
            "overlap_s": client.overlap_s,
            "context_s": client.context_s,
            "detector": client.detector or "silero",
        },
    }, result


def run(
    design: BenchStack,
    baseline: BenchStack,
    samples: np.ndarray,
    text: str,
    tick: Callable[[], None],
    whatif: BenchStack | None = None,
) -> tuple[dict, StreamResult]:
    this, this_result = _one(design, PREVIOUS_DEFAULT, samples, text)
    tick()
    seed, _ = _one(baseline, SEED, samples, text)
    tick()
    extra = {}
    if whatif is not None:
        extra["this_design_batch1"], _ = _one(whatif, PREVIOUS_DEFAULT, samples, text)
        extra["this_design_batch1"]["stack_env"] = whatif.env
        tick()
    ratios = {
        "cpu_s_per_audio_s": round(seed["cpu_s_per_audio_s"] / max(this["cpu_s_per_audio_s"], 1e-9), 2),
        "latency_p50": round(seed["latency_ms"]["p50"] / max(this["latency_ms"]["p50"], 1e-9), 2),
    }
    out = {
        "seed_design": seed,
        "this_design": this,
        **extra,
        "seed_over_this": ratios,
        "audio_s": round(samples.size / 16_000, 1),
    }
    return out, this_result
