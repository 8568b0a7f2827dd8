"""Read an audio upload from a request: raw body or multipart ``file``, bounded in size.

The body is streamed and abandoned past the limit so a huge upload costs the service
neither memory nor time; the 413 says what the limit is.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from services.common.audio import ACCEPTED, AudioError, parse_content_type


@dataclass
class Upload:
    data: bytes
    content_type: str | None
    filename: str | None = None
    fields: dict[str, list[str]] | None = None  # other multipart form fields, by name


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)
    received = bytearray()
    async for piece in request.stream():
        received.extend(piece)
        if len(received) > max_bytes:
            raise _too_large(len(received), max_bytes)
    return bytes(received)


def _too_large(size: int, limit: int) -> AudioError:
    return AudioError(
        413,
        "upload_too_large",
        f"the upload is {size} bytes, over the limit of {limit} bytes (STT_MAX_UPLOAD_BYTES); "
        "send shorter audio or a compressed format (FLAC, Opus)",
    )


async def read_upload(request: Request, max_bytes: int) -> Upload:
    """Return the audio bytes and their declared type, whichever way they were sent."""
    body = await read_body(request, max_bytes)
    media_type, _ = parse_content_type(request.headers.get("content-type"))
    if media_type != "multipart/form-data":
        return Upload(body, request.headers.get("content-type"))
    request._body = body  # Starlette's form parser re-reads the (already bounded) body from here
    try:
        form = await request.form(max_part_size=max_bytes)
    except Exception as exc:  # python-multipart raises several unrelated types
        raise AudioError(400, "malformed_multipart", f"the multipart body could not be parsed ({exc})") from None
    fields: dict[str, list[str]] = {}
    upload = None
    for key, value in form.multi_items():
        if isinstance(value, str):
            fields.setdefault(key, []).append(value)
        elif key == "file":
            upload = value
    if upload is None:
        raise AudioError(400, "missing_file", f"the multipart form has no 'file' field; attach {ACCEPTED}")
    return Upload(await upload.read(), upload.content_type, upload.filename, fields)
