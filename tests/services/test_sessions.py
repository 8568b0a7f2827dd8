"""Streaming sessions (services/proxy/sessions.py, stream_ws.py).

Fast layer: the session engine against a scripted backend (no process, no model), to pin the
rules that real audio rarely shows on demand: every word committed once and in order, retries
on a busy backend, speech kept when the detector is down, the buffer bound, resuming.
Slow layer: the native protocol over a real WebSocket to the real local stack.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import jiwer
import numpy as np
import pytest
from whisper_normalizer.english import EnglishTextNormalizer

from core.errors import ApiError
from core.language_lock import LanguageLock
from services.local_stack import Stack, free_port
from services.proxy.sessions import Limits, SessionOptions, StreamSession, TooFarBehindError
from services.proxy.stream_ws import ClientNotReadingError, EventSender

SR = 16_000
_normalize = EnglishTextNormalizer()


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(_normalize(reference), _normalize(hypothesis))


# --- the engine, against a scripted backend -------------------------------------------------


class ScriptedBackend:
    """Transcribes by looking up a fixed script: one word every 0.5 s, named by its index.

    A window hears the words wholly inside it, like Whisper with word timestamps. ``busy``
    answers 429 that many times first; ``detector_down`` makes /detect unreachable.
    """

    def __init__(self, seconds: float, busy: int = 0, detector_down: bool = False) -> None:
        self.words = [(i * 0.5, i * 0.5 + 0.4, f" w{i}") for i in range(int(seconds / 0.5))]
        self.busy = busy
        self.detector_down = detector_down
        self.windows: list[tuple[float, float]] = []

    async def detect(self, pcm: bytes) -> bool:
        if self.detector_down:
            raise ApiError(503, "detector_unavailable", "down")
        return True

    async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
        if self.busy:
            self.busy -= 1
            raise ApiError(429, "busy", "queue full", headers={"Retry-After": "0"})
        # The session sends raw PCM: its length and the session's bookkeeping give the span.
        start = self._next_start
        end = start + len(pcm) / 2 / SR
        self.windows.append((start, end))
        words = [{"start": s - start, "end": e - start, "word": t} for s, e, t in self.words if s >= start and e <= end]
        return {"segments": [{"start": 0.0, "end": end - start, "words": words}] if words else []}

    _next_start = 0.0


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict] = []

    async def emit(self, event: dict) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def scripted_windows(session: StreamSession, backend: ScriptedBackend) -> list[bool]:
    """Tell the scripted backend where each window of ``session`` begins; the returned list
    gets each window's ``last``."""
    original, lasts = session._transcribe, []

    def transcribe(span: tuple[int, int], last: bool = False):
        backend._next_start = span[0] / SR
        lasts.append(last)
        return original(span, last)

    session._transcribe = transcribe  # type: ignore[method-assign]
    return lasts


