"""The base service under load: live chunks before file windows, a file admitted a few windows
at a time, queued work removed when its caller goes away or its deadline passes.

The model is a fake (``FakeModel``) that can be held mid-call on a ``threading.Event``: a real
model call cannot be interrupted either, which is what makes these orderings matter.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import wave
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from core.errors import ApiError
from core.vocabulary import SAMPLE_RATE
from services.base import app as base
from services.base.batcher import Batcher, Priority, _Call
from services.base.metrics import BATCH_CANCELLED, BATCH_EXPIRED, GREEDY_UNDER_LOAD
from services.base.transcriber import Request, Result
from tests.services.base_harness import serving


class FakeModel:
    """``run_batch`` that records each call's chunks (by sample count) and, while ``gate`` is
    clear, blocks inside its calls from the ``hold_from``-th on, like a long model call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.beams: list[list[int]] = []  # each call's chunks' beam sizes
        self.gate = threading.Event()
        self.gate.set()
        self.hold_from = 1
        self.in_call = threading.Event()

    def __call__(self, batch: list[Request]) -> list[Result]:
        self.calls.append([r.samples.size for r in batch])
        self.beams.append([r.beam_size for r in batch])
        if len(self.calls) >= self.hold_from:
            self.in_call.set()
            self.gate.wait(10)
        self.in_call.clear()
        results = []
        for r in batch:
            seconds = r.samples.size / SAMPLE_RATE
            segment = {"start": 0.0, "end": round(seconds, 3), "text": f" {r.samples.size}"}
            results.append(
                Result(str(r.samples.size), r.language or "en", 1.0, seconds, [segment], beam_size=r.beam_size)
            )
        return results

    async def held(self) -> None:
        """Wait until a call is running (and held at the gate)."""
        for _ in range(1000):
            if self.in_call.is_set():
                return
            await asyncio.sleep(0.005)
        raise AssertionError("the model was never called")

    @property
    def sizes(self) -> list[int]:
        return [n for call in self.calls for n in call]


def chunk(samples: int, language: str | None = "en", beam_size: int = 1) -> Request:
    return Request(np.zeros(samples, np.float32), language, beam_size=beam_size)


def counter(metric, priority: Priority) -> float:
    return metric.labels(priority.value)._value.get()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.005)


# --- the batcher alone ------------------------------------------------------------------------


@asynccontextmanager
async def running(**settings) -> AsyncIterator[tuple[FakeModel, Batcher]]:
    """A started Batcher over a FakeModel; the model is released and the batcher stopped after,
    whatever the test did to the gate."""
    model = FakeModel()
    batcher = Batcher(model, **settings)
    batcher.start()
    try:
        yield model, batcher
    finally:
        model.gate.set()
        await batcher.stop()


async def test_a_lone_live_chunk_waits_for_company_only_after_chunks_came_together() -> None:
    """One stream's chunks come 3 s apart: holding each back for the window only delays it."""
    async with running(max_batch=8, window_ms=1000) as (model, batcher):
        started = time.perf_counter()
        await batcher.submit(chunk(100))
        assert time.perf_counter() - started < 0.5, "a lone chunk started at once, not after the 1 s window"
        await asyncio.gather(batcher.submit(chunk(200)), batcher.submit(chunk(201)))  # company came
        first = asyncio.create_task(batcher.submit(chunk(300)))
        await asyncio.sleep(0.2)
        await asyncio.gather(first, batcher.submit(chunk(301)))  # joined the one waiting for it
    assert model.calls == [[100], [200, 201], [300, 301]]


async def test_a_live_chunk_submitted_after_file_windows_runs_before_them() -> None:
    async with running(max_batch=8, window_ms=0, file_batch_max=1) as (model, batcher):
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(chunk(100), Priority.FILE))
        await model.held()  # the file's first window holds the model
        files = [asyncio.create_task(batcher.submit(chunk(101 + i), Priority.FILE, admitted=True)) for i in range(3)]
        await asyncio.sleep(0.01)
        live = asyncio.create_task(batcher.submit(chunk(200), Priority.LIVE))
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, live, *files)
        # live went next, in a call of its own; the file windows went one per call after it
        assert model.calls == [[100], [200], [101], [102], [103]]


