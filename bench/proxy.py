"""What the proxy adds to a request: the same request straight to base and through the
proxy, alternating, so that both see the same machine noise.

The request is a real 3 s chunk (a 96 kB WAV, as the client sends) of room tone with
``vad=true``: base decodes it, runs Silero and answers at once, so the model's variable
~300 ms of work does not drown a difference of a millisecond. The overhead at each
percentile is that percentile through the proxy minus the same percentile direct.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import numpy as np

from bench.metrics import percentile, summarize_ms
from core.audio import to_wav_bytes


def run(base_url: str, proxy_url: str, pairs: int, tick: Callable[[], None]) -> dict:
    rng = np.random.default_rng(3)
    body = to_wav_bytes((rng.normal(0, 0.002, 48_000)).astype(np.float32))
    headers = {"Content-Type": "audio/wav"}
    params = {"vad": "true", "language": "en"}
    targets = {"direct": f"{base_url}/transcribe-chunk", "proxied": f"{proxy_url}/transcribe"}
    times: dict[str, list[float]] = {"direct": [], "proxied": []}
    with httpx.Client(timeout=30) as client:
        for url in targets.values():  # warm both connections and code paths
            for _ in range(5):
                client.post(url, params=params, content=body, headers=headers).raise_for_status()
        for i in range(pairs):
            order = ("direct", "proxied") if i % 2 == 0 else ("proxied", "direct")
            for name in order:
                start = time.perf_counter()
                client.post(targets[name], params=params, content=body, headers=headers).raise_for_status()
                times[name].append(time.perf_counter() - start)
            if i % 10 == 0:
                tick()
    direct, proxied = times["direct"], times["proxied"]
    overhead = {f"p{q}": round((percentile(proxied, q) - percentile(direct, q)) * 1000, 2) for q in (50, 95, 99)}
    paired = [p - d for p, d in zip(proxied, direct, strict=True)]
    return {
        "overhead_ms": overhead,
        "paired_difference_ms": summarize_ms(paired),
        "direct_ms": summarize_ms(direct),
        "proxied_ms": summarize_ms(proxied),
        "pairs": pairs,
        "request": "3 s WAV chunk (96 kB) of room tone, vad=true",
    }
