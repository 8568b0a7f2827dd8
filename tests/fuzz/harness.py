"""The fuzzing harness's machinery: settings profiles, the time budget, bounded calls, fd snapshots.

Two profiles, chosen by ``FUZZ_PROFILE``:

``ci`` (the default, what ``make test`` and ``make test-fast`` run)
    every property runs once, with a small ``max_examples`` each (its explicit seeds always run
    too), so the whole fuzz suite stays a short, bounded part of the normal test run.
``long`` (``make fuzz``)
    every property runs batch after batch, each with fresh random inputs, until its share of
    ``FUZZ_SECONDS`` is spent. Hypothesis has no time limit of its own, so the budget is kept
    here: :meth:`FuzzRun.live` tells a property whether to test the input it was given; past the
    deadline it returns at once, so the batch in progress ends within milliseconds.

Hypothesis's ``deadline`` is off in both: on a loaded two-core CI machine its 200 ms default
flakes. Each property asserts its own, much looser bound per call instead (:data:`CALL_BOUND_S`),
which is what "no hangs" means here; a call that never returns at all (stuck in FFmpeg's C code,
where no Python timer fires) is caught by :func:`faulthandler.dump_traceback_later`, which dumps
every thread's stack and ends the process after :data:`HANG_S` — a failure no runner can miss.
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

from core.audio import (
    DEMUXERS,
    FFMPEG_GUARD,
    RAW_PCM_TYPES,
    SAMPLE_RATE,
    AudioError,
    AudioLimits,
    decode_audio,
    parse_content_type,
)

REPO = Path(__file__).resolve().parents[2]
PROFILE = os.environ.get("FUZZ_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"FUZZ_PROFILE must be 'ci' or 'long', not {PROFILE!r}")
# Seconds for the whole long run (make fuzz FUZZ_SECONDS=...), shared out among the properties.
FUZZ_SECONDS = float(os.environ.get("FUZZ_SECONDS", "600"))
# One call of the code under test (a decode, a parse) must end within this. Decoding the seeds
# takes milliseconds; 5 s leaves room for a loaded CI machine and still catches a socket wait
# (an SDP's RTP input waits ~20 s) or a loop that walks a huge declared size.
CALL_BOUND_S = float(os.environ.get("FUZZ_CALL_BOUND_S", "5"))
# A call still running after this is a hang: the process dumps its stacks and exits.
HANG_S = float(os.environ.get("FUZZ_HANG_S", "120"))
# Where that dump goes. Not stderr: pytest captures it into a file of its own, which is lost
# when the process exits from faulthandler's watchdog. Opened once, here, so that the per-call
# descriptor checks never see it appear. ``make fuzz`` prints it when the run fails.
HANG_LOG = REPO / ".cache" / "fuzz-hang.log"
HANG_LOG.parent.mkdir(parents=True, exist_ok=True)
_HANG_FILE = open(HANG_LOG, "w")  # noqa: SIM115 (open for the life of the process, by design)
_HANG_FILE.write(f"fuzz: a call still running after {HANG_S:g} s (FUZZ_HANG_S) ended the run; its stacks:\n")
_HANG_FILE.flush()

# Failing examples are kept (under .cache/, which git ignores) and replayed first on the next
# run, so a find survives until it is fixed. An absolute path: some properties chdir.
_DATABASE = DirectoryBasedExampleDatabase(str(REPO / ".cache" / "hypothesis"))
# The two profiles differ only in how many examples a call runs (fuzz_settings). Both set
# derandomize off explicitly: Hypothesis's own CI default turns it on, which would make every
# batch of a long run try the same inputs. A ci run thus tries new inputs each time; a find is
# a real bug, reproducible from the printed blob.
_COMMON = {
    "deadline": None,
    "derandomize": False,
    "database": _DATABASE,
    "print_blob": True,
    # Decoding is slower than Hypothesis expects of a property, and some seeds are a few KiB:
    # neither is a problem with the inputs, so these two health checks would only add noise.
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("fuzz-ci", **_COMMON)
settings.register_profile("fuzz-long", **_COMMON)


def fuzz_settings(ci_examples: int, batch: int = 200) -> settings:
    """Settings for one property: ``ci_examples`` inputs in the ci profile (sized so that the
    property takes a few seconds at most), ``batch`` per round in the long profile."""
    return settings(settings.get_profile(f"fuzz-{PROFILE}"), max_examples=ci_examples if PROFILE == "ci" else batch)


@dataclass
class Stats:
    """What one property did: the summary printed at the end of the session reads these."""

    tried: int = 0
    seconds: float = 0.0
    slowest_call_s: float = 0.0
    slow: int = 0  # decodes over SLOW_S, kept in SLOW_DIR
    answers: Counter[str] = field(default_factory=Counter)  # "audio", "upload form", or an error code


@dataclass
class FuzzRun:
    """One property's run: the deadline (long profile) and the count of inputs actually tested."""

    name: str
    deadline: float | None
    stats: Stats = field(default_factory=Stats)

    def live(self) -> bool:
        """Whether to test this input: False once the deadline has passed (long profile only)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            return False
        self.stats.tried += 1
        return True

    def run(self, prop: Callable[[], None]) -> None:
        """Run a ``@given`` property once (ci), or batch after batch until the deadline (long):
        each call of a ``@given`` function draws a fresh random seed."""
        prop()
        while self.deadline is not None and time.monotonic() < self.deadline:
            prop()

    @contextmanager
    def bounded(self, bound_s: float = CALL_BOUND_S) -> Iterator[None]:
        """Time the block; fail the example if it took over ``bound_s``, end the process if it
        never returns (see the module docstring)."""
        faulthandler.dump_traceback_later(HANG_S, exit=True, file=_HANG_FILE)
        start = time.monotonic()
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
            elapsed = time.monotonic() - start
            self.stats.slowest_call_s = max(self.stats.slowest_call_s, elapsed)
        assert elapsed <= bound_s, f"one call took {elapsed:.2f} s, over the bound of {bound_s} s"


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point at (``socket:[123]``, a path).

    Linux only (``/proc``); elsewhere empty, so the checks that use it pass vacuously. The
    descriptor ``os.listdir`` itself holds while listing is gone by the time it is read, so it
    is skipped.
    """
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return {}
    found = {}
    for name in os.listdir(fd_dir):
        try:
            found[int(name)] = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
    return found


