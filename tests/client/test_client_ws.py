"""The real ``stt-client --transport ws`` against real proxies in front of the stack's tiny and base.

Two more proxy replicas (A and B) share the session stack's detector and transcriber, as two
pods behind one Service would. The client streams a real recording at real-time pace to A
with B as its second URL; A is SIGKILLed mid-stream (no close frame, as a killed pod), the
client resumes on B from the audio it kept, and the transcript must match an uninterrupted
run: same WER within a point or two, no word doubled or lost at the seam.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.client_eval import wer
from client.stitcher import norm
from corpus import long_recording
from corpus.fetch import read_wav
from services.local_stack import Stack, free_ports

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def replicas(stack: Stack, tmp_path: Path) -> Iterator[tuple[Stack, Stack]]:
    """Proxies A and B on their own ports, both routing to the session stack's tiny and base."""
    made: list[Stack] = []
    try:
        for name, port in zip("ab", free_ports(2), strict=True):
            ports = {"tiny": stack.ports["tiny"], "base": stack.ports["base"], "proxy": port}
            replica = Stack(ports=ports, env=dict(stack.env), run_dir=tmp_path / f"proxy-{name}")
            replica.start("proxy")
            made.append(replica)
        yield made[0], made[1]
    finally:
        for replica in made:
            replica.stop("proxy")


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch) -> Path:
    """The client keeps unacknowledged audio under $XDG_STATE_HOME (a directory per test, not ~)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


def client(*args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "client", *args],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def words_of(jsonl: Path) -> list[dict]:
    return [w for line in jsonl.read_text().splitlines() for w in json.loads(line)["words"]]


def doubled(words: list[dict]) -> int:
    """Adjacent identical words (what a seam that commits a word twice leaves behind)."""
    return sum(norm(a["word"]) == norm(b["word"]) for a, b in itertools.pairwise(words))


def test_proxy_killed_mid_stream_client_resumes_on_the_next_url(
    replicas: tuple[Stack, Stack], tmp_path: Path, state_home: Path
) -> None:
    a, b = replicas
    clip = long_recording(60, gap=0.6)
    common = ("--transport", "ws", "--file", str(clip.path), "--language", "en")

    # Uninterrupted, as fast as the session works (the windows it decodes do not depend on pace).
    base_out = tmp_path / "uninterrupted.jsonl"
    began = time.monotonic()
    proc = client(*common, "--url", a.proxy_url, "--output", str(base_out))
    base_stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    base_wer = wer(clip.text, base_stdout)
    print(f"uninterrupted: WER {base_wer:.2f} % in {time.monotonic() - began:.0f} s")

    # Real-time pace to A, B as the second URL; A is killed once the stream is well under way.
    out = tmp_path / "resumed.jsonl"
    proc = client(*common, "--realtime", "--url", a.proxy_url, "--url", b.proxy_url, "--output", str(out))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        # Committed lines print as "[m:ss] ..."; kill after one that began 15 s or more in.
        while not any(re.match(r"\[0:(1[5-9]|[2-5]\d)\]", line) for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        a.stop("proxy", signal.SIGKILL)
        stdout = proc.stdout.read()  # stderr is the reader thread's: communicate() would race it
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    stderr = "".join(lines)
    assert proc.returncode == 0, stderr
    b_stream = b.proxy_url.replace("http://", "ws://") + "/v1/stream"
    assert f"resumed on {b_stream}" in stderr, stderr
    seam = float(re.search(r"words final up to ([\d.]+) s", stderr).group(1))
    assert seam > 5.0, stderr
    metrics = httpx.get(f"{b.proxy_url}/metrics", timeout=5).text
    finished = re.search(r'stt_proxy_sessions_total\{outcome="finished",protocol="native"\} ([\d.]+)', metrics)
    assert finished and float(finished.group(1)) == 1.0, metrics  # the stream finished on B

    resumed_wer = wer(clip.text, stdout)
    print(f"killed at ~{seam:.1f} s and resumed on B: WER {resumed_wer:.2f} % (uninterrupted {base_wer:.2f} %)")
    assert resumed_wer <= base_wer + 2.0, (stdout, base_stdout)

    # At the seam: the same words as the uninterrupted run, none twice.
    base_words, words = words_of(base_out), words_of(out)
    near = [w for w in words if seam - 8 <= w["start"] <= seam + 8]
    base_near = [w for w in base_words if seam - 8 <= w["start"] <= seam + 8]
    assert doubled(near) <= doubled(base_near), (near, base_near)
    assert abs(len(near) - len(base_near)) <= 1, (near, base_near)
    assert abs(len(words) - len(base_words)) <= 2
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)  # appended in order, never rewritten
    assert list(state_home.rglob("*.npy")) == []  # both runs finished: no audio left for a replay


def test_http_transport_still_streams_chunks(stack: Stack, tmp_path: Path) -> None:
    clip = long_recording(30, seed=1)
    proc = client("--transport", "http", "--url", stack.proxy_url, "--file", str(clip.path), "--language", "en")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert wer(clip.text, stdout) < 10.0, (stdout, clip.text)
    assert "chunks" in stderr and "0 dropped" in stderr  # the chunk pipeline's summary, not the session's


def test_client_killed_with_audio_unacknowledged_the_next_run_transcribes_it(
    stack: Stack, tmp_path: Path, state_home: Path
) -> None:
    """``kill -9`` of ``stt-client --transport ws`` just after it captured 30 s (the proxy has
    worked off only part of it): the next run (``--recover only``) sends the unacknowledged
    audio through the real proxy, and out come the words an uninterrupted run has after the
    killed run's last settled sample."""
    clip = long_recording(30, seed=2)
    pcm = tmp_path / "clip.pcm"
    audio = (np.clip(read_wav(clip.path), -1, 1) * 32767).astype("<i2")
    # Whole 0.1 s blocks: from a pipe still open, stdin hands over a partial block only at its end.
    pcm.write_bytes(audio[: audio.size // 1600 * 1600].tobytes())
    common = ("--transport", "ws", "--stdin", "--language", "en", "--url", stack.proxy_url)

    ref_out = tmp_path / "uninterrupted.jsonl"
    with pcm.open("rb") as stdin:
        proc = client(*common, "--output", str(ref_out), stdin=stdin)
        _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    samples = pcm.stat().st_size // 2

    # A pipe kept open: a live source, still capturing. --quiet: nobody reads its stderr meanwhile.
    proc = client(*common, "--quiet", stdin=subprocess.PIPE)
    try:
        proc.stdin.buffer.write(pcm.read_bytes())
        proc.stdin.buffer.flush()
        deadline = time.monotonic() + 120
        while segments_end(state_home) != samples:  # all 30 s on disk: at most a second after capture
            assert time.monotonic() < deadline and proc.poll() is None, "the audio never reached the disk"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    state = next(state_home.rglob("ws.json"), None)
    settled = json.loads(state.read_text())["settled_sample"] if state else 0
    assert settled < samples - 10 * 16_000, settled  # killed with most of the audio unacknowledged

    proc = client("--recover", "only", "--url", stack.proxy_url, "--language", "en")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert "-- recovered from an interrupted run (stdin, started " in stdout, stdout
    recovered = re.search(r"^\[recovered [\d.]+-[\d.]+ s\] (.*)$", stdout, re.M).group(1)
    expected = " ".join(w["word"].strip() for w in words_of(ref_out) if (w["start"] + w["end"]) / 2 > settled / 16_000)
    print(f"killed with {(samples - settled) / 16_000:.1f} s unacknowledged; recovered: {recovered!r}")
    assert len(expected.split()) >= 20
    assert wer(expected, recovered) <= 10.0, (expected, recovered)
    assert list(state_home.rglob("*.npy")) == []  # acknowledged: nothing is replayed twice


def segments_end(state_home: Path) -> int:
    """Stream sample after the last one in a run's audio files under ``state_home`` (0: none)."""
    files = sorted(state_home.rglob("audio-at-*.npy"))
    try:
        return int(files[-1].name[len("audio-at-") : -len(".npy")]) + np.load(files[-1]).size if files else 0
    except (OSError, ValueError):  # being renamed or deleted right now
        return 0
