"""Accuracy on the dev set, per category and split, for every way a user can get a transcript.

The same files go through four paths, all in one run so machine and model are the same:

- ``offline``: plain faster-whisper on each whole file (the 16-bit WAV the endpoint is sent), no VAD
  (:mod:`bench.offline`);
- ``whole_file``: the project's ``/v1/audio/transcriptions`` through the proxy (Silero windows,
  batching);
- ``streamed``: what ``stt-client --file`` does by default: a ``/v1/stream`` session (the proxy
  runs the agreement commit policy), fed as fast as the session takes it;
- ``previous_default``: the HTTP client as it shipped before sessions (3 s chunks, 1 s overlap,
  2 s context, word-timestamp stitching), kept so that the goals compare with it in the same run.

Every file is transcribed in its own language (given, as a user who knows it would). WER is
reported overall, per category and per split (dev, held-out): the held-out third is measured
here and never used to choose settings. Non-speech clips go through the same paths; any word
they produce is counted separately (``nonspeech_words``), since a transcript of music is the
failure that matters there, not a ratio.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import defaultdict
from collections.abc import Callable

import httpx
import numpy as np

from bench.data import Item
from bench.metrics import word_errors
from bench.streaming import PREVIOUS_DEFAULT, stream
from client.sources import ArraySource
from client.stitcher import join_words
from client.ws_transport import WsSettings, WsTransport
from core.audio import to_wav_bytes
from core.vocabulary import SAMPLE_RATE

PATHS = ("whole_file", "streamed", "previous_default")


def dev_items(seconds_per_group: float, seed: int = 2026) -> list[Item]:
    """Dev-set clips that have a reference transcript, at most ``seconds_per_group`` of audio per
    (category, split), picked in a seeded order so every run scores the same files."""
    from bench.data import recall_set

    clips = [c for c in recall_set("all") if c.text.strip()]
    order = np.random.default_rng(seed).permutation(len(clips))
    used: dict[tuple[str, bool], float] = defaultdict(float)
    items = []
    for i in order:
        clip = clips[int(i)]
        group = (clip.category, clip.held_out)
        samples = clip.samples()
        seconds = samples.size / SAMPLE_RATE
        if used[group] and used[group] + seconds > seconds_per_group:
            continue
        used[group] += seconds
        items.append(Item(clip.name, samples, clip.text, clip.language or "en", clip.category, clip.held_out))
    return sorted(items, key=lambda it: (it.category, it.held_out, it.name))


async def _whole_file(client: httpx.AsyncClient, url: str, item: Item) -> str:
    response = await client.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": (f"{item.name}.wav", to_wav_bytes(item.samples), "audio/wav")},
        data={"model": "whisper-1", "language": item.language, "response_format": "json"},
    )
    response.raise_for_status()
    return response.json()["text"]


async def _session(url: str, item: Item) -> str:
    transport = WsTransport(ArraySource(item.samples, realtime=False), [url], WsSettings(language=item.language))
    return join_words(await transport.run())


async def _previous(url: str, item: Item) -> str:
    client = dataclasses.replace(PREVIOUS_DEFAULT, language=item.language)
    return (await stream(url, item.samples, client, realtime=False)).text


# Files in flight at once per path. Two whole files or HTTP-chunk streams keep both cores busy.
# Sessions go one at a time: a second session's window waits behind the first's, and a window
# that has waited STT_LIVE_GREEDY_AFTER_WAIT_S (1 s) is decoded greedily instead of by the beam
# search the default asks for: two at once measured a mix that depends on the machine's hour, in
# about the same wall time (docs/performance.md, "Sessions one at a time").
PARALLEL = {"whole_file": 2, "streamed": 1, "previous_default": 2}


async def transcribe(path: str, url: str, items: list[Item], tick: Callable[[], None]) -> list[str]:
    """Every item through one path, :data:`PARALLEL` at a time."""
    gate = asyncio.Semaphore(PARALLEL[path])
    async with httpx.AsyncClient(timeout=600) as http:

        async def one(item: Item) -> str:
            async with gate:
                if path == "whole_file":
                    text = await _whole_file(http, url, item)
                elif path == "streamed":
                    text = await _session(url, item)
                else:
                    text = await _previous(url, item)
                tick()
                return text

        return list(await asyncio.gather(*(one(item) for item in items)))


def breakdown(items: list[Item], texts: list[str]) -> dict:
    """Corpus WER overall, per category and per split (``dev``/``held_out``), and per both."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        split = "held_out" if item.held_out else "dev"
        for key in ("overall", f"category:{item.category}", f"split:{split}", f"{split}:{item.category}"):
            groups[key].append(i)

    def wer(indices: list[int]) -> dict:
        counts = word_errors(
            [items[i].text for i in indices], [texts[i] for i in indices], [items[i].language for i in indices]
        )
        return {**counts.as_dict(), "files": len(indices), "audio_s": round(sum(items[i].seconds for i in indices), 1)}

    out: dict = wer(groups.pop("overall"))
    out["categories"] = {k.split(":", 1)[1]: wer(v) for k, v in sorted(groups.items()) if k.startswith("category:")}
    out["splits"] = {k.split(":", 1)[1]: wer(v) for k, v in sorted(groups.items()) if k.startswith("split:")}
    for split in ("dev", "held_out"):
        prefix = f"{split}:"
        out["splits"].setdefault(split, {})["categories"] = {
            k[len(prefix) :]: wer(v) for k, v in sorted(groups.items()) if k.startswith(prefix)
        }
    return out


def nonspeech_words(path: str, url: str, clips: list[Item], tick: Callable[[], None]) -> dict:
    """Words each path writes for recordings that hold no speech (music, noise, silence)."""
    texts = asyncio.run(transcribe(path, url, clips, tick))
    found = {item.name: text for item, text in zip(clips, texts, strict=True) if text.strip()}
    return {"clips": len(clips), "words": sum(len(t.split()) for t in found.values()), "texts": found}