def new_fds(before: dict[int, str], after: dict[int, str]) -> dict[int, str]:
    """Descriptors open after that were not open before (a new number, or a reused one)."""
    return {fd: target for fd, target in after.items() if before.get(fd) != target}


# A decode slower than this (a fifth of the bound) is kept for a look, though it passes: a
# slow input is where a hang would come from. Files: <sha256>.bin, and .txt with type and limit.
SLOW_S = CALL_BOUND_S / 5
SLOW_DIR = REPO / ".cache" / "fuzz-slow"


@contextmanager
def _kept_if_slow(
    stats: Stats, data: bytes, content_type: str | None, limits: AudioLimits, start: float
) -> Iterator[None]:
    try:
        yield
    finally:
        elapsed = time.monotonic() - start
        if elapsed > SLOW_S:
            stats.slow += 1
            SLOW_DIR.mkdir(parents=True, exist_ok=True)
            name = hashlib.sha256(data).hexdigest()[:16]
            (SLOW_DIR / f"{name}.bin").write_bytes(data)
            note = f"{elapsed:.2f} s, content_type={content_type!r}, max_seconds={limits.max_seconds}\n"
            (SLOW_DIR / f"{name}.txt").write_text(note)


# (demuxer, container_options) of every av.open call, logged by the ffmpeg_opens fixture.
OpenLog = list[tuple[Any, Any]]


def check_decode(
    fuzz: FuzzRun,
    opens: OpenLog,
    data: bytes,
    content_type: str | None,
    limits: AudioLimits,
    bound_s: float = CALL_BOUND_S,
) -> np.ndarray | AudioError:
    """Run ``decode_audio`` once and assert the whole invariant (see test_fuzz_audio.py); the
    samples, or the refusal. ``opens`` is the ``ffmpeg_opens`` fixture's log of ``av.open`` calls."""
    opens.clear()
    before = open_fds()
    start = time.monotonic()
    with fuzz.bounded(bound_s), _kept_if_slow(fuzz.stats, data, content_type, limits, start):
        try:
            samples: np.ndarray | AudioError = decode_audio(data, content_type, limits)
        except AudioError as err:
            assert 400 <= err.status < 500, (err.status, err.code)
            assert err.code and 20 < len(err.message) < 1_000, err.message
            # FFmpeg's own text (which can name files) is logged, never returned.
            assert "Errno" not in err.message and "No such file" not in err.message, err.message
            samples = err
    fuzz.stats.answers[samples.code if isinstance(samples, AudioError) else "audio"] += 1
    fuzz.stats.answers["(reached FFmpeg)"] += bool(opens)
    leaked = new_fds(before, open_fds())
    assert not leaked, f"descriptors left open: {leaked}"
    for demuxer, options in opens:
        assert demuxer in DEMUXERS and options == FFMPEG_GUARD, (demuxer, options)
        # and the guard is still a guard: no protocol at all, no demuxer but the accepted ones
        assert options["protocol_whitelist"] == "" and set(options["format_whitelist"].split(",")) <= set(DEMUXERS)
    if parse_content_type(content_type)[0] in RAW_PCM_TYPES:
        assert not opens, "raw PCM went to FFmpeg"
    if not isinstance(samples, AudioError):
        assert isinstance(samples, np.ndarray) and samples.dtype == np.float32 and samples.ndim == 1
        assert 0 < samples.size <= limits.max_seconds * SAMPLE_RATE, samples.size
        assert np.isfinite(samples).all(), "NaN or infinity in the samples"
        assert np.abs(samples).max() <= 1.0
    return samples
