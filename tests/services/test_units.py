"""Fast unit tests: routing choice, dynamic batching, model verification, detector regions."""

from __future__ import annotations

import asyncio
import shutil
import time

import numpy as np
import pytest

from core.errors import ApiError
from core.vocabulary import RoutingMode
from services.base.batcher import Batcher
from services.base.transcriber import Request, Result
from services.common.models import KNOWN_MODELS, ModelError, provision, verify
from services.proxy.backends import Backend, choose
from services.tiny.detectors import speech_regions


def backends(cpu_ready: bool, gpu_ready: bool, gpu_configured: bool = True) -> tuple[Backend, Backend]:
    cpu = Backend("cpu", "http://cpu", ready=cpu_ready)
    gpu = Backend("gpu", "http://gpu" if gpu_configured else None, ready=gpu_ready)
    return cpu, gpu


@pytest.mark.parametrize(
    ("mode", "cpu_ready", "gpu_ready", "first", "reason"),
    [
        (RoutingMode.CPU, True, True, "cpu", None),
        (RoutingMode.CPU, False, True, "gpu", "cpu backend not ready"),
        (RoutingMode.GPU, True, True, "gpu", None),
        (RoutingMode.GPU, True, False, "cpu", "gpu backend not ready"),
        (RoutingMode.AUTO, True, True, "gpu", None),
        (RoutingMode.AUTO, True, False, "cpu", None),  # no GPU in auto mode is the plan, not a fallback
    ],
)
def test_choose_routes_by_mode_and_health(mode, cpu_ready, gpu_ready, first, reason) -> None:
    route = choose(mode, *backends(cpu_ready, gpu_ready))
    assert route.order[0].name == first
    assert route.fallback_reason == reason
    assert {b.name for b in route.order} == {"cpu", "gpu"}  # the other side stays as a retry target


def test_choose_without_gpu_configured() -> None:
    route = choose(RoutingMode.GPU, *backends(True, False, gpu_configured=False))
    assert [b.name for b in route.order] == ["cpu"]
    assert route.fallback_reason == "gpu backend not configured"


def fake_results(batch: list[Request]) -> list[Result]:
    time.sleep(0.05)
    return [Result(str(r.samples.size), r.language or "en", 1.0, 1.0) for r in batch]


async def test_batcher_groups_concurrent_requests_and_keeps_order() -> None:
    batcher = Batcher(fake_results, max_batch=4, window_ms=30)
    batcher.start()
    try:
        answers = await asyncio.gather(
            *(batcher.submit(Request(np.zeros(160 + i, np.float32), "en")) for i in range(6))
        )
    finally:
        await batcher.stop()
    assert [a[0].text for a in answers] == [str(160 + i) for i in range(6)]
    assert sorted({a[1] for a in answers}) == [2, 4]  # one full batch, then the rest


async def test_batcher_never_mixes_languages() -> None:
    seen: list[set] = []

    def run(batch: list[Request]) -> list[Result]:
        seen.append({r.language for r in batch})
        return fake_results(batch)

    batcher = Batcher(run, max_batch=8, window_ms=30)
    batcher.start()
    try:
        await asyncio.gather(
            *(batcher.submit(Request(np.zeros(160, np.float32), lang)) for lang in ["en", "de", "en", "de", None])
        )
    finally:
        await batcher.stop()
    assert all(len(langs) == 1 for langs in seen)
    assert len(seen) == 3


async def test_chunks_are_batched_only_with_chunks_of_the_same_encoder_window() -> None:
    """A chunk's transcript must not depend on what else arrived at the same moment: the
    window is set by a batch's longest chunk, so the batch key holds each chunk's own window."""
    from types import SimpleNamespace

    from services.base.transcriber import BatchTranscriber

    transcriber = object.__new__(BatchTranscriber)  # batch_key needs only the window settings
    transcriber.encoder_pad_seconds = 6.0
    transcriber.model = SimpleNamespace(frames_per_second=100)
    five, almost_five, short = (Request(np.zeros(n, np.float32), "en") for n in (80_000, 79_000, 40_000))
    assert transcriber.batch_key(five) == transcriber.batch_key(almost_five)  # both get 11 s alone
    assert transcriber.batch_key(five) != transcriber.batch_key(short)  # 11 s vs 9 s
    # a whole file's window is encoded in Whisper's whole 30 s, as plain faster-whisper does
    file_window = Request(np.zeros(40_000, np.float32), "en", full_window=True)
    assert transcriber.batch_key(file_window)[-1] == 3000
    assert transcriber.batch_key(file_window) != transcriber.batch_key(short)

    seen: list[list[int]] = []

    def run(batch: list[Request]) -> list[Result]:
        seen.append(sorted(r.samples.size for r in batch))
        return fake_results(batch)

    batcher = Batcher(run, max_batch=8, window_ms=30, key=transcriber.batch_key)
    batcher.start()
    try:
        await asyncio.gather(*(batcher.submit(r) for r in (five, short, almost_five)))
    finally:
        await batcher.stop()
    assert sorted(seen) == [[40_000], [79_000, 80_000]]


