"""The live view's status line: progress and speed for a file read at full speed, lag for live input."""

from __future__ import annotations

import asyncio
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from client import cli
from client.api import ChunkResult, Word
from client.display import Display, progress, speed
from client.pipeline import Pipeline, Settings
from client.sources import ArraySource, StdinSource, file_source
from client.stats import Stats
from core.audio import to_wav_bytes

WORDS = [Word(**w) for w in json.loads((Path(__file__).parent / "data" / "words-40s.json").read_text())]


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fast_file_display(total_s: float | None, clock: FakeClock, stats: Stats | None = None) -> Display:
    return Display(stats or Stats(), stream=io.StringIO(), tty=False, total_s=total_s, live=False, clock=clock)


# ---------------------------------------------------------------------------------------------
# Pieces


def test_speed_is_audio_seconds_per_wall_second() -> None:
    assert speed(79.0, 10.0) == pytest.approx(7.9)
    assert speed(5.0, 0.0) == 0.0  # no time has passed yet: no division by zero


def test_progress_with_and_without_a_known_length() -> None:
    assert progress(61, 145, 10) == "[########------------]  42% of 2:25 · 6.1x real time · ETA 0:13"
    assert progress(0, 145, 0).endswith("  0% of 2:25 · 0.0x real time · ETA ?")
    assert progress(200, 145, 10).startswith("[####################] 100% of 2:25")  # never past the end
    assert progress(61, None, 10) == "1:01 done · 6.1x real time"
    assert progress(61, 0, 10) == "1:01 done · 6.1x real time"


# ---------------------------------------------------------------------------------------------
# Status line


def test_fast_file_shows_progress_and_speed_not_lag() -> None:
    clock, stats = FakeClock(), Stats()
    display = fast_file_display(145.0, clock, stats)
    clock.now += 10.0
    stats.audio_captured_s, stats.audio_done_s, stats.lag_s, stats.chunks_held = 140.0, 61.0, 12.0, 30
    line = display.status_line()
    assert line.startswith("[########------------]  42% of 2:25 · 6.1x real time")
    assert "lag" not in line and "catching up" not in line and "dB" not in line
    clock.now += 10.0  # 20 s in, 2:01 done: faster
    stats.audio_done_s = 121.0
    assert "83% of 2:25 · 6.0x real time" in display.status_line()


def test_fast_file_of_unknown_length_shows_seconds_done_and_speed() -> None:
    clock, stats = FakeClock(), Stats()
    display = fast_file_display(None, clock, stats)
    clock.now += 4.0
    stats.audio_done_s = 30.0
    line = display.status_line()
    assert line == "0:30 done · 7.5x real time"
    assert "%" not in line


def test_fast_file_still_reports_an_outage() -> None:
    clock, stats = FakeClock(), Stats(sessions=1)
    display = fast_file_display(60.0, clock, stats)
    stats.backend_down, stats.audio_held_s = True, 42.0
    assert "service unreachable, holding 42s of audio" in display.status_line()


def test_ws_progress_never_goes_back() -> None:
    """ws sets audio_done_s from session.lag (processed) and from acknowledgements (settled, earlier)."""
    clock, stats = FakeClock(), Stats(sessions=1)
    display = fast_file_display(100.0, clock, stats)
    clock.now += 5.0
    stats.audio_done_s = 50.0
    assert " 50% of 1:40" in display.status_line()
    stats.audio_done_s = 35.0
    assert " 50% of 1:40 · 10.0x real time" in display.status_line()


@pytest.mark.parametrize("sessions", [0, 1])  # http, ws
def test_live_source_shows_level_lag_and_catching_up(sessions: int) -> None:
    clock, stats = FakeClock(), Stats(sessions=sessions)
    display = Display(stats, stream=io.StringIO(), tty=False, total_s=145.0, live=True, clock=clock)
    display.level = -30.0
    clock.now += 10.0
    stats.lag_s, stats.audio_captured_s, stats.audio_done_s, stats.chunks_held = 2.5, 60.0, 30.0, 5
    line = display.status_line()
    assert line.startswith("in █████·····   -30 dB | lag  2.5s")
    assert "catching up: 30s behind" in line
    assert "real time" not in line and "%" not in line


def test_without_live_given_a_known_length_means_a_fast_file() -> None:
    assert not Display(Stats(), stream=io.StringIO(), total_s=10.0).live
    assert Display(Stats(), stream=io.StringIO()).live


# ---------------------------------------------------------------------------------------------
# Summary line


