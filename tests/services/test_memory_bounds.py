"""Memory bounded by design: floods of maximal uploads and huge heads against the real services.

A stack of its own (tiny, base on CPU, proxy: uvicorn processes on loopback, real models) takes
at once 16 uploads of 50 MB to the proxy's ``/v1/audio/transcriptions``, 16 to its ``/transcribe``,
16 straight to base's ``/v1/audio/transcriptions`` and 8 to tiny's ``/detect``, plus a flood of
requests with 256 KiB heads. The audio is a WAV of 8 kHz 8-bit silence made here (never
committed): 50 MB of it is 104 minutes, which a whole-file endpoint decodes to its one-hour
limit (230 MB of float32, five times the upload) before answering 413, the costliest thing one
request can make a backend hold.

Every answer must be 200, 413, 429 or 431 (no reset, no 5xx); every process must be alive and
answer ``/healthz`` afterwards; and each one's peak RSS (``VmHWM``) must stay under the memory
limit the chart gives its container (``charts/stt/values.yaml``, read here). The budgets that
make it hold are :mod:`services.common.memory`; docs/reliability.md ("Memory under upload
floods") has the numbers with and without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import struct
import threading
import time
import tracemalloc
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from core.audio import AudioLimits, decode_audio
from core.vocabulary import SAMPLE_RATE
from services.local_stack import Stack, free_ports

ROOT = Path(__file__).resolve().parents[2]
UPLOAD_BYTES = 50_000_000  # under STT_MAX_UPLOAD_BYTES (50 MiB) with the multipart framing
BOUNDARY = "memorybounds7d1f"
ALLOWED = {200, 413, 429, 431}
# values.yaml section of each service's container
CHART_SECTIONS = {"proxy": "proxy", "base": "baseCpu", "tiny": "tiny"}
UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def chart_memory_limit(service: str) -> int:
    """The memory limit the chart gives ``service``'s container, in bytes."""
    values = yaml.safe_load((ROOT / "charts/stt/values.yaml").read_text())
    limit = str(values[CHART_SECTIONS[service]]["resources"]["limits"]["memory"])
    for suffix, factor in UNITS.items():
        if limit.endswith(suffix):
            return int(float(limit[: -len(suffix)]) * factor)
    return int(limit)


def wav_u8(total_bytes: int, rate: int = 8000) -> bytes:
    """A mono 8-bit PCM WAV of silence (128) that is ``total_bytes`` long."""
    data = total_bytes - 44
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data, b"WAVE", b"fmt ", 16, 1, 1, rate, rate, 1, 8, b"data", data
    )
    return header + b"\x80" * data


def wav_s16(seconds: float, rate: int = 48_000, channels: int = 2) -> bytes:
    """A 16-bit PCM WAV of quiet noise (a plain recording's shape: it decodes to 200)."""
    frames = int(seconds * rate)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.random.default_rng(7).integers(-8, 8, frames * channels, dtype=np.int16).tobytes())
    return out.getvalue()


