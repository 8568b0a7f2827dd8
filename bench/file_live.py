"""``python -m bench.file_live``: live chunk latency while a long file transcribes on one base.

The question (issue "Hardening", overload): does a long upload lock out live streams? One real
base service (uvicorn, the shipped settings) gets ``--streams`` live streams, each posting a 3 s
chunk of real speech every 3 s to ``/transcribe-chunk``, first alone (the baseline), then while
one ``--file-minutes`` recording goes through ``/v1/audio/transcriptions``. It prints live
p50/p95/max in both phases, how long the file took, and every non-200 answer. The goal: the
file is answered, and live p95 during it stays under the chunk length.

``make bench-file-live`` runs it with the defaults (4 streams, a 30-minute file); the figures
go in docs/reliability.md. Run it on an idle machine: live latency is what it measures.

On a GPU machine without the corpus: ``--export DIR`` writes the audio here (``live.flac``, the
streams' 2 minutes, and ``file.flac``), ``--data DIR`` reads it there; ``--env STT_DEVICE=cuda
--env STT_BATCH_MAX=16`` gives the base the GPU Deployment's settings, and ``--service-cpus 2``
pins it to two cores (the chart's CPU limit) with the load generator on the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
import numpy as np

from bench.open_loop import post
from core.audio import AudioLimits, decode_audio, to_wav_bytes
from core.vocabulary import SAMPLE_RATE
from corpus import long_recording
from services.local_stack import Stack, free_port

CHUNK_S = 3.0


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    began: float = field(default_factory=time.perf_counter)
    # (seconds into the phase the chunk was sent, its latency): where in the file the slow ones fell
    timeline: list[tuple[float, float]] = field(default_factory=list)

    def add(self, status: int | str, seconds: float, sent: float) -> None:
        if status == 200:
            self.latencies.append(seconds)
            self.timeline.append((round(sent - self.began, 2), round(seconds, 3)))
        else:
            self.refusals[str(status)] = self.refusals.get(str(status), 0) + 1

    def line(self) -> str:
        if not self.latencies:
            return f"no answers; refusals {self.refusals}"
        p50, p95 = np.percentile(self.latencies, [50, 95])
        return f"{len(self.latencies)} chunks, p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(self.latencies):.2f} s" + (
            f"; refused or failed: {self.refusals}" if self.refusals else ""
        )

    def summary(self) -> dict:
        p50, p95 = np.percentile(self.latencies, [50, 95]) if self.latencies else (None, None)
        return {
            "chunks": len(self.latencies),
            "p50_s": p50,
            "p95_s": p95,
            "refusals": self.refusals,
            "timeline": sorted(self.timeline),
        }


def to_flac(samples: np.ndarray) -> bytes:
    """FLAC, as a user would upload a long recording: 30 minutes as WAV (58 MB) is over the
    50 MB upload limit, as FLAC about half that."""
    buf = io.BytesIO()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)[None, :]
    with av.open(buf, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def speech(minutes: float) -> np.ndarray:
    """``minutes`` of real speech: the corpus's 2-minute recordings, joined."""
    pieces, total, seed = [], 0, 0
    while total < minutes * 60 * SAMPLE_RATE:
        samples = long_recording(120, seed=seed).samples()
        pieces.append(samples)
        total += samples.size
        seed += 1
    return np.concatenate(pieces)[: int(minutes * 60 * SAMPLE_RATE)]


async def live_stream(client: httpx.AsyncClient, chunks: list[bytes], stop: asyncio.Event, phase: Phase) -> None:
    """One chunk every CHUNK_S seconds, on schedule, whether or not the last was answered."""

    async def one(body: bytes) -> None:
        sent = time.perf_counter()
        phase.add(*await post(client, body), sent)

    began, sent, pending = time.perf_counter(), 0, []
    while not stop.is_set():
        pending.append(asyncio.create_task(one(chunks[sent % len(chunks)])))
        sent += 1
        delay = began + sent * CHUNK_S - time.perf_counter()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    await asyncio.gather(*pending)


async def run_live(client: httpx.AsyncClient, streams: list[list[bytes]], until: asyncio.Future | float) -> Phase:
    phase, stop = Phase(), asyncio.Event()
    tasks = [asyncio.create_task(live_stream(client, chunks, stop, phase)) for chunks in streams]
    if isinstance(until, float):
        await asyncio.sleep(until)
    else:
        await asyncio.wait([until])
    stop.set()
    await asyncio.gather(*tasks)
    return phase