@pytest.mark.parametrize("sessions", [0, 1])  # http, ws
def test_summary_states_the_speed_of_a_file(sessions: int) -> None:
    clock, stats = FakeClock(), Stats(sessions=sessions, audio_captured_s=145.0)
    display = fast_file_display(145.0, clock, stats)
    clock.now += 20.0
    stats.audio_done_s = 145.0
    display.close()
    out = display.stream.getvalue()
    assert "-- done: 145.0 s of audio in 20.0 s (7.2x real time), " in out
    assert ("1 sessions" in out) == bool(sessions) and ("chunks" in out) != bool(sessions)


def test_summary_of_live_input_has_no_speed() -> None:
    stats = Stats(sessions=1, audio_captured_s=30.0)
    display = Display(stats, stream=io.StringIO(), tty=False, live=True, clock=FakeClock())
    display.close()
    out = display.stream.getvalue()
    assert "-- done: 30.0 s of audio, 1 sessions" in out and "real time" not in out


# ---------------------------------------------------------------------------------------------
# Which sources are live


def test_sources_say_whether_they_are_live(tmp_path: Path) -> None:
    audio = np.zeros(16000 * 3, np.float32)
    assert not ArraySource(audio).live and ArraySource(audio, realtime=True).live
    path = tmp_path / "a.wav"
    path.write_bytes(to_wav_bytes(audio))
    assert not file_source(path).live and file_source(path, realtime=True).live
    assert file_source(path).duration_s == pytest.approx(3.0)
    assert StdinSource(io.BytesIO(b"\0" * 3200)).live  # a pipe: could be arecord
    assert StdinSource(io.BytesIO(b"\0" * 3200)).duration_s is None


def test_stdin_redirected_from_a_file_is_read_as_a_file(tmp_path: Path) -> None:
    path = tmp_path / "a.pcm"
    path.write_bytes(b"\0" * 32000 * 5)
    with path.open("rb") as f:
        f.read(32000)  # what is left counts
        source = StdinSource(f)
        assert not source.live and source.duration_s == pytest.approx(4.0)
    read, write = os.pipe()
    with os.fdopen(read, "rb") as r, os.fdopen(write, "wb"):
        source = StdinSource(r)
        assert source.live and source.duration_s is None


# ---------------------------------------------------------------------------------------------
# Through the transports


class Oracle:
    async def detect(self, samples: np.ndarray) -> bool:
        return True

    async def transcribe(self, samples, offset, language=None, prompt=None) -> ChunkResult:
        await asyncio.sleep(0)
        end = offset + samples.size / 16000
        return ChunkResult([w for w in WORDS if w.start >= offset and w.end <= end])

    async def aclose(self) -> None:
        pass


async def test_http_pipeline_feeds_progress() -> None:
    clock, stats = FakeClock(), Stats()
    display = fast_file_display(40.0, clock, stats)
    pipeline = Pipeline(ArraySource(np.full(16000 * 40, 0.01, np.float32)), Oracle(), Settings(), stats, display)
    clock.now += 8.0
    await pipeline.run()
    assert display.status_line().startswith("[####################] 100% of 0:40 · 5.0x real time")


def test_cli_file_run_shows_progress_and_speed(tmp_path: Path, monkeypatch, capsys) -> None:
    path = tmp_path / "talk.wav"
    path.write_bytes(to_wav_bytes(np.full(16000 * 40, 0.01, np.float32)))
    monkeypatch.setattr(cli, "SttApi", lambda url: Oracle())
    assert cli.main(["--transport", "http", "--file", str(path)]) == 0
    captured = capsys.readouterr()
    assert "The conference is now muted." in captured.out
    assert "of 0:40 · " in captured.err and "x real time" in captured.err
    assert "lag" not in captured.err
    assert "-- done: 40.0 s of audio in " in captured.err


def test_cli_realtime_file_is_live(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "talk.wav"
    path.write_bytes(to_wav_bytes(np.zeros(1600, np.float32)))
    seen: list[Display] = []
    real = cli.Display

    def spy(*args, **kwargs) -> Display:
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(cli, "Display", spy)
    monkeypatch.setattr(cli, "SttApi", lambda url: Oracle())
    assert cli.main(["--transport", "http", "--file", str(path), "--realtime", "--quiet"]) == 0
    assert cli.main(["--transport", "http", "--file", str(path), "--quiet"]) == 0
    assert [d.live for d in seen] == [True, False]
    assert seen[1].total_s == pytest.approx(0.1)
