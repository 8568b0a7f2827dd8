"""Read an audio upload from a request: raw body or multipart ``file``, bounded in size.

The body is streamed and abandoned past the limit so a huge upload costs the service
neither memory nor time; the 413 says what the limit is. A raw body whose Content-Type is
plainly not audio is refused before it is read. The text fields of a multipart form are
bounded too (:data:`MAX_FORM_FIELD_BYTES`, :data:`MAX_FORM_FIELDS`, and per field with
:func:`form_text`): they are a few words each, and without a bound a 20 MB ``prompt``
would be held in memory and handed to the model's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from services.common.audio import ACCEPTED, AudioError, check_declared_type, parse_content_type
from services.common.errors import ApiError

# Any one non-file multipart part: generous for a 2000-character prompt in 4-byte UTF-8.
MAX_FORM_FIELD_BYTES = 16 * 1024
# Text fields per form: the OpenAI form has about ten; more is abuse, not a request.
MAX_FORM_FIELDS = 64


@dataclass
class Upload:
    data: bytes
    content_type: str | None
    filename: str | None = None
    fields: dict[str, list[str]] | None = None  # other multipart form fields, by name


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        # httptools answers this itself; other servers pass it on ("²".isdigit() is true)
        raise ApiError(400, "bad_content_length", f"Content-Length must be a number of bytes, not {declared[:40]!r}")
    if declared and int(declared) > max_bytes:
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
    media_type, _ = parse_content_type(request.headers.get("content-type"))
    if media_type != "multipart/form-data":
        check_declared_type(request.headers.get("content-type"))  # before reading what we would refuse
        return Upload(await read_body(request, max_bytes), request.headers.get("content-type"))
    body = await read_body(request, max_bytes)
    request._body = body  # Starlette's form parser re-reads the (already bounded) body from here
    try:
        # max_part_size bounds each text field only; the file part is bounded by max_bytes above.
        form = await request.form(max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_FIELD_BYTES)
    except Exception as exc:  # python-multipart raises several unrelated types
        raise _form_error(exc) from None
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


def _form_error(exc: Exception) -> ApiError:
    """Starlette's parser errors, as answers that say which limit was hit and what to do."""
    text = str(getattr(exc, "detail", None) or exc)  # Starlette wraps its parser's errors in HTTPException
    if text.startswith(("Part exceeded maximum size", "Field exceeded maximum size")):
        return ApiError(
            413,
            "form_field_too_large",
            f"a multipart text field is over {MAX_FORM_FIELD_BYTES // 1024} KiB; text fields hold a few words "
            "(prompt: at most 2000 characters). Send the audio as a file part with a filename "
            "(curl -F file=@talk.wav), not as a text field",
        )
    if text.startswith("Too many fields"):
        return ApiError(
            413,
            "too_many_form_fields",
            f"the multipart form has over {MAX_FORM_FIELDS} text fields; send only the documented ones",
        )
    return AudioError(400, "malformed_multipart", f"the multipart body could not be parsed ({text[:200]})")


def form_text(fields: dict[str, list[str]], name: str, max_chars: int) -> str | None:
    """The last value of form field ``name`` (None when absent), refused when any value is
    longer than ``max_chars``: a long value is a mistake or an attack, never a setting."""
    values = fields.get(name, [])
    for value in values:
        if len(value) > max_chars:
            raise ApiError(
                422,
                "field_too_long",
                f"form field {name!r} is {len(value)} characters long; at most {max_chars} are accepted",
            )
    return values[-1] if values else None
