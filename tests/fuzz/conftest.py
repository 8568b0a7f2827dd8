"""The ``fuzz`` fixture (one property's budget and counters) and the figures printed at the end.

In the long profile (``make fuzz``) the ``FUZZ_SECONDS`` budget is shared out as the properties
start: each gets what is left divided by the number of properties still to run, so time a quick
property does not use goes to the ones after it, and the run ends close to the budget.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import av
import pytest

from tests.fuzz.harness import CALL_BOUND_S, FUZZ_SECONDS, PROFILE, SLOW_DIR, SLOW_S, FuzzRun, OpenLog, Stats

_RUNS: dict[str, Stats] = {}
_STATE: dict[str, float | int] = {"pending": 0, "started": 0.0}
_FAILED: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    # After -k/-m deselection: only the properties that will run share the budget.
    _STATE["pending"] = sum("fuzz" in getattr(item, "fixturenames", ()) for item in session.items)


@pytest.fixture
def fuzz(request: pytest.FixtureRequest) -> Iterator[FuzzRun]:
    deadline = None
    if PROFILE == "long":
        now = time.monotonic()
        if not _STATE["started"]:
            _STATE["started"] = now
        left = FUZZ_SECONDS - (now - _STATE["started"])
        deadline = now + max(left, 0.0) / max(int(_STATE["pending"]), 1)
    run = FuzzRun(request.node.nodeid, deadline)
    _RUNS[request.node.nodeid] = run.stats
    start = time.monotonic()
    try:
        yield run
    finally:
        run.stats.seconds = time.monotonic() - start
        _STATE["pending"] = int(_STATE["pending"]) - 1


@pytest.fixture
def ffmpeg_opens(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenLog]:
    """Every ``av.open`` call as (format, container_options): what FFmpeg was told to be."""
    calls: OpenLog = []
    real_open: Callable[..., Any] = av.open

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs.get("format"), kwargs.get("container_options")))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    yield calls


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and report.nodeid in _RUNS and report.nodeid not in _FAILED:
        _FAILED.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _RUNS:
        return
    tried = sum(s.tried for s in _RUNS.values())
    seconds = sum(s.seconds for s in _RUNS.values())
    slowest = max(s.slowest_call_s for s in _RUNS.values())
    write = terminalreporter.write_line
    terminalreporter.section(f"fuzz ({PROFILE} profile)")
    if PROFILE == "long":
        for nodeid, s in _RUNS.items():
            write(f"  {s.tried:8d} inputs  {s.seconds:7.1f} s  slowest call {s.slowest_call_s:5.2f} s  {nodeid}")
    answers = sum((s.answers for s in _RUNS.values()), Counter())
    if PROFILE == "long" and answers:
        write(
            "  answers (decode_audio, or read_upload as upload ...): "
            + ", ".join(f"{code} {n}" for code, n in answers.most_common())
        )
    write(
        f"fuzz: {tried} inputs tried by {len(_RUNS)} properties in {seconds:.1f} s; "
        f"failing properties: {len(_FAILED)}; slowest call {slowest:.2f} s (bound {CALL_BOUND_S:g} s)"
    )
    slow = sum(s.slow for s in _RUNS.values())
    if slow:
        write(f"  {slow} decodes took over {SLOW_S:g} s (under the bound, but a hang starts so): see {SLOW_DIR}")
    for nodeid in _FAILED:
        write(f"  FAILED {nodeid}")
