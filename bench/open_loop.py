"""``python -m bench.open_loop``: does overload give fast 429s or a latency collapse?

An open-loop load test (arrivals at a constant rate, whatever the answers; bounded in count and
time; loopback only) against one real base service: first its throughput is measured closed-loop
(8 callers), then 3 s chunks of real speech arrive at 0.5x, 1x, 2x and 4x that rate, each step for
``--step-seconds``. Per step it prints what came back (200, 429, anything else) and how fast.
With ``--compare`` it runs the same steps on a second base with the wait bound off
(``STT_MAX_QUEUE_WAIT_S`` huge: only the 64-chunk queue cap refuses), the behaviour before.

Goal: at every rate, nothing but 200 and 429; 429s answered in well under a second; the p95 of
the 200s bounded near ``STT_MAX_QUEUE_WAIT_S`` instead of growing with the overload.
``make bench-open-loop`` runs it; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx
import numpy as np

from core.audio import to_wav_bytes
from core.vocabulary import SAMPLE_RATE
from corpus import long_recording
from services.local_stack import Stack, free_port

CHUNK_S = 3.0
MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)
UNBOUNDED_WAIT_S = "1000000"


@dataclass
class Step:
    rate: float
    answers: list[tuple[int | str, float]] = field(default_factory=list)

    def of(self, status: int | str) -> list[float]:
        return [s for code, s in self.answers if code == status]

    def row(self) -> dict:
        ok, busy = self.of(200), self.of(429)
        other = [(c, round(s, 1)) for c, s in self.answers if c not in (200, 429)]

        def p(xs: list[float], q: float) -> float | None:
            return round(float(np.percentile(xs, q)), 3) if xs else None

        return {
            "rate_per_s": round(self.rate, 2),
            "sent": len(self.answers),
            "ok": len(ok),
            "429": len(busy),
            "other": len(other),
            "other_examples": other[:5],
            "ok_p50_s": p(ok, 50),
            "ok_p95_s": p(ok, 95),
            "ok_max_s": round(max(ok), 2) if ok else None,
            "429_p95_s": p(busy, 95),
        }


async def post(client: httpx.AsyncClient, body: bytes) -> tuple[int | str, float]:
    start = time.perf_counter()
    try:
        r = await client.post("/transcribe-chunk", content=body, headers={"content-type": "audio/wav"}, timeout=180)
        status: int | str = r.status_code
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return status, time.perf_counter() - start


async def throughput(client: httpx.AsyncClient, chunks: list[bytes], seconds: float, callers: int = 8) -> float:
    """Chunks per second with ``callers`` sending back to back (closed loop)."""
    done, end = 0, time.perf_counter() + seconds

    async def caller(k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < end:
            status, _ = await post(client, chunks[i % len(chunks)])
            done += status == 200
            i += callers

    began = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(callers)))
    return done / (time.perf_counter() - began)


async def open_loop(client: httpx.AsyncClient, chunks: list[bytes], rate: float, seconds: float) -> Step:
    step, tasks = Step(rate), []
    count = max(1, round(rate * seconds))
    began = time.perf_counter()
    for i in range(count):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(client, chunks[i % len(chunks)])))
    step.answers = list(await asyncio.gather(*tasks))
    return step


async def measure(url: str, args: argparse.Namespace, capacity: float | None) -> dict:
    source = long_recording(120, seed=7).samples()
    size = int(CHUNK_S * SAMPLE_RATE)
    chunks = [to_wav_bytes(source[s : s + size]) for s in range(0, source.size - size, size)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, limits=limits) as client:
        await post(client, chunks[0])
        if capacity is None:
            capacity = await throughput(client, chunks, args.capacity_seconds)
            print(f"  throughput, 8 callers back to back: {capacity:.2f} chunks/s", flush=True)
        rows = []
        for m in MULTIPLIERS:
            step = await open_loop(client, chunks, m * capacity, args.step_seconds)
            row = {"multiplier": m, **step.row()}
            rows.append(row)
            print(f"  {m:g}x: {json.dumps(row)}", flush=True)
            await asyncio.sleep(2)  # let the queue drain between steps
    return {"capacity_chunks_per_s": capacity, "steps": rows}


def run(env: dict[str, str], args: argparse.Namespace, capacity: float | None) -> dict:
    stack = Stack(ports={"base": free_port()}, env={"STT_LOG_FORMAT": "json", **env})
    stack.start("base")
    try:
        return asyncio.run(measure(stack.base_url, args, capacity))
    finally:
        stack.stop("base")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.open_loop", description=__doc__.split("\n\n")[0])
    p.add_argument("--step-seconds", type=float, default=20.0, help="arrivals per rate step (default 20 s)")
    p.add_argument("--capacity-seconds", type=float, default=15.0, help="closed-loop throughput run (default 15 s)")
    p.add_argument("--compare", action="store_true", help="also run with the wait bound off (the old behaviour)")
    p.add_argument("--out", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    print("shipped settings:", flush=True)
    shipped = run({}, args, None)
    result = {"shipped": shipped}
    if args.compare:
        print("wait bound off (only the queue cap of 64 refuses):", flush=True)
        result["unbounded"] = run({"STT_MAX_QUEUE_WAIT_S": UNBOUNDED_WAIT_S}, args, shipped["capacity_chunks_per_s"])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    steps = shipped["steps"]
    clean = all(s["other"] == 0 for s in steps)
    fast = all(s["429_p95_s"] is None or s["429_p95_s"] < 0.5 for s in steps)
    bounded = all(s["ok_p95_s"] is not None and s["ok_p95_s"] < 20 for s in steps)
    ok = clean and fast and bounded
    print(f"{'PASS' if ok else 'FAIL'}: only 200/429 ({clean}), 429 p95 < 0.5 s ({fast}), 200 p95 < 20 s ({bounded})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
