"""Compare ``--transport ws`` and ``--transport http`` on the same recording, live-paced.

``python -m bench.transports --url http://127.0.0.1:5001 --seconds 60`` plays a recording
of real speech (:func:`corpus.long_recording`) at real-time pace, as a microphone would, through
each transport in turn (the HTTP pipeline with the stitcher, its default; with the agreement
policy, which is what the proxy's session runs, so the transport alone differs; and the
WebSocket session) and prints, per run:

- WER against the reference text (whisper_normalizer's EnglishTextNormalizer on both sides);
- *first shown*: wall-clock seconds from the moment a word's last sample was played until text
  covering it was on screen (partial or committed), p50 / p95 over the transcript's words;
- *first text*: seconds from the start until anything was on screen;
- *commit*: seconds from a word's last sample until it was final (p50 / p95; words made final
  only by the end of the stream are left out, as in :mod:`bench.client_eval`).

Unlike :mod:`bench.client_eval` (which replays in stream time, so the numbers hold on any
machine), these are wall-clock and include the request times of the machine they run on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.client_eval import wer
from client.api import SttApi, Word
from client.dispatcher import Outcome
from client.pipeline import Pipeline, Settings
from client.sources import ArraySource, Block
from client.stats import Stats
from client.stitcher import join_words
from client.ws_transport import WsSettings, WsTransport
from corpus import long_recording
from corpus.fetch import read_wav

MODES = ("http-stitch", "http-agreement", "ws")


class PacedSource(ArraySource):
    """Real-time pace, remembering when it began (the clock a word's latency counts from)."""

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__(samples, realtime=True)
        self.began: float | None = None

    async def blocks(self) -> AsyncIterator[Block]:
        async for block in super().blocks():
            if self.began is None:
                self.began = time.monotonic()
            yield block


@dataclass
class Run:
    mode: str
    words: list[Word]
    began: float
    seconds: float
    shown: list[tuple[float, list[tuple[float, float]]]] = field(default_factory=list)  # (at, word spans)
    committed_at: dict[int, float] = field(default_factory=dict)  # id(word) -> when it became final
    stats: Stats = field(default_factory=Stats)

    def latencies(self) -> dict[str, float]:
        first: list[float] = []
        final: list[float] = []
        for w in self.words:
            heard = self.began + w.end
            seen = next((at for at, spans in self.shown if any(s < w.end and e > w.start for s, e in spans)), None)
            if seen is not None:
                first.append(seen - heard)
            if id(w) in self.committed_at:
                final.append(self.committed_at[id(w)] - heard)
        out = {"first_text_s": round(self.shown[0][0] - self.began, 2) if self.shown else float("nan")}
        for name, values in (("first_shown", first), ("commit", final)):
            for q in (50, 95):
                out[f"{name}_p{q}_s"] = round(float(np.percentile(values, q)), 2) if values else float("nan")
        return out


def _spans(words: list[Word]) -> list[tuple[float, float]]:
    return [(w.start, w.end) for w in words]


async def run_http(samples: np.ndarray, url: str, policy: str, language: str) -> Run:
    source = PacedSource(samples)
    api = SttApi(url)
    stats = Stats()
    pipeline = Pipeline(source, api, Settings(policy=policy, language=language), stats)
    run = Run(f"http-{policy}", [], 0.0, 0.0, stats=stats)

    def record(outcome: Outcome) -> None:
        now = time.monotonic()
        if outcome.update is not None:  # agreement: what this answer showed
            newly, screen = outcome.update.committed, pipeline.committed + outcome.update.partial
        else:
            committed = pipeline.stitcher.committed
            newly = [w for w in committed if id(w) not in run.committed_at]
            screen = committed + pipeline.stitcher.partial
        for w in newly:
            run.committed_at.setdefault(id(w), now)
        if screen:
            run.shown.append((now, _spans(screen)))

    pipeline.on_outcome = record
    began = time.monotonic()
    try:
        run.words = await pipeline.run()
    finally:
        await api.aclose()
    run.began, run.seconds = source.began or began, time.monotonic() - began
    return run


async def run_ws(samples: np.ndarray, url: str, language: str) -> Run:
    source = PacedSource(samples)
    stats = Stats()
    transport = WsTransport(source, [url], WsSettings(language=language), stats)
    run = Run("ws", [], 0.0, 0.0, stats=stats)
    seen = 0

    def record(event: dict, at: float) -> None:
        nonlocal seen
        if event.get("type") not in ("transcript.committed", "transcript.partial"):
            return
        for w in transport.committed[seen:]:
            run.committed_at[id(w)] = at
        seen = len(transport.committed)
        screen = transport.committed + transport.partial
        if screen:
            run.shown.append((at, _spans(screen)))

    transport.on_event = record
    began = time.monotonic()
    run.words = await transport.run()
    run.began, run.seconds = source.began or began, time.monotonic() - began
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transports", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:5001")
    p.add_argument("--seconds", type=float, default=60.0, help="length of the recording")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gap", type=float, default=0.6, help="pause between the recording's sentences (0: continuous)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--language", default="en")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)

    clip = long_recording(args.seconds, args.seed, args.gap)
    samples = read_wav(clip.path)
    print(f"recording: {clip.path} ({samples.size / 16000:.0f} s, {len(clip.text.split())} reference words)")
    print(
        f"{'mode':16s} {'WER %':>6s} {'words':>5s} {'first text':>10s} {'shown p50/p95':>14s} "
        f"{'commit p50/p95':>14s} {'sent s':>7s} {'wall s':>6s}"
    )
    results = []
    for mode in args.modes.split(","):
        if mode == "ws":
            run = asyncio.run(run_ws(samples, args.url, args.language))
        else:
            run = asyncio.run(run_http(samples, args.url, mode.removeprefix("http-"), args.language))
        text = join_words(run.words)
        w = wer(clip.text, text)
        lat = run.latencies()
        print(
            f"{mode:16s} {w:6.2f} {len(run.words):5d} {lat['first_text_s']:10.2f} "
            f"{lat['first_shown_p50_s']:6.2f}/{lat['first_shown_p95_s']:<7.2f} "
            f"{lat['commit_p50_s']:6.2f}/{lat['commit_p95_s']:<7.2f} {run.stats.audio_sent_s:7.1f} {run.seconds:6.0f}"
        )
        results.append({"mode": mode, "wer": round(w, 2), "words": len(run.words), **lat, "text": text})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
