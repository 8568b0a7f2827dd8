"""Pieces of OpenAI's audio API shared by the base backend and the proxy (pure functions).

Clients built on OpenAI's SDKs parse these shapes strictly, so they are written in one place:
the server-sent events of ``stream=true`` transcription (``transcript.text.delta`` and
``transcript.text.done``, as in openai-python's ``TranscriptionTextDeltaEvent`` /
``TranscriptionTextDoneEvent``), the model objects of ``GET /v1/models``, and how the proxy
spots a streaming request without parsing the multipart form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from core.errors import ApiError

# OpenAI streams only these formats: subtitles and verbose_json need the whole file's timing.
STREAM_FORMATS = ("json", "text")
# The name OpenAI's own Whisper has; clients hardcode it, and every audio endpoint here accepts
# any ``model`` (the loaded model answers), so /v1/models lists it as an alias of that model.
WHISPER_ALIAS = "whisper-1"
OWNED_BY = "stt-platform"
TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
FALSE_WORDS = frozenset({"false", "0", "no", "off", ""})


def parse_flag(name: str, value: str | None) -> bool:
    """A boolean multipart field as OpenAI's SDKs send it (``"true"``/``"false"``); 400 otherwise,
    so a typo never silently turns streaming off."""
    if value is None:
        return False
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ApiError(400, f"bad_{name}", f"form field {name!r} must be true or false, not {value[:16]!r}")


def check_stream_format(response_format: str) -> None:
    """400 for ``stream=true`` with a format that cannot be streamed, as OpenAI answers it."""
    if response_format not in STREAM_FORMATS:
        raise ApiError(
            400,
            "bad_response_format",
            f"response_format {response_format!r} cannot be streamed; with stream=true use json or text "
            "(srt, vtt and verbose_json need the whole file: send them without stream)",
        )


def sse(event: dict) -> bytes:
    """One server-sent event carrying ``event`` as JSON (``data:`` only, no ``event:`` line, like OpenAI)."""
    return b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def delta_event(delta: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": delta})


def done_event(text: str) -> bytes:
    return sse({"type": "transcript.text.done", "text": text})


def error_event(code: str, message: str) -> bytes:
    """A failure after the stream began (the status line is already sent). OpenAI's SDKs raise
    ``APIError`` for any event carrying an ``error`` object, so clients see it as an error."""
    return sse({"type": "error", "error": {"code": code, "message": message}})


def deltas(segment_texts: Iterable[str], started: bool) -> list[str]:
    """The deltas for some segments' texts: stripped, empty ones dropped, each after the first of
    the whole stream led by one space, so the deltas joined are exactly the done event's text.
    ``started``: whether an earlier delta was already sent."""
    out = []
    for text in segment_texts:
        piece = text.strip()
        if piece:
            out.append((" " if started else "") + piece)
            started = True
    return out


def model_object(model_id: str, created: int, root: str) -> dict:
    """One entry of ``GET /v1/models``: OpenAI's four fields, plus ``root`` (as OpenAI's model
    objects once had and vLLM still has): the loaded model that answers for this id."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": OWNED_BY, "root": root}


def served_models(model_name: str, created: int) -> list[dict]:
    """What one backend serves: its loaded model and the ``whisper-1`` alias for it."""
    models = [model_object(model_name, created, model_name)]
    if model_name != WHISPER_ALIAS:
        models.append(model_object(WHISPER_ALIAS, created, model_name))
    return models


def model_list(models: list[dict]) -> dict:
    return {"object": "list", "data": models}


def merge_models(answers: Iterable[dict]) -> list[dict]:
    """Merge the ``/v1/models`` answers of several backends, first answer first: a model two
    backends both load is listed once, and ``whisper-1`` points at the model of the backend
    asked first (the one the routing mode sends audio to). Malformed entries are skipped."""
    merged: dict[str, dict] = {}
    for answer in answers:
        data = answer.get("data") if isinstance(answer, dict) else None
        for entry in data if isinstance(data, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) and entry["id"] not in merged:
                merged[entry["id"]] = entry
    return list(merged.values())


# A multipart part named "stream" whose value is true: its headers, a blank line, the value.
_STREAM_NAME = b'name="stream"'
_TRUE = re.compile(rb"[ \t]*(?:true|1|yes|on)[ \t]*", re.I)


def wants_stream(body: bytes | bytearray) -> bool:
    """Whether a multipart body asks for ``stream=true``, found without parsing the form (the
    proxy passes the body on untouched). A wrong guess costs nothing but buffering: the proxy's
    streaming path passes a plain answer on whole, and its plain path an event stream whole.

    One pass: every ``name="stream"`` before the blank line that ends its part's headers has the
    same value after that line, so the value is looked up once per header block (matching from
    every occurrence took n² time on a body of repeated names: 256 KB, 16 s, tests/fuzz)."""
    checked_until = -1
    start = body.find(_STREAM_NAME)
    while start != -1:
        # not the tail of ``filename="stream"``, nor inside a header block already looked at
        if start > checked_until and (start == 0 or not body[start - 1 : start].isalpha()):
            headers_end = body.find(b"\r\n\r\n", start)
            if headers_end == -1:
                return False
            value_end = body.find(b"\r\n", headers_end + 4)
            if value_end != -1 and _TRUE.fullmatch(body, headers_end + 4, value_end):
                return True
            checked_until = headers_end
        start = body.find(_STREAM_NAME, start + 1)
    return False
