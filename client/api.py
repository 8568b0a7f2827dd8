"""The two HTTP calls the client makes to the proxy: ``POST /detect`` and ``POST /transcribe``.

Errors are sorted into the two kinds the dispatcher cares about: :class:`RetryableError`
(connection refused or reset, timeouts, 5xx, 429: the chunk is kept and sent again) and
:class:`PermanentError` (any other 4xx: retrying the same bytes cannot help).

A proxy with API keys on (docs/api.md, "API keys") wants ``Authorization: Bearer <key>``: the
key is ``api_key`` or, when that is not given, the ``STT_API_KEY`` environment variable (so a
key never has to be typed on a command line, where ``ps`` and shell history would keep it). A
missing or wrong key is a 401, a :class:`PermanentError`; a key over its rate is a 429
``rate_limited``, a :class:`RetryableError` with the server's ``Retry-After``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import httpx
import numpy as np

from core.audio import to_wav_bytes
from core.commit_policy import Segment, Word

__all__ = ["ChunkResult", "PermanentError", "RetryableError", "Segment", "SttApi", "Word", "parse_result"]


class RetryableError(Exception):
    """The request may succeed later; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """The server refused the request for a reason resending will not fix."""


@dataclass
class ChunkResult:
    """What the transcriber said about one chunk, shifted to absolute time."""

    words: list[Word] = field(default_factory=list)
    text: str = ""
    language: str | None = None
    backend: str | None = None
    segments: list[Segment] = field(default_factory=list)  # the same words with their segments' confidence
    language_probability: float | None = None  # Whisper's, for a detected language (1 when it was given)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return f"{response.status_code} {body['error']['code']}: {body['error']['message']}"
    except Exception:
        return f"{response.status_code} {response.text[:200]}"


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    message = _error_message(response)
    if response.status_code == 429 or response.status_code >= 500:
        retry_after = response.headers.get("Retry-After")
        try:
            hint = float(retry_after) if retry_after else None
        except ValueError:
            hint = None
        raise RetryableError(message, hint)
    raise PermanentError(message)


def auth_headers(api_key: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` with ``api_key``, else ``STT_API_KEY``; none when neither is set.
    Sent on every request and on the WebSocket upgrade (:mod:`client.ws_transport`)."""
    key = api_key if api_key is not None else os.environ.get("STT_API_KEY", "").strip()
    return {"Authorization": f"Bearer {key}"} if key else {}


def parse_result(body: dict, offset: float) -> ChunkResult:
    """Flatten segments into words with absolute times (``offset`` = where the audio sent began).

    A 200 that carries neither ``text`` nor ``segments`` is not a transcription (a proxy or
    gateway answering for the service): it raises, and the dispatcher counts the chunk as
    dropped (``malformed_answer``) instead of taking it for silence."""
    if not isinstance(body, dict) or ("text" not in body and "segments" not in body):
        raise ValueError(f"a 200 answer without 'text' or 'segments': {str(body)[:200]!r}")
    segments = Segment.parse(body.get("segments") or [], offset)
    words = [w for seg in segments for w in seg.words]
    probability = body.get("language_probability")
    return ChunkResult(
        words,
        body.get("text", ""),
        body.get("language"),
        body.get("backend"),
        segments,
        float(probability) if isinstance(probability, int | float) else None,
    )


class SttApi:
    """A thin async client for the proxy; one instance per pipeline, connections are pooled.

    The transcription timeout is long on purpose: a request that times out is still being
    computed by the server, and re-sending it early only doubles the load that made it slow.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float = 180.0,
        detect_timeout_s: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.detect_timeout_s = detect_timeout_s
        headers = auth_headers(api_key)
        self._client = httpx.AsyncClient(base_url=self.url, timeout=timeout_s, transport=transport, headers=headers)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, samples: np.ndarray, params: dict, timeout: float | None = None) -> dict:
        try:
            response = await self._client.post(
                path,
                content=to_wav_bytes(samples),
                params=params,
                headers={"Content-Type": "audio/wav"},
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc or 'no answer'} ({self.url}{path})") from None
        _raise_for(response)
        try:
            return response.json()
        except ValueError:
            raise RetryableError(f"{path} answered with a body that is not JSON") from None

    async def detect(self, samples: np.ndarray) -> bool:
        """True when the chunk holds speech."""
        body = await self._post("/detect", samples, {}, timeout=self.detect_timeout_s)
        return bool(body.get("speech"))

    async def transcribe(
        self, samples: np.ndarray, offset: float, language: str | None = None, prompt: str | None = None
    ) -> ChunkResult:
        params: dict[str, str] = {"word_timestamps": "true"}
        if language:
            params["language"] = language
        if prompt:
            params["prompt"] = prompt
        return parse_result(await self._post("/transcribe", samples, params), offset)
