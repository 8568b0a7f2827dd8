"""OpenAI Realtime transcription on the proxy (services/proxy/realtime.py).

Without the stack: the resampler, the G.711 tables, ``StreamSession.flush`` and the event
mapping, against a scripted backend in which a word is a tone burst whose loudness names it
(``w3`` is 4000 peak), so what the session commits is known exactly.

With the stack (``slow``): the official ``openai`` package's Realtime client, a program this
project did not write, streams a real recording at 24 kHz through ``/v1/realtime``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import wave
from collections.abc import Callable

import jiwer
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from whisper_normalizer.english import EnglishTextNormalizer

from core.g711 import ulaw_encode
from core.vocabulary import SAMPLE_RATE
from services.proxy import realtime
from services.proxy.realtime import RealtimeTranscription, StreamResampler
from services.proxy.sessions import StreamSession
from services.proxy.stream_ws import SessionGate, SessionSettings

normalize = EnglishTextNormalizer()

# ---------------------------------------------------------------------------------------------
# A scripted backend: words are 440 Hz bursts of 0.4 s; burst k has peak 1000 * (k + 1).

WORD_S, GAP_S, FRAME = 0.4, 0.25, 160


def utterance(words: list[int], rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(round(WORD_S * rate)) / rate
    pieces = []
    for k in words:
        pieces += [(1000 * (k + 1)) * np.sin(2 * np.pi * 440 * t), np.zeros(round(GAP_S * rate))]
    return np.concatenate(pieces).astype(np.int16)


def silence(seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), np.int16)


def _runs(pcm: bytes) -> list[tuple[float, float, int]]:
    x = np.abs(np.frombuffer(pcm, "<i2").astype(np.int32))
    peaks = x[: x.size // FRAME * FRAME].reshape(-1, FRAME).max(axis=1)
    runs, start = [], None
    for i, peak in enumerate([*peaks, 0]):
        if peak > 300 and start is None:
            start = i
        elif peak <= 300 and start is not None:
            runs.append((start * 0.01, i * 0.01, round(int(peaks[start:i].max()) / 1000) - 1))
            start = None
    return runs


class ScriptedBackend:
    """Detector: speech when 100 ms of the step is loud. Transcriber: one word per burst."""

    def __init__(self) -> None:
        self.decodes = 0

    async def detect(self, pcm: bytes) -> bool:
        return sum(end - start for start, end, _ in _runs(pcm)) >= 0.1

    async def transcribe(self, pcm: bytes, language: str | None, last: bool = False) -> dict:
        self.decodes += 1
        words = [
            {"start": s, "end": e, "word": f" w{k}", "probability": 0.99} for s, e, k in _runs(pcm) if e - s >= 0.05
        ]
        if not words:
            return {"segments": [], "backend": "scripted"}
        text = "".join(w["word"] for w in words)
        segment = {"start": words[0]["start"], "end": words[-1]["end"], "text": text, "words": words}
        return {"segments": [{**segment, "no_speech_prob": 0.0, "avg_logprob": -0.1}], "backend": "scripted"}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the session"
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# Audio


def test_resampler_in_pieces_equals_resampling_whole() -> None:
    """State kept across appends: any cut gives the same samples, so append edges are inaudible."""
    rate = 24_000
    t = np.arange(2 * rate) / rate
    x = (12000 * np.sin(2 * np.pi * 1000 * t) + 3000 * np.sin(2 * np.pi * 3100 * t)).astype(np.int16)
    whole = StreamResampler(rate).process(x)
    resampler, rng, pieces, i = StreamResampler(rate), np.random.default_rng(0), [], 0
    while i < x.size:
        n = int(rng.integers(1, 4000))
        pieces.append(resampler.process(x[i : i + n]))
        i += n
    assert np.array_equal(np.concatenate(pieces), whole)
    assert abs(whole.size - x.size * 2 / 3) < 40  # the filter's half length waits for more input
    out_t = np.arange(whole.size) / 16_000
    expected = 12000 * np.sin(2 * np.pi * 1000 * out_t) + 3000 * np.sin(2 * np.pi * 3100 * out_t)
    assert np.abs(whole[100:] - expected[100:]).max() < 4  # in band: unchanged (to a few LSB)


def test_resampler_removes_what_16khz_cannot_hold_and_keeps_time() -> None:
    rate = 24_000
    t = np.arange(rate) / rate
    alias = StreamResampler(rate).process((16000 * np.sin(2 * np.pi * 10_000 * t)).astype(np.int16))
    level = np.sqrt(np.mean(alias[100:].astype(float) ** 2)) / (16000 / np.sqrt(2))
    assert 20 * np.log10(max(level, 1e-12)) < -60  # 10 kHz would fold to 6 kHz: filtered out instead
    click = np.zeros(rate, np.int16)
    click[6000] = 30000  # 250 ms
    assert int(np.argmax(StreamResampler(rate).process(click))) == 4000  # still 250 ms: the delay is compensated
    for rate_in in (8000, 44_100, 48_000):
        tt = np.arange(rate_in) / rate_in
        out = StreamResampler(rate_in).process((10000 * np.sin(2 * np.pi * 440 * tt)).astype(np.int16))
        expected = 10000 * np.sin(2 * np.pi * 440 * np.arange(out.size) / 16_000)
        assert np.abs(out[100:] - expected[100:]).max() < 4, rate_in
    same = np.arange(-100, 100, dtype=np.int16)
    assert np.array_equal(StreamResampler(16_000).process(same), same)


# ---------------------------------------------------------------------------------------------
# StreamSession.flush and utterance events


async def test_flush_commits_everything_and_the_session_goes_on() -> None:
    events: list[dict] = []

    async def emit(event: dict) -> None:
        events.append(event)

    session = StreamSession(ScriptedBackend(), emit, utterance_events=True)
    await session.start()
    session.feed(np.concatenate([silence(0.3), utterance([1, 2, 3])]))
    await asyncio.wait_for(session.flush(), 10)
    kinds = [e["type"] for e in events]
    assert kinds[-2:] == ["speech.stopped", "utterance.ended"]
    assert events[-1]["reason"] == "flush" and events[-1]["end_sample"] == round((0.3 + 3 * 0.65) * SAMPLE_RATE)
    committed = [w["text"].strip() for e in events if e["type"] == "transcript.committed" for w in e["words"]]
    assert committed == ["w1", "w2", "w3"]

    session.feed(utterance([4, 5]))  # after a flush: a new utterance, in the same session
    session.flush()  # not awaited: the next events still come in order
    await session.finish()
    kinds = [e["type"] for e in events]
    assert kinds.count("speech.started") == 2 and kinds.count("utterance.ended") == 3
    assert [e["reason"] for e in events if e["type"] == "utterance.ended"] == ["flush", "flush", "finish"]
    assert events[-1]["type"] == "session.ended" and events[-1]["text"] == "w1 w2 w3 w4 w5"
    with pytest.raises(RuntimeError):
        session.flush()


async def test_utterance_ends_after_its_last_word_and_only_when_asked() -> None:
    for asked in (True, False):
        events: list[dict] = []

        async def emit(event: dict, events: list[dict] = events) -> None:
            events.append(event)

        session = StreamSession(ScriptedBackend(), emit, utterance_events=asked)
        await session.start()
        session.feed(np.concatenate([utterance([0, 1, 2, 3]), silence(7), utterance([4]), silence(7)]))
        await until(lambda events=events: sum(e["type"] == "speech.stopped" for e in events) == 2)
        await session.finish()
        ended = [i for i, e in enumerate(events) if e["type"] == "utterance.ended"]
        if not asked:  # the native protocol's events are unchanged
            assert ended == []
            continue
        assert [events[i]["reason"] for i in ended] == ["silence", "silence", "finish"]
        first = [
            w["text"].strip() for e in events[: ended[0]] if e["type"] == "transcript.committed" for w in e["words"]
        ]
        assert first == ["w0", "w1", "w2", "w3"]  # every word of the utterance came before its end
        stops = [e["at_s"] for e in events if e["type"] == "speech.stopped"]
        assert events[ended[0]]["at_s"] >= stops[0]


# ---------------------------------------------------------------------------------------------
# The adapter, without the stack


class Client:
    """The adapter with a scripted backend; events the client would receive in ``events``."""

    def __init__(self, beta: bool = False) -> None:
        self.events: list[dict] = []
        self.adapter = RealtimeTranscription(ScriptedBackend(), self._receive, beta=beta)

    async def _receive(self, event: dict) -> None:
        assert isinstance(event["event_id"], str) and event["event_id"].startswith("event_")
        self.events.append(json.loads(json.dumps(event)))  # what goes on the wire

    async def send(self, event: dict | str) -> None:
        await self.adapter.handle(event if isinstance(event, str) else json.dumps(event))

    async def append(self, samples: np.ndarray, rate: int = 24_000, piece_s: float = 0.1) -> None:
        step = round(piece_s * rate)
        for i in range(0, samples.size, step):
            audio = base64.b64encode(samples[i : i + step].astype("<i2").tobytes()).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": audio})

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def items(events: list[dict]) -> dict[str, list[str]]:
    """item_id → the types of the events about it, in order."""
    out: dict[str, list[str]] = {}
    for e in events:
        item = e.get("item_id") or (e.get("item") or {}).get("id")
        if item:
            out.setdefault(item, []).append(e["type"])
    return out


DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


async def test_server_vad_one_item_per_utterance_in_openai_order() -> None:
    client = Client()
    await client.adapter.start()
    assert client.events[0]["type"] == "session.created"
    session = client.events[0]["session"]
    assert session["type"] == "transcription" and session["audio"]["input"]["format"] == {
        "type": "audio/pcm",
        "rate": 24000,
    }
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    audio = np.concatenate(
        [silence(0.5), utterance([1, 2, 3]), silence(7), utterance([4, 5]), silence(7)]
    )  # 16 kHz; the client speaks 24 kHz
    await client.append(StreamResampler(16_000, 24_000).process(np.concatenate([audio, silence(0.1)])))
    await until(lambda: len(client.of(COMPLETED)) == 2)
    await client.adapter.session.cancel()

    assert [e["transcript"] for e in client.of(COMPLETED)] == ["w1 w2 w3", "w4 w5"]
    flow = items(client.events)
    assert len(flow) == 2
    for kinds in flow.values():
        assert kinds[0] == "input_audio_buffer.speech_started"
        assert set(kinds[1:-4]) == {DELTA}  # the words as they are committed, then the end of the utterance
        assert kinds[-4:] == [
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.created",
            COMPLETED,
        ]
    for done in client.of(COMPLETED):
        deltas = [e["delta"] for e in client.of(DELTA) if e["item_id"] == done["item_id"]]
        assert "".join(deltas) == done["transcript"] and done["content_index"] == 0
        assert done["usage"]["type"] == "duration" and done["usage"]["seconds"] > 0
    first, second = client.of("input_audio_buffer.committed")
    assert first["previous_item_id"] is None and second["previous_item_id"] == first["item_id"]
    started, stopped = client.of("input_audio_buffer.speech_started"), client.of("input_audio_buffer.speech_stopped")
    assert started[0]["audio_start_ms"] <= 500 < 2450 <= stopped[0]["audio_end_ms"] <= 6000  # times of the input
    assert stopped[0]["audio_end_ms"] < started[1]["audio_start_ms"] <= 9450
    created = client.of("conversation.item.created")[0]
    assert created["item"]["role"] == "user" and created["item"]["content"][0]["type"] == "input_audio"


async def test_without_turn_detection_the_commit_ends_the_item() -> None:
    client = Client()
    await client.adapter.start()
    await client.send(
        {"type": "session.update", "session": {"type": "transcription", "audio": {"input": {"turn_detection": None}}}}
    )
    updated = client.of("session.updated")[0]["session"]
    assert updated["audio"]["input"]["turn_detection"] is None
    await client.append(StreamResampler(16_000, 24_000).process(np.concatenate([utterance([6, 7, 8]), silence(4)])))
    await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_1"})
    await until(lambda: len(client.of(COMPLETED)) == 1)
    [flow] = items(client.events).values()
    assert flow == ["input_audio_buffer.committed", "conversation.item.created", DELTA, COMPLETED]  # OpenAI's order
    assert client.of(COMPLETED)[0]["transcript"] == "w6 w7 w8" == client.of(DELTA)[0]["delta"]
    assert abs(client.of(COMPLETED)[0]["usage"]["seconds"] - 5.95) < 0.05  # all the audio committed
    assert not client.of("input_audio_buffer.speech_started")

    await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_2"})  # nothing since
    error = client.of("error")[-1]["error"]
    assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "evt_2"

    await client.append(StreamResampler(16_000, 24_000).process(utterance([9])))  # drop this ...
    await client.send({"type": "input_audio_buffer.clear"})
    assert client.events[-1]["type"] == "input_audio_buffer.cleared"
    await client.append(StreamResampler(16_000, 24_000).process(np.concatenate([utterance([3, 4]), silence(1)])))
    await client.send({"type": "input_audio_buffer.commit"})  # ... and keep this
    await until(lambda: len(client.of(COMPLETED)) == 2)
    assert client.of(COMPLETED)[1]["transcript"] == "w3 w4"
    assert client.of("input_audio_buffer.committed")[1]["previous_item_id"] == client.of(COMPLETED)[0]["item_id"]
    await client.adapter.session.cancel()


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        ("{not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ({"type": "input_audio_buffer.bogus"}, "invalid_value", "type"),
        ({"audio": "AAAA"}, "missing_required_parameter", "type"),
        ({"type": {"nested": True}}, "invalid_value", "type"),
        ({"type": "response.create"}, "invalid_value", "type"),
        ({"type": "input_audio_buffer.append"}, "missing_required_parameter", "audio"),
        ({"type": "input_audio_buffer.append", "audio": "not base64!"}, "invalid_value", "audio"),
        ({"type": "input_audio_buffer.append", "audio": 17}, "invalid_type", "audio"),
        ({"type": "input_audio_buffer.append", "audio": "AAAAA"}, "invalid_value", "audio"),  # truncated base64
        ({"type": "session.update"}, "missing_required_parameter", "session"),
        ({"type": "session.update", "session": {"type": "realtime"}}, "invalid_value", "session.type"),
        (
            {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 96000}}}},
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            {"type": "transcription_session.update", "session": {"input_audio_format": "opus"}},
            "invalid_value",
            "session.input_audio_format",
        ),
        (
            {"type": "transcription_session.update", "session": {"turn_detection": {"type": "push_to_talk"}}},
            "invalid_value",
            "session.turn_detection.type",
        ),
        (
            {"type": "transcription_session.update", "session": {"input_audio_transcription": {"language": "english"}}},
            "invalid_value",
            "session.input_audio_transcription.language",
        ),
    ],
)
async def test_bad_client_events_get_an_error_and_the_session_goes_on(event, code: str, param: str | None) -> None:
    client = Client()
    await client.adapter.start()
    before = client.adapter.config
    await client.send({**event, "event_id": "evt_bad"} if isinstance(event, dict) else event)
    error = client.events[-1]
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == code and error["error"]["param"] == param, error
    assert error["error"]["event_id"] == ("evt_bad" if isinstance(event, dict) else None)
    assert client.adapter.config == before  # a refused update changes nothing
    await client.append(StreamResampler(16_000, 24_000).process(np.concatenate([utterance([2]), silence(0.5)])))
    await client.send({"type": "input_audio_buffer.commit"})
    await until(lambda: len(client.of(COMPLETED)) == 1)
    assert client.of(COMPLETED)[0]["transcript"] == "w2"
    await client.adapter.session.cancel()


async def test_an_odd_pcm16_append_is_refused() -> None:
    client = Client()
    await client.adapter.start()
    await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x00\x01\x02").decode()})
    assert client.events[-1]["error"]["code"] == "invalid_value"
    assert client.adapter._fed == 0
    await client.adapter.session.cancel()


async def test_beta_protocol_with_g711_and_a_language() -> None:
    client = Client(beta=True)
    await client.adapter.start()
    created = client.events[0]
    assert created["type"] == "transcription_session.created"
    assert created["session"]["input_audio_format"] == "pcm16"
    assert created["session"]["object"] == "realtime.transcription_session"
    await client.send(
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en-US", "prompt": "words"},
                "turn_detection": None,
            },
        }
    )
    session = client.of("transcription_session.updated")[0]["session"]
    assert session["input_audio_format"] == "g711_ulaw" and session["turn_detection"] is None
    assert session["input_audio_transcription"] == {"model": "gpt-4o-transcribe", "language": "en", "prompt": "words"}
    assert client.adapter.session.options.language == "en"
    narrowband = StreamResampler(16_000, 8000).process(np.concatenate([utterance([1, 5]), silence(0.5)]))
    step = 800  # 100 ms at 8 kHz, one byte a sample
    for i in range(0, narrowband.size, step):
        audio = base64.b64encode(ulaw_encode(narrowband[i : i + step] / 32768).tobytes()).decode()
        await client.send({"type": "input_audio_buffer.append", "audio": audio})
    await client.send({"type": "input_audio_buffer.commit"})
    await until(lambda: len(client.of(COMPLETED)) == 1)
    assert client.of(COMPLETED)[0]["transcript"] == "w1 w5"
    await client.send({"type": "session.update", "session": {"type": "transcription"}})  # the GA shape on request
    assert client.events[-1]["type"] == "session.updated"
    assert client.events[-1]["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    await client.adapter.session.cancel()


# ---------------------------------------------------------------------------------------------
# The endpoint, without the stack


def _app(monkeypatch: pytest.MonkeyPatch, max_sessions: int = 4) -> FastAPI:
    monkeypatch.setattr(realtime, "ProxyBackend", lambda upstreams, beam_size: ScriptedBackend())
    app = FastAPI()
    app.include_router(realtime.router)
    # A short idle timeout lets the server close each socket: Starlette's test client cancels a
    # handler still running when the client side leaves, which reads as a failure.
    settings = SessionSettings(max_sessions=max_sessions, idle_timeout_s=0.5)
    app.state.session_settings, app.state.session_gate = settings, SessionGate(settings)
    app.state.sessions, app.state.upstreams = set(), None
    app.state.settings = type("Settings", (), {"allowed_origins": ()})()
    return app


def _until_closed(ws) -> tuple[list[dict], int]:
    events = []
    while (message := ws.receive())["type"] != "websocket.close":
        events.append(json.loads(message["text"]))
    return events, message["code"]


def test_endpoint_serves_transcription_intent_only(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(monkeypatch)
    with TestClient(app) as http:
        for query in ("", "?intent=conversation", "?model=gpt-realtime"):
            with http.websocket_connect("/v1/realtime" + query) as ws:
                events, code = _until_closed(ws)
                assert [e["error"]["code"] for e in events] == ["invalid_intent"] and code == 1008
                assert events[0]["error"]["type"] == "invalid_request_error" and events[0]["event_id"]

        with http.websocket_connect("/v1/realtime?intent=transcription&model=gpt-4o-transcribe") as ws:
            assert ws.receive_json()["type"] == "session.created"
            ws.send_bytes(b"\x00\x00")  # OpenAI's protocol is JSON text only
            assert ws.receive_json()["error"]["code"] == "invalid_event"
            pcm = StreamResampler(16_000, 24_000).process(np.concatenate([utterance([3]), silence(0.3)]))
            ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
            events, code = _until_closed(ws)  # idle: the open item is completed before the close
            assert events[0]["error"]["code"] == "idle_timeout" and code == 1001
            assert [e["transcript"] for e in events if e["type"] == COMPLETED] == ["w3"]

        beta = {"OpenAI-Beta": "realtime=v1", "Authorization": "Bearer sk-anything"}
        with http.websocket_connect("/v1/realtime?intent=transcription", headers=beta) as ws:
            assert ws.receive_json()["type"] == "transcription_session.created"
            _until_closed(ws)
    assert app.state.session_gate.open == 0 and not app.state.sessions


def test_endpoint_session_cap_speaks_openai(monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        TestClient(_app(monkeypatch, max_sessions=0)) as http,
        http.websocket_connect("/v1/realtime?intent=transcription") as ws,
    ):
        events, code = _until_closed(ws)
        assert [e["error"]["code"] for e in events] == ["session_cap"] and events[0]["event_id"] and code == 1013


# ---------------------------------------------------------------------------------------------
# With the stack: the official openai package's client against the real services


def wav_samples(path) -> np.ndarray:
    with wave.open(str(path)) as handle:
        assert handle.getframerate() == SAMPLE_RATE and handle.getnchannels() == 1
        return np.frombuffer(handle.readframes(handle.getnframes()), "<i2")


def openai_client(stack, **options):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=stack.proxy_url + "/v1", api_key="not-checked", max_retries=0, **options)


class Recorder:
    """Reads every server event the SDK parses, as the dicts it would send on (``to_dict``)."""

    def __init__(self, connection) -> None:
        self.connection = connection
        self.events: list[dict] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):  # the connection closing ends the reading
            async for event in self.connection:
                self.events.append(event.to_dict())

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]

    async def wait(self, condition: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert not self.task.done(), f"the connection ended: {self.task!r}"
            assert time.monotonic() < deadline, f"timed out; last events: {self.events[-5:]}"
            await asyncio.sleep(0.05)


def to_24k(samples: np.ndarray) -> np.ndarray:
    """The corpus is 16 kHz; OpenAI's clients send 24 kHz. (The tail of the filter is flushed.)"""
    return StreamResampler(SAMPLE_RATE, 24_000).process(np.concatenate([samples, silence(0.05)]))


