"""A model call that hangs (does not crash) makes base neither ready nor alive, with the reason,
so Kubernetes stops routing to it within seconds and its liveness probe restarts it; a call that
returns after all brings readiness back on its own."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from core.vocabulary import SAMPLE_RATE
from services.base.batcher import Batcher, Priority, _Call
from services.base.transcriber import Request, Result
from tests.services.base_harness import serving


class HangingModel:
    """``run_batch`` that blocks until ``release`` is set, like a model call stuck in C."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.in_call = threading.Event()

    def __call__(self, batch: list[Request]) -> list[Result]:
        self.in_call.set()
        self.release.wait(10)
        return [Result("x", "en", 1.0, r.samples.size / SAMPLE_RATE) for r in batch]


def test_the_bound_grows_with_the_audio_in_the_call() -> None:
    batcher = Batcher(lambda batch: [], hang_seconds=30, hang_seconds_per_audio_second=2.0)
    assert batcher.hung() is None  # no call running
    batcher._calls[Priority.FILE] = _Call(time.perf_counter() - 95, 24.0, 3)
    assert batcher.hung() == (
        "a model call on 24.0 s of audio (3 chunks) has run 95 s (bound 78 s); the process will be restarted"
    )
    batcher._calls[Priority.FILE] = _Call(time.perf_counter() - 70, 24.0, 3)  # slow, but within 30 + 2 x 24 s
    assert batcher.hung() is None
    # with a live lane, a hung live call beside a healthy file call is still seen
    batcher._calls[Priority.LIVE] = _Call(time.perf_counter() - 40, 3.0, 1)
    assert batcher.hung() == (
        "a model call on 3.0 s of audio (1 chunks) has run 40 s (bound 36 s); the process will be restarted"
    )


@pytest.fixture
async def hanging() -> AsyncIterator[SimpleNamespace]:
    """The real base app whose engine's model hangs; a call counts as hung after 0.3 s plus
    0.1 s per audio second."""
    model = HangingModel()
    batcher = Batcher(model, max_batch=8, window_ms=0, hang_seconds=0.3, hang_seconds_per_audio_second=0.1)
    batcher.start()
    try:
        async with serving(SimpleNamespace(batcher=batcher, model_name="stub")) as client:
            yield SimpleNamespace(client=client, model=model, batcher=batcher)
    finally:
        model.release.set()
        await batcher.stop()


async def probes(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
    return await client.get("/readyz"), await client.get("/healthz")


async def test_a_hung_model_call_fails_both_probes_until_it_returns(hanging) -> None:
    call = asyncio.create_task(hanging.batcher.submit(Request(np.zeros(2 * SAMPLE_RATE, np.float32), "en")))
    while not hanging.model.in_call.is_set():
        await asyncio.sleep(0.005)
    ready, alive = await probes(hanging.client)
    assert (ready.status_code, alive.status_code) == (200, 200)  # slow is not hung: bound 0.5 s
    await asyncio.sleep(0.6)
    ready, alive = await probes(hanging.client)
    assert (ready.status_code, alive.status_code) == (503, 503)
    for answer in (ready, alive):
        message = answer.json()["error"]["message"]
        assert "a model call on 2.0 s of audio (1 chunks) has run" in message
        assert "the process will be restarted" in message
    assert alive.json()["error"]["code"] == "stuck"
    chunk = await hanging.client.post("/transcribe-chunk", content=b"RIFF", headers={"content-type": "audio/wav"})
    assert chunk.status_code == 503  # no new work for a stuck process
    hanging.model.release.set()
    await call
    ready, alive = await probes(hanging.client)
    assert (ready.status_code, alive.status_code) == (200, 200)
