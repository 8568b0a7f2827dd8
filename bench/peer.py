"""The peer: WhisperLive's own server (PyPI ``whisper-live``) on the same model directory and
the same streamed audio, for comparison.

WhisperLive pins its own faster-whisper and needs PyTorch, so it runs from its own virtual
environment (``.cache/peer-venv``, made by ``make bench-peer``); when that cannot be had the
result says exactly why instead of failing the run. Its VAD downloads ``silero_vad.onnx``
from GitHub at first use, which no machine here can reach, so the stream is sent with
``use_vad: false`` (on clean speech that costs it nothing in accuracy).

Latency is measured the way WhisperLive commits text: a segment is final once the server
marks it ``completed``; latency runs from the wall-clock moment the segment's last sample
was sent to the first message that carries it completed.

Two ways of sending, both reported:

- **at real-time pace**, as a microphone would: what a user of this machine gets. WhisperLive
  keeps at most 45 s of audio and, past that, throws away the oldest 30 s whether it has
  transcribed them or not (``MAX_BUFFER_DURATION_S`` in its ``backend/base.py``); on 2 cores
  it needs ~1.7 CPU s per audio second, and in a busy hour it fell that far behind and lost a
  third of the file (docs/performance.md): such a run is ``incomplete``, not an accuracy figure;
- **flow-controlled**: each block is sent on the real-time schedule but never more than
  ``MAX_AHEAD_S`` of audio past the end of the furthest segment it has sent back, completed or
  not: the audio a machine fast enough for it would have decoded by then. Its last segment
  stays open until more audio comes, so the bound is on what it decoded, not on what it
  completed (waiting for completed text stalled both sides). The same files as the session's
  are compared this way: the bench's design recording and the dev set's long recordings
  (:func:`long_recordings`), each in its own language.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.data import Item
from bench.metrics import normalize, summarize_ms, word_errors
from bench.stacks import process_cpu_seconds
from services.common.models import provision
from services.local_stack import free_port

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".cache" / "peer-venv" / "bin" / "python"
NAME = "WhisperLive 0.10.0 (faster_whisper backend, single_model)"
SERVER = (
    "import sys, logging; logging.basicConfig(level=logging.WARNING);"
    "from whisper_live.server import TranscriptionServer;"
    "TranscriptionServer().run('127.0.0.1', port=int(sys.argv[1]), backend='faster_whisper',"
    " faster_whisper_custom_model_path=sys.argv[2], single_model=True, max_clients=4)"
)
BLOCK = 1600  # 100 ms, as the project's own client sends
# Flow control: WhisperLive trims its buffer once it holds 45 s and keeps the newest 15 s; a
# decode backlog of 10 s stays inside that with room for its own few seconds of commit delay.
MAX_AHEAD_S = 10.0
# Recordings this long are what streaming is for; the dev set's short prompts would each cost a
# WhisperLive connection, and their errors come from the model, not from how either side streams.
LONG_S = 20.0
# A peer whose completed transcript did not move for this long (silence, or a long segment) gets
# the next block anyway: flow control slows the stream, it never stops it.
STALL_S = 10.0


def _wait_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the WhisperLive server exited with {proc.returncode} while starting")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"the WhisperLive server did not listen within {timeout:.0f} s")


def held_back(audio_end_s: float, heard_s: float, max_ahead_s: float | None) -> bool:
    """Whether a block ending at ``audio_end_s`` must wait for the peer's transcript
    (``heard_s``, the end of the furthest segment it sent) to come closer."""
    return max_ahead_s is not None and audio_end_s - heard_s > max_ahead_s


def long_recordings(items: Sequence[Item]) -> list[Item]:
    """The dev set's recordings the peer streams beside the session: every continuous one (the
    category live accuracy is judged on), and the longest of at least ``LONG_S`` of every other
    category and language (spontaneous speech; each of the other languages), among ``items``
    (the files the session and offline transcribe in this run). One per language keeps the
    peer's added time short: it streams at about real time."""
    longest: dict[tuple[str, str], Item] = {}
    for item in items:
        if item.category == "continuous" or item.seconds < LONG_S:
            continue
        key = (item.category, item.language)
        if key not in longest or item.seconds > longest[key].seconds:
            longest[key] = item
    picked = {item.name for item in longest.values()}
    return [item for item in items if item.category == "continuous" or item.name in picked]