async def append_all(connection, pcm24: np.ndarray, pace: float | None) -> None:
    """100 ms appends (``pace``: times real time; None: as fast as the socket takes them)."""
    for i in range(0, pcm24.size, 2400):
        await connection.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 2400].tobytes()).decode())
        if pace:
            await asyncio.sleep(0.1 / pace)


@pytest.mark.slow
async def test_openai_sdk_streams_a_recording_one_item_per_sentence(stack, librivox) -> None:
    """Five read sentences with 6.5 s pauses (the detector decides per 3 s step, so a pause
    must hold a whole silent step to end an item), sent at twice real time."""
    gap = silence(6.5)
    audio = np.concatenate([piece for clip in librivox for piece in (wav_samples(clip.path), gap)])
    starts = np.cumsum([0] + [wav_samples(c.path).size + gap.size for c in librivox])[:-1] * 1000 // SAMPLE_RATE
    async with openai_client(stack).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        recorder = Recorder(connection)
        await connection.session.update(
            session={"type": "transcription", "audio": {"input": {"transcription": {"language": "en"}}}}
        )
        await append_all(connection, to_24k(audio), pace=2.0)
        await recorder.wait(lambda: len(recorder.of(COMPLETED)) >= len(librivox))
        await asyncio.sleep(1.0)  # nothing more should come
    events = recorder.events
    assert events[0]["type"] == "session.created" and events[0]["session"]["type"] == "transcription"
    assert events[1]["type"] == "session.updated"
    assert events[1]["session"]["audio"]["input"]["transcription"]["language"] == "en"
    assert not recorder.of("error"), recorder.of("error")
    assert all(e["event_id"] for e in events)

    completed = recorder.of(COMPLETED)
    assert len(completed) == len(librivox), [e["transcript"] for e in completed]
    flow = items(events)
    for done in completed:
        kinds = flow[done["item_id"]]
        assert kinds[0] == "input_audio_buffer.speech_started"
        assert DELTA in kinds and set(kinds[1 : kinds.index("input_audio_buffer.speech_stopped")]) == {DELTA}
        assert kinds[-3:] == ["input_audio_buffer.committed", "conversation.item.created", COMPLETED]
        assert "".join(e["delta"] for e in recorder.of(DELTA) if e["item_id"] == done["item_id"]) == done["transcript"]
    for start_ms, started in zip(starts, recorder.of("input_audio_buffer.speech_started"), strict=True):
        assert abs(started["audio_start_ms"] - start_ms) <= 3000  # stream time survived the resampling

    error = jiwer.wer(
        normalize(" ".join(c.text for c in librivox)), normalize(" ".join(e["transcript"] for e in completed))
    )
    print(f"realtime WER {error:.3f} over {audio.size / SAMPLE_RATE:.0f} s, {len(completed)} items")
    assert error <= 0.10


