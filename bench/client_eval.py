"""Measure the streaming client against one offline pass of the same model.

``python -m bench.client_eval --url http://127.0.0.1:5001 --seconds 180`` streams a long
recording of real speech (:func:`corpus.long_recording`) through the client pipeline (as
fast as the service allows), transcribes the same file in one offline faster-whisper pass
(base, CPU, int8), and prints:

- WER of each against the reference transcript (both sides normalised with
  whisper_normalizer's EnglishTextNormalizer: the references mix "press 4" and "press one");
- boundary errors: words the stream has twice, or lacks, near a chunk boundary, found by
  aligning the streamed words with the offline words (same model, so a difference right at a
  seam is the seam's fault);
- words produced on non-speech audio (music, noise, tones, clicks, silence): should be 0.

``--overlaps 0,0.5,1,1.5`` sweeps the overlap; ``--baseline`` adds independent 3 s chunks
with no overlap, no prompt, texts simply joined (what stitching has to beat).

``--policies stitch,agreement`` compares the two commit policies (docs/client.md); ``--windows``,
``--steps`` and ``--trims`` sweep the agreement policy's settings. For each run it also prints
what a live user would see, replayed in stream time (one request at a time): *first shown*,
from a word's end in the audio until text covering it is on screen (partial or final), and
*commit*, until it is final; p50/p95 over the words of the transcript (words made final only
by the end of the stream are left out). *decoded* is audio seconds sent to ``/transcribe`` per
second of audio. The table shows the policy's own delay (answers
counted at their last sample; the same on any machine) and the median request time on this
machine apart; ``--json`` also holds the latencies with the measured round trips added.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from client.api import SttApi, Word
from client.dispatcher import Outcome
from client.pipeline import Pipeline, Settings
from client.sources import ArraySource
from client.stats import Stats
from client.stitcher import join_words, norm
from core.commit_policy import PolicyConfig
from corpus import long_recording, nonspeech_clips
from corpus.fetch import read_wav

_normalizer = EnglishTextNormalizer()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate in percent after Whisper's English normalisation of both sides."""
    ref, hyp = _normalizer(reference), _normalizer(hypothesis)
    if not ref.strip():
        return 0.0 if not hyp.strip() else 100.0
    return 100.0 * jiwer.wer(ref, hyp)