async def run_session(backend: ScriptedBackend, seconds: float, **options) -> Recorder:
    recorder = Recorder()
    session = StreamSession(backend, recorder.emit, SessionOptions(**options), Limits(retry_first_s=0.01))
    scripted_windows(session, backend)
    await session.start()
    samples = np.zeros(int(seconds * SR), np.int16)
    for i in range(0, samples.size, SR // 10):  # 100 ms frames
        session.feed(samples[i : i + SR // 10])
        await asyncio.sleep(0)
    await session.finish()
    return recorder


def committed_words(recorder: Recorder) -> list[str]:
    return [w["text"].strip() for e in recorder.of("transcript.committed") for w in e["words"]]


async def test_every_word_is_committed_once_and_in_order() -> None:
    backend = ScriptedBackend(40)
    recorder = await run_session(backend, 40)
    assert recorder.events[0]["type"] == "session.started"
    assert recorder.events[-1]["type"] == "session.ended"
    expected = [t.strip() for s, e, t in backend.words]
    assert committed_words(recorder) == expected
    assert recorder.events[-1]["text"].split() == expected
    # Words near a window's end were shown as partial first and made final by a later decode,
    # and windows stayed within the bound.
    first_partial = next(i for i, e in enumerate(recorder.events) if e["type"] == "transcript.partial" and e["text"])
    shown_last = recorder.events[first_partial]["text"].split()[-1]
    later = [
        w["text"].strip()
        for e in recorder.events[first_partial + 1 :]
        if e["type"] == "transcript.committed"
        for w in e["words"]
    ]
    assert shown_last in later
    assert max(end - start for start, end in backend.windows) <= 15.0 + 2.0 + 1e-6
    # Each partial says how far the audio it decoded reaches: a step boundary, moving forward.
    until = [e["decoded_until_sample"] for e in recorder.of("transcript.partial")]
    steps = until[:-2]  # the last ones are the flush at the end of the stream
    assert steps == sorted(steps) and all(u % (3 * 16_000) == 0 for u in steps) and len(steps) >= 10


async def test_settled_and_keep_from_only_move_forward() -> None:
    recorder = await run_session(ScriptedBackend(40), 40)
    commits = recorder.of("transcript.committed")
    settled = [e["settled_sample"] for e in commits]
    keep = [e["keep_from_sample"] for e in commits]
    assert settled == sorted(settled) and keep == sorted(keep)
    for event in commits:  # the words just committed end before the settled point
        assert max(w["end"] for w in event["words"]) * SR <= event["settled_sample"] + 1


async def test_a_busy_backend_is_retried_and_nothing_is_lost() -> None:
    backend = ScriptedBackend(20, busy=3)
    recorder = await run_session(backend, 20)
    errors = recorder.of("error")
    assert errors and all(e["retryable"] and e["code"] == "busy" for e in errors)
    assert committed_words(recorder) == [t.strip() for s, e, t in backend.words]


async def test_speech_is_decoded_when_the_detector_is_unreachable() -> None:
    backend = ScriptedBackend(9, detector_down=True)
    recorder = await run_session(backend, 9)
    assert committed_words(recorder) == [t.strip() for s, e, t in backend.words]


async def test_inside_an_utterance_the_window_is_sent_while_the_detector_listens() -> None:
    """The detector's answer cannot change the window once an utterance is open, so waiting
    for it before the decode only adds its time to the first partial."""

    class SlowDetector(ScriptedBackend):
        def __init__(self, seconds: float) -> None:
            super().__init__(seconds)
            self.calls: list[str] = []

        async def detect(self, pcm: bytes) -> bool:
            self.calls.append("detect")
            await asyncio.sleep(0.02)
            self.calls.append("detected")
            return True

        async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
            self.calls.append("transcribe")
            return await super().transcribe(pcm, language)

    backend = SlowDetector(12)
    recorder = await run_session(backend, 12)
    steps = [backend.calls[i : i + 3] for i in range(0, len(backend.calls), 3)]
    assert steps[0] == ["detect", "detected", "transcribe"]  # no utterance yet: the detector decides
    assert len(steps) == 4 and all(s == ["detect", "transcribe", "detected"] for s in steps[1:-1])
    # 12 s is four whole steps: the fourth is the stream's last window, sent with ``last`` (the
    # backend repairs its tail), so no decode is started for it before the detector answers.
    assert steps[-1] == ["detect", "detected", "transcribe"]
    assert committed_words(recorder) == [t.strip() for s, e, t in backend.words]


async def test_the_buffer_bound_ends_a_session_that_cannot_keep_up() -> None:
    class Stuck(ScriptedBackend):
        async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
            await asyncio.sleep(3600)
            return {}

    recorder = Recorder()
    session = StreamSession(Stuck(60), recorder.emit, SessionOptions(), Limits(max_buffer_s=20))
    await session.start()
    with pytest.raises(TooFarBehindError, match="20 s of audio"):
        for _ in range(30):
            session.feed(np.zeros(SR, np.int16))
            await asyncio.sleep(0.01)
    await session.cancel()


class Multilingual(ScriptedBackend):
    """Detects the language of each window from a script: ``detections`` in order (code,
    probability), then English, sure; records the language each window was asked for."""

    def __init__(self, seconds: float, detections: list[tuple[str, float]]) -> None:
        super().__init__(seconds)
        self.detections = list(detections)
        self.asked: list[str | None] = []

    async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
        self.asked.append(language)
        answer = await super().transcribe(pcm, language)
        code, probability = (language, 1.0) if language else (self.detections or [("en", 0.99)]).pop(0)
        return {**answer, "language": code, "language_probability": probability}


async def test_each_window_asks_for_words_skipped_speech_and_the_sessions_beam_size_greedy_adds_nothing() -> None:
    from types import SimpleNamespace

    from services.proxy.sessions import ProxyBackend

    class Upstreams:
        def __init__(self) -> None:
            self.queries: list[str] = []

        async def routed(self, path: str, body: bytes, content_type: str, query: str, kind: str):
            self.queries.append(query)
            response = SimpleNamespace(status=200, body=b'{"segments": []}', headers={})
            return response, SimpleNamespace(name="cpu"), None

    upstreams = Upstreams()
    await ProxyBackend(upstreams, beam_size=1).transcribe(b"", "en")
    await ProxyBackend(upstreams, beam_size=4).transcribe(b"", None)
    await ProxyBackend(upstreams).transcribe(b"", "en")  # the sessions' default (the OpenAI Realtime adapter's)
    await ProxyBackend(upstreams, beam_size=1).transcribe(b"", "en", last=True)  # nothing decodes its end again
    assert upstreams.queries == [
        "word_timestamps=true&fill_skipped=true&language=en",
        "word_timestamps=true&fill_skipped=true&beam_size=4",
        f"word_timestamps=true&fill_skipped=true&language=en&beam_size={SessionOptions().beam_size}",
        "word_timestamps=true&fill_skipped=true&fill_tail=true&language=en",
    ]
    with pytest.raises(ValueError, match="beam_size must be between 1"):
        SessionOptions(beam_size=6).policy()


def test_the_operator_sets_the_sessions_default_beam_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import SettingsError, load_settings
    from services.proxy.settings import ProxySettings

    assert load_settings(ProxySettings).sessions.beam_size == SessionOptions().beam_size
    monkeypatch.setenv("STT_SESSION_BEAM_SIZE", "1")
    assert load_settings(ProxySettings).sessions.beam_size == 1
    monkeypatch.setenv("STT_SESSION_BEAM_SIZE", "6")
    with pytest.raises(SettingsError, match="STT_SESSION_BEAM_SIZE='6'"):
        load_settings(ProxySettings)


def test_only_a_sure_detection_on_enough_words_is_kept() -> None:
    lock = LanguageLock()
    lock.observe("it", 0.99, 3)  # sure, but three words are too few to trust
    lock.observe("it", 0.79, 10)  # enough words, not sure enough
    lock.observe(None, None, 10)  # an answer without a detection
    assert lock.language is None
    lock.observe("es", 0.8, 4)
    lock.observe("it", 1.0, 50)  # kept for good: a later detection does not move it
    assert lock.language == "es"


async def test_the_first_sure_detection_is_kept_for_the_rest_of_the_session() -> None:
    # A window heard as Welsh at 0.55 is not trusted; English at 0.97 is, and every later
    # window asks for English instead of guessing again from its few seconds.
    backend = Multilingual(30, [("cy", 0.55), ("en", 0.97), ("nn", 0.9)])
    recorder = await run_session(backend, 30)
    assert backend.asked[:2] == [None, None]
    assert len(backend.asked) > 4 and set(backend.asked[2:]) == {"en"}
    assert committed_words(recorder) == [t.strip() for s, e, t in backend.words]


async def test_a_language_the_client_gives_is_asked_for_on_every_window() -> None:
    backend = Multilingual(15, [("cy", 0.99)])
    await run_session(backend, 15, language="ko")
    assert backend.asked and set(backend.asked) == {"ko"}


async def test_a_resumed_session_does_not_commit_words_again() -> None:
    backend = ScriptedBackend(20)
    # The audio re-sent begins at 6 s; words before 8 s were committed by the session before.
    recorder = await run_session(backend, 14, resume_from=6 * SR, committed_until=8 * SR)
    words = committed_words(recorder)
    expected = [t.strip() for s, e, t in backend.words if (s + e) / 2 > 8.0]
    assert words == expected
    assert recorder.events[0]["resume_from"] == 6 * SR


async def test_a_client_that_does_not_read_is_cut_off() -> None:
    class Blocked:
        closed: tuple[int, str] | None = None

        async def send_text(self, text: str) -> None:
            await asyncio.sleep(3600)

        async def close(self, code: int, reason: str) -> None:
            self.closed = (code, reason)

        application_state = None

    socket = Blocked()
    sender = EventSender(socket, max_queued=4)  # type: ignore[arg-type]
    with pytest.raises(ClientNotReadingError):
        for i in range(10):
            await sender.emit({"type": "transcript.partial", "text": str(i)})
    await asyncio.sleep(0.05)
    assert socket.closed == (1008, "client is not reading its events")


# --- the native protocol over a real WebSocket ---------------------------------------------


def ws_url(http_url: str, **params: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return http_url.replace("http://", "ws://") + "/v1/stream" + (f"?{query}" if query else "")


def pcm_of(path: Path) -> bytes:
    with wave.open(str(path)) as handle:
        assert handle.getframerate() == SR and handle.getnchannels() == 1
        return handle.readframes(handle.getnframes())


def stream_file(url: str, pcm: bytes, frame: int = 3200, extra: list | None = None) -> list[dict]:
    """Send the audio in frames as fast as the socket takes it, then stop; all events back."""
    from websockets.sync.client import connect

    with connect(url, open_timeout=10, close_timeout=30) as ws:
        for message in extra or []:
            ws.send(message)
        for i in range(0, len(pcm), frame):
            ws.send(pcm[i : i + frame])
        ws.send(json.dumps({"type": "stop"}))
        events = [json.loads(m) for m in ws]
        assert ws.close_code == 1000
    return events


@pytest.mark.slow
def test_a_streamed_recording_is_as_accurate_as_the_http_chunk_pipeline(stack: Stack) -> None:
    from bench.client_eval import stream as http_stream
    from client.pipeline import Settings
    from client.stitcher import join_words
    from corpus import long_recording
    from corpus.fetch import read_wav

    clip = long_recording(60)
    events = stream_file(ws_url(stack.proxy_url, language="en"), pcm_of(clip.path))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "session.started" and kinds[-1] == "session.ended"
    assert "transcript.partial" in kinds and "transcript.committed" in kinds
    committed = " ".join(e["text"] for e in events if e["type"] == "transcript.committed")
    # each committed piece says which backend and model decoded it
    assert {(e["backend"], e["model"]) for e in events if e["type"] == "transcript.committed"} == {("cpu", "base")}
    # Committed text is append-only: the final text is exactly the committed events, in order.
    assert committed.split() == events[-1]["text"].split()
    ws_wer = wer(clip.text, events[-1]["text"])

    run = asyncio.run(http_stream(read_wav(clip.path), stack.proxy_url, Settings(language="en")))
    http_wer = wer(clip.text, join_words(run.words))
    print(f"60 s recording: WER over /v1/stream {ws_wer:.2%}, HTTP chunk pipeline {http_wer:.2%}")
    assert ws_wer <= http_wer + 0.01
    assert ws_wer < 0.08


@pytest.mark.slow
def test_sessions_decode_with_a_beam_search_unless_they_ask_for_greedy(stack: Stack, librivox) -> None:
    def decoded() -> dict[str, float]:
        metrics = httpx.get(f"{stack.base_url}/metrics").text
        prefix = 'stt_chunks_decoded_total{beam_size="'
        return {
            line[len(prefix) :].split('"')[0]: float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(prefix)
        }

    clip = librivox[1]
    for asked, beams in ({}, str(SessionOptions().beam_size)), ({"beam_size": 1}, "1"):
        before = decoded()
        events = stream_file(ws_url(stack.proxy_url, language="en", **asked), pcm_of(clip.path))
        assert wer(clip.text, events[-1]["text"]) < 0.2
        after = decoded()
        grown = {k for k, v in after.items() if v > before.get(k, 0.0)}
        assert grown == {beams}, (asked, before, after)  # every window reached the model so, and only so


@pytest.mark.slow
def test_bad_frames_get_error_events_and_the_session_goes_on(stack: Stack, librivox) -> None:
    clip = librivox[0]
    extra = [b"\x01\x02\x03", "not json", json.dumps({"type": "pause"}), json.dumps([1, 2])]
    events = stream_file(ws_url(stack.proxy_url, language="en"), pcm_of(clip.path), extra=extra)
    codes = [e["code"] for e in events if e["type"] == "error"]
    assert codes == ["odd_frame", "bad_json", "unknown_event", "unknown_event"]
    assert wer(clip.text, events[-1]["text"]) < 0.2
    assert httpx.get(f"{stack.proxy_url}/readyz").status_code == 200


@pytest.mark.slow
def test_oversized_frames_and_bad_options_are_refused(stack: Stack) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(ws_url(stack.proxy_url), open_timeout=10) as ws:
        assert json.loads(ws.recv())["type"] == "session.started"
        ws.send(b"\x00" * (256 * 1024 + 2))
        assert json.loads(ws.recv())["code"] == "frame_too_large"
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 1009
    with connect(ws_url(stack.proxy_url, window_s=40), open_timeout=10) as ws:
        event = json.loads(ws.recv())
        assert event["code"] == "bad_option" and "30 s" in event["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv()
        assert ws.close_code == 1008
    with connect(ws_url(stack.proxy_url, settle_s=-1), open_timeout=10) as ws:
        event = json.loads(ws.recv())
        assert event["code"] == "bad_option" and "settle_s" in event["message"]
    with connect(ws_url(stack.proxy_url, beam_size=9), open_timeout=10) as ws:
        event = json.loads(ws.recv())
        assert event["code"] == "bad_option" and "beam_size must be between 1 (greedy) and 5" in event["message"]
    assert httpx.get(f"{stack.proxy_url}/readyz").status_code == 200


@pytest.mark.slow
def test_a_foreign_page_cannot_open_a_session(stack: Stack) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(stack.proxy_url), origin="https://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403
    own = stack.proxy_url  # the page the proxy serves itself
    with connect(ws_url(stack.proxy_url), origin=own, open_timeout=10) as ws:
        assert json.loads(ws.recv())["type"] == "session.started"


@pytest.fixture
def capped_proxy(stack: Stack, tmp_path: Path):
    """A second proxy in front of the same backends, holding at most one session."""
    port = free_port()
    env = {**stack.service_env("proxy"), "STT_MAX_SESSIONS": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "services.proxy.app:app", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "proxy.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        extra = Stack(ports={"proxy": port}, run_dir=tmp_path)
        extra.procs["proxy"] = proc
        extra.wait_ready(["proxy"], timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.mark.slow
def test_a_replica_at_its_session_cap_refuses_with_a_retry_hint(capped_proxy: str) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(ws_url(capped_proxy), open_timeout=10) as first:
        assert json.loads(first.recv())["type"] == "session.started"
        with connect(ws_url(capped_proxy), open_timeout=10) as second:
            event = json.loads(second.recv())
            assert event["code"] == "session_cap" and event["retryable"] and event["retry_after_s"] > 0
            with pytest.raises(ConnectionClosed):
                second.recv()
            assert second.close_code == 1013
    metrics = httpx.get(f"{capped_proxy}/metrics").text
    assert 'stt_proxy_sessions_refused_total{reason="session_cap"} 1.0' in metrics


async def test_only_the_windows_no_later_window_decodes_again_ask_for_their_tail() -> None:
    """The last window before a flush and the stream's last window are decoded with ``last``
    (the backend then recovers speech after their last word: ``fill_tail``); every other
    window's end is decoded again by the next window, so it does not pay for that."""
    backend = ScriptedBackend(20)
    recorder = Recorder()
    session = StreamSession(backend, recorder.emit, SessionOptions(), Limits(retry_first_s=0.01))
    lasts = scripted_windows(session, backend)
    await session.start()
    session.feed(np.zeros(int(7.5 * SR), np.int16))
    await session.flush()
    assert len(lasts) >= 3 and lasts[-1] and not any(lasts[:-1])  # two whole steps, then the flush's window
    flushed = len(lasts)
    session.feed(np.zeros(int(7.0 * SR), np.int16))
    await session.finish()
    assert len(lasts) >= flushed + 3 and lasts[-1] and not any(lasts[flushed:-1])
    assert recorder.events[-1]["type"] == "session.ended"
    assert committed_words(recorder) == [t.strip() for s, e, t in backend.words if e <= 14.5]


async def test_a_stream_ending_on_a_step_boundary_asks_for_the_tail_of_its_last_whole_step() -> None:
    """9 s is three whole steps and no shorter rest: the third step's window is the last."""
    backend = ScriptedBackend(9)
    session = StreamSession(backend, Recorder().emit, SessionOptions(), Limits(retry_first_s=0.01))
    lasts = scripted_windows(session, backend)
    await session.start()
    session.feed(np.zeros(9 * SR, np.int16))
    await session.finish()
    assert lasts == [False, False, True]
