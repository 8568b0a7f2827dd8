"""``--transport ws`` against a scripted in-process ``/v1/stream`` (a small ``websockets`` server).

The fake proxy commits the real word timings of ``data/words-40s.json`` as the audio covering
them arrives, and reports ``keep_from_sample`` / ``settled_sample`` the way the real session
does, so the client's bookkeeping (what audio it keeps, where it resumes, which words it
keeps at a seam) can be checked exactly; it can also die mid-stream, refuse with a retry
hint, or go quiet. The real proxy is exercised in ``test_client_ws.py``.
"""

from __future__ import annotations

import asyncio
import errno
import io
import itertools
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from client.api import Word
from client.cli import build_parser, resolve
from client.cli import main as cli_main
from client.dispatcher import Backoff
from client.display import Display
from client.sources import ArraySource
from client.stats import Stats
from client.ws_transport import AudioLog, WsFatalError, WsSettings, WsTransport, stream_url

SR = 16_000
WORDS = [Word(**w) for w in json.loads((Path(__file__).parent / "data" / "words-40s.json").read_text())]
# A ramp, so every sample says where in the stream it belongs.
AUDIO = ((np.arange(SR * 40) % 20_000) - 10_000).astype(np.float32) / 32768.0
PCM = np.clip(np.round(AUDIO * 32767.0), -32768, 32767).astype(np.int16)
FAST = Backoff(first_s=0.02, max_s=0.1)


def texts(words: list[Word]) -> list[str]:
    return [w.text for w in words]


def settings(**kwargs) -> WsSettings:
    base = {"backoff": FAST, "max_ahead_s": 6.0, "open_timeout_s": 2.0, "finish_timeout_s": 3.0}
    return WsSettings(**{**base, **kwargs})


@dataclass
class FakeSession:
    query: dict[str, str]
    resume_from: int
    committed_until: int | None
    received: list[np.ndarray] = field(default_factory=list)
    sent: list[dict] = field(default_factory=list)
    stopped: bool = False
    keep_from: int = 0  # the last keep_from_sample sent
    most_ahead: int = 0  # the most audio received beyond it

    @property
    def audio(self) -> np.ndarray:
        return np.concatenate(self.received) if self.received else np.zeros(0, np.int16)


