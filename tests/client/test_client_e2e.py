"""The real ``stt-client`` process against the real local stack (tiny, base, proxy) with real speech.

Recordings are kept short (30-45 s) because two CPU cores are shared by the whole suite; the
long measurement lives in ``python -m bench.client_eval``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.client_eval import wer
from corpus import long_recording
from corpus.fetch import write_wav
from services.local_stack import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def client(*args: str, **kwargs) -> subprocess.Popen:
    """The HTTP chunk pipeline (``--transport http``); the WebSocket transport is in test_client_ws.py."""
    return subprocess.Popen(
        [sys.executable, "-m", "client", "--transport", "http", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kwargs,
    )


def scrape(port: int) -> dict[str, float]:
    """The client's own /metrics, as name -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_file_transcript_goes_to_stdout_and_jsonl_has_absolute_times(stack, tmp_path: Path) -> None:
    clip = long_recording(45, seed=0)
    out = tmp_path / "t.jsonl"
    proc = client("--url", stack.proxy_url, "--file", str(clip.path), "--language", "en", "--output", str(out))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert wer(clip.text, stdout) < 10.0, (stdout, clip.text)
    segments = [json.loads(line) for line in out.read_text().splitlines()]
    starts = [s["start"] for s in segments]
    assert starts == sorted(starts) and segments[-1]["end"] > 40.0  # absolute, not per chunk
    assert " ".join(s["text"] for s in segments) == stdout.strip()
    assert "0 dropped" in stderr and "%" in stderr  # summary and the progress bar went to stderr


def test_backend_killed_and_restarted_mid_stream_loses_no_chunk(stack, tmp_path: Path) -> None:
    clip = long_recording(30, seed=1)
    port = free_port()
    proc = client(
        "--url",
        stack.proxy_url,
        "--file",
        str(clip.path),
        "--language",
        "en",
        "--realtime",
        "--metrics-port",
        str(port),
        "--max-held",
        "2",
        "--spill-dir",
        str(tmp_path),
    )
    try:
        wait_for(lambda: scrape(port)["stt_client_chunks_sent_total"] >= 2, 120, "the first chunks")
        stack.stop("base")
        wait_for(lambda: scrape(port)["stt_client_chunks_retried_total"] >= 1, 60, "a failed attempt")
        wait_for(lambda: scrape(port)["stt_client_chunks_held"] >= 3, 60, "chunks held during the outage")
        spilled = list(tmp_path.rglob("*.npy"))
        stack.start("base")
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        if "base" not in stack.procs:
            stack.start("base")
    assert proc.returncode == 0, stderr
    assert spilled, "past --max-held, held chunks must go to disk"
    assert "service unreachable" in stderr
    assert "0 dropped" in stderr
    assert wer(clip.text, stdout) < 12.0, (stdout, clip.text)


def test_ctrl_c_finishes_in_flight_chunks_and_writes_the_output(stack, tmp_path: Path) -> None:
    clip = long_recording(30, seed=1)
    out = tmp_path / "partial.srt"
    proc = client(
        "--url", stack.proxy_url, "--file", str(clip.path), "--realtime", "--language", "en", "--output", str(out)
    )
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "stopping" in stderr
    words = stdout.split()
    assert 5 <= len(words) < len(clip.text.split())  # what was heard before Ctrl-C, no more
    assert out.read_text().startswith("1\n00:00:")


def test_non_speech_audio_gives_no_text(stack, nonspeech_clips, tmp_path: Path) -> None:
    kinds: dict[str, np.ndarray] = {}
    for c in nonspeech_clips:
        kinds.setdefault(c.kind, c.samples()[: 16000 * 5])
    path = tmp_path / "nonspeech.wav"
    write_wav(path, np.concatenate(list(kinds.values())))
    proc = client("--url", stack.proxy_url, "--file", str(path))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.strip() == "", f"text on {sorted(kinds)}: {stdout!r}"


def test_unreachable_service_on_a_closed_port_is_retried_not_dropped(tmp_path: Path) -> None:
    """No stack needed: the client keeps the chunk and says so; Ctrl-C twice gives up cleanly."""
    path = tmp_path / "s.wav"
    write_wav(path, np.zeros(16000 * 4, np.float32))
    proc = client("--url", f"http://127.0.0.1:{free_port()}", "--file", str(path))
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert "service unreachable" in stderr
    assert "giving up" in stderr
    assert stdout.strip() == ""