async def _stream(port: int, samples: np.ndarray, max_ahead_s: float | None = None, language: str = "en") -> dict:
    """One stream of ``samples`` in ``language``: on the real-time schedule, and with
    ``max_ahead_s`` never that far past what the peer has decoded (see the module docstring)."""
    import websockets

    completed: dict[float, tuple[str, float, float]] = {}  # start -> (text, end, first seen completed)
    heard = [0.0, time.monotonic()]  # end of the furthest segment it sent, and when that moved
    partial: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=60) as ws:
        options = {
            "uid": str(uuid.uuid4()),
            "language": language,
            "task": "transcribe",
            "model": "base",
            "use_vad": False,
        }
        await ws.send(json.dumps(options))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if message.get("message") == "SERVER_READY":
                break
            if message.get("status") in ("ERROR", "WAIT"):
                raise RuntimeError(f"WhisperLive refused the stream: {message}")

        async def receive() -> None:
            async for raw in ws:
                now = time.monotonic()
                message = json.loads(raw)
                segments = message.get("segments") or []
                for seg in segments:
                    start = round(float(seg["start"]), 2)
                    if seg.get("completed") and start not in completed:
                        completed[start] = (seg["text"], float(seg["end"]), now)
                    if float(seg["end"]) > heard[0]:  # completed or not: it decoded that far
                        heard[:] = [float(seg["end"]), now]
                pending = [s for s in segments if not s.get("completed")]
                if pending:  # a message may list only completed segments; keep the last tail seen
                    partial[:] = pending

        receiver = asyncio.create_task(receive())
        began = time.monotonic()
        held_s = 0.0  # wall time spent waiting for the peer beyond the real-time schedule
        stalls = 0  # times a block went out past the bound because its text stood still (STALL_S)
        stalled_at = -1.0  # the ``heard`` moment of the last stall: one stall until it moves
        sent_at: list[float] = []  # wall-clock moment each block went out
        for offset in range(0, samples.size, BLOCK):
            block = samples[offset : offset + BLOCK]
            end_s = (offset + block.size) / 16_000
            due = began + held_s + end_s  # a microphone hands a block over once it is recorded
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            waited = time.monotonic()
            while held_back(end_s, heard[0], max_ahead_s):
                if time.monotonic() - heard[1] >= STALL_S:
                    if heard[1] != stalled_at:  # a new stall, not the same one again
                        stalls += 1
                        stalled_at = heard[1]
                    break
                await asyncio.sleep(0.05)
            held_s += time.monotonic() - waited
            await ws.send(block.astype(np.float32).tobytes())
            sent_at.append(time.monotonic())
        await ws.send(b"END_OF_AUDIO")
        # It may be many seconds behind by now: wait until its transcript reaches the end of
        # the audio and stops changing (at most a minute), then hang up.
        sent = time.monotonic()
        last_change, last_seen = sent, (len(completed), str(partial))
        while time.monotonic() - sent < 60 and not receiver.done():
            await asyncio.sleep(0.5)
            seen = (len(completed), str(partial))
            if seen != last_seen:
                last_change, last_seen = time.monotonic(), seen
            if time.monotonic() - last_change > 5:
                break
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await receiver

    def sent_when(end_s: float) -> float:  # when the block holding this moment of audio went out
        return sent_at[min(len(sent_at) - 1, max(0, math.ceil(end_s * 16_000 / BLOCK) - 1))]

    latencies = [max(0.0, seen - sent_when(end)) for _, end, seen in completed.values()]
    last_end = max((end for _, end, _ in completed.values()), default=0.0)
    texts = [completed[k][0] for k in sorted(completed)]
    texts += [s["text"] for s in partial if float(s["start"]) >= last_end - 0.05]
    return {
        "text": " ".join(t.strip() for t in texts),
        "latencies": latencies,
        "segments": len(completed),
        "pace": round(samples.size / 16_000 / max(1e-9, sent_at[-1] - began), 3),  # audio s per wall s
        "stalls": stalls,
    }


# A peer's answer with fewer words than this share of the reference's is not a transcript: on a
# loaded machine WhisperLive completed 5 segments of a 72 s file (WER 69.87 %), and a WER that
# low in accuracy says words were lost, not how well the peer transcribes the words it kept.
MIN_WORDS_SHARE = 0.8


def verdict(reference_words: int, words: int) -> tuple[str, str | None]:
    """``measured`` when the peer's transcript is whole enough to compare with, else
    ``incomplete`` and why (its WER is kept, but no table or goal compares with it)."""
    if reference_words and words >= MIN_WORDS_SHARE * reference_words:
        return "measured", None
    return "incomplete", (
        f"its transcript has {words} words against {reference_words} in the reference "
        f"(under {MIN_WORDS_SHARE:.0%}): words were lost, so it is not compared"
    )