class FakeProxy:
    """A scripted ``/v1/stream``.

    ``die_at_s``: the first session's connection is cut (no close frame, as a killed pod) once
    that much stream audio has arrived. ``refuse``: that many connections are refused with a
    ``session_cap`` error carrying ``retry_after_s`` and close 1013. ``http_refuse``: that many
    upgrades are answered with HTTP 503 and ``Retry-After``. ``silent``: never commit (a stream
    of non-speech). ``echo_seam``: a resumed session commits the last word before
    ``committed_until`` again, moved just past it (Whisper moving a word between decodes).
    """

    def __init__(
        self,
        *,
        lag_s: float = 1.5,
        die_at_s: float | None = None,
        refuse: int = 0,
        retry_after_s: float = 0.3,
        http_refuse: int = 0,
        http_retry_after: str | None = "0.3",
        silent: bool = False,
        echo_seam: bool = False,
        answer_stop: bool = True,
        close_code: int | None = None,
    ) -> None:
        self.lag_s = lag_s
        self.die_at_s = die_at_s
        self.refuse = refuse
        self.retry_after_s = retry_after_s
        self.http_refuse = http_refuse
        self.http_retry_after = http_retry_after
        self.silent = silent
        self.echo_seam = echo_seam
        self.answer_stop = answer_stop
        self.close_code = close_code
        self.sessions: list[FakeSession] = []
        self.attempts: list[float] = []  # monotonic time of every connection attempt
        self.url = ""
        self._server = None

    async def __aenter__(self) -> FakeProxy:
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._process_request)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _process_request(self, connection: ServerConnection, request) -> Response | None:
        self.attempts.append(time.monotonic())
        if self.http_refuse > 0:
            self.http_refuse -= 1
            headers = Headers({"Retry-After": self.http_retry_after} if self.http_retry_after else {})
            return Response(503, "Service Unavailable", headers, b"busy\n")
        return None

    async def _send(self, ws: ServerConnection, session: FakeSession, event: dict) -> None:
        session.sent.append(event)
        await ws.send(json.dumps(event))

    async def _handle(self, ws: ServerConnection) -> None:
        if self.refuse > 0:
            self.refuse -= 1
            await ws.send(
                json.dumps(
                    {
                        "type": "error",
                        "code": "session_cap",
                        "message": "full",
                        "retryable": True,
                        "retry_after_s": self.retry_after_s,
                    }
                )
            )
            await ws.close(1013, "session cap reached")
            return
        query = {k: v[0] for k, v in parse_qs(urlsplit(ws.request.path).query).items()}
        resume_from = int(query["resume_from"])
        committed_until = int(query["committed_until"]) if "committed_until" in query else None
        session = FakeSession(query, resume_from, committed_until, keep_from=resume_from)
        self.sessions.append(session)
        if self.close_code is not None:
            await self._send(ws, session, {"type": "error", "code": "bad_option", "message": "no", "retryable": False})
            await ws.close(self.close_code, "bad session options")
            return
        await self._send(ws, session, {"type": "session.started", "session_id": f"s{len(self.sessions)}"})
        received = resume_from
        done_mid = committed_until / SR if committed_until is not None else -1.0
        last_step = received
        first = True
        async for message in ws:
            if isinstance(message, bytes):
                samples = np.frombuffer(message, dtype="<i2")
                session.received.append(samples)
                received += samples.size
                session.most_ahead = max(session.most_ahead, received - session.keep_from)
                if self.die_at_s is not None and len(self.sessions) == 1 and received >= self.die_at_s * SR:
                    ws.transport.abort()  # SIGKILL: no close frame
                    return
                if received - last_step < SR or self.silent:
                    continue
                last_step = received
                horizon = received / SR - self.lag_s
                new = [w for w in WORDS if w.mid > done_mid and w.end <= horizon]
                if new and first and self.echo_seam and committed_until is not None:
                    before = [w for w in WORDS if w.mid <= done_mid]
                    if before:
                        w = before[-1]
                        shift = (committed_until / SR - w.mid) + 0.05
                        new = [Word(w.start + shift, w.end + shift, w.text, w.probability), *new]
                if new:
                    first = False
                    done_mid = new[-1].mid
                    settled = round(new[-1].end * SR)
                    session.keep_from = max(resume_from, settled - SR // 2)
                    await self._send(ws, session, committed(new, settled, session.keep_from))
                partial = [w for w in WORDS if w.mid > done_mid and w.end <= received / SR]
                await self._send(ws, session, {"type": "transcript.partial", "text": "", "words": wire(partial)})
                continue
            if json.loads(message).get("type") == "stop":
                session.stopped = True
                if not self.answer_stop:
                    continue
                rest = [w for w in WORDS if w.mid > done_mid and w.end <= received / SR + 0.01]
                if rest and not self.silent:
                    settled = round(rest[-1].end * SR)
                    await self._send(ws, session, committed(rest, settled, settled))
                await self._send(ws, session, {"type": "session.ended", "text": "", "settled_sample": received})
                await ws.close(1000, "done")
                return


def wire(words: list[Word]) -> list[dict]:
    return [{"start": w.start, "end": w.end, "text": w.text, "probability": w.probability} for w in words]


def committed(words: list[Word], settled: int, keep_from: int) -> dict:
    return {
        "type": "transcript.committed",
        "text": "".join(w.text for w in words),
        "words": wire(words),
        "forced": 0,
        "settled_sample": settled,
        "keep_from_sample": keep_from,
        "backend": "fake",
    }


def transport(urls: list[str], audio: np.ndarray = AUDIO, **kwargs) -> WsTransport:
    return WsTransport(ArraySource(audio), urls, settings(**kwargs), Stats())


# ---------------------------------------------------------------------------------------------
# Kept audio


def test_audio_log_keeps_everything_until_released_and_spills_past_memory(tmp_path: Path) -> None:
    log = AudioLog(max_in_memory=3 * 1600, spill_dir=tmp_path)
    for i in range(10):
        log.append(PCM[i * 1600 : (i + 1) * 1600])
    assert (log.start, log.end, log.in_memory, log.spilled) == (0, 16_000, 4800, 11_200)
    assert np.array_equal(log.read(1000, 12_000), PCM[1000:12_000])  # across memory and disk
    log.release(6000)
    assert (log.start, log.in_memory) == (6000, 0)
    assert np.array_equal(log.read(6000, 16_000), PCM[6000:16_000])
    with pytest.raises(ValueError):
        log.read(5999, 7000)  # released: the server said it will never ask for it
    log.append(PCM[16_000:17_600])  # memory is free again
    assert log.in_memory == 1600
    log.release(16_000)
    assert log._file_end == 0  # nothing on disk needed any more: the file was emptied
    assert np.array_equal(log.read(16_000, 17_600), PCM[16_000:17_600])
    log.close()


class FullDisk(io.BytesIO):
    """A spill file on a disk with no space left."""

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_disk_keeps_the_audio_in_memory_with_one_warning(monkeypatch, caplog) -> None:
    """Capture goes on when the spill file cannot be written: the audio stays in memory (and is
    sent as usual), every failed block is counted, and the person is told once, not per block."""
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *args, **kwargs: FullDisk())
    t = WsTransport(ArraySource(AUDIO[: SR * 3]), ["http://127.0.0.1:1"], settings(max_in_memory_s=0.5), Stats())
    with caplog.at_level(logging.WARNING, logger="client.ws_transport"):
        await t._produce()
    assert t.audio.end == SR * 3 and t.audio.spilled == 0
    assert np.array_equal(t.audio.read(0, SR * 3), PCM[: SR * 3])  # every sample kept, in memory
    assert t.stats.spill_failures == t.audio.spill_failures >= 20  # 2.5 s of 0.1 s blocks
    warnings = [r for r in caplog.records if "cannot spill" in r.getMessage()]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()
    t.audio.close()


