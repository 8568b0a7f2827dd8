"""OpenAI's audio API as OpenAI's own Python SDK calls it: streamed transcription, translation,
the model list and the errors, against the real local stack (proxy → base, real models).

The pure pieces (event shapes, the proxy's stream sniffing, merging model lists) are unit
tested first; the stack tests are marked slow.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import jiwer
import numpy as np
import openai
import pytest
from openai.types.audio import TranscriptionTextDeltaEvent, TranscriptionTextDoneEvent
from whisper_normalizer.english import EnglishTextNormalizer

from core.audio import to_wav_bytes
from core.errors import ApiError
from services.common.openai_api import (
    WHISPER_ALIAS,
    check_stream_format,
    delta_event,
    deltas,
    done_event,
    error_event,
    merge_models,
    parse_flag,
    served_models,
    wants_stream,
)
from services.local_stack import Stack, free_port
from tests.conftest import ADMIN_TOKEN

normalize = EnglishTextNormalizer()
# Function words of Spanish that English never uses: a translation must be (nearly) free of them.
SPANISH_ONLY = {"el", "la", "los", "las", "que", "para", "por", "una", "del", "con", "su", "es", "y", "o", "se"}


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalize(reference), normalize(hypothesis))


def words(text: str) -> list[str]:
    return normalize(text).split()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def sse_data(payload: bytes) -> dict:
    assert payload.startswith(b"data: ") and payload.endswith(b"\n\n")
    return json.loads(payload[6:-2])


# --- pure pieces -------------------------------------------------------------------------------


def test_events_parse_as_openais_own_types() -> None:
    delta = TranscriptionTextDeltaEvent.model_validate(sse_data(delta_event(" héllo")))
    assert delta.type == "transcript.text.delta" and delta.delta == " héllo"
    done = TranscriptionTextDoneEvent.model_validate(sse_data(done_event("Hello there.")))
    assert done.type == "transcript.text.done" and done.text == "Hello there."
    error = sse_data(error_event("overloaded", "retry"))
    assert error["error"] == {"code": "overloaded", "message": "retry"}  # the SDK raises APIError on it


def test_deltas_join_to_the_done_text() -> None:
    first = deltas([" Hello there.", "  ", "How are you?"], started=False)
    rest = deltas([" Fine. "], started=True)
    assert first == ["Hello there.", " How are you?"] and rest == [" Fine."]
    assert "".join(first + rest) == "Hello there. How are you? Fine."
    assert deltas(["", " "], started=False) == []


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("true", True), ("True", True), ("1", True),
                                                 ("false", False), ("0", False), ("", False)])  # fmt: skip
def test_parse_flag(value: str | None, expected: bool) -> None:
    assert parse_flag("stream", value) is expected


def test_bad_flag_and_unstreamable_formats_are_400() -> None:
    with pytest.raises(ApiError) as bad:
        parse_flag("stream", "maybe")
    assert bad.value.status == 400 and bad.value.code == "bad_stream"
    for fmt in ("json", "text"):
        check_stream_format(fmt)
    for fmt in ("srt", "vtt", "verbose_json"):
        with pytest.raises(ApiError) as refused:
            check_stream_format(fmt)
        assert refused.value.status == 400 and "json or text" in refused.value.message


def multipart(data: dict, filename: str = "a.wav") -> bytes:
    request = httpx.Request("POST", "http://x", data=data, files={"file": (filename, b"RIFF\x00stream", "audio/wav")})
    return request.read()


def test_the_proxy_spots_stream_true_in_a_multipart_body() -> None:
    assert wants_stream(multipart({"model": "whisper-1", "stream": "true"}))
    assert wants_stream(multipart({"stream": "True", "response_format": "text"}))
    assert not wants_stream(multipart({"model": "whisper-1"}))
    assert not wants_stream(multipart({"stream": "false"}))
    assert not wants_stream(multipart({"model": "stream"}, filename="stream"))
    assert not wants_stream(b"")


def test_model_lists_merge_first_backend_first() -> None:
    gpu = {"object": "list", "data": served_models("large-v3", 200)}
    cpu = {"object": "list", "data": served_models("base", 100)}
    merged = merge_models([gpu, cpu, {"data": [{"no": "id"}, "junk"]}, {"error": "x"}])
    assert [m["id"] for m in merged] == ["large-v3", WHISPER_ALIAS, "base"]
    alias = next(m for m in merged if m["id"] == WHISPER_ALIAS)
    assert alias["root"] == "large-v3"  # the model of the backend asked first
    assert {m["object"] for m in merged} == {"model"} and all(m["owned_by"] for m in merged)
    assert merge_models([cpu, cpu]) == cpu["data"]  # two backends with one model: listed once


# --- the real stack ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_file(speech_clips) -> tuple[bytes, str]:
    """Over 40 s of read speech with short pauses: several speech windows, so several deltas."""
    clips = [c for c in speech_clips if c.name.startswith("librivox")] + speech_clips[:6]
    pause = np.zeros(8000, np.float32)
    audio = np.concatenate([np.concatenate([c.samples(), pause]) for c in clips])
    assert audio.size / 16000 > 40
    return to_wav_bytes(audio), " ".join(c.text for c in clips)


@pytest.mark.slow
def test_streamed_transcription_through_the_sdk(stack: Stack, long_file) -> None:
    audio, reference = long_file
    sdk = client(stack.proxy_url)
    start = time.perf_counter()
    events, arrived = [], []
    stream = sdk.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", audio, "audio/wav"), stream=True, language="en"
    )
    for event in stream:
        events.append(event)
        arrived.append(time.perf_counter() - start)
    *delta_events, done = events
    assert isinstance(done, TranscriptionTextDoneEvent) and done.type == "transcript.text.done"
    assert len(delta_events) >= 2 and all(isinstance(e, TranscriptionTextDeltaEvent) for e in delta_events)
    assert "".join(e.delta for e in delta_events) == done.text
    assert wer(reference, done.text) < 0.2, done.text
    # Passed on as decoded, not collected: the first window's text came well before the last's.
    assert arrived[-1] - arrived[0] > 0.2, arrived
    # The same text as the whole-file answer: streaming changes when text arrives, not what it says.
    whole = sdk.audio.transcriptions.create(model="whisper-1", file=("long.wav", audio, "audio/wav"), language="en")
    assert whole.text == done.text


@pytest.mark.slow
def test_streamed_text_format_and_the_first_event_on_the_wire(stack: Stack, librivox) -> None:
    clip = librivox[2]
    sdk = client(stack.proxy_url)
    events = list(
        sdk.audio.transcriptions.create(model="base", file=clip.path.open("rb"), stream=True, response_format="text")
    )
    assert events[-1].type == "transcript.text.done" and wer(clip.text, events[-1].text) < 0.2
    with httpx.stream(
        "POST",
        f"{stack.proxy_url}/v1/audio/transcriptions",
        files={"file": ("clip.wav", clip.path.read_bytes(), "audio/wav")},
        data={"stream": "true"},
        timeout=60,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-stt-backend"] == "cpu" and r.headers["cache-control"] == "no-cache"
        body = r.read()
    assert body.startswith(b'data: {"type":"transcript.text.delta","delta":')
    assert body.endswith(b"\n\n") and b'"type":"transcript.text.done"' in body


@pytest.mark.slow
def test_stream_refusals_are_bad_request_errors(stack: Stack, librivox) -> None:
    sdk = client(stack.proxy_url)
    audio = ("clip.wav", librivox[0].path.read_bytes(), "audio/wav")
    for fmt in ("srt", "vtt", "verbose_json"):
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.audio.transcriptions.create(model="whisper-1", file=audio, stream=True, response_format=fmt)
        assert "json or text" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as bad_language:
        sdk.audio.transcriptions.create(model="whisper-1", file=audio, stream=True, language="klingon")
    assert bad_language.value.body["code"] == "unknown_language"
    with pytest.raises(openai.APIStatusError) as not_audio:  # refused before any event is sent
        sdk.audio.transcriptions.create(model="whisper-1", file=("x.txt", b"not audio at all" * 50), stream=True)
    assert not_audio.value.status_code == 415
    r = httpx.post(f"{stack.proxy_url}/v1/audio/transcriptions", files={"file": audio}, data={"stream": "perhaps"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_stream"


@pytest.mark.slow
def test_stream_falls_back_like_any_request_and_a_hang_up_costs_nothing(stack: Stack, long_file) -> None:
    audio, _ = long_file
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = f"{stack.proxy_url}/v1/audio/transcriptions"
    assert httpx.post(f"{stack.proxy_url}/gpu-toggle", json={"mode": "gpu"}, headers=auth).status_code == 200
    try:  # the GPU backend is configured but not running: served on CPU, and the answer says why
        with httpx.stream("POST", url, files={"file": ("a.wav", audio)}, data={"stream": "true"}, timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["x-stt-backend"] == "cpu" and "gpu" in r.headers["x-stt-fallback"]
            first = next(r.iter_lines())  # then hang up mid-stream
            assert first.startswith('data: {"type":"transcript.text.delta"')
    finally:
        httpx.post(f"{stack.proxy_url}/gpu-toggle", json={"mode": "cpu"}, headers=auth)
    for name in ("base", "proxy"):
        assert httpx.get(f"{stack.url(name)}/readyz").status_code == 200
    events = list(
        client(stack.proxy_url).audio.transcriptions.create(
            model="whisper-1", file=("a.wav", audio, "audio/wav"), stream=True
        )
    )
    assert events[-1].type == "transcript.text.done" and len(events[-1].text) > 200


@pytest.fixture(scope="module")
def spanish_prompts(speech_clips) -> list[tuple[str, bytes, str, str]]:
    """(name, WAV, Spanish text, English text) of Asterisk prompts that exist in both languages:
    the Spanish recordings (another speaker) from the dev set's pinned Debian packages, the
    English prompt of the same name as the reference translation. Only the two Spanish
    packages are fetched when the dev set was never built."""
    from core.vocabulary import SAMPLE_RATE
    from corpus import devset
    from corpus.fetch import _decode, apt_download, cache_dir

    tree = devset.dev_root() / "debs"
    if not (tree / ".complete").is_file():
        names = ("asterisk-core-sounds-es-g722", "asterisk-core-sounds-es")
        tree = apt_download({n: devset.DEBS[n] for n in names}, cache_dir() / "translation-es" / "debs")
    english = {c.name.removeprefix("asterisk-"): c.text for c in speech_clips if c.name.startswith("asterisk-")}
    picked = []
    for name, text, src in devset._asterisk_prompts(tree, "es"):
        if name in english and len(text.split()) >= 5:
            samples = _decode(src, fmt="g722", rate=SAMPLE_RATE)
            if samples.size < 12 * SAMPLE_RATE:
                picked.append((name, to_wav_bytes(samples), text, english[name]))
    assert len(picked) >= 6, "too few Spanish prompts with an English counterpart"
    return picked[:8]


@pytest.mark.slow
def test_translation_of_real_spanish_speech(stack: Stack, spanish_prompts) -> None:
    sdk = client(stack.proxy_url)
    recalls, spanish_left, transcribed_spanish, detected = [], 0, 0, []
    total = 0
    for name, audio, _, english in spanish_prompts:
        translated = sdk.audio.translations.create(
            model="whisper-1", file=(f"{name}.wav", audio, "audio/wav"), response_format="verbose_json"
        )
        assert translated.task == "translate" and translated.segments and translated.duration > 1
        detected.append(translated.language)
        said = sdk.audio.transcriptions.create(model="whisper-1", file=(f"{name}.wav", audio, "audio/wav"))
        hyp, ref = set(words(translated.text)), words(english)
        recalls.append(sum(w in hyp for w in ref) / len(ref))
        spanish_left += sum(w in SPANISH_ONLY for w in words(translated.text))
        transcribed_spanish += sum(w in SPANISH_ONLY for w in words(said.text))
        total += len(words(translated.text))
    assert detected.count("es") >= len(detected) - 2, detected  # the language spoken, not "en"
    assert transcribed_spanish > 10  # the transcription is Spanish ...
    assert spanish_left <= total * 0.03, spanish_left  # ... the translation is English
    assert np.mean(recalls) > 0.3, recalls  # and says much of what the English prompt says


@pytest.mark.slow
def test_translation_formats_and_english_speech(stack: Stack, librivox) -> None:
    sdk = client(stack.proxy_url)
    clip = librivox[1]
    as_json = sdk.audio.translations.create(model="whisper-1", file=clip.path.open("rb"))
    assert wer(clip.text, as_json.text) < 0.25, as_json.text  # English in, English out
    url = f"{stack.proxy_url}/v1/audio/translations"
    files = {"file": ("clip.wav", clip.path.read_bytes(), "audio/wav")}
    srt = httpx.post(url, files=files, data={"response_format": "srt"}, timeout=60)
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:") and srt.headers["x-stt-backend"] == "cpu"
    vtt = httpx.post(url, files=files, data={"response_format": "vtt"}, timeout=60).text
    assert vtt.startswith("WEBVTT")
    text = httpx.post(url, files=files, data={"response_format": "text", "temperature": "0.2"}, timeout=60)
    assert text.headers["content-type"].startswith("text/plain") and text.text.strip() == as_json.text
    verbose = httpx.post(url, files=files, data={"response_format": "verbose_json"}, timeout=60).json()
    assert verbose["task"] == "translate" and verbose["language"] == "en" and "words" not in verbose
    refused = httpx.post(url, files=files, data={"stream": "true"}, timeout=60)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "stream_unsupported"
    with pytest.raises(openai.BadRequestError):
        sdk.audio.translations.create(model="whisper-1", file=clip.path.open("rb"), response_format="xml")  # type: ignore[arg-type]


@pytest.mark.slow
def test_models_list_the_loaded_model(stack: Stack) -> None:
    sdk = client(stack.proxy_url)
    models = {m.id: m for m in sdk.models.list()}
    assert set(models) == {"base", WHISPER_ALIAS}
    assert all(
        m.object == "model" and m.owned_by == "stt-platform" and m.created > 1_700_000_000 for m in models.values()
    )
    assert models[WHISPER_ALIAS].root == "base"  # type: ignore[attr-defined]
    assert sdk.models.retrieve("base").id == "base"
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("gpt-4o-transcribe")
    backend = httpx.get(f"{stack.base_url}/v1/models").json()
    assert backend["object"] == "list" and [m["id"] for m in backend["data"]] == ["base", WHISPER_ALIAS]


@pytest.mark.slow
def test_an_english_only_model_refuses_to_translate(tmp_path: Path, librivox) -> None:
    env = {k: v for k, v in os.environ.items() if k.startswith("STT_MODEL_CACHE")}
    english_only = Stack(ports={"base": free_port()}, env={**env, "STT_MODEL": "tiny.en"}, run_dir=tmp_path)
    english_only.start("base")
    try:
        sdk = client(english_only.base_url)
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.audio.translations.create(model="whisper-1", file=librivox[0].path.open("rb"))
        assert refused.value.body["code"] == "translation_unsupported" and "tiny.en" in str(refused.value)
        assert [m.id for m in sdk.models.list()] == ["tiny.en", WHISPER_ALIAS]
        said = sdk.audio.transcriptions.create(model="whisper-1", file=librivox[0].path.open("rb"))
        assert wer(librivox[0].text, said.text) < 0.3  # transcription still works
    finally:
        english_only.down()
