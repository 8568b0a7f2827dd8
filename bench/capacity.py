"""How many real-time speech streams one backend serves with p95 latency under the chunk
length, for the baseline and for the shipped design, stepping the stream count up.

Each step runs N streams of real speech at real-time pace through the real proxy: either the
HTTP client (chunks; latency = end of a chunk's audio to its text) or ``/v1/stream`` sessions
(``session``; latency = end of a step's audio to its partial event). A step passes when p95
latency is under the chunk (step) length both over the whole step and over its last third (a
queue that is still growing at the end would fail later), and nothing was refused or dropped.
The searches' steps are interleaved so machine noise falls on all of them.

Besides the stream count, each search reports ``served_audio_s_per_s``: the most audio per
second any step delivered within the latency bound (its throughput times the share of its
latencies under the bound). It is continuous, so a machine too slow for one stream still
gives a ratio between configurations instead of 0 against 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.data import stream_audio
from bench.metrics import CapacitySearch, percentile, summarize_ms
from bench.sessions import Timed, pcm16, step_latencies, stream_session, ws_url
from bench.stacks import BenchStack, cpu_delta
from bench.streaming import PREVIOUS_DEFAULT, streams

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
    mode: str = "http"  # "http": the stitching HTTP client; "session": /v1/stream sessions
    steps: list[dict] = field(default_factory=list)


def _verdict(per_stream: list[list[float]], chunk_s: float, dropped: int, gave_up: bool, audio: float, wall: float):
    latencies = [lat for lats in per_stream for lat in lats]
    tail = [lat for lats in per_stream for lat in lats[-max(1, len(lats) // 3) :]]
    p95, tail_p95 = percentile(latencies, 95), percentile(tail, 95)
    within = sum(1 for lat in latencies if lat < chunk_s) / len(latencies) if latencies else 0.0
    return {
        "passed": bool(latencies) and p95 < chunk_s and tail_p95 < chunk_s and dropped == 0 and not gave_up,
        "latency_ms": summarize_ms(latencies),
        "last_third_p95_ms": round(tail_p95 * 1000, 1),
        "audio_s": round(audio, 1),
        "wall_s": round(wall, 1),
        "throughput_audio_s_per_s": round(audio / wall, 3),
        "served_audio_s_per_s": round(audio / wall * within, 3),
    }


def run_step(stack: BenchStack, count: int, seconds: float, chunk_s: float) -> dict:
    audios = [stream_audio(i, seconds) for i in range(count)]
    before = stack.cpu_seconds()
    began = time.monotonic()
    give_up = GIVE_UP_CHUNKS * chunk_s
    results, gave_up = asyncio.run(
        streams(stack.proxy_url, audios, PREVIOUS_DEFAULT, realtime=True, stagger_s=2.0, give_up_s=give_up)
    )
    wall = time.monotonic() - began
    drain_s = wait_idle(stack)
    cpu = cpu_delta(before, stack.cpu_seconds())
    dropped = sum(r.chunks_dropped for r in results)
    audio = sum(r.audio_done_s for r in results)  # transcribed before the end (or before giving up)
    return {
        "streams": count,
        **_verdict([r.latencies_s for r in results], chunk_s, dropped, gave_up, audio, wall),
        "gave_up": f"a chunk waited over {give_up:g} s: stopped early" if gave_up else None,
        "drain_s": round(drain_s, 1),
        "service_cpu_s": cpu,
        "cpu_s_per_audio_s": round(sum(cpu.values()) / audio, 4) if audio else None,
        "chunks": sum(r.chunks for r in results),
        "retries": sum(r.retries for r in results),
        "dropped": dropped,
    }


async def _sessions(url: str, audios: list[bytes], stagger_s: float) -> list:
    async def one(index: int, pcm: bytes):
        await asyncio.sleep(index * stagger_s / max(len(audios), 1))
        return await stream_session(url, pcm)

    return await asyncio.gather(*(one(i, a) for i, a in enumerate(audios)), return_exceptions=True)


def run_session_step(stack: BenchStack, count: int, seconds: float, chunk_s: float) -> dict:
    """N real-time ``/v1/stream`` sessions; a session that errs or ends without ``session.ended``
    (e.g. 1013, too far behind) counts as dropped."""
    audios = [pcm16(stream_audio(i, seconds)) for i in range(count)]
    before = stack.cpu_seconds()
    began = time.monotonic()
    runs = asyncio.run(_sessions(ws_url(stack.proxy_url, language="en"), audios, stagger_s=2.0))
    wall = time.monotonic() - began
    drain_s = wait_idle(stack)
    cpu = cpu_delta(before, stack.cpu_seconds())
    timed = [r for r in runs if isinstance(r, Timed)]
    failed = len(runs) - sum(1 for r in timed if r.events and r.events[-1][1]["type"] == "session.ended")
    audio = sum(len(a) / 2 / 16_000 for a in audios)
    return {
        "streams": count,
        **_verdict([step_latencies(r) for r in timed], chunk_s, failed, False, audio, wall),
        "drain_s": round(drain_s, 1),
        "service_cpu_s": cpu,
        "cpu_s_per_audio_s": round(sum(cpu.values()) / audio, 4) if audio else None,
        "dropped": failed,
        "errors": [f"{type(r).__name__}: {r}" for r in runs if not isinstance(r, Timed)][:3],
    }


def run(
    stacks: dict[str, BenchStack],
    seconds: float,
    limit: int,
    chunk_s: float,
    tick: Callable[[str], None],
    start: int = 1,
) -> dict:
    """``stacks``: name → stack; a name ending in ``_session`` is searched with sessions."""
    searches = {
        name: Search(
            stack, CapacitySearch(start=start, limit=limit), "session" if name.endswith("_session") else "http"
        )
        for name, stack in stacks.items()
    }
    while True:
        progressed = False
        for name, s in searches.items():
            count = s.search.next_count()
            if count is None:
                continue
            step = (run_session_step if s.mode == "session" else run_step)(s.stack, count, seconds, chunk_s)
            s.search.record(count, step["passed"])
            s.steps.append(step)
            tick(f"{name}: {count} streams, p95 {step['latency_ms'].get('p95', 0):.0f} ms")
            progressed = True
        if not progressed:
            break
    best = {name: s.search.best for name, s in searches.items()}
    # One JSON record: a summary per stack, then the comparisons across them.
    out: dict[str, object] = {
        name: {
            "realtime_streams": best[name],
            "first_failure": s.search.first_failure,
            "served_audio_s_per_s": max((st["served_audio_s_per_s"] for st in s.steps), default=0.0),
            "mode": s.mode,
            "steps": sorted(s.steps, key=lambda st: st["streams"]),
        }
        for name, s in searches.items()
    }
    base = best.get("baseline", 0)
    default = "design_session" if "design_session" in best else "design"  # what stt-client uses
    design = best.get(default, 0)
    out["realtime_streams"] = design
    out["ratio_vs_baseline"] = round(design / base, 2) if base else None
    for name in searches:
        if name not in ("baseline", "design") and base:
            out[f"ratio_{name}_vs_baseline"] = round(best[name] / base, 2)
    out["criterion"] = (
        f"p95 latency < {chunk_s:g} s over the step and its last third, no chunk refused, no session failed"
    )
    out["seconds_per_stream"] = seconds
    return out
