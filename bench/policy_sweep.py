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
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.accuracy import dev_items
from bench.data import Item, long_files
from bench.metrics import percentile, word_errors
from bench.sessions import pcm16
from core.commit_policy import CommitPolicy, PolicyConfig, Segment
from core.vocabulary import SAMPLE_RATE
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
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=300))
    cache: dict[str, tuple] = field(default_factory=dict)

    def detect(self, pcm: bytes) -> bool:
        key = "d" + hashlib.sha1(pcm).hexdigest()
        if key not in self.cache:
            response = self.client.post(self.tiny + "/detect", content=pcm, headers=PCM)
            response.raise_for_status()
            self.cache[key] = (bool(response.json()["speech"]),)
        return self.cache[key][0]

    def transcribe(self, pcm: bytes, language: str) -> tuple[list[dict], float]:
        key = "t" + hashlib.sha1(pcm).hexdigest() + language
        if key not in self.cache:
            start = time.perf_counter()
            response = self.client.post(
                f"{self.base}/transcribe-chunk?word_timestamps=true&language={language}", content=pcm, headers=PCM
            )
            response.raise_for_status()
            self.cache[key] = (response.json().get("segments") or [], time.perf_counter() - start)
        return self.cache[key]


@dataclass
class Replayed:
    text: str
    first_partial_s: list[float]
    commit_s: list[float]
    decoded_s: float


def replay(answers: Answers, config: PolicyConfig, item: Item) -> Replayed:
    """One stream through the policy, as a session steps it (the last step shorter)."""
    policy = CommitPolicy(config)
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
        segments, seconds = answers.transcribe(pcm16(samples[start:stop]), item.language)
        decoded += (stop - start) / SAMPLE_RATE
        clock += seconds
        update = policy.update(Segment.parse(segments, start / SAMPLE_RATE), start / SAMPLE_RATE)
        first.append(clock - stop / SAMPLE_RATE)
        commits += [clock - w.end for w in update.committed]
    policy.finish()
    return Replayed(policy.committed_text, first, commits, decoded)


def measure(answers: Answers, config: PolicyConfig, items: list[Item], timed: Item) -> dict:
    runs = [replay(answers, config, item) for item in items]
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
    live = replay(answers, config, timed)
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
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="a service setting (repeatable)"
    )
    args = p.parse_args(argv)
    configs = {name: PRESETS[name] for name in args.preset or PRESETS}
    configs.update({text: json.loads(text) for text in args.config})

    items = [it for it in dev_items(args.seconds_per_group) if not it.held_out]
    timed = long_files(1, 24, first_seed=50)[0]  # the bench's live-session recording (--quick)
    ports = dict(zip(("proxy", "base", "tiny"), free_ports(3), strict=True))
    env = dict(setting.split("=", 1) for setting in args.service_env)
    stack = Stack(ports=ports, env={"STT_LOG_LEVEL": "WARNING", **env})
    results = {}
    try:
        stack.start("tiny")
        stack.start("base")
        answers = Answers(stack.base_url, stack.tiny_url)
        for name, settings in configs.items():
            results[name] = {"settings": settings, **measure(answers, PolicyConfig(**settings), items, timed)}
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
