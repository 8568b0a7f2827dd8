"""The real services as uvicorn processes over HTTP, with real models on real speech."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jiwer
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from whisper_normalizer.english import EnglishTextNormalizer

from core.audio import to_wav_bytes
from services.common.models import provision
from services.local_stack import Stack, free_port, free_ports
from tests.conftest import ADMIN_TOKEN, wav_bytes

pytestmark = pytest.mark.slow
normalize = EnglishTextNormalizer()
WAV = {"content-type": "audio/wav"}


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wer(reference: str, hypothesis: str) -> float:
    return jiwer.wer(normalize(reference), normalize(hypothesis))


def assert_all_ready(stack: Stack) -> None:
    for name in ("tiny", "base", "proxy"):
        assert httpx.get(f"{stack.url(name)}/readyz").status_code == 200, f"{name} is no longer ready"


def test_transcribe_real_speech_through_the_proxy(stack: Stack, librivox) -> None:
    errors = []
    for clip in librivox:
        r = httpx.post(f"{stack.proxy_url}/transcribe", content=wav_bytes(clip.path), headers=WAV, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert r.headers["x-stt-backend"] == "cpu" and body["backend"] == "cpu"
        assert body["model"] == "base" and body["device"] == "cpu" and body["compute_type"] == "int8"
        assert r.headers["x-stt-model"] == "base"  # passed on by the proxy from the backend
        assert body["language"] == "en"
        words = [w for s in body["segments"] for w in s["words"]]
        assert words and all(0 <= w["start"] <= w["end"] <= body["duration_s"] + 0.5 for w in words)
        errors.append(wer(clip.text, body["text"]))
    assert np.mean(errors) < 0.15, errors


def test_asterisk_prompts_word_error_rate(stack: Stack, speech_clips) -> None:
    short = [c for c in speech_clips if c.name.startswith("asterisk") and c.path.stat().st_size < 16000 * 2 * 25]
    clips = short[::12][:15]
    refs, hyps = [], []
    for clip in clips:
        r = httpx.post(
            f"{stack.base_url}/transcribe-chunk?language=en", content=wav_bytes(clip.path), headers=WAV, timeout=60
        )
        assert r.status_code == 200, r.text
        refs.append(normalize(clip.text))
        hyps.append(normalize(r.json()["text"]))
    assert jiwer.wer(refs, hyps) < 0.15


def test_detector_silero_says_yes_to_speech_and_no_to_everything_else(stack, speech_clips, nonspeech_clips) -> None:
    for clip in speech_clips[::25]:
        body = httpx.post(f"{stack.proxy_url}/detect", content=wav_bytes(clip.path), headers=WAV).json()
        assert body["speech"] is True, clip.name
        assert body["detector"] == "silero" and body["regions"]
    false_positives = []
    for clip in nonspeech_clips:
        body = httpx.post(f"{stack.proxy_url}/detect", content=wav_bytes(clip.path), headers=WAV).json()
        if body["speech"]:
            false_positives.append(clip.name)
    assert false_positives == []


def test_detector_whisper_tiny_is_selectable(stack: Stack, librivox, nonspeech_clips) -> None:
    speech = httpx.post(
        f"{stack.tiny_url}/detect?detector=whisper-tiny", content=wav_bytes(librivox[0].path), headers=WAV, timeout=30
    ).json()
    assert speech["speech"] is True and speech["detector"] == "whisper-tiny"
    silence = next(c for c in nonspeech_clips if c.name == "silence-digital")
    quiet = httpx.post(
        f"{stack.tiny_url}/detect?detector=whisper-tiny", content=wav_bytes(silence.path), headers=WAV, timeout=30
    ).json()
    assert quiet["speech"] is False
    bad = httpx.post(f"{stack.tiny_url}/detect?detector=nope", content=wav_bytes(silence.path), headers=WAV)
    assert bad.status_code == 400 and "silero" in bad.json()["error"]["message"]


def test_base_writes_nothing_for_non_speech(stack: Stack, nonspeech_clips) -> None:
    texts = {}
    for clip in [c for c in nonspeech_clips if c.kind in ("silence", "noise", "music")][::3]:
        body = httpx.post(
            f"{stack.base_url}/transcribe-chunk?vad=true", content=wav_bytes(clip.path), headers=WAV, timeout=60
        ).json()
        texts[clip.name] = body["text"]
    assert all(text == "" for text in texts.values()), texts


def test_openai_compatible_endpoint_formats(stack: Stack, librivox) -> None:
    audio = wav_bytes(librivox[1].path)
    url = f"{stack.proxy_url}/v1/audio/transcriptions"
    files = {"file": ("clip.wav", audio, "audio/wav")}
    as_json = httpx.post(url, files=files, data={"model": "whisper-1"}, timeout=60)
    assert as_json.status_code == 200 and wer(librivox[1].text, as_json.json()["text"]) < 0.2
    text = httpx.post(url, files=files, data={"response_format": "text"}, timeout=60)
    assert text.headers["content-type"].startswith("text/plain") and "ill" in text.text.lower()
    assert text.headers["x-stt-model"] == "base"  # a plain-text transcript still says its model
    srt = httpx.post(url, files=files, data={"response_format": "srt"}, timeout=60).text
    assert srt.startswith("1\n00:00:") and " --> " in srt
    vtt = httpx.post(url, files=files, data={"response_format": "vtt"}, timeout=60).text
    assert vtt.startswith("WEBVTT") and " --> " in vtt
    verbose = httpx.post(
        url,
        files=files,
        data={"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"], "language": "en"},
        timeout=60,
    ).json()
    assert verbose["language"] == "en" and verbose["duration"] > 1
    assert verbose["words"] and verbose["segments"]


def test_long_file_is_cut_at_pauses_and_batched(stack: Stack, speech_clips) -> None:
    clips = [c for c in speech_clips if c.name.startswith("librivox")] + speech_clips[:6]
    pause = np.zeros(8000, np.float32)
    audio = np.concatenate([np.concatenate([c.samples(), pause]) for c in clips])
    assert audio.size / 16000 > 40  # longer than one Whisper window
    r = httpx.post(
        f"{stack.base_url}/v1/audio/transcriptions",
        files={"file": ("long.wav", to_wav_bytes(audio), "audio/wav")},
        data={"response_format": "verbose_json", "language": "en"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert wer(" ".join(c.text for c in clips), body["text"]) < 0.2
    assert body["segments"][-1]["end"] > 35  # times are absolute in the file


BAD_INPUTS = {
    "empty": (b"", "audio/wav", 400),
    "not audio": (b"hello, this is plain text and not audio at all" * 10, "text/plain", 415),
    "json": (b'{"audio": "nope"}', "application/json", 415),
    "raw pcm at 44.1 kHz": (b"\x00\x01" * 4410, "audio/pcm;rate=44100", 400),
    "raw pcm cut mid-sample": (b"\x00\x01" * 100 + b"\x00", "audio/pcm;rate=16000", 400),
}


@pytest.mark.parametrize("endpoint", ["proxy:/transcribe", "proxy:/detect", "base:/transcribe-chunk", "tiny:/detect"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_4xx_and_the_service_stays_ready(stack: Stack, librivox, endpoint, case) -> None:
    service, path = endpoint.split(":")
    data, content_type, status = BAD_INPUTS[case]
    r = httpx.post(f"{stack.url(service)}{path}", content=data, headers={"content-type": content_type}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] and len(error["message"]) > 20
    assert_all_ready(stack)


def test_truncated_long_and_oversized_uploads(stack: Stack, librivox) -> None:
    audio = wav_bytes(librivox[0].path)
    cut = httpx.post(f"{stack.proxy_url}/transcribe", content=audio[: len(audio) // 2], headers=WAV)
    assert cut.status_code == 400 and cut.json()["error"]["code"] == "truncated_audio"
    too_long = to_wav_bytes(np.zeros(16000 * 31, np.float32))
    r = httpx.post(f"{stack.proxy_url}/transcribe", content=too_long, headers=WAV)
    assert r.status_code == 413 and "/v1/audio/transcriptions" in r.json()["error"]["message"]
    huge = b"\x00" * (51 * 1024 * 1024)
    r = httpx.post(f"{stack.proxy_url}/transcribe", content=huge, headers=WAV, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"
    no_file = httpx.post(f"{stack.proxy_url}/v1/audio/transcriptions", data={"model": "x"})
    assert no_file.status_code == 400
    bad_lang = httpx.post(f"{stack.proxy_url}/transcribe?language=klingon", content=audio, headers=WAV)
    assert bad_lang.status_code == 400 and bad_lang.json()["error"]["code"] == "unknown_language"
    bad_query = httpx.post(f"{stack.proxy_url}/transcribe?word_timestamps=maybe", content=audio, headers=WAV)
    assert bad_query.status_code == 422 and "word_timestamps" in bad_query.json()["error"]["message"]
    assert_all_ready(stack)


def test_gpu_toggle_needs_the_admin_token(stack: Stack) -> None:
    url = f"{stack.proxy_url}/gpu-toggle"
    assert httpx.post(url, json={"mode": "gpu"}).status_code == 401
    assert httpx.post(url, json={"mode": "gpu"}, headers={"Authorization": "Bearer wrong"}).status_code == 403
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    malformed = httpx.post(url, content=b'{"mode": ', headers=auth)
    assert malformed.status_code == 400 and "mode" in malformed.json()["error"]["message"]
    assert httpx.post(url, json={"mode": "turbo"}, headers=auth).status_code == 400
    assert httpx.get(f"{stack.proxy_url}/gpu-status").json()["mode"] == "cpu"  # nothing above changed it
    flipped = httpx.post(url, headers=auth)
    assert flipped.status_code == 200 and flipped.json()["mode"] == "gpu"
    back = httpx.post(url, json={"mode": "cpu"}, headers=auth)
    assert back.json()["mode"] == "cpu"


def test_gpu_routing_falls_back_to_cpu_and_returns(stack: Stack, librivox) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    audio = wav_bytes(librivox[1].path)
    assert httpx.post(f"{stack.proxy_url}/gpu-toggle", json={"mode": "gpu"}, headers=auth).status_code == 200
    try:
        r = httpx.post(f"{stack.proxy_url}/transcribe", content=audio, headers=WAV, timeout=60)
        assert r.status_code == 200
        assert r.headers["x-stt-backend"] == "cpu" and "gpu" in r.headers["x-stt-fallback"]
        status = httpx.get(f"{stack.proxy_url}/gpu-status").json()
        assert status["active_backend"] == "cpu" and status["fallback_reason"] == "gpu backend not ready"

        stack.start("gpu")  # a base asked for CUDA on a machine without it
        deadline = time.monotonic() + 10
        while not httpx.get(f"{stack.proxy_url}/gpu-status").json()["backends"]["gpu"]["ready"]:
            assert time.monotonic() < deadline, "proxy never saw the GPU backend become ready"
            time.sleep(0.2)
        r = httpx.post(f"{stack.proxy_url}/transcribe", content=audio, headers=WAV, timeout=60)
        body = r.json()
        assert r.headers["x-stt-backend"] == "gpu" and "x-stt-fallback" not in r.headers
        assert body["requested_device"] == "cuda" and body["device"] == "cpu"  # honest about the missing GPU
        assert "CUDA" in body["device_fallback_reason"]
        gpu_metrics = httpx.get(f"{stack.url('gpu')}/metrics").text
        assert "stt_cuda_fallback 1.0" in gpu_metrics

        before = httpx.get(f"{stack.proxy_url}/metrics").text
        stack.stop("gpu")  # the GPU side dies: the very next request must still succeed, on CPU
        r = httpx.post(f"{stack.proxy_url}/transcribe", content=audio, headers=WAV, timeout=60)
        assert r.status_code == 200 and r.headers["x-stt-backend"] == "cpu"
        after = httpx.get(f"{stack.proxy_url}/metrics").text
        # Whether the health check or the request itself noticed first, it is one more fallback.
        reasons = ("gpu backend not ready", "gpu backend unreachable")
        assert sum(metric(after, "stt_proxy_fallbacks_total", reason=x) for x in reasons) == 1 + sum(
            metric(before, "stt_proxy_fallbacks_total", reason=x) for x in reasons
        )
        assert metric(after, "stt_proxy_routed_total", backend="gpu", mode="gpu") >= 1
    finally:
        httpx.post(f"{stack.proxy_url}/gpu-toggle", json={"mode": "cpu"}, headers=auth)
        stack.stop("gpu")


def test_no_backend_at_all_is_a_503_with_retry_after(tmp_path) -> None:
    ports = dict(zip(("proxy", "base", "tiny"), free_ports(3), strict=True))
    lonely = Stack(ports=ports, run_dir=tmp_path)
    lonely.start("proxy")
    try:
        r = httpx.post(f"{lonely.proxy_url}/transcribe", content=b"RIFF", headers=WAV)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert "no transcription backend" in r.json()["error"]["message"]
        assert httpx.post(f"{lonely.proxy_url}/detect", content=b"x").status_code == 503
        assert httpx.post(f"{lonely.proxy_url}/gpu-toggle").status_code == 503  # no admin token configured
    finally:
        lonely.down()


def test_readyz_is_503_until_the_model_is_loaded(tmp_path, librivox) -> None:
    # A fresh cache copy without the verification marker: start-up re-hashes 145 MB, then loads.
    cache = tmp_path / "models"
    shutil.copytree(provision("base"), cache / "base", ignore=shutil.ignore_patterns(".verified"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "services.base.app:app", "--port", str(port), "--no-access-log"],
        env={**__import__("os").environ, "STT_MODEL_CACHE": str(cache)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    seen_503 = seen_200 = False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen_200:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            except httpx.HTTPError:
                time.sleep(0.02)
                continue
            if r.status_code == 503:
                seen_503 = True
                assert "loading" in r.json()["error"]["message"]
                early = httpx.post(
                    f"http://127.0.0.1:{port}/transcribe-chunk", content=wav_bytes(librivox[0].path), headers=WAV
                )
                assert early.status_code in (200, 503)  # never a crash, never a hang
            seen_200 = r.status_code == 200
            time.sleep(0.02)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)
    assert seen_503 and seen_200


@pytest.mark.parametrize(
    ("app", "env"),
    [
        ("services.base.app:app", {"STT_MODEL": "/nonexistent/whisper-model"}),
        ("services.tiny.app:app", {"STT_TINY_MODEL": "/nonexistent/whisper-model"}),
    ],
    ids=["base", "tiny"],
)
def test_a_model_that_fails_to_load_ends_the_process(app: str, env: dict[str, str]) -> None:
    """Kubernetes can only show (and back off) a crash loop if the process ends: a pod that
    stays alive and never ready looks healthy to every restart counter."""
    from services.common.app import LOAD_FAILED_EXIT

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--no-access-log"],
        env={**__import__("os").environ, "STT_LOG_FORMAT": "text", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{app} kept running after its model failed to load:\n{out.decode()[-2000:]}")
    assert proc.returncode == LOAD_FAILED_EXIT, out.decode()[-2000:]
    assert b"loading failed" in out


def test_metrics_count_what_happened(stack: Stack, librivox) -> None:
    httpx.post(f"{stack.proxy_url}/transcribe", content=wav_bytes(librivox[2].path), headers=WAV, timeout=60)
    proxy = httpx.get(f"{stack.proxy_url}/metrics").text
    base = httpx.get(f"{stack.base_url}/metrics").text
    tiny = httpx.get(f"{stack.tiny_url}/metrics").text
    assert metric(proxy, "stt_http_requests_total", code="200", route="/transcribe", service="proxy") >= 1
    assert metric(proxy, "stt_proxy_backend_ready", backend="cpu") == 1
    assert "stt_audio_transcribed_seconds_total" in base and "stt_batch_size_count" in base
    assert 'stt_device_info{compute_type="int8",device="cpu",model="base",requested="cpu"} 1.0' in base
    assert metric(tiny, "stt_detector_decisions_total", detector="silero", outcome="speech") >= 1
    assert metric(tiny, "stt_detector_decisions_total", detector="silero", outcome="no_speech") >= 1
    assert 'stt_ready{service="tiny"} 1.0' in tiny


@pytest.mark.slow
def test_a_service_whose_port_was_taken_meanwhile_starts_on_another(tmp_path: Path) -> None:
    """free_port() only knows the port is free when it looks: one taken before the service binds
    it (a fresh-machine run lost the proxy's port to another socket) costs a retry, not the run."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(ports={"tiny": port}, run_dir=tmp_path)
        try:
            stack.start("tiny", timeout=60)
            assert stack.ports["tiny"] != port
            assert httpx.get(f"{stack.tiny_url}/readyz", timeout=5).status_code == 200
            assert "address already in use" in (tmp_path / "tiny.log").read_text()
        finally:
            stack.stop("tiny")
