"""``python -m bench.policy_sweep``: commit-policy settings compared on the same real answers.

Each setting of :class:`core.commit_policy.PolicyConfig` is replayed over the bench's dev-set
files (the dev split of :func:`bench.accuracy.dev_items`, never the held-out part: settings
are chosen here) and the 24 s recording the bench times its live session on, against a real
``tiny`` and ``base`` started for the run. Steps go through ``/detect`` and windows through
``/transcribe-chunk`` exactly as a ``/v1/stream`` session sends them; each distinct window is
decoded once and its answer reused by every setting that asks for it, so settings differ only
by the policy.

Latency is replayed in stream time, one decode at a time: a window's answer arrives when the
audio reached its end plus the measured decode time (or when the decode before finished, if
later). *first partial*: a step's end until its answer; *commit*: a word's end until the
answer that committed it (words made final only by the end of the stream are left out). On a
quiet machine the decode times are the same as the bench's; the gaps between settings are what
matters. *decoded*: audio seconds sent to ``/transcribe-chunk`` per second of audio.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.accuracy import dev_items
from bench.data import Item, long_files
from bench.metrics import percentile, word_errors
from bench.sessions import pcm16
from core.commit_policy import CommitPolicy, PolicyConfig, Segment
from core.language_lock import LanguageLock
from core.vocabulary import SAMPLE_RATE, SESSION_BEAM_SIZE
from services.local_stack import Stack, free_ports

PCM = {"content-type": "audio/pcm;rate=16000"}
# The settings compared in docs/client.md ("Settle and trim").
PRESETS: dict[str, dict] = {
    "local-agreement": {"settle_s": math.inf, "trim_words_after_s": math.inf},
    "settle 2 s": {"trim_words_after_s": math.inf},
    "settle 2 s, trim words always": {"trim_words_after_s": 0.0},
    "settle 2 s, trim words past 4 s (default)": {},
    "settle 2 s, trim words past 6 s": {"trim_words_after_s": 6.0},
    "settle 2 s, trim words past 8 s": {"trim_words_after_s": 8.0},
    "settle 1.5 s, trim words past 4 s": {"settle_s": 1.5},
    "settle 1.5 s, trim words always": {"settle_s": 1.5, "trim_words_after_s": 0.0},
    "settle 1 s, trim words always": {"settle_s": 1.0, "trim_words_after_s": 0.0},
}


@dataclass
class Answers:
    """The services' answers, each asked for once."""

    base: str
    tiny: str
    beam_size: int = SESSION_BEAM_SIZE  # Whisper's beams per window, as a session decodes them
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=300))
    cache: dict[str, tuple] = field(default_factory=dict)

    def detect(self, pcm: bytes) -> bool:
        key = "d" + hashlib.sha1(pcm).hexdigest()
        if key not in self.cache:
            response = self.client.post(self.tiny + "/detect", content=pcm, headers=PCM)
            response.raise_for_status()
            self.cache[key] = (bool(response.json()["speech"]),)
        return self.cache[key][0]

    def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> tuple[list[dict], float, str, float]:
        """Segments, the decode's seconds, and the language (detected when ``language`` is None)
        with Whisper's probability for it. ``last``: the stream's last window (``fill_tail``)."""
        key = "t" + hashlib.sha1(pcm).hexdigest() + (language or "?") + f"b{self.beam_size}f" + ("t" if last else "")
        if key not in self.cache:
            start = time.perf_counter()
            query = "word_timestamps=true&fill_skipped=true" + ("&fill_tail=true" if last else "")
            query += f"&language={language}" if language else ""
            query += f"&beam_size={self.beam_size}"
            response = self.client.post(f"{self.base}/transcribe-chunk?{query}", content=pcm, headers=PCM)
            response.raise_for_status()
            body = response.json()
            seconds = time.perf_counter() - start
            self.cache[key] = (
                body.get("segments") or [],
                seconds,
                body.get("language") or "",
                float(body.get("language_probability") or 0.0),
            )
        return self.cache[key]


@dataclass
class Replayed:
    text: str
    first_partial_s: list[float]
    commit_s: list[float]
    decoded_s: float


def replay(answers: Answers, config: PolicyConfig, item: Item, language: str = "given") -> Replayed:
    """One stream through the policy, as a session steps it (the last step shorter).

    ``language``: ``given`` (each file's own, as the bench asks), ``detected`` (on every window,
    as sessions did before the lock) or ``locked`` (:class:`core.language_lock.LanguageLock`,
    what a session does when the client gives none)."""
    policy, lock = CommitPolicy(config), LanguageLock()
    samples, step = item.samples, round(config.step_s * SAMPLE_RATE)
    clock, processed, decoded = 0.0, 0, 0.0
    first, commits = [], []
    while processed < samples.size:
        end = min(samples.size, processed + step)
        speech = answers.detect(pcm16(samples[processed:end])) if end - processed >= SAMPLE_RATE // 2 else True
        policy.advance(end, speech)
        processed = end
        clock = max(clock, end / SAMPLE_RATE)
        if (span := policy.window()) is None:
            continue
        start, stop = span
        asked = {"given": item.language, "detected": None, "locked": lock.language}[language]
        last = stop == samples.size  # as a session's last window: nothing decodes its end again
        segments, seconds, detected, probability = answers.transcribe(pcm16(samples[start:stop]), asked, last)
        lock.observe(detected, probability, sum(len(s.get("words") or []) for s in segments))
        decoded += (stop - start) / SAMPLE_RATE
        clock += seconds
        update = policy.update(Segment.parse(segments, start / SAMPLE_RATE), start / SAMPLE_RATE)
        first.append(clock - stop / SAMPLE_RATE)
        commits += [clock - w.end for w in update.committed]
    policy.finish()
    return Replayed(policy.committed_text, first, commits, decoded)


