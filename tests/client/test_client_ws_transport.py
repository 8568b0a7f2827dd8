"""``--transport ws`` against a scripted in-process ``/v1/stream`` (a small ``websockets`` server).

The fake proxy commits the real word timings of ``data/words-40s.json`` as the audio covering
them arrives, and reports ``keep_from_sample`` / ``settled_sample`` the way the real session
does, so the client's bookkeeping (what audio it keeps, where it resumes, which words it
keeps at a seam) can be checked exactly; it can also die mid-stream, refuse with a retry
hint, or go quiet. The real proxy is exercised in ``test_client_ws.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Response

from client import spill
from client.api import SttApi, Word
from client.cli import build_parser, resolve, ws_settings
from client.cli import main as cli_main
from client.dispatcher import Backoff
from client.display import Display
from client.pipeline import Recovery, Settings
from client.sources import ArraySource
from client.spill import SpillRun, find_leftovers
from client.stats import Stats
from client.stitcher import join_words
from client.ws_transport import AudioLog, WsFatalError, WsSettings, WsTransport, stream_url

SR = 16_000
WORDS = [Word(**w) for w in json.loads((Path(__file__).parent / "data" / "words-40s.json").read_text())]
# A ramp, so every sample says where in the stream it belongs.
AUDIO = ((np.arange(SR * 40) % 20_000) - 10_000).astype(np.float32) / 32768.0
PCM = np.clip(np.round(AUDIO * 32767.0), -32768, 32767).astype(np.int16)
FAST = Backoff(first_s=0.02, max_s=0.1)


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch) -> Path:
    """Runs keep their unacknowledged audio under $XDG_STATE_HOME: a directory per test, not ~."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


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
    of non-speech). ``mute_after_s``: commit (acknowledge) nothing once that much stream audio
    has arrived (a backend that stopped answering). ``echo_seam``: a resumed session commits the last word before
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
        mute_after_s: float | None = None,
    ) -> None:
        self.lag_s = lag_s
        self.mute_after_s = mute_after_s
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
                muted = self.mute_after_s is not None and received > self.mute_after_s * SR
                if received - last_step < SR or self.silent or muted:
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


def segment_files(root: Path) -> list[Path]:
    return sorted(root.rglob("audio-at-*.npy"))


async def test_audio_log_keeps_everything_until_released_and_reads_back_from_disk(tmp_path: Path) -> None:
    log = AudioLog(max_in_memory=3 * 1600, store=SpillRun(tmp_path))
    for i in range(10):
        log.append(PCM[i * 1600 : (i + 1) * 1600])
    assert (log.in_memory, segment_files(tmp_path)) == (16_000, [])  # append never touches the disk
    await log.persist()
    assert [p.name for p in segment_files(tmp_path)] == ["audio-at-000000000000.npy"]
    assert (log.start, log.end, log.in_memory, log.spilled) == (0, 16_000, 0, 16_000)  # past memory: disk only
    log.append(PCM[16_000:17_600])  # not written yet: in memory
    assert np.array_equal(log.read(1000, 17_000), PCM[1000:17_000])  # across disk and memory
    log.release(6000, settled=7000)
    assert log.start == 6000 and len(segment_files(tmp_path)) == 1  # partly needed still
    with pytest.raises(ValueError):
        log.read(5999, 7000)  # released: the server said it will never ask for it
    await log.persist()
    assert [p.name for p in segment_files(tmp_path)] == ["audio-at-000000000000.npy", "audio-at-000000016000.npy"]
    assert json.loads((log.store.path / "ws.json").read_text()) == {"settled_sample": 7000}
    assert np.array_equal(log.read(6000, 17_600), PCM[6000:17_600])
    log.release(16_000)
    await log.persist()
    assert [p.name for p in segment_files(tmp_path)] == ["audio-at-000000016000.npy"]  # released: deleted
    log.release(17_600)
    await log.aclose()
    assert segment_files(tmp_path) == []
    assert log.store.release() == 0 and list(tmp_path.iterdir()) == []  # nothing left behind