def test_stream_url_accepts_the_http_urls_both_transports_take() -> None:
    assert stream_url("http://h:5001") == "ws://h:5001/v1/stream"
    assert stream_url("https://h/stt/") == "wss://h/stt/v1/stream"
    assert stream_url("ws://h:1/v1/stream") == "ws://h:1/v1/stream"
    with pytest.raises(ValueError):
        stream_url("h:5001")


async def test_acknowledged_audio_is_released_and_the_rest_kept() -> None:
    async with FakeProxy() as proxy:
        t = transport([proxy.url])
        checks: list[tuple[int, int]] = []

        def on_event(event: dict, at: float) -> None:
            if event["type"] == "transcript.committed":
                need = min(event["keep_from_sample"], event["settled_sample"])
                checks.append((t.audio.start, need))

        t.on_event = on_event
        words = await t.run()
    assert texts(words) == texts(WORDS)
    assert len(checks) > 10
    assert all(start == need for start, need in checks)  # released exactly up to what the server no longer needs
    session = proxy.sessions[0]
    assert session.resume_from == 0 and "committed_until" not in session.query
    assert np.array_equal(session.audio, PCM)  # every sample once, in order
    assert session.stopped and t.stats.sessions == 1 and t.stats.reconnects == 0
    assert t.sessions[0].outcome == "finished"
    # Held back by max_ahead_s: never more than that sent beyond what the server still needs.
    assert session.most_ahead <= 6 * SR


async def test_a_file_read_at_full_speed_shows_progress_and_speed_not_lag() -> None:
    stats = Stats()
    display = Display(stats, stream=io.StringIO(), tty=False, total_s=40.0, live=False)
    async with FakeProxy() as proxy:
        await WsTransport(ArraySource(AUDIO), [proxy.url], settings(), stats, display).run()
    assert display.status_line().startswith("[####################] 100% of 0:40 · ")
    display.close()
    out = display.stream.getvalue()
    assert "x real time" in out and "lag" not in out
    assert "-- done: 40.0 s of audio in " in out and "1 sessions" in out


# ---------------------------------------------------------------------------------------------
# Reconnecting


