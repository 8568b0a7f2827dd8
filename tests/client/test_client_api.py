"""Sorting HTTP outcomes into retry / give up, and shifting word times to absolute time."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from client.api import PermanentError, RetryableError, SttApi, parse_result
from services.local_stack import free_port

SECOND = np.zeros(16000, np.float32)


def api_answering(status: int, body: dict | None = None, headers: dict | None = None) -> SttApi:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body or {"error": {"code": "x", "message": "y"}}, headers=headers)

    return SttApi("http://stt.test", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
async def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    api = api_answering(status, headers={"Retry-After": "2"})
    with pytest.raises(RetryableError) as info:
        await api.transcribe(SECOND, 0.0)
    assert info.value.retry_after == 2.0


@pytest.mark.parametrize("status", [400, 413, 415, 422])
async def test_client_errors_are_permanent_and_keep_the_servers_message(status: int) -> None:
    api = api_answering(status, {"error": {"code": "not_audio", "message": "send WAV"}})
    with pytest.raises(PermanentError, match="not_audio: send WAV"):
        await api.transcribe(SECOND, 0.0)


async def test_nothing_listening_is_retryable() -> None:
    api = SttApi(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RetryableError, match="ConnectError"):
        await api.transcribe(SECOND, 0.0)
    with pytest.raises(RetryableError):
        await api.detect(SECOND)
    await api.aclose()


async def test_request_carries_wav_and_query() -> None:
    seen: dict = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(
            path=request.url.path,
            params=dict(request.url.params),
            type=request.headers["content-type"],
            riff=request.content[:4],
            size=len(request.content),
        )
        return httpx.Response(200, json={"text": "", "segments": []})

    api = SttApi("http://stt.test/", transport=httpx.MockTransport(handler))
    await api.transcribe(SECOND, 3.0, language="en", prompt="hello there")
    assert seen == {
        "path": "/transcribe",
        "params": {"word_timestamps": "true", "language": "en", "prompt": "hello there"},
        "type": "audio/wav",
        "riff": b"RIFF",
        "size": 44 + 32000,
    }


def test_word_times_are_shifted_to_absolute_time() -> None:
    body = {
        "text": "Please leave",
        "language": "en",
        "segments": [
            {
                "start": 0.1,
                "end": 1.0,
                "text": "Please leave",
                "words": [
                    {"start": 0.12, "end": 0.5, "word": " Please", "probability": 0.98},
                    {"start": 0.5, "end": 0.9, "word": " leave", "probability": 0.9},
                ],
            }
        ],
    }
    result = parse_result(body, 42.0)
    assert [(w.start, w.end, w.text) for w in result.words] == [(42.12, 42.5, " Please"), (42.5, 42.9, " leave")]


def test_segments_without_word_times_still_give_words() -> None:
    result = parse_result({"segments": [{"start": 1.0, "end": 2.0, "text": " a b"}]}, 10.0)
    assert [(w.start, w.end, w.text) for w in result.words] == [(11.0, 11.5, " a"), (11.5, 12.0, " b")]


@pytest.mark.parametrize("body", [{}, {"detail": "ok"}, ["not", "an", "object"]])
def test_a_200_that_is_not_a_transcription_is_refused_not_taken_for_silence(body) -> None:
    """A gateway's 200 (or a wrong service's) carries neither text nor segments: reading it as
    an empty transcript would lose the chunk's words without a trace."""
    with pytest.raises(ValueError, match="without 'text' or 'segments'"):
        parse_result(body, 0.0)