@pytest.mark.slow
async def test_openai_sdk_manual_commit_and_bad_events(stack, librivox) -> None:
    async with openai_client(stack).realtime.connect(extra_query={"intent": "transcription"}) as connection:
        recorder = Recorder(connection)
        await connection.session.update(session={"type": "transcription", "audio": {"input": {"turn_detection": None}}})
        await recorder.wait(lambda: bool(recorder.of("session.updated")))
        assert recorder.of("session.updated")[0]["session"]["audio"]["input"]["turn_detection"] is None

        bad = [
            "{not json",
            json.dumps({"type": "conversation.item.bogus"}),
            json.dumps({"type": "input_audio_buffer.append", "audio": "%%% not base64 %%%"}),
            json.dumps({"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/opus"}}}}}),
            json.dumps({"type": "response.create"}),
        ]
        for raw in bad:
            await connection.send_raw(raw)
        await connection.input_audio_buffer.commit()  # nothing appended yet
        await recorder.wait(lambda: len(recorder.of("error")) == len(bad) + 1)
        errors = [e["error"] for e in recorder.of("error")]
        assert {e["type"] for e in errors} == {"invalid_request_error"}
        assert [e["code"] for e in errors] == [
            "invalid_json",
            "invalid_value",
            "invalid_value",
            "invalid_value",
            "invalid_value",
            "input_audio_buffer_commit_empty",
        ]

        for n, clip in enumerate(librivox[:2], start=1):  # the session goes on, one item per commit
            await append_all(connection, to_24k(np.concatenate([wav_samples(clip.path), silence(0.3)])), pace=None)
            await connection.input_audio_buffer.commit()
            await recorder.wait(lambda n=n: len(recorder.of(COMPLETED)) == n)
    assert not recorder.of("input_audio_buffer.speech_started")  # no VAD, no VAD events
    completed = recorder.of(COMPLETED)
    for done in completed:
        kinds = items(recorder.events)[done["item_id"]]
        assert kinds[:2] == ["input_audio_buffer.committed", "conversation.item.created"] and kinds[-1] == COMPLETED
        assert "".join(e["delta"] for e in recorder.of(DELTA) if e["item_id"] == done["item_id"]) == done["transcript"]
    first, second = recorder.of("input_audio_buffer.committed")
    assert first["previous_item_id"] is None and second["previous_item_id"] == first["item_id"]
    for clip, done in zip(librivox, completed, strict=False):
        assert jiwer.wer(normalize(clip.text), normalize(done["transcript"])) <= 0.15, done["transcript"]