def joined_by_language(items: list[Item], seconds: float) -> list[Item]:
    """The other-language clips of ``items`` back to back (0.4 s apart), per language, in
    streams of at least ``seconds`` (a shorter rest joins the last one): a speaker talking on in
    one language, which is where a stream's language lock matters (docs/client.md)."""
    gap = np.zeros(round(0.4 * SAMPLE_RATE), np.float32)
    by_language: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.category == "other-languages":
            by_language[item.language].append(item)
    joined: list[Item] = []
    for language, clips in sorted(by_language.items()):
        groups: list[list[Item]] = [[]]
        for clip in clips:
            if sum(c.seconds for c in groups[-1]) >= seconds:
                groups.append([])
            groups[-1].append(clip)
        if len(groups) > 1 and sum(c.seconds for c in groups[-1]) < seconds / 2:
            rest = groups.pop()
            groups[-1] += rest
        for n, group in enumerate(groups):
            samples = np.concatenate([part for clip in group for part in (clip.samples, gap)])
            text = " ".join(clip.text for clip in group)
            joined.append(Item(f"{language}-{n}", samples, text, language, f"joined {language}"))
    return joined


def measure(answers: Answers, config: PolicyConfig, items: list[Item], timed: Item, language: str = "given") -> dict:
    runs = [replay(answers, config, item, language) for item in items]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups["all"].append(i)
        groups[item.category].append(i)
    wer = {
        name: word_errors([items[i].text for i in idx], [runs[i].text for i in idx], [items[i].language for i in idx])
        .as_dict()
        .get("wer", 0.0)
        for name, idx in sorted(groups.items())
    }
    live = replay(answers, config, timed, language)
    audio_s = sum(item.seconds for item in items)
    return {
        "wer": wer,
        "first_partial_p95_s": round(percentile(live.first_partial_s, 95), 3),
        "commit_p50_s": round(percentile(live.commit_s, 50), 2),
        "commit_p95_s": round(percentile(live.commit_s, 95), 2),
        "decoded_per_audio_s": round(sum(r.decoded_s for r in runs) / audio_s, 2),
        # every file's committed text, to read where two settings differ (--json)
        "texts": {item.name: run.text for item, run in zip(items, runs, strict=True)},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", action="append", choices=list(PRESETS), help="settings to measure (default: all)")
    p.add_argument("--config", action="append", default=[], help="extra PolicyConfig settings as JSON (repeatable)")
    p.add_argument("--seconds-per-group", type=float, default=20.0, help="as the quick bench (make bench: 100)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument(
        "--language",
        action="append",
        choices=("given", "detected", "locked"),
        help="each file's own language (default), detected on every window, or locked on the first sure one",
    )
    p.add_argument(
        "--join-by-language",
        type=float,
        metavar="SECONDS",
        help="replay the other-language clips joined per language into streams of about this length instead",
    )
    p.add_argument(
        "--beam-size",
        type=int,
        default=SESSION_BEAM_SIZE,
        help=f"Whisper's beams per window (1: greedy; default {SESSION_BEAM_SIZE}, what sessions use)",
    )
    p.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="a service setting (repeatable)"
    )
    args = p.parse_args(argv)
    configs = {name: PRESETS[name] for name in args.preset or PRESETS}
    configs.update({text: json.loads(text) for text in args.config})

    items = [it for it in dev_items(args.seconds_per_group) if not it.held_out]
    if args.join_by_language:
        items = joined_by_language(items, args.join_by_language)
    timed = long_files(1, 24, first_seed=50)[0]  # the bench's live-session recording (--quick)
    ports = dict(zip(("proxy", "base", "tiny"), free_ports(3), strict=True))
    env = dict(setting.split("=", 1) for setting in args.service_env)
    stack = Stack(ports=ports, env={"STT_LOG_LEVEL": "WARNING", **env})
    results = {}
    try:
        stack.start("tiny")
        stack.start("base")
        answers = Answers(stack.base_url, stack.tiny_url, args.beam_size)
        for (config_name, settings), language in itertools.product(configs.items(), args.language or ["given"]):
            name = config_name if language == "given" else f"{config_name}, language {language}"
            measured = measure(answers, PolicyConfig(**settings), items, timed, language)
            results[name] = {"settings": settings, "language": language, **measured}
            r = results[name]
            cats = " ".join(f"{k} {v * 100:.1f}" for k, v in r["wer"].items() if k != "all")
            print(
                f"{name:42} WER {r['wer']['all'] * 100:5.2f} % ({cats}) | first partial p95 "
                f"{r['first_partial_p95_s']:.2f} s | commit p50/p95 {r['commit_p50_s']:.1f}/{r['commit_p95_s']:.1f} s"
                f" | decoded {r['decoded_per_audio_s']:.2f} s/s",
                flush=True,
            )
    finally:
        stack.down()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