@pytest.mark.parametrize("seed", range(8))
async def test_audio_log_stays_exact_while_appends_releases_and_writes_interleave(tmp_path: Path, seed: int) -> None:
    """Random appends, releases (also while a batch is being written) and overlapping persist()
    calls: every read returns the stream, the files on disk hold exactly the kept audio, contiguous,
    and releasing everything leaves nothing. (Seed 2 once hung a persist() waiting on a finished write.)"""
    rng = np.random.default_rng(seed)
    log = AudioLog(int(rng.choice([0, 5000, 50_000])), SpillRun(tmp_path))
    tasks = []
    for _ in range(150):
        op = rng.random()
        if op < 0.5 and log.end < PCM.size:
            log.append(PCM[log.end : log.end + int(rng.integers(1, 3000))])
        elif op < 0.7:
            at = int(rng.integers(log.start, log.end + 1))
            log.release(at, at)
        elif op < 0.85:
            tasks.append(asyncio.create_task(log.persist()))
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0.001)
        b = int(rng.integers(log.start, log.end + 1))
        c = int(rng.integers(b, log.end + 1))
        assert np.array_equal(log.read(b, c), PCM[b:c])
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    await asyncio.wait_for(log.aclose(), 10)
    files = {int(p.name[len("audio-at-") : -len(".npy")]): np.load(p) for p in segment_files(tmp_path)}
    if len(log):
        covered = min(files)
        assert covered <= log.start
        for start in sorted(files):
            assert start == covered and np.array_equal(files[start], PCM[start : start + files[start].size])
            covered += files[start].size
        assert covered == log.end
    log.release(log.end)
    await asyncio.wait_for(log.aclose(), 10)
    assert segment_files(tmp_path) == [] and log.store.release() == 0


async def test_a_full_disk_keeps_the_audio_in_memory_with_one_warning(monkeypatch, caplog) -> None:
    """Capture goes on when the spill files cannot be written: the audio stays in memory (and is
    sent as usual), every failed write is counted, and the person is told once, not per write;
    once the disk takes writes again the audio held in memory is written after all."""

    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spill, "_save", disk_full)
    t = WsTransport(ArraySource(AUDIO[: SR * 3]), ["http://127.0.0.1:1"], settings(max_in_memory_s=0.5), Stats())
    with caplog.at_level(logging.WARNING, logger="client.ws_transport"):
        await t._produce()
        for _ in range(3):
            t.audio._retry_at = 0.0  # no back-off between the attempts here
            await t.audio.persist()
    assert t.audio.end == SR * 3 and t.audio.spilled == 0
    assert np.array_equal(t.audio.read(0, SR * 3), PCM[: SR * 3])  # every sample kept, in memory
    assert t.stats.spill_failures == t.audio.spill_failures == 3
    warnings = [r for r in caplog.records if "cannot spill" in r.getMessage()]
    assert len(warnings) == 1 and "No space left" in warnings[0].getMessage()
    monkeypatch.undo()
    await t.audio.persist(force=True)
    assert t.audio.spill_writes == 1 and t.audio.in_memory == 0  # on disk now (past max_in_memory: only there)
    assert np.array_equal(t.audio.read(0, SR * 3), PCM[: SR * 3])
    t.audio.release(t.audio.end)
    await t.audio.aclose()
    t._spill_run.release()


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


async def test_stop_waits_for_the_end_of_the_session_but_not_forever(state_home: Path) -> None:
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
    # ... and what was not waits on disk for the next run, from where the log began.
    assert t.stats.chunks_left_on_disk >= 1
    first, end = on_disk(state_home)
    assert first <= t.audio.start and end == t.audio.end


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
        (["--beam-size", "6"], "--beam-size must be between 1 (greedy) and 5"),
        (["--transport", "http", "--beam-size", "3"], "--beam-size needs --transport ws"),
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


def test_the_beam_size_is_asked_of_the_session_only_when_it_is_not_greedy() -> None:
    parsed = build_parser().parse_args(["--beam-size", "5", "--file", "x.wav"])
    assert resolve(parsed) is None
    assert ws_settings(parsed).query(0, None)["beam_size"] == "5"
    assert "beam_size" not in WsSettings().query(0, None)  # an older proxy never sees the option


# ---------------------------------------------------------------------------------------------
# Killed: the unacknowledged audio is on disk and the next run transcribes it