def audio(args: argparse.Namespace) -> tuple[np.ndarray, bytes]:
    """The live streams' speech (2 minutes, not in the file) and the file as FLAC: from the
    corpus, or from ``--data`` (what ``--export`` wrote)."""
    if args.data:
        live = decode_audio((args.data / "live.flac").read_bytes(), "audio/flac", AudioLimits(max_seconds=600.0))
        file_flac = (args.data / "file.flac").read_bytes()
        with av.open(io.BytesIO(file_flac), "r") as container:
            if container.duration is not None:
                args.file_minutes = round(container.duration / av.time_base / 60, 2)
        return live, file_flac
    return long_recording(120, seed=99).samples(), to_flac(speech(args.file_minutes))


async def measure(url: str, args: argparse.Namespace) -> dict:
    source, file_flac = audio(args)
    size = int(CHUNK_S * SAMPLE_RATE)
    pieces = [to_wav_bytes(source[s : s + size]) for s in range(0, source.size - size, size)]
    streams = [pieces[k * 7 :] + pieces[: k * 7] for k in range(args.streams)]
    async with httpx.AsyncClient(base_url=url) as client:
        await client.post("/transcribe-chunk", content=pieces[0], headers={"content-type": "audio/wav"}, timeout=180)
        print(f"live only: {args.streams} streams for {args.baseline_seconds:g} s ...", flush=True)
        alone = await run_live(client, streams, args.baseline_seconds)
        print(f"  {alone.line()}", flush=True)

        async def send_file() -> tuple[int | str, float, int]:
            start = time.perf_counter()
            try:
                r = await client.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("long.flac", file_flac, "audio/flac")},
                    data={"response_format": "verbose_json"},
                    timeout=args.file_timeout,
                )
                segments = len(r.json().get("segments", [])) if r.status_code == 200 else 0
                return r.status_code, time.perf_counter() - start, segments
            except httpx.HTTPError as exc:
                return type(exc).__name__, time.perf_counter() - start, 0

        print(f"live while a {args.file_minutes:g}-minute file transcribes ...", flush=True)
        file_task = asyncio.ensure_future(send_file())
        during = await run_live(client, streams, file_task)
        status, seconds, segments = file_task.result()
        print(f"  {during.line()}", flush=True)
        print(f"  file: {status} after {seconds:.0f} s, {segments} segments", flush=True)
    return {
        "streams": args.streams,
        "file_minutes": args.file_minutes,
        "file_bytes": len(file_flac),
        "service_env": dict(args.env),
        "service_cpus": args.service_cpus,
        "live_only": alone.summary(),
        "live_during_file": during.summary(),
        "file": {"status": status, "seconds": seconds, "segments": segments},
        "load_average_at_start": os.getloadavg()[0],
    }


def setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.file_live", description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=4, help="live streams (default 4)")
    p.add_argument("--file-minutes", type=float, default=30.0, help="length of the file (default 30)")
    p.add_argument("--baseline-seconds", type=float, default=30.0, help="live-only phase (default 30)")
    p.add_argument("--file-timeout", type=float, default=3600.0, help="give up on the file after (default 3600 s)")
    p.add_argument("--out", help="also write the figures as JSON here")
    p.add_argument("--export", type=Path, help="write the audio to this folder and stop")
    p.add_argument("--data", type=Path, help="the audio from --export instead of the corpus")
    p.add_argument("--env", type=setting, action="append", default=[], help="KEY=VALUE for the base (repeatable)")
    p.add_argument("--service-cpus", type=int, help="pin the base to this many cores, this process to the rest")
    args = p.parse_args(argv)
    if args.export:
        live, file_flac = audio(args)
        args.export.mkdir(parents=True, exist_ok=True)
        (args.export / "live.flac").write_bytes(to_flac(live))
        (args.export / "file.flac").write_bytes(file_flac)
        print(f"wrote {args.export}/live.flac and file.flac ({args.file_minutes:g} minutes)")
        return 0
    cpus = None
    if args.service_cpus:
        cores = sorted(os.sched_getaffinity(0))
        cpus = frozenset(cores[: args.service_cpus])
        os.sched_setaffinity(0, set(cores[args.service_cpus :]) or set(cores))
    env = {"STT_LOG_FORMAT": "json", **dict(args.env)}
    stack = Stack(ports={"base": free_port()}, env=env, cpus=cpus)
    stack.start("base")
    try:
        result = asyncio.run(measure(stack.base_url, args))
    finally:
        stack.stop("base")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    during = result["live_during_file"]
    ok = result["file"]["status"] == 200 and during["p95_s"] is not None and during["p95_s"] < CHUNK_S
    print(f"{'PASS' if ok else 'FAIL'}: file answered and live p95 under {CHUNK_S:g} s while it ran")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