async def test_killed_proxy_resumes_on_the_next_url_from_the_last_acknowledgement() -> None:
    async with FakeProxy(die_at_s=14.0) as a, FakeProxy() as b:
        t = transport([a.url, b.url])
        handled: list[tuple[int, dict]] = []  # (which session, event) as the client handled them
        t.on_event = lambda event, at: handled.append((len(t.sessions), event))
        words = await t.run()
    assert len(a.sessions) == 1 and len(b.sessions) == 1
    ack = [e for n, e in handled if n == 1 and e["type"] == "transcript.committed"][-1]
    resumed = b.sessions[0]
    assert resumed.resume_from == min(ack["keep_from_sample"], ack["settled_sample"])
    assert resumed.committed_until == ack["settled_sample"]
    # The kept audio is sent again from resume_from, then the stream continues: nothing missing.
    assert np.array_equal(resumed.audio, PCM[resumed.resume_from :])
    assert texts(words) == texts(WORDS)  # no word doubled or missing across the seam
    assert [s.outcome for s in t.sessions] == ["dropped", "finished"]
    assert t.stats.reconnects == 1


async def test_a_word_heard_again_just_past_the_seam_is_not_doubled() -> None:
    async with FakeProxy(die_at_s=14.0) as a, FakeProxy(echo_seam=True) as b:
        t = transport([a.url, b.url])
        words = await t.run()
    assert texts(words) == texts(WORDS)
    assert t.stats.seam_duplicates == 1
    assert all(x.start <= y.start for x, y in itertools.pairwise(words))


async def test_internal_error_close_reconnects_to_the_same_single_url() -> None:
    async with FakeProxy(die_at_s=9.0) as a:
        t = transport([a.url])
        words = await t.run()
    assert len(a.sessions) == 2
    assert texts(words) == texts(WORDS)
    assert a.sessions[1].resume_from > 0


# ---------------------------------------------------------------------------------------------
# Backoff and retry hints


async def test_retry_hint_of_a_full_replica_is_honoured() -> None:
    async with FakeProxy(refuse=2, retry_after_s=0.3) as a:
        t = transport([a.url], audio=AUDIO[: SR * 5])
        words = await t.run()
    gaps = np.diff(a.attempts)
    assert len(a.attempts) == 3
    assert all(gap >= 0.3 for gap in gaps), gaps  # not the 0.02 s backoff: the server's 0.3 s hint
    assert texts(words) == texts([w for w in WORDS if w.end <= 5.0])


async def test_a_full_replica_sends_the_client_to_the_next_url_at_once() -> None:
    async with FakeProxy(refuse=1, retry_after_s=30.0) as a, FakeProxy() as b:
        t = transport([a.url, b.url], audio=AUDIO[: SR * 5])
        began = time.monotonic()
        await asyncio.wait_for(t.run(), 10)
    assert time.monotonic() - began < 5
    assert len(b.sessions) == 1 and b.sessions[0].resume_from == 0


async def test_refused_upgrades_back_off_exponentially_and_honour_retry_after() -> None:
    # 503 on the upgrade with Retry-After: 0.3 three times, then accepted.
    async with FakeProxy(http_refuse=3) as a:
        t = transport([a.url], audio=AUDIO[: SR * 3], backoff=Backoff(first_s=0.05, max_s=1.0, jitter=0.0))
        await t.run()
    gaps = np.diff(a.attempts)
    assert len(a.attempts) == 4
    assert all(gap >= 0.3 for gap in gaps), gaps


async def test_backoff_grows_and_is_capped_without_hints() -> None:
    async with FakeProxy(http_refuse=5, http_retry_after=None) as a:
        t = transport([a.url], audio=AUDIO[: SR * 3], backoff=Backoff(first_s=0.05, max_s=0.2, jitter=0.0))
        await asyncio.wait_for(t.run(), 10)
    gaps = np.diff(a.attempts)
    assert len(gaps) == 5
    # 0.05 doubling, capped at 0.2 (no jitter); the slack is for a loaded machine.
    assert all(lo <= g < lo + 0.15 for g, lo in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2], strict=True)), gaps
    assert t.sessions[-1].outcome == "finished"


