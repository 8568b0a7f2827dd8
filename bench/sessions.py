"""``python -m bench.sessions``: what streaming sessions (``/v1/stream``) cost and how fast they are.

Two measurements, printed and written to ``bench/results/sessions.json``:

- **latency** (real models): one session on the real local stack, fed a real recording in
  100 ms frames at real time (as a microphone would), timed from the client's side: for each
  word, the time from sending the frame that holds the word's end to the first event showing
  the word (partial or committed) and to the event committing it. Also the session's WER and
  the CPU seconds the services spent per second of audio.
- **proxy capacity** (the proxy alone): how many sessions one proxy process (one uvicorn
  worker: one core) carries before *it* becomes the bottleneck, with the model taken out:
  the backends are a stub process that answers ``/detect`` and ``/transcribe-chunk`` at once
  with plausible words (two per second of audio, so the commit policy does its real work).
  Sessions are added in rounds; each round streams real time for ``--round-s`` seconds and
  reports the proxy's CPU share and the step latency (a step's last sample arriving → that
  step's partial event sent), from the proxy's own histogram, so a load generator that falls
  behind on this shared machine does not count against the proxy (its own view is reported
  beside). The proxy is saturated when its CPU reaches 90 % of a core or that p95 passes 500 ms.

The load generator runs on the same machine (2 cores here), so the capacity figure is a
lower bound for a proxy replica with its own 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.metrics import percentile, scrape
from bench.stacks import process_cpu_seconds
from services.local_stack import Stack, free_port, free_ports

SR = 16_000
FRAME_S = 0.1
RESULTS = Path(__file__).resolve().parent / "results"


def ws_url(url: str, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return url.replace("http://", "ws://") + "/v1/stream" + (f"?{query}" if query else "")


@dataclass
class Timed:
    """A session's events with their arrival times, and when each frame was sent."""

    sent: list[tuple[int, float]] = field(default_factory=list)  # (end sample, monotonic time)
    events: list[tuple[float, dict]] = field(default_factory=list)

    def sent_at(self, sample: int) -> float | None:
        for end, at in self.sent:
            if end >= sample:
                return at
        return None


async def stream_session(url: str, pcm: bytes, frame_s: float = FRAME_S, realtime: bool = True) -> Timed:
    import websockets

    timed = Timed()
    frame = int(frame_s * SR) * 2
    async with websockets.connect(url, open_timeout=30, max_size=None) as ws:

        async def read() -> None:
            async for message in ws:
                timed.events.append((time.monotonic(), json.loads(message)))

        reader = asyncio.create_task(read())
        began = time.monotonic()
        for index, offset in enumerate(range(0, len(pcm), frame)):
            if realtime:
                await asyncio.sleep(max(0.0, began + index * frame_s - time.monotonic()))
            await ws.send(pcm[offset : offset + frame])
            timed.sent.append(((offset + frame) // 2, time.monotonic()))
        await ws.send(json.dumps({"type": "stop"}))
        await reader
    return timed


def word_latencies(timed: Timed) -> dict[str, list[float]]:
    """Seconds from sending a word's end to its first showing and to its commit."""
    shown: list[tuple[float, float, str]] = []  # (first seen, word start, text)
    out: dict[str, list[float]] = {"first_shown": [], "committed": []}
    for at, event in timed.events:
        if event["type"] not in ("transcript.partial", "transcript.committed"):
            continue
        for word in event["words"]:
            if not any(abs(s - word["start"]) < 0.3 and t == word["text"] for _, s, t in shown):
                shown.append((at, word["start"], word["text"]))
            if event["type"] == "transcript.committed":
                sent = timed.sent_at(round(word["end"] * SR))
                first = min((a for a, s, t in shown if abs(s - word["start"]) < 0.3 and t == word["text"]), default=at)
                if sent is not None:
                    out["committed"].append(at - sent)
                    out["first_shown"].append(first - sent)
    return out


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000),
        "p95_ms": round(percentile(values, 95) * 1000),
    }


def measure_latency(seconds: float, run_dir: Path) -> dict:
    """One real-time session on the real stack (real models)."""
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    from corpus import long_recording

    clip = long_recording(seconds)
    with wave.open(str(clip.path)) as handle:
        pcm = handle.readframes(handle.getnframes())
    ports = dict(zip(("proxy", "base", "tiny"), free_ports(3), strict=True))
    stack = Stack(ports=ports, env={"STT_LOG_LEVEL": "WARNING"}, run_dir=run_dir / "latency")
    try:
        stack.up()
        pids = {name: proc.pid for name, proc in stack.procs.items()}
        cpu0 = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        timed = asyncio.run(stream_session(ws_url(stack.proxy_url, language="en"), pcm))
        cpu = {name: round(process_cpu_seconds(pid) - cpu0[name], 2) for name, pid in pids.items()}
    finally:
        stack.down()
    final = timed.events[-1][1]
    normalize = EnglishTextNormalizer()
    error = jiwer.wer(normalize(clip.text), normalize(final.get("text", "")))
    audio_s = len(pcm) / 2 / SR
    lat = word_latencies(timed)
    return {
        "recording": f"{clip.name} ({audio_s:.0f} s, real-time pacing, 100 ms frames)",
        "wer": round(error, 4),
        "first_shown": summary(lat["first_shown"]),
        "committed": summary(lat["committed"]),
        "service_cpu_s_per_audio_s": {k: round(v / audio_s, 3) for k, v in cpu.items()},
    }


