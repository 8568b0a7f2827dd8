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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
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


async def _stream(port: int, samples: np.ndarray) -> dict:
    import websockets

    completed: dict[float, tuple[str, float, float]] = {}  # start -> (text, end, first seen completed)
    partial: list[dict] = []
    async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None, open_timeout=60) as ws:
        options = {"uid": str(uuid.uuid4()), "language": "en", "task": "transcribe", "model": "base", "use_vad": False}
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
                pending = [s for s in segments if not s.get("completed")]
                if pending:  # a message may list only completed segments; keep the last tail seen
                    partial[:] = pending

        receiver = asyncio.create_task(receive())
        began = time.monotonic()
        for offset in range(0, samples.size, BLOCK):
            block = samples[offset : offset + BLOCK]
            due = began + (offset + block.size) / 16_000  # a microphone hands a block over once it is recorded
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await ws.send(block.astype(np.float32).tobytes())
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
    latencies = [max(0.0, seen - (began + end)) for _, end, seen in completed.values()]
    last_end = max((end for _, end, _ in completed.values()), default=0.0)
    texts = [completed[k][0] for k in sorted(completed)]
    texts += [s["text"] for s in partial if float(s["start"]) >= last_end - 0.05]
    return {"text": " ".join(t.strip() for t in texts), "latencies": latencies, "segments": len(completed)}


# A peer's answer with fewer words than this share of the reference's is not a transcript: on a
# loaded machine WhisperLive completed 5 segments of a 72 s file (WER 69.87 %), and a WER that
# low in accuracy says the run broke, not how well the peer transcribes.
MIN_WORDS_SHARE = 0.8


def verdict(reference_words: int, words: int) -> tuple[str, str | None]:
    """``measured`` when the peer's transcript is whole enough to compare with, else
    ``incomplete`` and why (its WER is kept, but no table or goal compares with it)."""
    if reference_words and words >= MIN_WORDS_SHARE * reference_words:
        return "measured", None
    return "incomplete", (
        f"its transcript has {words} words against {reference_words} in the reference "
        f"(under {MIN_WORDS_SHARE:.0%}): the run broke off, so it is not compared"
    )


def run(item: Item, device: str, log_dir: Path, note: Callable[[str], None]) -> dict:
    """Start the peer, stream ``item`` at real-time pace, score it; never raises."""
    base = {"name": NAME, "audio_s": round(item.seconds, 1)}
    if not PEER_PYTHON.exists():
        return {**base, "status": "not run", "reason": f"{PEER_PYTHON} missing: run `make bench-peer` to install it"}
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = (log_dir / "whisperlive.log").open("ab")
    cmd = [str(PEER_PYTHON), "-c", SERVER, str(port), str(provision("base"))]
    env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=log_dir)
    try:
        _wait_port(port, proc, 120)
        cpu_before = process_cpu_seconds(proc.pid)
        out = asyncio.run(_stream(port, item.samples))
        cpu = process_cpu_seconds(proc.pid) - cpu_before
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
    counts = word_errors([item.text], [out["text"]])
    status, reason = verdict(counts.reference_words, len(normalize(out["text"]).split()))
    return {
        **base,
        "status": status,
        **({"reason": reason} if reason else {}),
        "wer": round(counts.wer, 4),
        "latency_ms": summarize_ms(out["latencies"]),
        "latency_definition": "segment end (wall clock) → first message marking it completed",
        "cpu_s_per_audio_s": round(cpu / item.seconds, 4),
        "completed_segments": out["segments"],
        "text": out["text"],
        "settings": {
            "use_vad": False,
            "model": str(provision("base")),
            "compute_type": "int8 (WhisperLive's CPU default)",
        },
        "vad_note": "use_vad=false: its VAD downloads silero_vad.onnx from GitHub at first use (unreachable here)",
        "_latencies": out["latencies"],
    }