@pytest.mark.slow
async def test_openai_sdk_beta_client_gets_the_beta_protocol(stack, librivox) -> None:
    """``client.beta.realtime`` sends ``OpenAI-Beta: realtime=v1`` and speaks ``transcription_session.*``
    (it always dials wss:// from the base URL, so it is given ``websocket_base_url``)."""
    clip = librivox[2]
    client = openai_client(stack, websocket_base_url=stack.proxy_url.replace("http://", "ws://") + "/v1")
    beta = client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"})
    async with beta as connection:
        recorder = Recorder(connection)
        await connection.transcription_session.update(
            session={"input_audio_format": "pcm16", "input_audio_transcription": {"language": "en"}}
        )
        await append_all(connection, to_24k(np.concatenate([wav_samples(clip.path), silence(7)])), pace=None)
        await recorder.wait(lambda: len(recorder.of(COMPLETED)) == 1)
    assert recorder.events[0]["type"] == "transcription_session.created"
    updated = recorder.of("transcription_session.updated")[0]["session"]
    assert (
        updated["input_audio_transcription"]["language"] == "en" and updated["turn_detection"]["type"] == "server_vad"
    )
    transcript = recorder.of(COMPLETED)[0]["transcript"]
    assert jiwer.wer(normalize(clip.text), normalize(transcript)) <= 0.15, transcript