async def test_connection_refused_goes_to_the_next_url() -> None:
    async with FakeProxy() as b:
        dead = "http://127.0.0.1:9"  # the discard port: nothing listens
        t = transport([dead, b.url], audio=AUDIO[: SR * 3])
        words = await asyncio.wait_for(t.run(), 10)
    assert [s.outcome for s in t.sessions] == ["connect_failed", "finished"]
    assert texts(words) == texts([w for w in WORDS if w.end <= 3.0])


async def test_a_refusal_that_cannot_change_is_not_retried() -> None:
    async with FakeProxy(close_code=1008) as a:
        t = transport([a.url], audio=AUDIO[: SR * 3])
        with pytest.raises(WsFatalError, match="bad_option"):
            await asyncio.wait_for(t.run(), 5)
    assert len(a.sessions) == 1


# ---------------------------------------------------------------------------------------------
# Silence, stop


async def test_silence_without_acknowledgements_rolls_over_instead_of_stalling() -> None:
    # The server hears no speech, so it never commits and never acknowledges: the client, held
    # back by max_ahead_s, ends the session (everything received is then final) and resumes.
    async with FakeProxy(silent=True) as a:
        t = transport([a.url], audio=AUDIO[: SR * 12], max_ahead_s=4.0, stall_s=0.2)
        await asyncio.wait_for(t.run(), 10)
    assert len(a.sessions) >= 3
    assert all(s.stopped for s in a.sessions)
    assert [s.outcome for s in t.sessions][-1] == "finished"
    for before, after in zip(a.sessions, a.sessions[1:], strict=False):
        end = before.resume_from + before.audio.size
        assert after.committed_until == end  # resumed where session.ended said everything was final
        assert after.resume_from == end - 2 * SR  # with context_s of audio before it
    assert max(s.audio.size for s in a.sessions) <= 6 * SR  # 4 s ahead + the 2 s context


async def test_stop_waits_for_the_end_of_the_session_but_not_forever() -> None:
    async with FakeProxy(answer_stop=False) as a:
        source = ArraySource(AUDIO, realtime=True)
        t = WsTransport(source, [a.url], settings(finish_timeout_s=0.5), Stats())
        task = asyncio.create_task(t.run())
        await asyncio.sleep(2.5)
        t.stop()
        began = time.monotonic()
        words = await asyncio.wait_for(task, 5)
    assert time.monotonic() - began < 2.0
    assert t.gave_up and t.unacknowledged_s > 0
    assert words and words[-1].end < 2.5  # what was committed is kept


async def test_stop_sends_the_rest_and_collects_the_last_words() -> None:
    async with FakeProxy() as a:
        source = ArraySource(AUDIO, realtime=True)
        t = WsTransport(source, [a.url], settings(), Stats())
        task = asyncio.create_task(t.run())
        await asyncio.sleep(2.5)
        t.stop()
        words = await asyncio.wait_for(task, 5)
    sent = a.sessions[0].audio.size
    assert a.sessions[0].stopped and not t.gave_up
    assert texts(words) == texts([w for w in WORDS if w.end <= sent / SR + 0.01])


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transport", "http", "--url", "http://a:1", "--url", "http://b:1"], "only with --transport ws"),
        (["--transport", "ws", "--policy", "stitch"], "--transport http"),
        (["--transport", "ws", "--url", "a:1"], "--url"),
        (["--transport", "ws", "--step", "0.5"], "--step"),
    ],
)
def test_cli_refuses_options_the_transport_cannot_use(args: list[str], message: str, capsys) -> None:
    assert cli_main([*args, "--file", "x.wav"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "transport"),
    [
        ([], "ws"),
        (["--policy", "agreement"], "http"),  # command lines written before ws keep their meaning
        (["--chunk", "4"], "http"),
        (["--transport", "ws", "--policy", "agreement"], "ws"),  # what the proxy does anyway
        (["--transport", "http"], "http"),
    ],
)
def test_cli_chooses_the_transport(args: list[str], transport: str) -> None:
    parsed = build_parser().parse_args([*args, "--file", "x.wav"])
    assert resolve(parsed) is None
    assert parsed.transport == transport
    assert parsed.policy in ("stitch", "agreement") and parsed.concurrency == 2  # defaults filled in
