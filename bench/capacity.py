"""How many real-time speech streams one backend serves with p95 latency under the chunk
length, for the baseline and for the shipped design, stepping the stream count up.

Each step runs N streams of real speech at real-time pace through the real client and
proxy. A step passes when p95 latency (end of a chunk's audio to its text) is under the
chunk length both over the whole step and over its last third (a queue that is still
growing at the end would fail later), and no chunk was refused. The two searches' steps are
interleaved so machine noise falls on both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.data import stream_audio
from bench.metrics import CapacitySearch, percentile, summarize_ms
from bench.stacks import BenchStack, cpu_delta
from bench.streaming import SHIPPED, streams

GIVE_UP_CHUNKS = 3  # a chunk answered this many chunk lengths late means the step has failed


def wait_idle(stack: BenchStack, timeout: float = 180.0) -> float:
    """Wait until the stack's processes are nearly idle (work a cancelled step left queued in
    base would otherwise be charged to the next step); returns the seconds waited."""
    began = time.monotonic()
    last = sum(stack.cpu_seconds().values())
    while time.monotonic() - began < timeout:
        time.sleep(0.5)
        now = sum(stack.cpu_seconds().values())
        if now - last < 0.05:  # under 10 % of one core
            break
        last = now
    return time.monotonic() - began


@dataclass
class Search:
    stack: BenchStack
    search: CapacitySearch
    steps: list[dict] = field(default_factory=list)


def run_step(stack: BenchStack, count: int, seconds: float, chunk_s: float) -> dict:
    audios = [stream_audio(i, seconds) for i in range(count)]
    before = stack.cpu_seconds()
    began = time.monotonic()
    give_up = GIVE_UP_CHUNKS * chunk_s
    results, gave_up = asyncio.run(
        streams(stack.proxy_url, audios, SHIPPED, realtime=True, stagger_s=2.0, give_up_s=give_up)
    )
    wall = time.monotonic() - began
    drain_s = wait_idle(stack)
    cpu = cpu_delta(before, stack.cpu_seconds())
    latencies = [lat for r in results for lat in r.latencies_s]
    tail = [lat for r in results for lat in r.latencies_s[-max(1, len(r.latencies_s) // 3) :]]
    p95, tail_p95 = percentile(latencies, 95), percentile(tail, 95)
    dropped = sum(r.chunks_dropped for r in results)
    audio = sum(r.audio_done_s for r in results)  # transcribed before the end (or before giving up)
    return {
        "streams": count,
        "passed": bool(latencies) and p95 < chunk_s and tail_p95 < chunk_s and dropped == 0 and not gave_up,
        "gave_up": f"a chunk waited over {give_up:g} s: stopped early" if gave_up else None,
        "drain_s": round(drain_s, 1),
        "latency_ms": summarize_ms(latencies),
        "last_third_p95_ms": round(tail_p95 * 1000, 1),
        "audio_s": round(audio, 1),
        "wall_s": round(wall, 1),
        "throughput_audio_s_per_s": round(audio / wall, 3),
        "service_cpu_s": cpu,
        "cpu_s_per_audio_s": round(sum(cpu.values()) / audio, 4) if audio else None,
        "chunks": sum(r.chunks for r in results),
        "retries": sum(r.retries for r in results),
        "dropped": dropped,
    }


def run(
    stacks: dict[str, BenchStack],
    seconds: float,
    limit: int,
    chunk_s: float,
    tick: Callable[[str], None],
    start: int = 1,
) -> dict:
    searches = {name: Search(stack, CapacitySearch(start=start, limit=limit)) for name, stack in stacks.items()}
    while True:
        progressed = False
        for name, s in searches.items():
            count = s.search.next_count()
            if count is None:
                continue
            step = run_step(s.stack, count, seconds, chunk_s)
            s.search.record(count, step["passed"])
            s.steps.append(step)
            tick(f"{name}: {count} streams, p95 {step['latency_ms'].get('p95', 0):.0f} ms")
            progressed = True
        if not progressed:
            break
    out = {
        name: {
            "realtime_streams": s.search.best,
            "first_failure": s.search.first_failure,
            "steps": sorted(s.steps, key=lambda st: st["streams"]),
        }
        for name, s in searches.items()
    }
    base = out.get("baseline", {}).get("realtime_streams", 0)
    design = out.get("design", {}).get("realtime_streams", 0)
    out["realtime_streams"] = design
    out["ratio_vs_baseline"] = round(design / base, 2) if base else None
    for name in searches:
        if name not in ("baseline", "design") and base:
            out[f"ratio_{name}_vs_baseline"] = round(out[name]["realtime_streams"] / base, 2)
    out["criterion"] = f"p95 latency < {chunk_s:g} s over the step and its last third, no chunk refused"
    out["seconds_per_stream"] = seconds
    return out
