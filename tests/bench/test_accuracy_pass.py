"""How many files the bench's accuracy pass keeps in flight per path (fast: no models, no processes)."""

import asyncio

import numpy as np
import pytest

from bench import accuracy
from bench.data import Item


def _most_in_flight(monkeypatch: pytest.MonkeyPatch, path: str) -> int:
    """Runs six items through ``path`` with the service call replaced by a short sleep, and
    returns the most calls that were in flight at once."""
    in_flight, most = [0], [0]

    async def call(*_args) -> str:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0.01)
        in_flight[0] -= 1
        return "words"

    monkeypatch.setattr(accuracy, "_session", call)
    monkeypatch.setattr(accuracy, "_whole_file", call)
    monkeypatch.setattr(accuracy, "_previous", call)
    items = [Item(f"clip-{i}", np.zeros(16_000, np.float32), "words") for i in range(6)]
    texts = asyncio.run(accuracy.transcribe(path, "http://unused", items, lambda: None))
    assert texts == ["words"] * 6
    return most[0]


def test_sessions_are_measured_one_at_a_time_so_no_window_waits_behind_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two at once made half the second session's windows wait past STT_LIVE_GREEDY_AFTER_WAIT_S,
    # so they were decoded greedily and the pass no longer measured the default.
    assert _most_in_flight(monkeypatch, "streamed") == 1


def test_whole_files_and_http_chunk_streams_keep_both_cores_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _most_in_flight(monkeypatch, "whole_file") == 2
    assert _most_in_flight(monkeypatch, "previous_default") == 2
