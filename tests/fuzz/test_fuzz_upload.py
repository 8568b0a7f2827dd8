"""Fuzzing the upload parser: ``read_upload`` (raw body or multipart form, with its size, field
count and field length limits), ``form_text``, and the proxy's ``wants_stream`` scan.

``read_upload`` takes a Starlette ``Request``, so it is driven here in process with a bare ASGI
scope and a ``receive`` that hands the body over in pieces: no app, no model, no socket. For
any body, declared type, Content-Length and size limit it returns an upload within the limits or
raises :class:`ApiError` with a 4xx status; a 500 (any other exception) fails.

Content-Length values are ASCII digits or absent: httptools, the parser every service runs
(services/common/http_protocol.py), answers 400 to anything else before the app sees it. Other
values get 400 from ``read_body`` too (tested below).
"""

from __future__ import annotations

import asyncio
import string
from collections import deque
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from core.errors import ApiError
from services.common.openai_api import wants_stream
from services.common.upload import MAX_FORM_FIELD_BYTES, MAX_FORM_FIELDS, Upload, form_text, read_upload
from tests.fuzz.harness import FuzzRun, fuzz_settings, new_fds, open_fds
from tests.fuzz.seeds import CONTENT_TYPES, audio_bytes, content_types, mutated, valid_files

# RFC 2046's boundary characters (the space is allowed too, but not last).
_BOUNDARY = string.ascii_letters + string.digits + "'()+_,-./:=?"
_FIELD_NAMES = ["prompt", "model", "language", "response_format", "temperature", "stream", "timestamp_granularities[]"]
_FLAGS = [b"true", b"1", b" on ", b"False", b"yes\t"]


def _part(name: bytes, value: bytes, eol: bytes, filename: bytes | None = None, ctype: str | None = None) -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    head = disposition + (eol + b"Content-Type: " + ctype.encode("latin-1", "replace") if ctype else b"")
    return head + eol + eol + value


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    """A multipart form (text fields around the count and size limits, zero to two file parts)
    with a Content-Type that may name the wrong boundary, or none; then perhaps mutated."""
    boundary = draw(st.text(alphabet=_BOUNDARY, min_size=1, max_size=70)).encode()
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    names = st.one_of(st.sampled_from(_FIELD_NAMES), st.text(max_size=16)).map(lambda s: s.encode())
    values = st.one_of(
        st.binary(max_size=40),
        st.text(max_size=40).map(str.encode),
        st.sampled_from(_FLAGS),
        st.sampled_from([MAX_FORM_FIELD_BYTES - 1, MAX_FORM_FIELD_BYTES, MAX_FORM_FIELD_BYTES + 1]).flatmap(
            lambda n: st.sampled_from([b"p" * n, "é".encode() * (n // 2 + 1)])
        ),
    )
    count = draw(st.sampled_from([0, 1, 2, 3, 0, 1, 2, 3, MAX_FORM_FIELDS - 1, MAX_FORM_FIELDS, MAX_FORM_FIELDS + 1]))
    parts = [_part(draw(names), draw(values), eol) for _ in range(count)]
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        name = draw(st.one_of(st.just(b"file"), names))
        filename = draw(st.sampled_from([b"talk.wav", b"", b"../../etc/passwd", b"x.wav\x00.txt", "é.flac".encode()]))
        data = draw(st.one_of(st.sampled_from(sorted(valid_files().values())), st.binary(max_size=256)))
        parts.append(_part(name, data, eol, filename, draw(st.one_of(st.sampled_from(CONTENT_TYPES), content_types()))))
    parts = draw(st.permutations(parts))
    body = b"".join(b"--" + boundary + eol + part + eol for part in parts) + b"--" + boundary + b"--" + eol
    if draw(st.integers(0, 3)) == 0:
        body = draw(mutated({"form": body}, max_ops=2))
    b = boundary.decode()
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={b}",
                f"multipart/form-data; boundary={b}",
                f"multipart/form-data; boundary={b}",
                f'multipart/form-data; boundary="{b}"',
                f"MULTIPART/FORM-DATA; BOUNDARY={b}",
                f"multipart/form-data; charset=utf-8; boundary={b}",
                f"multipart/form-data; boundary={b}x",
                "multipart/form-data",
                f"multipart/mixed; boundary={b}",
            ]
        )
    )
    return body, content_type