def run(item: Item, device: str, log_dir: Path, note: Callable[[str], None], also: Sequence[Item] = ()) -> dict:
    """Start the peer; stream ``item`` at real-time pace, then ``item`` and ``also``
    flow-controlled (``MAX_AHEAD_S``); score each. Never raises."""
    base = {"name": NAME, "audio_s": round(item.seconds, 1)}
    if not PEER_PYTHON.exists():
        return {**base, "status": "not run", "reason": f"{PEER_PYTHON} missing: run `make bench-peer` to install it"}
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / "whisperlive.log").open("ab")
    cmd = [str(PEER_PYTHON), "-c", SERVER, str(port), str(provision("base"))]
    env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=log_dir)

    def scored(one: Item, max_ahead_s: float | None) -> dict:
        cpu_before = process_cpu_seconds(proc.pid)
        out = asyncio.run(_stream(port, one.samples, max_ahead_s, one.language))
        cpu = process_cpu_seconds(proc.pid) - cpu_before
        counts = word_errors([one.text], [out["text"]], [one.language])
        status, reason = verdict(counts.reference_words, len(normalize(out["text"]).split()))
        if reason and max_ahead_s is not None and not out["stalls"]:
            # Never further behind than its buffer keeps: it did not lose the words by lagging.
            reason += f"; its decoding was never more than {max_ahead_s:g} s behind the audio sent"
        return {
            "status": status,
            **({"reason": reason} if reason else {}),
            "wer": round(counts.wer, 4),
            "errors": counts.errors,
            "reference_words": counts.reference_words,
            "latency_ms": summarize_ms(out["latencies"]),
            "cpu_s_per_audio_s": round(cpu / one.seconds, 4),
            "pace": out["pace"],
            "stalls": out["stalls"],
            "completed_segments": out["segments"],
            "text": out["text"],
            "_latencies": out["latencies"],
        }

    try:
        _wait_port(port, proc, 120)
        realtime = scored(item, None)
        flowing = {one.name: scored(one, MAX_AHEAD_S) for one in (item, *also)}
    except Exception as exc:  # the peer is a comparison, not a dependency: record why and go on
        tail = (log_dir / "whisperlive.log").read_text(errors="replace")[-600:]
        note(f"peer: WhisperLive failed: {exc}")
        return {**base, "status": "failed", "reason": f"{type(exc).__name__}: {exc}", "log_tail": tail}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        **base,
        **realtime,
        "latency_definition": "segment end (wall clock) → first message marking it completed",
        "flow_controlled": {
            "max_ahead_s": MAX_AHEAD_S,
            "files": flowing,  # the first is ``item``; ``_latencies`` stay out of latest.json
        },
        "settings": {
            "use_vad": False,
            "model": str(provision("base")),
            "compute_type": "int8 (WhisperLive's CPU default)",
        },
        "vad_note": "use_vad=false: its VAD downloads silero_vad.onnx from GitHub at first use (unreachable here)",
    }


def compared(results: dict, items: Sequence[Item], design_name: str) -> dict:
    """The peer's flow-controlled runs beside the session (the default) on the same audio: the
    design recording (WER and CPU per audio second of one stream), and the dev set's recordings
    it streamed pooled per category (WER, with offline's for scale). Empty when the peer did
    not run."""
    files = results.get("peer", {}).get("flow_controlled", {}).get("files", {})
    if not files:
        return {}
    session = results["designs"]["session"]
    design = files[design_name]
    out: dict = {
        "design": {
            "peer_status": design["status"],
            "peer_wer": design["wer"],
            "session_wer": session["wer"],
            "peer_cpu_s_per_audio_s": design["cpu_s_per_audio_s"],
            "session_cpu_s_per_audio_s": session["cpu_s_per_audio_s"],
            "cpu_ratio": round(design["cpu_s_per_audio_s"] / max(1e-9, session["cpu_s_per_audio_s"]), 2),
        }
    }
    by_category: dict[str, list[tuple[int, Item]]] = {}
    for i, item in enumerate(items):
        if item.name in files:
            by_category.setdefault(item.category, []).append((i, item))
    out["categories"] = {}
    for category, picked in sorted(by_category.items()):
        refs = [item.text for _, item in picked]
        langs = [item.language for _, item in picked]
        out["categories"][category] = {
            "files": [item.name for _, item in picked],
            "audio_s": round(sum(item.seconds for _, item in picked), 1),
            "peer_status": sorted({files[item.name]["status"] for _, item in picked}),
            **{
                f"{path}_wer": round(word_errors(refs, texts, langs).wer, 4)
                for path, texts in (
                    ("peer", [files[item.name]["text"] for _, item in picked]),
                    ("session", [results["streamed"]["_texts"][i] for i, _ in picked]),
                    ("offline", [results["offline"]["_texts"][i] for i, _ in picked]),
                )
            },
        }
    return out