REPO = Path(__file__).resolve().parents[2]


async def start_client(*args: str) -> asyncio.subprocess.Process:
    """The real ``stt-client`` in a child process (stdin a pipe: a live source)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "client",
        "--quiet",
        *args,
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def on_disk(root: Path) -> tuple[int, int] | None:
    """(first, end) stream sample of the audio in a run's segment files under ``root``, or None."""
    files = segment_files(root)
    if not files:
        return None
    with contextlib.suppress(OSError, ValueError):  # one being renamed or deleted right now
        starts = [int(p.name[len("audio-at-") : -len(".npy")]) for p in files]
        return starts[0], starts[-1] + np.load(files[-1]).size
    return None


async def wait_for(check, timeout: float = 60.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while (value := check()) is None or value is False:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return value


@pytest.mark.slow
async def test_a_killed_ws_client_leaves_its_unacknowledged_audio_and_the_next_run_transcribes_it(
    tmp_path: Path,
) -> None:
    """``kill -9`` while the server has acknowledged only the first seconds: the rest is in the run's
    spill directory; the next run (``--recover only``) sends exactly that audio again, from where
    the killed run's log began and with its ``committed_until``, prints the words under the
    recovered header, and leaves nothing behind."""
    spill_dir, captured = tmp_path / "spill", 20 * SR
    async with FakeProxy(mute_after_s=8.0) as proxy:
        first = await start_client("--transport", "ws", "--stdin", "--url", proxy.url, "--spill-dir", str(spill_dir))
        try:
            first.stdin.write(PCM[:captured].tobytes())
            await first.stdin.drain()  # and keep stdin open: still capturing when killed

            # Once the whole 20 s and the last acknowledgement are on disk (a persist_s behind at most).
            def persisted() -> bool:
                acks = [e for e in proxy.sessions[0].sent if e["type"] == "transcript.committed"]
                state = [json.loads(p.read_text()) for p in spill_dir.glob("run-*/ws.json")]
                return (on_disk(spill_dir) or (0, 0))[1] == captured and state == [
                    {"settled_sample": acks[-1]["settled_sample"]}
                ]

            await wait_for(persisted, what="the audio on disk")
            first.kill()
            await first.wait()
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
    acks = [e for e in proxy.sessions[0].sent if e["type"] == "transcript.committed"]
    assert acks and proxy.sessions[0].audio.size == captured  # acknowledged the first seconds only
    released = min(acks[-1]["keep_from_sample"], acks[-1]["settled_sample"])
    settled = acks[-1]["settled_sample"]
    first_sample, end = on_disk(spill_dir)
    assert released - SR <= first_sample <= released and end == captured  # kept: from its log's start (1 s files)
    run_dir = next(spill_dir.iterdir())
    assert json.loads((run_dir / "ws.json").read_text()) == {"settled_sample": settled}
    assert json.loads((run_dir / "run.json").read_text())["source"] == "stdin"

    async with FakeProxy() as proxy:
        second = await start_client(
            "--recover", "only", "--transport", "ws", "--url", proxy.url, "--spill-dir", str(spill_dir)
        )
        stdout, stderr = await asyncio.wait_for(second.communicate(), 120)
    assert second.returncode == 0, stderr.decode()
    replay = proxy.sessions[0]
    assert (replay.resume_from, replay.committed_until) == (first_sample, settled)
    assert np.array_equal(replay.audio, PCM[first_sample:captured])  # every unacknowledged sample, once
    lost = [w for w in WORDS if w.mid > settled / SR and w.end <= captured / SR + 0.01]
    out = stdout.decode()
    assert "-- recovered from an interrupted run (stdin, started " in out, out
    assert f"[recovered {lost[0].start:.1f}-{lost[-1].end:.1f} s] {join_words(lost)}" in out, out
    assert "0 dropped, 0 left on disk" in out
    assert list(spill_dir.iterdir()) == []  # acknowledged: nothing is replayed twice


@pytest.mark.slow
async def test_a_ws_run_that_ends_normally_leaves_nothing_on_disk(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    async with FakeProxy() as proxy:
        proc = await start_client("--transport", "ws", "--stdin", "--url", proxy.url, "--spill-dir", str(spill_dir))
        proc.stdin.write(PCM[: 12 * SR].tobytes())
        await proc.stdin.drain()
        await wait_for(lambda: on_disk(spill_dir), what="audio on disk")  # it was written while held
        proc.stdin.close()  # the end of the input: the run finishes
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == join_words([w for w in WORDS if w.end <= 12.01])
    assert list(spill_dir.iterdir()) == []


def killed_ws_run(root: Path, pieces: list[tuple[int, int]], settled: int | None) -> Path:
    """The spill directory a ws run killed now would leave: ``pieces`` (start, end) of PCM written
    as segment files, ``settled`` recorded, its lock gone with the process."""
    run = SpillRun(root, {"source": "microphone test", "transport": "ws", "language": "en"})
    for start, end in pieces:
        run.write_segment(start, PCM[start:end])
    if settled is not None:
        run.write_state({"settled_sample": settled})
    run.release()  # what the kernel does for a killed process: the lock goes, the files stay
    assert run.path is not None
    return run.path


async def test_a_replayed_ws_run_fills_gaps_with_silence_and_counts_a_damaged_file(tmp_path: Path) -> None:
    """Audio that never reached the disk (a failed write) is a gap: silence keeps the stream's
    times; a file that cannot be read is dropped with reason damaged_spill; the rest is sent."""
    run_dir = killed_ws_run(tmp_path, [(2 * SR, 5 * SR), (7 * SR, 9 * SR), (9 * SR, 12 * SR)], settled=3 * SR)
    damaged = run_dir / "audio-at-000000144000.npy"
    damaged.write_bytes(damaged.read_bytes()[:60])  # truncated inside its header
    stats = Stats()
    async with FakeProxy() as proxy:
        recovery = Recovery(SttApi(proxy.url), Settings(), stats, root=tmp_path, urls=[proxy.url], ws=settings())
        [r] = await asyncio.wait_for(recovery.run(), 20)
    replay = proxy.sessions[0]
    assert (replay.resume_from, replay.committed_until) == (2 * SR, 3 * SR)
    expected = np.concatenate([PCM[2 * SR : 5 * SR], np.zeros(2 * SR, np.int16), PCM[7 * SR : 9 * SR]])
    assert np.array_equal(replay.audio, expected)
    assert (r.chunks, r.transcribed, r.dropped, r.left) == (3, 2, 1, 0)
    assert stats.drop_reasons == {"damaged_spill": 1} and stats.chunks_recovered == 2
    assert texts(r.words) == texts([w for w in WORDS if w.mid > 3.0 and w.end <= 9.01])
    assert list(tmp_path.iterdir()) == []


async def test_a_ws_replay_that_cannot_finish_leaves_the_unacknowledged_files(tmp_path: Path) -> None:
    """The service acknowledges part of the replayed audio, then nothing (Ctrl-C): the
    acknowledged files go, the rest stays for the run after."""
    killed_ws_run(tmp_path, [(s * SR, (s + 1) * SR) for s in range(20)], settled=None)
    async with FakeProxy(mute_after_s=10.0, answer_stop=False) as proxy:
        recovery = Recovery(SttApi(proxy.url), Settings(), Stats(), root=tmp_path, urls=[proxy.url], ws=settings())
        task = asyncio.create_task(recovery.run())
        await wait_for(lambda: proxy.sessions and proxy.sessions[0].audio.size >= 16 * SR, 20, "the replay")
        await asyncio.sleep(1.5)  # a persist_s: the files of acknowledged audio are deleted
        recovery.stop()
        [r] = await asyncio.wait_for(task, 20)
    acks = [e for e in proxy.sessions[0].sent if e["type"] == "transcript.committed"]
    kept_from = min(acks[-1]["keep_from_sample"], acks[-1]["settled_sample"])
    first, end = on_disk(tmp_path)
    assert first == kept_from // SR * SR and end == 20 * SR
    assert r.left == 20 - first // SR and r.transcribed == first // SR and r.left + r.transcribed == 20
    later = find_leftovers(tmp_path)
    assert later[0].settled == acks[-1]["settled_sample"]  # the next replay does not commit those words again
    later[0].release()
