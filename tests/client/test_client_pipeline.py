"""The stages wired together in-process (fake transcriber answering from real word timestamps)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import numpy as np

from client.api import ChunkResult, RetryableError, Word
from client.dispatcher import Backoff
from client.metrics import serve
from client.pipeline import Pipeline, Settings
from client.sources import ArraySource
from client.stats import Stats
from client.stitcher import norm
from services.local_stack import free_port

WORDS = [Word(**w) for w in json.loads((Path(__file__).parent / "data" / "words-40s.json").read_text())]
AUDIO = np.full(16000 * 40, 0.01, np.float32)


class Oracle:
    """Answers each chunk with the offline words that lie wholly inside it; can fail for a while."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.prompts: list[str | None] = []

    async def detect(self, samples: np.ndarray) -> bool:
        return True

    async def transcribe(self, samples, offset, language=None, prompt=None) -> ChunkResult:
        await asyncio.sleep(0)
        if self.failures:
            self.failures -= 1
            raise RetryableError("503 backend_unavailable")
        self.prompts.append(prompt)
        end = offset + samples.size / 16000
        return ChunkResult([w for w in WORDS if w.start >= offset and w.end <= end])


async def test_whole_stream_is_transcribed_once_in_order_through_an_outage() -> None:
    stats = Stats()
    settings = Settings(backoff=Backoff(first_s=0.001, max_s=0.005))
    words = await Pipeline(ArraySource(AUDIO), Oracle(failures=12), settings, stats).run()
    assert [norm(w.text) for w in words] == [norm(w.text) for w in WORDS]
    assert stats.chunks_retried == 12 and stats.chunks_dropped == 0
    assert stats.chunks_sent == stats.chunks_captured == 20  # 0, 2, ..., 36 and the final 37..40
    assert stats.audio_done_s == 40.0


async def test_prompt_holds_only_text_heard_before_the_chunk() -> None:
    oracle = Oracle()
    settings = Settings(prompt=True, concurrency=1)
    await Pipeline(ArraySource(AUDIO[: 16000 * 9]), oracle, settings).run()
    assert oracle.prompts[0] is None
    assert oracle.prompts[1] == "The conference is now muted."  # words ending before 2.0 s, none of chunk 2..5
    assert all(p is None or len(p) <= 200 for p in oracle.prompts)


async def test_stop_finishes_what_was_captured() -> None:
    source = ArraySource(AUDIO, realtime=True)
    pipeline = Pipeline(source, Oracle(), Settings())
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(2.5)
    pipeline.stop()
    words = await asyncio.wait_for(task, 5)
    assert words and words[-1].end <= 3.0
    assert pipeline.stats.chunks_captured == pipeline.stats.chunks_done


async def test_metrics_endpoint_reports_the_counters() -> None:
    stats = Stats(chunks_captured=5, chunks_sent=4, chunks_retried=2, lag_s=1.5)
    port = free_port()
    serve(stats, port)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    for line in (
        "stt_client_chunks_captured_total 5.0",
        "stt_client_chunks_sent_total 4.0",
        "stt_client_chunks_retried_total 2.0",
        "stt_client_chunks_dropped_total 0.0",
        "stt_client_lag_seconds 1.5",
    ):
        assert line in text
    stats.chunks_dropped = 1  # read live on every scrape
    assert "stt_client_chunks_dropped_total 1.0" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