def offline_words(path: Path, language: str = "en") -> list[Word]:
    """One faster-whisper pass over the whole file (cached beside the recording)."""
    cache = path.with_suffix(".offline-base.json")
    if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
        return [Word(**w) for w in json.loads(cache.read_text())]
    from faster_whisper import WhisperModel

    from services.common.models import provision

    model = WhisperModel(str(provision("base")), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(str(path), language=language, word_timestamps=True)
    words = [Word(w.start, w.end, w.word, w.probability) for s in segments for w in (s.words or [])]
    cache.write_text(json.dumps([w.__dict__ for w in words]))
    return words


@dataclass
class BoundaryErrors:
    duplicates: int = 0
    drops: int = 0
    examples: list[str] = field(default_factory=list)


def boundary_errors(
    streamed: list[Word], offline: list[Word], boundaries: list[tuple[float, float]], margin: float = 0.4
) -> BoundaryErrors:
    """Count words doubled or missing near chunk boundaries.

    ``boundaries`` are the shared windows (start, end) between consecutive chunks (start ==
    end without overlap). A streamed word with no counterpart offline that repeats one of its
    neighbours, inside a window, is a duplicate; an offline word with no counterpart in the
    stream, inside a window, is a drop.
    """

    def near(t: float) -> bool:
        return any(lo - margin <= t <= hi + margin for lo, hi in boundaries)

    out = BoundaryErrors()
    s_norm, o_norm = [norm(w.text) for w in streamed], [norm(w.text) for w in offline]
    for op, i1, i2, j1, j2 in SequenceMatcher(None, o_norm, s_norm, autojunk=False).get_opcodes():
        if op in ("insert", "replace"):
            for j in range(j1, j2):
                neighbours = {s_norm[k] for k in range(max(0, j - 2), min(len(s_norm), j + 3)) if k != j}
                extra = j - j1 >= (i2 - i1)  # in a replace, only the words beyond a 1:1 substitution
                if (op == "insert" or extra) and s_norm[j] in neighbours and near(streamed[j].mid):
                    out.duplicates += 1
                    out.examples.append(f"dup {streamed[j].text.strip()!r} at {streamed[j].start:.1f}s")
        if op in ("delete", "replace"):
            for i in range(i1, i2):
                missing = i - i1 >= (j2 - j1)
                if (op == "delete" or missing) and near(offline[i].mid):
                    out.drops += 1
                    out.examples.append(f"drop {offline[i].text.strip()!r} at {offline[i].start:.1f}s")
    return out


@dataclass
class Shown:
    """What the screen held after one answer, and when (stream time; see the module docstring)."""

    audio_end: float  # the last audio sample the answer had heard
    request_s: float  # the round trip of its request
    words: list[Word]  # committed and partial
    newly: list[Word]  # became final with this answer


@dataclass
class StreamRun:
    words: list[Word]
    boundaries: list[tuple[float, float]]
    stats: Stats
    seconds: float
    shown: list[Shown] = field(default_factory=list)
    forced: int = 0
    request_s: float = 0.0


async def stream(samples: np.ndarray, url: str, settings: Settings) -> StreamRun:
    """Push samples through the real client pipeline and keep what the evaluation needs."""
    chunks: list[tuple[float, float]] = []
    shown: list[Shown] = []
    pipeline: Pipeline | None = None
    request_s = 0.0
    committed_before = 0

    def record(outcome: Outcome) -> None:
        nonlocal request_s, committed_before
        assert pipeline is not None
        request_s += outcome.request_s
        if outcome.update is not None:  # agreement: the window's edges are where words get cut
            assert outcome.window is not None
            chunks.append(outcome.window)
            new = outcome.update
            shown.append(Shown(outcome.window[1], outcome.request_s, new.committed + new.partial, new.committed))
            return
        chunks.append((outcome.audio_start, outcome.chunk.end))
        if pipeline.policy is None:  # stitch: a skipped chunk commits too
            committed = pipeline.stitcher.committed
            newly, committed_before = committed[committed_before:], len(committed)
            shown.append(Shown(outcome.chunk.end, outcome.request_s, committed + pipeline.stitcher.partial, newly))

    api = SttApi(url)
    stats = Stats()
    began = time.monotonic()
    try:
        pipeline = Pipeline(ArraySource(samples), api, settings, stats, on_outcome=record)
        words = await pipeline.run()
    finally:
        await api.aclose()
    if pipeline.policy is not None:
        boundaries = [(end, end) for _, end in chunks] + [(start, start) for start, _ in chunks]
        boundaries.sort()
    else:
        boundaries = [(b_start, a_end) for (_, a_end), (b_start, _) in itertools.pairwise(chunks)]
    forced = pipeline.policy.forced_words if pipeline.policy else 0
    return StreamRun(words, boundaries, stats, time.monotonic() - began, shown, forced, request_s)


def latencies(run: StreamRun, with_requests: bool = True) -> dict[str, float]:
    """p50/p95 seconds from a word's end in the audio until it is first shown / final.

    ``with_requests``: an answer arrives its measured round trip after its last sample
    (depends on the machine and its load); without, at its last sample (the policy's own
    delay, the same on every machine)."""

    def at(s: Shown) -> float:
        return s.audio_end + (s.request_s if with_requests else 0.0)

    committed_at: dict[int, float] = {}
    for s in run.shown:
        for w in s.newly:
            committed_at.setdefault(id(w), at(s))
    first: list[float] = []
    final: list[float] = []
    for w in run.words:
        if id(w) not in committed_at:
            continue  # made final only by the end of the stream
        final.append(committed_at[id(w)] - w.end)
        seen = next((at(s) for s in run.shown if any(v.start < w.end and v.end > w.start for v in s.words)), None)
        if seen is not None:
            first.append(seen - w.end)
    out = {}
    for name, values in (("first_shown", first), ("commit", final)):
        for q in (50, 95):
            out[f"{name}_p{q}_s"] = round(float(np.percentile(values, q)), 2) if values else float("nan")
    return out


async def stream_independent(samples: np.ndarray, url: str, chunk_s: float, language: str) -> StreamRun:
    """The baseline: independent chunks, no overlap, no prompt, texts joined (words kept as they come)."""
    settings = Settings(
        chunk_s=chunk_s, overlap_s=0.0, prompt=False, language=language, concurrency=1, resend_empty=False
    )
    return await stream(samples, url, settings)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.client_eval",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument("--url", default="http://127.0.0.1:5001")
    p.add_argument("--seconds", type=float, default=180.0, help="length of the long recording")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gap", type=float, default=0.6, help="pause between the recording's sentences (0: continuous)")
    p.add_argument("--chunk", type=float, default=3.0)
    p.add_argument("--overlaps", default="1.0", help="comma-separated overlaps to measure (seconds)")
    p.add_argument("--contexts", default="0", help="comma-separated left contexts to measure (seconds)")
    p.add_argument("--prompt", choices=("on", "off", "both"), default="off")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--language", default="en")
    p.add_argument("--baseline", action="store_true", help="also measure independent chunks without stitching")
    p.add_argument("--policies", default="stitch", help="comma-separated: stitch, agreement")
    p.add_argument("--steps", default=str(PolicyConfig.step_s), help="agreement: seconds of new audio per decode")
    p.add_argument("--windows", default=str(PolicyConfig.max_window_s), help="agreement: window bounds (seconds)")
    p.add_argument(
        "--trims", default=str(PolicyConfig.trim_after_s), help="agreement: trim only windows longer than (seconds)"
    )
    p.add_argument("--nonspeech-seconds", type=float, default=30.0, help="non-speech audio to stream (0: skip)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)

    clip = long_recording(args.seconds, args.seed, args.gap)
    samples = read_wav(clip.path)
    print(f"recording: {clip.path} ({samples.size / 16000:.0f} s, {len(clip.text.split())} reference words)")
    began = time.monotonic()
    offline = offline_words(clip.path, args.language)
    offline_wer = wer(clip.text, join_words(offline))
    print(f"offline base (one pass, int8): WER {offline_wer:.2f}%  ({time.monotonic() - began:.0f} s)")
    results: list[dict] = [{"mode": "offline", "wer": round(offline_wer, 2)}]

    runs: list[tuple[str, Settings | None]] = []
    if args.baseline:
        runs.append(("independent chunks, texts joined", None))
    prompts = {"on": [True], "off": [False], "both": [True, False]}[args.prompt]
    contexts = _floats(args.contexts)
    policies = args.policies.split(",")
    if "stitch" in policies:
        for overlap, context, prompt in itertools.product(_floats(args.overlaps), contexts, prompts):
            if context > args.chunk:
                continue  # the stitcher's context is audio before one chunk: at most a chunk long
            settings = Settings(
                chunk_s=args.chunk,
                overlap_s=overlap,
                context_s=context,
                prompt=prompt,
                language=args.language,
                concurrency=args.concurrency,
                detector=True,
            )
            label = f"stitched, overlap {overlap:.2f} s, context {context:.1f} s, prompt {'on' if prompt else 'off'}"
            runs.append((label, settings))
    if "agreement" in policies:
        for step, window, context, trim in itertools.product(
            _floats(args.steps), _floats(args.windows), contexts, _floats(args.trims)
        ):
            settings = Settings(
                policy="agreement",
                step_s=step,
                window_s=window,
                context_s=context,
                trim_after_s=trim,
                language=args.language,
                detector=True,
            )
            label = f"agreement, step {step:g} s, window {window:g} s, context {context:g} s, trim {trim:g} s"
            runs.append((label, settings))

    duration = samples.size / 16000
    print(
        f"{'mode':66s} {'WER %':>6s} {'Δ off':>6s} {'dups':>4s} {'drops':>5s} {'shown p50/p95':>13s} "
        f"{'commit p50/p95':>14s} {'req ms':>6s} {'decoded':>7s} {'reqs':>4s} {'forced':>6s} {'time s':>6s}"
    )
    for label, config in runs:
        if config is None:
            run = asyncio.run(stream_independent(samples, args.url, args.chunk, args.language))
        else:
            run = asyncio.run(stream(samples, args.url, config))
        text = join_words(run.words)
        w = wer(clip.text, text)
        errors = boundary_errors(run.words, offline, run.boundaries)
        lat = latencies(run, with_requests=False)
        measured = {f"measured_{k}": v for k, v in latencies(run).items()}
        request_ms = 1000 * float(np.median([s.request_s for s in run.shown if s.request_s] or [0.0]))
        decoded = run.stats.audio_sent_s / duration
        print(
            f"{label:66s} {w:6.2f} {w - offline_wer:+6.2f} {errors.duplicates:4d} {errors.drops:5d} "
            f"{lat['first_shown_p50_s']:6.2f}/{lat['first_shown_p95_s']:<6.2f} "
            f"{lat['commit_p50_s']:6.2f}/{lat['commit_p95_s']:<7.2f} {request_ms:6.0f} {decoded:7.2f} "
            f"{run.stats.chunks_sent:4d} "
            f"{run.forced:6d} {run.seconds:6.0f}"
        )
        for example in errors.examples[:8]:
            print(f"    {example}")
        results.append(
            {
                "mode": label,
                "policy": config.policy if config else "independent",
                "wer": round(w, 2),
                "delta_vs_offline": round(w - offline_wer, 2),
                "boundary_duplicates": errors.duplicates,
                "boundary_drops": errors.drops,
                "overlap_s": config.overlap_s if config else 0.0,
                "context_s": config.context_s if config else 0.0,
                "prompt": config.prompt if config else False,
                "step_s": config.step_s if config and config.policy == "agreement" else None,
                "window_s": config.window_s if config and config.policy == "agreement" else None,
                "trim_after_s": config.trim_after_s if config and config.policy == "agreement" else None,
                **lat,
                **measured,
                "request_ms_p50": round(request_ms),
                "decoded_s_per_audio_s": round(decoded, 2),
                "service_s_per_audio_s": round(run.request_s / duration, 3),
                "requests": run.stats.chunks_sent,
                "forced_words": run.forced,
                "chunks": run.stats.chunks_captured,
                "dropped": run.stats.chunks_dropped,
                "resent_with_lead": run.stats.chunks_resent_with_lead,
                "seconds": round(run.seconds, 1),
                "text": text,
            }
        )

    if args.nonspeech_seconds > 0:
        pieces, total = [], 0
        for c in nonspeech_clips():
            pieces.append(c.samples())
            total += pieces[-1].size
            if total >= args.nonspeech_seconds * 16000:
                break
        noise = np.concatenate(pieces)
        for policy in policies:
            settings = Settings(
                chunk_s=args.chunk,
                overlap_s=_floats(args.overlaps)[0],
                context_s=contexts[0],
                language=args.language,
                concurrency=args.concurrency,
                detector=True,
                policy=policy,
                step_s=_floats(args.steps)[0],
                window_s=_floats(args.windows)[0],
                trim_after_s=_floats(args.trims)[0],
            )
            run = asyncio.run(stream(noise, args.url, settings))
            print(
                f"non-speech, {policy} ({noise.size / 16000:.0f} s of music/noise/tones/clicks/silence, "
                f"detector on): {len(run.words)} words {join_words(run.words)!r}"
            )
            results.append(
                {
                    "mode": "nonspeech",
                    "policy": policy,
                    "words": len(run.words),
                    "text": join_words(run.words),
                    "seconds_audio": round(noise.size / 16000, 1),
                }
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