def measure_capacity(rounds: list[int], round_s: float, run_dir: Path) -> dict:
    """Sessions through one proxy process whose backends answer at once (bench/stub_backend.py)."""
    stub_port, proxy_port = free_port(), free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = (run_dir / "stub.log").open("wb"), (run_dir / "proxy.log").open("wb")
    stub = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.stub_backend:app", "--port", str(stub_port), "--no-access-log"],
        stdout=logs[0],
        stderr=subprocess.STDOUT,
    )
    backend = f"http://127.0.0.1:{stub_port}"
    env = {
        **os.environ,
        "STT_CPU_BACKEND_URL": backend,
        "STT_DETECTOR_URL": backend,
        "STT_MAX_SESSIONS": "10000",
        "STT_LOG_LEVEL": "WARNING",
    }
    proxy = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "services.proxy.app:app", "--port", str(proxy_port), "--no-access-log"],
        env=env,
        stdout=logs[1],
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{proxy_port}"
    results = []
    try:
        waiter = Stack(ports={"proxy": proxy_port, "stub": stub_port}, run_dir=run_dir)
        waiter.wait_ready(["stub", "proxy"], timeout=60)
        pcm = (np.random.default_rng(0).normal(0, 3000, int(round_s * SR))).astype("<i2").tobytes()
        for sessions in rounds:
            cpu0, t0, buckets0 = process_cpu_seconds(proxy.pid), time.monotonic(), _buckets(url)
            runs = asyncio.run(_many(ws_url(url, language="en"), pcm, sessions))
            wall = time.monotonic() - t0
            cpu = (process_cpu_seconds(proxy.pid) - cpu0) / wall
            inside = _quantile(_buckets(url), buckets0, 0.95)
            lat = [d for r in runs if isinstance(r, Timed) for d in step_latencies(r)]
            failed = sum(1 for r in runs if not isinstance(r, Timed) or r.events[-1][1]["type"] != "session.ended")
            row = {
                "sessions": sessions,
                "proxy_cpu_share": round(cpu, 3),
                "failed": failed,
                "proxy_p95_ms": round(inside * 1000),  # measured inside the proxy: arrival → event sent
                **summary(lat),  # measured by the load generator, which shares the machine
            }
            results.append(row)
            shown = (
                f"proxy CPU {cpu:.0%} of a core, in the proxy p95 {inside * 1000:.0f} ms, "
                f"at the client {summary(lat)}, failed {failed}"
            )
            print(f"  {sessions:4d} sessions: {shown}")
            if cpu >= 0.9 or row["proxy_p95_ms"] > 500 or failed:
                break
    finally:
        for proc in (proxy, stub):
            proc.terminate()
            proc.wait(timeout=15)
    ok = [r for r in results if r["proxy_cpu_share"] < 0.9 and r["proxy_p95_ms"] <= 500 and not r["failed"]]
    return {
        "rounds": results,
        "sessions_per_proxy_process": max((r["sessions"] for r in ok), default=0),
        "criterion": "proxy CPU < 90 % of one core, p95 step→partial inside the proxy ≤ 500 ms, no session failed",
    }


async def _many(url: str, pcm: bytes, sessions: int) -> list:
    async def one(delay: float):
        await asyncio.sleep(delay)  # spread the starts so the steps do not all fall on one tick
        return await stream_session(url, pcm, frame_s=0.5)

    return await asyncio.gather(*(one(i * 3.0 / sessions) for i in range(sessions)), return_exceptions=True)


def _buckets(url: str) -> dict[float, float]:
    """The proxy's own step→partial histogram (cumulative counts by upper bound)."""
    return {
        float(labels["le"]): value for labels, value in scrape(url, "stt_proxy_session_first_partial_seconds_bucket")
    }


def _quantile(after: dict[float, float], before: dict[float, float], q: float) -> float:
    """The q-quantile of the observations between two scrapes (upper bound of its bucket)."""
    counts = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = counts[-1][1] if counts else 0.0
    for le, cumulative in counts:
        if total and cumulative >= q * total:
            return le
    return 0.0


def step_latencies(timed: Timed) -> list[float]:
    """Frame holding a step's last sample sent → the partial event of that step received (each
    partial says which audio it decoded: ``decoded_until_sample``)."""
    out = []
    for at, event in timed.events:
        if event["type"] != "transcript.partial" or "decoded_until_sample" not in event:
            continue
        sent = timed.sent_at(int(event["decoded_until_sample"]))
        if sent is not None and at >= sent:
            out.append(at - sent)
    return out


def session_text(timed: Timed) -> str:
    """The committed transcript (``session.ended`` carries it whole)."""
    final: dict = next((e for _, e in reversed(timed.events) if e["type"] == "session.ended"), {})
    return final.get("text", "")


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the recording for the latency run")
    p.add_argument("--rounds", default="25,50,100,200,400", help="sessions per capacity round")
    p.add_argument("--round-s", type=float, default=30.0, help="audio each session streams per round")
    p.add_argument("--skip", choices=("latency", "capacity"), action="append", default=[])
    p.add_argument("--out", type=Path, default=RESULTS / "sessions.json")
    args = p.parse_args(argv)
    run_dir = Path(".run") / "bench-sessions"
    result: dict = {"machine": f"{os.cpu_count()} cores"}
    if "latency" not in args.skip:
        print("latency: one real-time session on the real stack ...")
        result["latency"] = measure_latency(args.seconds, run_dir)
        print(json.dumps(result["latency"], indent=2))
    if "capacity" not in args.skip:
        print("capacity: sessions through one proxy process, stub backends ...")
        result["capacity"] = measure_capacity([int(n) for n in args.rounds.split(",")], args.round_s, run_dir)
        print(f"  sessions per proxy process: {result['capacity']['sessions_per_proxy_process']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
