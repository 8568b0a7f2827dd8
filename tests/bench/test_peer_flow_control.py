"""The peer's stream keeps within ``max_ahead_s`` of what the peer has transcribed (issue 11: at
real-time pace on 2 cores WhisperLive fell behind and threw away a third of the file), and the
report sets its runs beside the session's.

The server here speaks WhisperLive's WebSocket protocol (options, SERVER_READY, float32 blocks,
END_OF_AUDIO; segments marked ``completed``) and completes audio at half real-time speed, as
the real one does on a slow machine. The real one runs in ``make bench``."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import websockets

from bench import peer, report
from bench.data import Item

SEGMENT = 8_000  # the server completes audio in segments of 0.5 s (samples at 16 kHz)
SPEED = 0.5  # audio seconds it completes per wall second
AHEAD_S = 0.75  # the flow-controlled stream's bound


async def _serve_slowly(backlogs: list[float]) -> tuple[websockets.Server, int]:
    """A server that completes audio at ``SPEED`` times real time; for every block it receives it
    records how far the audio received is ahead of the segments it has completed."""

    async def handle(ws) -> None:
        json.loads(await ws.recv())
        await ws.send(json.dumps({"message": "SERVER_READY"}))
        received = [0]  # samples, counted exactly
        completed: list[dict] = []

        async def complete() -> None:
            while True:
                await asyncio.sleep(SEGMENT / 16_000 / SPEED)
                done = len(completed) * SEGMENT
                if received[0] - done >= SEGMENT:
                    start, end = done / 16_000, (done + SEGMENT) / 16_000
                    completed.append({"start": start, "end": end, "text": f"w{len(completed)}"})
                    segments = [{**s, "completed": True} for s in completed]
                    await ws.send(json.dumps({"segments": segments}))

        worker = asyncio.create_task(complete())
        try:
            async for message in ws:
                if message == b"END_OF_AUDIO":
                    continue
                received[0] += len(message) // 4
                backlogs.append((received[0] - len(completed) * SEGMENT) / 16_000)
        finally:
            worker.cancel()

    server = await websockets.serve(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _stream(seconds: float, max_ahead_s: float | None) -> tuple[dict, list[float]]:
    async def go() -> tuple[dict, list[float]]:
        backlogs: list[float] = []
        server, port = await _serve_slowly(backlogs)
        try:
            out = await peer._stream(port, np.zeros(round(seconds * 16_000), np.float32), max_ahead_s)
        finally:
            server.close()
            await server.wait_closed()
        return out, backlogs

    return asyncio.run(go())


@pytest.mark.slow  # real time: a few seconds of audio each
def test_flow_control_keeps_the_stream_within_reach_of_the_completed_text() -> None:
    out, backlogs = _stream(2.0, max_ahead_s=AHEAD_S)
    # A block goes out only while the audio it ends is at most AHEAD_S past the completed text.
    assert max(backlogs) <= AHEAD_S + 1e-6
    assert out["pace"] < 0.8  # the stream slowed down to the server's speed
    assert out["segments"] == 4  # and nothing was lost: 2 s in four 0.5 s segments
    assert out["stalls"] == 0  # its text kept moving, so no block went out past the bound


@pytest.mark.slow
def test_at_real_time_pace_the_slow_server_falls_behind() -> None:
    """Without flow control the same server ends up further behind than the bound above: the
    first test's bound is what flow control does, not what this server does anyway."""
    out, backlogs = _stream(2.0, max_ahead_s=None)
    assert max(backlogs) > AHEAD_S + 0.3
    assert out["pace"] > 0.9


def test_held_back_only_past_the_bound() -> None:
    assert not peer.held_back(10.0, 0.0, None)  # real-time pace: never held
    assert not peer.held_back(10.0, 0.0, 10.0)
    assert peer.held_back(10.1, 0.0, 10.0)
    assert not peer.held_back(20.0, 12.0, 10.0)


def _run(status: str, wer: float, text: str = "") -> dict:
    return {"status": status, "wer": wer, "cpu_s_per_audio_s": 1.9, "latency_ms": {}, "text": text, "stalls": 0}


def test_the_design_run_shown_is_a_whole_transcript_or_none() -> None:
    flow = {"flow_controlled": {"max_ahead_s": 10.0, "files": {"design": _run("measured", 0.02)}}}
    assert report.peer_design_run({**_run("measured", 0.04), **flow})[1] == "real-time pace"
    run, how = report.peer_design_run({**_run("incomplete", 0.3), **flow})
    assert (how, run["wer"]) == ("flow-controlled", 0.02)
    broken = {"flow_controlled": {"files": {"design": _run("incomplete", 0.5)}}}
    assert report.peer_design_run({**_run("incomplete", 0.3), **broken}) == ({}, "")


def test_the_peer_is_compared_with_the_session_on_the_same_files_per_category() -> None:
    items = [
        Item("read-0", np.zeros(1), "a b c d"),
        Item("cont-0", np.zeros(1), "press the pound key", category="continuous"),
        Item("es-0", np.zeros(1), "pulse la tecla", language="es", category="other-languages"),
    ]
    files = {
        "design": _run("measured", 0.05),
        "cont-0": _run("measured", 0.25, "press the pound"),
        "es-0": _run("measured", 0.0, "pulse la tecla"),
    }
    results = {
        "peer": {"flow_controlled": {"files": files}},
        "designs": {"session": {"wer": 0.02, "cpu_s_per_audio_s": 0.2}},
        "streamed": {"_texts": ["a b c d", "press the pound key", "pulse la"]},
        "offline": {"_texts": ["a b c d", "press a pound key", "pulse la tecla"]},
    }
    compared = peer.compared(results, items, "design")
    assert compared["design"]["cpu_ratio"] == 9.5  # 1.9 against 0.2
    assert list(compared["categories"]) == ["continuous", "other-languages"]  # only what the peer streamed
    wers = {
        c: [pooled[f"{p}_wer"] for p in ("peer", "session", "offline")] for c, pooled in compared["categories"].items()
    }
    assert wers == {"continuous": [0.25, 0.0, 0.25], "other-languages": [0.0, 0.3333, 0.0]}
    lines = report.peer_markdown(
        {"name": "WhisperLive", **_run("incomplete", 0.3), **results["peer"], "compared": compared}
    )
    assert any(
        line.startswith("- continuous (cont-0;") and "session 0.00%, peer 25.00%, offline 25.00%" in line
        for line in lines
    )
    assert any(line.startswith("- other-languages (es-0;") and "session 33.33%, peer 0.00%" in line for line in lines)
    assert peer.compared({"peer": {}}, items, "design") == {}


def test_the_peer_streams_every_continuous_recording_and_the_longest_per_category_and_language() -> None:
    def item(name: str, seconds: float, category: str, language: str = "en") -> Item:
        return Item(name, np.zeros(int(seconds * 16_000), np.float32), "x", language=language, category=category)

    items = [
        item("cont-short", 5, "continuous"),
        item("cont-long", 70, "continuous"),
        item("read-long", 19, "read"),  # under LONG_S: a prompt, not a recording to stream
        item("spont", 30, "spontaneous"),
        item("es-a", 25, "other-languages", "es"),
        item("es-b", 31, "other-languages", "es"),
        item("fr-a", 22, "other-languages", "fr"),
    ]
    assert [i.name for i in peer.long_recordings(items)] == ["cont-short", "cont-long", "spont", "es-b", "fr-a"]