def _request(body: bytes, headers: list[tuple[bytes, bytes]], piece: int) -> Request:
    """A POST as uvicorn hands it to the app: the body in ``piece``-byte messages."""
    chunks = deque(body[i : i + piece] for i in range(0, len(body), piece)) or deque([b""])

    async def receive() -> dict[str, Any]:
        if chunks:
            return {"type": "http.request", "body": chunks.popleft(), "more_body": len(chunks) > 0}
        return {"type": "http.disconnect"}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/audio/transcriptions",
        "raw_path": b"/v1/audio/transcriptions",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "http_version": "1.1",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 40000),
        "headers": headers,
    }
    return Request(scope, receive)


async def _read(request: Request, max_bytes: int) -> Upload | ApiError:
    try:
        return await read_upload(request, max_bytes)
    except ApiError as err:
        return err


def test_read_upload_answers_an_upload_or_a_4xx(fuzz: FuzzRun) -> None:
    @fuzz_settings(ci_examples=200)
    @given(
        sent=st.one_of(multipart_bodies(), st.tuples(audio_bytes(), content_types())),
        length=st.sampled_from(["honest", "honest", "absent", "smaller", "larger"]),
        max_bytes=st.sampled_from([64, 4_096, 50 * 1024 * 1024, 50 * 1024 * 1024]),
        piece=st.sampled_from([1, 7, 1_024, 65_536]),
        limit=st.sampled_from([0, 16, 2_000]),
    )
    def prop(sent: tuple[bytes, str | None], length: str, max_bytes: int, piece: int, limit: int) -> None:
        if not fuzz.live():
            return
        body, content_type = sent
        declared = {"honest": len(body), "absent": None, "smaller": len(body) // 2, "larger": len(body) + 4_096}[length]
        headers = [] if declared is None else [(b"content-length", str(declared).encode())]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode("latin-1", "replace")))
        sent_type = None if content_type is None else content_type.encode("latin-1", "replace").decode("latin-1")
        before = open_fds()
        with fuzz.bounded():
            answer = asyncio.run(_read(_request(body, headers, piece), max_bytes))
        assert not new_fds(before, open_fds())
        kind = answer.code if isinstance(answer, ApiError) else "raw" if answer.fields is None else "form"
        fuzz.stats.answers[f"upload {kind}"] += 1
        if isinstance(answer, ApiError):
            assert 400 <= answer.status < 500 and answer.code and len(answer.message) < 1_000, answer.message
            return
        assert len(answer.data) <= max_bytes
        if answer.fields is None:  # a raw body: passed on as it came
            assert (answer.data, answer.content_type) == (body, sent_type)
            return
        assert sum(len(values) for values in answer.fields.values()) <= MAX_FORM_FIELDS
        for name, values in answer.fields.items():
            assert all(len(value) <= MAX_FORM_FIELD_BYTES for value in values)
            try:
                chosen = form_text(answer.fields, name, limit)
            except ApiError as err:
                assert (err.status, err.code) == (422, "field_too_long")
                assert any(len(value) > limit for value in values)
            else:
                assert chosen == values[-1] and all(len(value) <= limit for value in values)

    fuzz.run(prop)


def test_wants_stream_scans_any_body_quickly(fuzz: FuzzRun) -> None:
    @fuzz_settings(ci_examples=150, batch=500)
    @given(sent=st.one_of(multipart_bodies(), st.tuples(audio_bytes(), st.none())))
    def prop(sent: tuple[bytes, str | None]) -> None:
        if not fuzz.live():
            return
        with fuzz.bounded(0.5):
            assert wants_stream(sent[0]) in (True, False)

    fuzz.run(prop)


def test_wants_stream_is_linear_in_repeated_part_names() -> None:
    """Found while writing this harness: each occurrence of ``name="stream"`` starts a regex
    match that runs over every following header-like line to look for the blank line, so a body
    of n such lines costs n² (here: 64 KB 1 s, 256 KB 16 s; the proxy allows 50 MB). 6000 lines
    are checked against a bound a linear scan meets a hundred times over."""
    import time

    body = b'name="stream"x\r\n' * 6_000
    start = time.monotonic()
    wants_stream(body)
    assert time.monotonic() - start < 0.25


def test_a_non_ascii_content_length_is_a_4xx() -> None:
    headers = [(b"content-length", "²".encode("latin-1")), (b"content-type", b"audio/wav")]
    answer = asyncio.run(_read(_request(b"RIFF", headers, 1_024), 1_024))
    assert isinstance(answer, ApiError) and 400 <= answer.status < 500
