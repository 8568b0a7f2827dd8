"""Speech detectors on 3 s chunks, through the real tiny service: how dear each one is, how
much speech it lets through, how often it calls music, noise or silence speech.

Each chunk is asked of both detectors back to back (interleaved), so machine noise hits both
alike. ``ms_per_chunk`` is the service's own ``processing_ms`` (the detector's work, without
HTTP and decoding); ``request_ms`` is the round trip.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np

from bench.metrics import summarize_ms
from core.audio import to_wav_bytes

NAMES = ("silero", "whisper-tiny")


def _ask(client: httpx.Client, url: str, name: str, chunk: np.ndarray) -> tuple[bool, float, float]:
    response = client.post(
        f"{url}/detect",
        params={"detector": name},
        content=to_wav_bytes(chunk),
        headers={"Content-Type": "audio/wav"},
    )
    response.raise_for_status()
    body = response.json()
    return bool(body["speech"]), body["processing_ms"] / 1000, response.elapsed.total_seconds()


def run(
    tiny_url: str,
    speech: list[np.ndarray],
    nonspeech: list[tuple[str, np.ndarray]],
    whisper_tiny_speech: int,
    whisper_tiny_nonspeech: int,
    tick: Callable[[], None],
) -> dict:
    """Silero sees every chunk; Whisper tiny (~40x dearer) sees the first ``whisper_tiny_speech``
    speech chunks and ``whisper_tiny_nonspeech`` non-speech chunks spread evenly over the set."""
    stride = max(1, -(-len(nonspeech) // max(whisper_tiny_nonspeech, 1)))
    work: dict[str, dict[str, list]] = {
        n: {"cost": [], "rtt": [], "speech": [], "false": [], "nonspeech": []} for n in NAMES
    }
    with httpx.Client(timeout=120) as client:
        for i, chunk in enumerate(speech):
            for name in NAMES if i < whisper_tiny_speech else NAMES[:1]:
                said, cost, rtt = _ask(client, tiny_url, name, chunk)
                work[name]["cost"].append(cost)
                work[name]["rtt"].append(rtt)
                work[name]["speech"].append(said)
            tick()
        for i, (kind, chunk) in enumerate(nonspeech):
            for name in NAMES if i % stride == 0 else NAMES[:1]:
                said, cost, rtt = _ask(client, tiny_url, name, chunk)
                work[name]["cost"].append(cost)
                work[name]["rtt"].append(rtt)
                work[name]["nonspeech"].append(kind)
                if said:
                    work[name]["false"].append(kind)
            tick()
    out = {}
    for name, w in work.items():
        costs = summarize_ms(w["cost"])
        out[name] = {
            "ms_per_chunk": costs["mean"],
            "ms_per_chunk_p50": costs["p50"],
            "request_ms": summarize_ms(w["rtt"]),
            "speech_recall": round(sum(w["speech"]) / len(w["speech"]), 4),
            "speech_chunks": len(w["speech"]),
            "nonspeech_false_positive_rate": round(len(w["false"]) / len(w["nonspeech"]), 4),
            "nonspeech_chunks": len(w["nonspeech"]),
            "false_positives_by_kind": {k: w["false"].count(k) for k in sorted(set(w["false"]))},
        }
    out["cost_ratio_whisper_tiny_over_silero"] = round(
        out["whisper-tiny"]["ms_per_chunk"] / max(out["silero"]["ms_per_chunk"], 1e-6), 1
    )
    return out
