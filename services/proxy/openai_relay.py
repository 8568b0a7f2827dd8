"""The proxy's side of the OpenAI audio API beyond plain request/answer: streamed transcription
passed through event by event, and ``/v1/models`` merged from the ready backends.

Kept out of ``app.py`` so the routes there stay a few lines each.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import aiohttp
from fastapi.responses import Response, StreamingResponse

from core.errors import ApiError
from services.common.openai_api import error_event, merge_models, model_list
from services.proxy.backends import Backend
from services.proxy.upstream import PASSED_HEADERS, Upstreams

log = logging.getLogger(__name__)

# Bytes of an upload handed to the backend connection per write (see UploadPayload).
UPLOAD_WRITE_BYTES = 256 * 1024


class UploadPayload(aiohttp.payload.Payload):
    """The upload's one buffer, sent to a backend a slice at a time with ``drain`` between.

    Given the buffer whole, aiohttp copies a ``bytearray`` when it slices it to the
    Content-Length and the event loop's transport copies whatever the socket did not take at
    once: a 50 MB upload held two or three times over (measured in docs/reliability.md,
    "Memory under upload floods"). Slices of a ``memoryview`` copy nothing; the transport holds
    at most one slice. Reusable: the fallback to the other backend sends it again."""

    def __init__(self, value: bytes | bytearray, content_type: str):
        super().__init__(value, content_type=content_type)
        self._size = len(value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        view = memoryview(self._value)
        end = len(view) if content_length is None else min(len(view), content_length)
        for start in range(0, end, UPLOAD_WRITE_BYTES):
            await writer.write(view[start : min(end, start + UPLOAD_WRITE_BYTES)])


# Sent with every passed-on event stream: no cache, and no buffering in an nginx ingress.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MODELS_TIMEOUT_S = 5.0


async def stream_transcription(
    upstreams: Upstreams, body: bytes | UploadPayload, content_type: str, query: str
) -> Response:
    """Send a ``stream=true`` transcription to the routed backend and pass its server-sent
    events on as they arrive. An answer that is not an event stream (a 4xx for a bad field, a
    429) is passed on whole, with the same headers as a plain call."""
    path = "/v1/audio/transcriptions"
    response, backend, reason = await upstreams.open_stream(path, body, content_type, query, path)
    headers = {"X-STT-Backend": backend.name}
    if reason:
        headers["X-STT-Fallback"] = reason
    headers.update({k: response.headers[k] for k in PASSED_HEADERS if k in response.headers})
    if response.status != 200 or response.content_type != "text/event-stream":
        try:
            payload = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            response.close()
            raise ApiError(504, "backend_timeout", f"the {backend.name} backend stopped answering; retry") from None
        response.release()
        return Response(payload, response.status, headers, response.headers.get("content-type"))
    return StreamingResponse(
        relay(response, backend), media_type="text/event-stream", headers={**headers, **SSE_HEADERS}
    )


async def relay(response: aiohttp.ClientResponse, backend: Backend) -> AsyncIterator[bytes]:
    """The backend's bytes as they come. If the backend goes away mid-stream the client gets an
    ``error`` event instead of a stream that just stops; if the client goes away, the backend
    connection is closed, so the backend stops transcribing for nobody."""
    finished = False
    try:
        async for piece in response.content.iter_any():
            yield piece
        finished = True
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("stream from the %s backend broke: %s", backend.name, type(exc).__name__)
        yield error_event("backend_lost", f"the {backend.name} backend stopped mid-stream; retry the request")
    finally:
        if finished:
            response.release()
        else:
            response.close()


async def _backend_models(client: aiohttp.ClientSession, backend: Backend) -> dict | None:
    """One backend's ``/v1/models`` answer, or None when it gives none (it is left out)."""
    try:
        timeout = aiohttp.ClientTimeout(total=MODELS_TIMEOUT_S)
        async with client.get(f"{backend.url}/v1/models", timeout=timeout) as response:
            if response.status != 200:
                return None
            return json.loads(await response.read())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.info("no model list from the %s backend: %s", backend.name, type(exc).__name__)
        return None


async def models(upstreams: Upstreams) -> list[dict]:
    """The models of every ready backend, asked at once; the backend the routing mode sends audio
    to comes first (so ``whisper-1`` names the model that would answer). 503 when none answers."""
    order = [b for b in upstreams.route().order if b.configured and b.ready]
    answers = await asyncio.gather(*(_backend_models(upstreams.client, b) for b in order))
    merged = merge_models(a for a in answers if a is not None)
    if not merged:
        raise ApiError(
            503,
            "no_backend",
            "no transcription backend is ready to say which model it serves; retry shortly",
            headers={"Retry-After": "2"},
        )
    return merged


async def list_models(upstreams: Upstreams) -> dict:
    return model_list(await models(upstreams))


async def get_model(upstreams: Upstreams, model_id: str) -> dict:
    for model in await models(upstreams):
        if model["id"] == model_id:
            return model
    raise ApiError(404, "model_not_found", f"model {model_id[:128]!r} is not served here; GET /v1/models lists them")