def multipart(audio: bytes) -> tuple[bytes, str]:
    """A form with the audio as its ``file`` part, built once (httpx would copy it per request)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    return head + audio + f"\r\n--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def status_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


@pytest.fixture(scope="module")
def fresh_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """tiny (both detectors, as the chart), base and proxy, started for this module alone, so
    their peak RSS is this flood's and the chart's defaults apply (no budget set here)."""
    ports = dict(zip(("tiny", "base", "proxy"), free_ports(3), strict=True))
    env = {"STT_LOG_FORMAT": "json"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("STT_MODEL_CACHE")})
    s = Stack(ports=ports, env=env, run_dir=tmp_path_factory.mktemp("memory-run"))
    try:
        s.up()
        yield s
    finally:
        s.down()


class Sampler:
    """VmRSS of each process every 50 ms, in a thread, so the report shows the flood's peak
    beside VmHWM (which also counts start-up)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, KeyError):  # a process that died is reported below
                    self.peak[name] = max(self.peak[name], status_of(pid)["VmRSS"])
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def flood(stack: Stack) -> Counter:
    """Every upload and every huge head at once; the answers by ``endpoint status``."""
    audio = wav_u8(UPLOAD_BYTES)
    form, form_type = multipart(wav_u8(UPLOAD_BYTES - 400))
    uploads = (
        [("proxy", "/v1/audio/transcriptions", form, form_type)] * 16
        + [("proxy", "/transcribe", audio, "audio/wav")] * 16
        + [("base", "/v1/audio/transcriptions", form, form_type)] * 16
        + [("tiny", "/detect", audio, "audio/wav")] * 8
    )
    answers: Counter = Counter()
    timeout = httpx.Timeout(120, connect=10)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=None)) as client:

        async def post(service: str, path: str, body: bytes, content_type: str) -> None:
            try:
                r = await client.post(stack.url(service) + path, content=body, headers={"content-type": content_type})
                answers[f"{service}{path} {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                answers[f"{service}{path} {type(exc).__name__}"] += 1

        async def huge_head(service: str) -> None:
            try:
                r = await client.get(stack.url(service) + "/gpu-status", headers={"x-flood": "h" * 256 * 1024})
                answers[f"{service} head {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                answers[f"{service} head {type(exc).__name__}"] += 1

        heads = [huge_head(name) for name in ("proxy", "base", "tiny") for _ in range(40)]
        await asyncio.gather(*(post(*u) for u in uploads), *heads)
    return answers


@pytest.mark.slow
def test_upload_and_header_floods_stay_under_the_chart_limits(fresh_stack: Stack) -> None:
    pids = {name: proc.pid for name, proc in fresh_stack.procs.items()}
    before = {name: status_of(pid) for name, pid in pids.items()}
    start = time.monotonic()
    with Sampler(pids) as sampler:
        answers = asyncio.run(flood(fresh_stack))
    elapsed = time.monotonic() - start
    after = {name: status_of(pid) for name, pid in pids.items()}
    report = {
        name: f"idle {before[name]['VmRSS'] >> 20} MiB, flood peak {sampler.peak[name] >> 20} MiB, "
        f"VmHWM {after[name]['VmHWM'] >> 20} MiB, limit {chart_memory_limit(name) >> 20} MiB"
        for name in pids
    }
    print(f"\nflood took {elapsed:.1f} s; answers {dict(sorted(answers.items()))}")
    for name, line in report.items():
        print(f"{name}: {line}")
    outcomes = {key: key.rsplit(" ", 1)[1] for key in answers}
    bad = {k: answers[k] for k, outcome in outcomes.items() if not outcome.isdigit() or int(outcome) not in ALLOWED}
    assert not bad, f"answers other than 200/413/429/431: {bad}"
    assert sum(answers.values()) == 56 + 120
    for name, proc in fresh_stack.procs.items():
        assert proc.poll() is None, f"{name} died during the flood"
        assert httpx.get(fresh_stack.url(name) + "/healthz", timeout=10).status_code == 200
    for name in pids:
        assert after[name]["VmHWM"] < chart_memory_limit(name), f"{name} peaked over its chart limit: {report[name]}"


@pytest.mark.slow
def test_one_maximal_upload_on_an_idle_server_is_taken(fresh_stack: Stack) -> None:
    """The budgets refuse floods, never the largest single upload: 50 MB of 48 kHz stereo WAV
    (4.3 minutes) is transcribed, through the proxy and straight to base."""
    audio = wav_s16((UPLOAD_BYTES - 1000) / (48_000 * 4))
    form, form_type = multipart(audio)
    for service in ("proxy", "base"):
        r = httpx.post(
            fresh_stack.url(service) + "/v1/audio/transcriptions",
            content=form,
            headers={"content-type": form_type},
            timeout=120,
        )
        assert r.status_code == 200, r.text


def test_an_hour_decodes_in_little_more_than_its_samples() -> None:
    """Decoding holds the samples once, not three times (frames joined, then clipped into a
    copy): 10 minutes of 8 kHz 8-bit WAV (4.8 MB) decodes to 38 MB of float32; numpy's
    allocations, which tracemalloc sees, must peak under 1.3 times that."""
    audio = bytearray(wav_u8(600 * 8000 + 44))
    decoded_bytes = 600 * SAMPLE_RATE * 4
    reserved: list[int] = []
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        samples = decode_audio(audio, "audio/wav", AudioLimits(3600), reserved.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert samples.size == 600 * SAMPLE_RATE
    assert peak < 1.3 * decoded_bytes, f"{peak / decoded_bytes:.2f}x the decoded size"
    # The header's length was reserved before any sample was decoded, and the end matches.
    assert reserved[0] >= decoded_bytes and reserved[-1] == decoded_bytes


# --- in process: each piece of the design, fast --------------------------------------------


def asgi_request(body: bytes, headers: list[tuple[bytes, bytes]], piece: int = 65_536):
    """A POST's scope and ``receive`` as uvicorn hands them to the app: the body in pieces."""
    chunks = [body[i : i + piece] for i in range(0, len(body), piece)] or [b""]

    async def receive() -> dict:
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": len(chunks) > 0}
        return {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/up", "headers": headers, "query_string": b""}
    return scope, receive


async def call(app, scope: dict, receive) -> tuple[int, list[dict]]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"] if sent else 0, sent


async def test_body_budget_refuses_past_it_and_releases_however_a_request_ends() -> None:
    from core.errors import ApiError
    from services.common.memory import BodyBudgetMiddleware

    seen: list[int] = []

    async def app(scope, receive, send) -> None:
        while (await receive())["more_body"]:
            pass
        seen.append(middleware.budget.used)
        if scope["path"] == "/fail":
            raise ApiError(400, "bad", "bad")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = BodyBudgetMiddleware(app, "test", limit=100_000, upload_limit=1_000_000)
    length = [(b"content-length", b"60000")]
    status, _ = await call(middleware, *asgi_request(b"x" * 60_000, length))
    assert status == 200 and seen == [60_000] and middleware.budget.used == 0
    # Two at once would pass the budget: the second is refused before its body is read, with
    # the whole answer sent first and the response completed once the body has been dropped.
    held = middleware.budget.try_reserve(60_000)
    scope, receive = asgi_request(b"x" * 60_000, length, piece=1_000)
    status, sent = await call(middleware, scope, receive)
    assert status == 429 and b'"overloaded"' in sent[1]["body"] and sent[1]["more_body"] is True
    assert (b"retry-after", b"1") in sent[0]["headers"] and sent[-1]["body"] == b"" and len(seen) == 1
    middleware.budget.release(60_000 * held)
    # Released on an error, and on a body larger than the upload limit nothing is reserved.
    scope, receive = asgi_request(b"x" * 60_000, length)
    scope["path"] = "/fail"
    with pytest.raises(ApiError):
        await call(middleware, scope, receive)
    assert middleware.budget.used == 0
    # A chunked body reserves as it arrives: past the budget, the 429 is raised from receive.
    scope, receive = asgi_request(b"x" * 150_000, [(b"transfer-encoding", b"chunked")])
    with pytest.raises(ApiError) as refused:
        await call(middleware, scope, receive)
    assert refused.value.status == 429 and middleware.budget.used == 0


async def test_a_multipart_upload_is_held_once() -> None:
    """The file part goes straight into one buffer: neither the body nor a spooled copy of the
    part is held beside it (Starlette's form parsing held three copies)."""
    from starlette.requests import Request

    from services.common.upload import read_upload

    audio = wav_u8(20_000_000)
    form, form_type = multipart(audio)
    scope, receive = asgi_request(form, [(b"content-type", form_type.encode())])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        upload = await read_upload(Request(scope, receive), 50 * 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert upload.data == audio and upload.fields == {"model": ["whisper-1"]}
    assert peak < 1.2 * len(audio), f"{peak / len(audio):.2f}x the upload"


def test_the_proxy_hands_its_upstream_call_the_one_buffer() -> None:
    """50 MB sent to a backend that reads slowly: given the buffer whole, aiohttp slices a copy
    and the transport keeps another of what the socket did not take (96 MiB more, measured);
    UploadPayload sends it a slice at a time."""
    import aiohttp
    import uvloop

    from services.proxy.openai_relay import UploadPayload

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = 0
        while received < UPLOAD_BYTES and (data := await reader.read(1 << 16)):
            received += len(data)
            await asyncio.sleep(0.0002)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def send() -> int:
        server = await asyncio.start_server(backend, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        body = bytearray(UPLOAD_BYTES)
        base = peak = status_of(os.getpid())["VmRSS"]

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, status_of(os.getpid())["VmRSS"])
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession() as session:
            payload = UploadPayload(body, "audio/wav")
            async with session.post(f"http://127.0.0.1:{port}/", data=payload) as response:
                assert response.status == 200
        watcher.cancel()
        server.close()
        return peak - base

    extra = uvloop.run(send())
    assert extra < 16 * 1024 * 1024, f"{extra >> 20} MiB more than the body while sending it"
