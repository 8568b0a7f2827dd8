"""Read an audio upload from a request: raw body or multipart ``file``, bounded in size.

The body is streamed and abandoned past the limit so a huge upload costs the service
neither memory nor time; the 413 says what the limit is. A raw body whose Content-Type is
plainly not audio is refused before it is read. The text fields of a multipart form are
bounded too (:data:`MAX_FORM_FIELD_BYTES`, :data:`MAX_FORM_FIELDS`, and per field with
:func:`form_text`): they are a few words each, and without a bound a 20 MB ``prompt``
would be held in memory and handed to the model's tokenizer.

An upload is held once: a raw body in the ``bytearray`` it arrives in (``bytes()`` of it would
copy it), a form's ``file`` part in its own buffer as the form is parsed, the body itself never
(docs/reliability.md, "Memory under upload floods"). How many bodies a process holds at once is
bounded in bytes by :mod:`services.common.memory`.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:  # python-multipart defines its callbacks' TypedDict for type checkers only
    from python_multipart.multipart import MultipartCallbacks

from core.audio import ACCEPTED, AudioError, check_declared_type, parse_content_type
from core.errors import ApiError

# Any one non-file multipart part: generous for a 2000-character prompt in 4-byte UTF-8.
MAX_FORM_FIELD_BYTES = 16 * 1024
# Text fields per form: the OpenAI form has about ten; more is abuse, not a request.
MAX_FORM_FIELDS = 64
# Headers of one part: Content-Disposition and Content-Type are all a form part has.
MAX_PART_HEADERS = 16


@dataclass
class Upload:
    # The one buffer the bytes arrived in (a bytearray: turning it into ``bytes`` would copy it);
    # decode_audio and the proxy's upstream call take it as it is.
    data: bytes | bytearray
    content_type: str | None
    filename: str | None = None
    fields: dict[str, list[str]] | None = None  # other multipart form fields, by name


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        # httptools answers this itself; other servers pass it on ("²".isdigit() is true)
        raise ApiError(400, "bad_content_length", f"Content-Length must be a number of bytes, not {declared[:40]!r}")
    if declared and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)


async def read_body(request: Request, max_bytes: int) -> bytearray:
    """The whole body, in the one buffer it arrives in (no ``bytes()`` copy of it: that held
    every upload twice at its peak)."""
    _check_declared_length(request, max_bytes)
    received = bytearray()
    async for piece in request.stream():
        received += piece
        if len(received) > max_bytes:
            raise _too_large(len(received), max_bytes)
    return received


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
    _check_declared_length(request, max_bytes)
    form = _FormReader(request.headers.get("content-type", ""))
    received = 0
    try:
        async for piece in request.stream():
            received += len(piece)
            if received > max_bytes:
                raise _too_large(received, max_bytes)
            form.parser.write(piece)
        form.parser.finalize()
    except FormParserError as exc:
        raise AudioError(400, "malformed_multipart", f"the multipart body could not be parsed ({exc})"[:250]) from None
    if form.file is None:
        raise AudioError(400, "missing_file", f"the multipart form has no 'file' field; attach {ACCEPTED}")
    return Upload(form.file.data, form.file.content_type, form.file.filename, form.fields)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)
    keep: bool = True  # False: a file part other than ``file``, whose bytes are dropped


class _FormReader:
    """A multipart form parsed as it arrives (python-multipart, the parser Starlette uses).

    Starlette's ``request.form()`` wants the whole body first (to bound it) and then copies the
    file part into a spooled temporary file, which ``read()`` copies again: three copies of the
    upload. Here the ``file`` part's bytes go straight into one buffer and the body itself is
    never held; text fields are bounded as before, other file parts are dropped as they come.
    """

    def __init__(self, content_type: str):
        _, params = parse_options_header(content_type)
        charset = params.get(b"charset", b"utf-8").decode("latin-1")
        try:
            self.charset = codecs.lookup(charset).name
        except (LookupError, ValueError):
            self.charset = "latin-1"
        if b"boundary" not in params:
            raise AudioError(400, "malformed_multipart", "the multipart body could not be parsed (no boundary)")
        self.fields: dict[str, list[str]] = {}
        self.file: _Part | None = None
        self._count = 0
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._begin,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_header_field": lambda data, start, end: self._header_name.extend(memoryview(data)[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(memoryview(data)[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        }
        self.parser = MultipartParser(params[b"boundary"], callbacks)

    def _text(self, raw: bytes | bytearray) -> str:
        try:
            return raw.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            return raw.decode("latin-1")

    def _begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _header_end(self) -> None:
        if len(self._headers) >= MAX_PART_HEADERS or len(self._header_value) > MAX_FORM_FIELD_BYTES:
            raise AudioError(
                400,
                "malformed_multipart",
                f"a multipart part has over {MAX_PART_HEADERS} headers or one over "
                f"{MAX_FORM_FIELD_BYTES // 1024} KiB; a part needs only Content-Disposition and Content-Type",
            )
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        if b"name" not in options:
            raise AudioError(
                400, "malformed_multipart", 'a multipart part has no Content-Disposition "name"; name the audio "file"'
            )
        part = self._part
        part.name = self._text(options[b"name"])
        if b"filename" in options:
            part.filename = self._text(options[b"filename"])
            content_type = self._headers.get(b"content-type")
            part.content_type = None if content_type is None else content_type.decode("latin-1")
            part.keep = part.name == "file"
            if part.keep:
                self.file = None  # a later ``file`` part replaces an earlier one: hold only one
            return
        self._count += 1
        if self._count > MAX_FORM_FIELDS:
            raise _form_error("Too many fields")

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if not part.keep:
            return
        if part.filename is None and len(part.data) + end - start > MAX_FORM_FIELD_BYTES:
            raise _form_error("Part exceeded maximum size")
        part.data.extend(memoryview(data)[start:end])

    def _end(self) -> None:
        part = self._part
        if part.filename is None:
            self.fields.setdefault(part.name, []).append(self._text(part.data))
        elif part.keep:
            self.file = part


def _form_error(text: str) -> ApiError:
    """The form's limits, as answers that say which limit was hit and what to do."""
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