async def test_live_chunks_batch_together_but_never_with_file_windows() -> None:
    async with running(max_batch=8, window_ms=0, file_batch_max=2) as (model, batcher):
        model.gate.clear()
        blocker = asyncio.create_task(batcher.submit(chunk(1)))
        await model.held()
        files = [asyncio.create_task(batcher.submit(chunk(100 + i), Priority.FILE)) for i in range(3)]
        lives = [asyncio.create_task(batcher.submit(chunk(200 + i))) for i in range(3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(blocker, *files, *lives)
        assert model.calls == [[1], [200, 201, 202], [100, 101], [102]]


async def test_with_a_live_lane_a_live_chunk_starts_beside_a_running_file_call() -> None:
    async with running(max_batch=8, window_ms=0, file_batch_max=1, live_lane=True) as (model, batcher):
        model.gate.clear()
        file = asyncio.create_task(batcher.submit(chunk(100), Priority.FILE))
        await model.held()  # the file window holds its model worker
        live = asyncio.create_task(batcher.submit(chunk(200), Priority.LIVE))
        await until(lambda: len(model.calls) == 2)  # started while the file call still runs
        assert model.calls == [[100], [200]]
        model.gate.set()
        await asyncio.gather(file, live)


async def test_with_a_live_lane_a_file_window_still_waits_for_live_work() -> None:
    async with running(max_batch=8, window_ms=0, file_batch_max=1, live_lane=True) as (model, batcher):
        model.gate.clear()
        live = asyncio.create_task(batcher.submit(chunk(200), Priority.LIVE))
        await model.held()
        file = asyncio.create_task(batcher.submit(chunk(100), Priority.FILE))
        await asyncio.sleep(0.05)
        assert model.calls == [[200]]  # strict priority: files only get the gaps
        model.gate.set()
        await asyncio.gather(file, live)
        assert model.calls == [[200], [100]]


@pytest.mark.parametrize(("live_lane", "expected"), [(False, 2.0), (True, 1.0)])
def test_a_running_file_call_counts_in_a_live_chunk_s_wait_only_without_a_live_lane(
    live_lane: bool, expected: float
) -> None:
    batcher = Batcher(lambda batch: [], max_wait_s=10, live_lane=live_lane)
    batcher._live_call_s = 1.0
    batcher._calls[Priority.FILE] = _Call(time.perf_counter(), 30.0, 1)
    assert batcher.expected_wait_s() == pytest.approx(expected, abs=0.01)


async def test_file_windows_do_not_take_the_queue_slots_of_live_chunks() -> None:
    async with running(max_batch=1, window_ms=0, max_queue=2) as (model, batcher):
        model.gate.clear()
        blocker = asyncio.create_task(batcher.submit(chunk(1)))
        await model.held()
        # A file already admitted goes on past the cap; a new file is refused at the cap.
        files = [asyncio.create_task(batcher.submit(chunk(100), Priority.FILE, admitted=True)) for _ in range(5)]
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as refused:
            await batcher.submit(chunk(100), Priority.FILE)
        assert refused.value.status == 429
        assert "file windows" in refused.value.message
        lives = [asyncio.create_task(batcher.submit(chunk(200))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as refused:  # the live cap still protects the live queue
            await batcher.submit(chunk(200))
        assert refused.value.status == 429
        assert "live chunks" in refused.value.message
        model.gate.set()
        await asyncio.gather(blocker, *files, *lives)


async def test_a_live_chunk_that_would_wait_too_long_is_refused_at_once() -> None:
    """With a bound on the expected wait, the queue's length in seconds (not in chunks) decides:
    an overloaded service answers the excess 429 at once instead of a minute later."""
    async with running(max_batch=2, window_ms=0, max_queue=64, max_wait_s=1.0) as (model, batcher):
        model.gate.clear()
        timed = asyncio.create_task(batcher.submit(chunk(1)))  # the first live call: 0.4 s
        await model.held()
        await asyncio.sleep(0.4)
        model.gate.set()
        await timed
        assert batcher.expected_wait_s() == pytest.approx(0.4, abs=0.15)
        model.gate.clear()
        blocker = asyncio.create_task(batcher.submit(chunk(2)))
        await model.held()
        # The running call has about 0.4 s left; two queued chunks make the next batch (0.8 s in
        # all), a third would wait for a second batch (about 1.2 s): over the bound.
        queued = [asyncio.create_task(batcher.submit(chunk(10 + i))) for i in range(2)]
        await asyncio.sleep(0.01)
        assert batcher.depth == 2
        started = time.perf_counter()
        with pytest.raises(ApiError) as refused:
            await batcher.submit(chunk(99))
        assert time.perf_counter() - started < 0.1
        assert refused.value.status == 429 and int(refused.value.headers["Retry-After"]) >= 1
        assert "wait about" in refused.value.message
        # file windows are not bounded by the live wait
        file_window = asyncio.create_task(batcher.submit(chunk(500), Priority.FILE))
        model.gate.set()
        await asyncio.gather(blocker, file_window, *queued)
        assert 99 not in model.sizes


def greedy_after(bound_s: float) -> AbstractAsyncContextManager[tuple[FakeModel, Batcher]]:
    """A batcher that decodes waiting live chunks greedily, as the app does, past ``bound_s``."""
    return running(max_batch=8, window_ms=0, lighten=base.greedy_under_load, lighten_after_s=bound_s)


async def test_live_chunks_that_waited_past_the_bound_are_decoded_greedily_and_together() -> None:
    """A backend that has fallen behind drops the beam search of every waiting live chunk: they
    then share a batch key and run in one call instead of one call per beam size."""
    async with greedy_after(0.05) as (model, batcher):
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(chunk(100, beam_size=5)))
        await model.held()  # started at once: it never waited, so it keeps its beams
        waiting = [asyncio.create_task(batcher.submit(chunk(200 + i, beam_size=5 - 2 * (i % 2)))) for i in range(3)]
        await asyncio.sleep(0.1)  # past the bound
        model.gate.set()
        results = await asyncio.gather(first, *waiting)
        assert model.calls == [[100], [200, 201, 202]]
        assert model.beams == [[5], [1, 1, 1]]
        assert [result.beam_size for result, _ in results] == [5, 1, 1, 1]  # the caller is told


async def test_live_chunks_within_the_bound_keep_their_beams_and_batch_by_beam_size() -> None:
    async with greedy_after(10.0) as (model, batcher):
        model.gate.clear()
        first = asyncio.create_task(batcher.submit(chunk(100, beam_size=5)))
        await model.held()
        waiting = [asyncio.create_task(batcher.submit(chunk(200 + i, beam_size=5 - 2 * (i % 2)))) for i in range(3)]
        await asyncio.sleep(0.1)
        model.gate.set()
        await asyncio.gather(first, *waiting)
        assert model.calls == [[100], [200, 202], [201]]
        assert model.beams == [[5], [5, 5], [3]]


async def test_file_windows_are_never_lightened() -> None:
    async with greedy_after(0.0) as (model, batcher):
        model.gate.clear()
        blocker = asyncio.create_task(batcher.submit(chunk(1, beam_size=5)))
        await model.held()
        window = asyncio.create_task(batcher.submit(chunk(100, beam_size=5), Priority.FILE))
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(blocker, window)
        assert model.beams == [[1], [5]]  # the live chunk waited (0 s bound); the file window kept its beams


async def test_a_cancelled_caller_s_queued_chunk_is_removed_and_never_run() -> None:
    async with running(max_batch=8, window_ms=0) as (model, batcher):
        model.gate.clear()
        blocker = asyncio.create_task(batcher.submit(chunk(1)))
        await model.held()
        before = counter(BATCH_CANCELLED, Priority.FILE)
        gone = asyncio.create_task(batcher.submit(chunk(300), Priority.FILE))
        await asyncio.sleep(0.01)
        assert batcher.depth == 1
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert batcher.depth == 0  # removed at once, not only skipped when its turn comes
        assert counter(BATCH_CANCELLED, Priority.FILE) == before + 1
        model.gate.set()
        await blocker
        await batcher.submit(chunk(2))  # the loop goes on
        assert 300 not in model.sizes


async def test_a_chunk_whose_deadline_passes_in_the_queue_is_not_run_and_gets_504() -> None:
    async with running(max_batch=8, window_ms=0) as (model, batcher):
        model.gate.clear()
        blocker = asyncio.create_task(batcher.submit(chunk(1)))
        await model.held()
        before = counter(BATCH_EXPIRED, Priority.LIVE)
        started = time.perf_counter()
        with pytest.raises(ApiError) as expired:
            await batcher.submit(chunk(400), deadline=time.perf_counter() + 0.1)
        # answered at its deadline, while the model is still busy: the caller is not kept waiting
        assert time.perf_counter() - started < 2
        assert expired.value.status == 504
        assert expired.value.code == "deadline_exceeded"
        assert counter(BATCH_EXPIRED, Priority.LIVE) == before + 1
        with pytest.raises(ApiError) as already:  # a deadline already past is never queued
            await batcher.submit(chunk(401), deadline=time.perf_counter() - 1)
        assert already.value.status == 504
        model.gate.set()
        await blocker
        fine, _ = await batcher.submit(chunk(402), deadline=time.perf_counter() + 30)
        assert fine.text == "402"
        assert 400 not in model.sizes and 401 not in model.sizes


# --- through the app, with the fake model -----------------------------------------------------


def wav_bytes(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.zeros(int(seconds * SAMPLE_RATE), np.int16).tobytes())
    return buf.getvalue()


class FakeEngine:
    model_name = "fake"
    gap_rule = None  # its fake answers have no word times: the skipped-speech check is off

    def __init__(self, batcher: Batcher, file_windows_in_flight: int):
        self.batcher = batcher
        self.file_windows_in_flight = file_windows_in_flight
        self.transcriber = SimpleNamespace(multilingual=True)

    def describe(self) -> dict:
        return {"model": self.model_name, "device": "cpu"}


PAUSED_WINDOW = SAMPLE_RATE * 9 // 10


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SimpleNamespace]:
    """The real base app with a fake engine: ``max_queue`` 4, file windows 2 per call and 4 in
    flight per file; ``speech_windows`` cuts a file into windows of 0.9 s, one per second (no
    detector needed; the pause between them makes none of them a seam)."""
    monkeypatch.setattr(
        base,
        "speech_windows",
        lambda samples: [(s, s + PAUSED_WINDOW) for s in range(0, samples.size - SAMPLE_RATE + 1, SAMPLE_RATE)],
    )
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, window_ms=0, max_queue=4, file_batch_max=2)
    batcher.start()
    try:
        async with serving(FakeEngine(batcher, file_windows_in_flight=4)) as client:
            yield SimpleNamespace(client=client, model=model, batcher=batcher)
    finally:
        model.gate.set()
        await batcher.stop()


async def post_file(client: httpx.AsyncClient, seconds: float, **headers: str) -> httpx.Response:
    return await client.post(
        "/v1/audio/transcriptions",
        files={"file": ("long.wav", wav_bytes(seconds), "audio/wav")},
        data={"response_format": "verbose_json"},
        headers=headers,
        timeout=30,
    )


async def post_chunk(
    client: httpx.AsyncClient, seconds: float = 1.0, query: str = "", **headers: str
) -> httpx.Response:
    return await client.post(
        f"/transcribe-chunk{query}",
        content=wav_bytes(seconds),
        headers={"content-type": "audio/wav", **headers},
        timeout=30,
    )


async def test_a_chunk_asks_for_its_beam_size_and_one_out_of_range_is_refused_with_the_range(served) -> None:
    for query, beam in (("", 1), ("?beam_size=3", 3)):
        answer = await served.client.post(
            f"/transcribe-chunk{query}", content=wav_bytes(1.0), headers={"content-type": "audio/wav"}
        )
        assert answer.status_code == 200, answer.text
        assert served.model.beams[-1] == [beam]
        assert answer.json()["beam_size"] == beam  # the beams the decode ran with
    calls = len(served.model.calls)
    for wrong in ("0", "6", "wide"):
        answer = await served.client.post(
            f"/transcribe-chunk?beam_size={wrong}", content=wav_bytes(1.0), headers={"content-type": "audio/wav"}
        )
        assert answer.status_code == 422, answer.text
        assert "beam_size" in answer.json()["error"]["message"]
    assert len(served.model.calls) == calls  # nothing refused reached the model


async def test_a_chunk_that_waited_behind_a_long_call_is_decoded_greedily_and_says_so() -> None:
    """Through the real app, with its own lighter form (``greedy_under_load``): the answer's
    ``beam_size`` and ``stt_chunks_greedy_under_load_total`` show the beams that were dropped."""
    model = FakeModel()
    batcher = Batcher(model, max_batch=4, window_ms=0, lighten=base.greedy_under_load, lighten_after_s=0.05)
    batcher.start()
    dropped = GREEDY_UNDER_LOAD._value.get()
    try:
        async with serving(FakeEngine(batcher, file_windows_in_flight=4)) as client:
            model.gate.clear()
            first = asyncio.create_task(post_chunk(client, 1.0, "?beam_size=5"))
            await model.held()
            late = asyncio.create_task(post_chunk(client, 2.0, "?beam_size=5"))
            await until(lambda: batcher.depth == 1)
            await asyncio.sleep(0.1)
            model.gate.set()
            answers = [(await first).json(), (await late).json()]
    finally:
        model.gate.set()
        await batcher.stop()
    assert [a["beam_size"] for a in answers] == [5, 1]
    assert model.beams == [[5], [1]]
    assert GREEDY_UNDER_LOAD._value.get() == dropped + 1


async def test_a_file_with_more_windows_than_the_queue_holds_transcribes_on_an_idle_server(served) -> None:
    answer = await post_file(served.client, 40)  # 40 windows, ten times the queue of 4
    assert answer.status_code == 200, answer.text
    starts = [s["start"] for s in answer.json()["segments"]]
    assert starts == [float(i) for i in range(40)]  # every window, in order
    assert max(len(call) for call in served.model.calls) <= 2  # file batches stay small


async def test_live_chunks_are_not_refused_while_a_long_file_runs(served) -> None:
    served.model.hold_from = 2  # the file's first window passes; its next call holds the model
    served.model.gate.clear()
    file = asyncio.create_task(post_file(served.client, 40))
    await served.model.held()
    await until(lambda: served.batcher.depth_of(Priority.FILE) == 2)  # 2 running, 2 waiting
    chunks = [asyncio.create_task(post_chunk(served.client)) for _ in range(4)]  # the whole live cap
    await until(lambda: served.batcher.depth_of(Priority.LIVE) == 4)
    served.model.gate.set()
    answers = await asyncio.gather(*chunks)
    assert [a.status_code for a in answers] == [200] * 4
    assert (await file).status_code == 200
    # the live chunks (batched: 4 in one call) ran right after the file call that held the model
    live_call = next(i for i, call in enumerate(served.model.calls) if len(call) == 4)
    assert live_call == 2


async def test_a_live_chunk_past_its_deadline_header_gets_504_and_is_not_run(served) -> None:
    served.model.gate.clear()
    blocker = asyncio.create_task(post_chunk(served.client, 2.0))
    await served.model.held()
    answer = await post_chunk(served.client, 1.0, **{"X-Request-Deadline-Ms": "100"})
    assert answer.status_code == 504
    assert answer.json()["error"]["code"] == "deadline_exceeded"
    served.model.gate.set()
    assert (await blocker).status_code == 200
    assert served.model.sizes == [2 * SAMPLE_RATE]
    bad = await post_chunk(served.client, 1.0, **{"X-Request-Deadline-Ms": "soon"})
    assert bad.status_code == 400


def asgi_call(path: str, headers: list[tuple[bytes, bytes]], body: bytes, hang_up: asyncio.Event):
    """Call the app the way a server does, with a client that sends ``body`` and then hangs up
    when ``hang_up`` is set; returns the coroutine and the list the answer's messages go to."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"base"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("base", 80),
    }
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    return base.app(scope, receive, send), sent


@pytest.mark.parametrize("endpoint", ["/transcribe-chunk", "/v1/audio/transcriptions", "stream"])
async def test_a_client_that_hangs_up_has_its_queued_work_removed_unrun(served, endpoint: str) -> None:
    if endpoint == "/transcribe-chunk":
        body, content_type, priority = wav_bytes(3.0), b"audio/wav", Priority.LIVE
    else:  # a whole-file answer, or a stream=true one whose first window waits before it starts
        form = {"model": "x", "stream": "true" if endpoint == "stream" else "false"}
        files = {"file": ("f.wav", wav_bytes(6.0), "audio/wav")}
        built = httpx.Request("POST", "http://base/", files=files, data=form)
        body, content_type, priority = built.read(), built.headers["content-type"].encode(), Priority.FILE
        endpoint = "/v1/audio/transcriptions"
    served.model.gate.clear()
    blocker = asyncio.create_task(post_chunk(served.client, 2.0))
    await served.model.held()
    before = counter(BATCH_CANCELLED, priority)
    hang_up = asyncio.Event()
    call, sent = asgi_call(endpoint, [(b"content-type", content_type)], body, hang_up)
    task = asyncio.create_task(call)
    await until(lambda: served.batcher.depth_of(priority) == 1)
    hang_up.set()
    await asyncio.wait_for(task, 5)  # without the disconnect watch this waits for the model
    assert served.batcher.depth == 0
    assert counter(BATCH_CANCELLED, priority) == before + 1
    assert sent[0]["status"] == 499
    served.model.gate.set()
    assert (await blocker).status_code == 200
    await asyncio.sleep(0.05)
    assert served.model.sizes == [2 * SAMPLE_RATE]  # only the blocker ever ran


class TwoSegmentModel(FakeModel):
    """Answers every window with two segments, the second running to the window's end (as a
    sentence cut by a seam does): 0 - 0.5 s and 0.6 s - end, the second's first word at 0.6 s."""

    def __call__(self, batch: list[Request]) -> list[Result]:
        results = super().__call__(batch)
        for r in results:
            end = r.duration_s
            word = {"word": " w", "start": 0.6, "end": end, "probability": 0.9}
            r.segments = [
                {"start": 0.0, "end": 0.5, "text": " kept"},
                {"start": 0.6, "end": end, "text": " carried", "words": [word]},
            ]
        return results


async def test_a_window_after_a_seam_waits_and_starts_where_the_cut_sentence_began(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three 2 s windows of unbroken speech, up to 4 in flight: each waits for the one before
    it and starts where that one's carried segment began (0.6 - 0.15 s in, but never before the
    kept segment's end at 0.5 s); the last window, with no seam after it, keeps both segments."""
    monkeypatch.setattr(base, "speech_windows", lambda samples: [(0, 32000), (32000, 64000), (64000, 96000)])
    model = TwoSegmentModel()
    batcher = Batcher(model, max_batch=4, window_ms=0, max_queue=4, file_batch_max=2)
    batcher.start()
    try:
        async with serving(FakeEngine(batcher, file_windows_in_flight=4)) as client:
            answer = await post_file(client, 6)
    finally:
        await batcher.stop()
    assert answer.status_code == 200, answer.text
    # one window at a time, each grown by what the one before it carried: 0.5-4 s, then 1-6 s
    assert model.calls == [[32000], [56000], [80000]]
    segments = [(s["start"], s["end"], s["text"].strip()) for s in answer.json()["segments"]]
    assert segments == [(0.0, 0.5, "kept"), (0.5, 1.0, "kept"), (1.0, 1.5, "kept"), (1.6, 6.0, "carried")]