async def test_batcher_batches_only_chunks_with_the_same_prompt() -> None:
    seen: list[set] = []

    def run(batch: list[Request]) -> list[Result]:
        seen.append({r.prompt for r in batch})
        return fake_results(batch)

    batcher = Batcher(run, max_batch=8, window_ms=30)
    batcher.start()
    try:
        prompts = [None, "Press one.", None, "Please hold.", "Press one."]
        await asyncio.gather(*(batcher.submit(Request(np.zeros(160, np.float32), "en", p)) for p in prompts))
    finally:
        await batcher.stop()
    assert sorted(len(s) for s in seen) == [1, 1, 1] and len(seen) == 3


async def test_batcher_isolates_the_one_chunk_that_breaks_a_batch() -> None:
    def run(batch: list[Request]) -> list[Result]:
        if any(r.samples.size == 13 for r in batch):
            raise ValueError("this chunk breaks the model")
        return fake_results(batch)

    batcher = Batcher(run, max_batch=4, window_ms=30)
    batcher.start()
    try:
        sizes = [160, 13, 170, 180]
        answers = await asyncio.gather(
            *(batcher.submit(Request(np.zeros(n, np.float32))) for n in sizes), return_exceptions=True
        )
    finally:
        await batcher.stop()
    assert isinstance(answers[1], ValueError)
    assert [a[0].text for i, a in enumerate(answers) if i != 1] == ["160", "170", "180"]


async def test_batcher_refuses_past_queue_limit_and_survives_failures() -> None:
    calls = {"n": 0}

    def flaky(batch: list[Request]) -> list[Result]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model exploded")
        return fake_results(batch)

    batcher = Batcher(flaky, max_batch=1, window_ms=0, max_queue=2)
    batcher.start()
    try:
        tasks = [asyncio.create_task(batcher.submit(Request(np.zeros(160, np.float32)))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as err:
            await batcher.submit(Request(np.zeros(160, np.float32)))
        assert err.value.status == 429
        first, second = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(first, RuntimeError)  # the failed batch reports its error...
        assert isinstance(second, tuple)  # ...and the loop goes on serving the next one
    finally:
        await batcher.stop()


def test_verify_refuses_a_tampered_model(tmp_path) -> None:
    for name in KNOWN_MODELS["base"].sha256:
        (tmp_path / name).write_bytes(b"not the real weights")
    with pytest.raises(ModelError, match="sha256"):
        verify("base", tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match=r"lacks tokenizer\.json"):
        verify("base", tmp_path)
    assert set(KNOWN_MODELS) >= {"base", "tiny.en"}


def test_verify_checks_every_file_not_only_the_weights(tmp_path) -> None:
    """The tokenizer and config decide what the weights mean: a changed one, or a file that is
    not part of the model, is refused even when model.bin is right."""
    real = provision("tiny.en")
    model = tmp_path / "tiny.en"
    shutil.copytree(real, model, ignore=shutil.ignore_patterns(".verified"))
    verify("tiny.en", model)  # the real files pass (and leave a marker)
    tokenizer = model / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"the"', '"teh"', 1))
    with pytest.raises(ModelError, match=r"sha256 of tokenizer\.json"):
        verify("tiny.en", model)
    shutil.copy(real / "tokenizer.json", tokenizer)
    (model / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelError, match=r"not part of it: preprocessor_config\.json"):
        verify("tiny.en", model)


def test_speech_regions_need_minimum_duration() -> None:
    frame_ms = 32
    probs = np.zeros(100)
    probs[10:13] = 0.9  # ~96 ms: a click
    probs[40:60] = 0.9  # 640 ms: a word
    regions = speech_regions(probs, 0.5, min_speech_ms=250, min_silence_ms=100, pad_ms=0)
    assert regions == [{"start_ms": 40 * frame_ms, "end_ms": 60 * frame_ms}]


def test_cuda_that_fails_at_the_first_call_serves_on_cpu_and_says_why(monkeypatch) -> None:
    """CTranslate2 builds a CUDA model without touching cuBLAS; a missing libcublas shows only
    at the first matrix product. load_model's warm-up must catch it and fall back to CPU."""
    from services.base import transcriber

    built: list[str] = []

    class FakeModel:
        def __init__(self, path, device, compute_type, cpu_threads, num_workers=1):
            built.append(f"{device}/{compute_type}")
            self.device = device

        def transcribe(self, samples, **kwargs):
            if self.device == "cuda":
                raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")
            return iter(()), None

    monkeypatch.setattr(transcriber, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(transcriber, "WhisperModel", FakeModel)
    model, info = transcriber.load_model("unused", "cuda", "auto", cpu_threads=0)
    assert model.device == "cpu"
    assert built == ["cuda/float16", "cpu/int8"]
    assert (info.requested, info.device, info.compute_type) == ("cuda", "cpu", "int8")
    assert "libcublas.so.12" in info.fallback_reason
