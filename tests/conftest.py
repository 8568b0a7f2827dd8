"""Shared fixtures: the real local stack (uvicorn processes on free ports) and real speech."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.local_stack import Stack, free_ports

ADMIN_TOKEN = "test-admin-token"
# stt-client replays chunks that a killed run left in $XDG_STATE_HOME/stt-client/spill: every
# client the tests start (in process or as a subprocess) gets a fresh, empty state directory,
# so no test replays another's leftovers, nor the leftovers of the person running the tests.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="stt-tests-state-")
atexit.register(shutil.rmtree, os.environ["XDG_STATE_HOME"], True)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """tiny, base (CPU) and proxy, started once per session.

    The proxy knows a GPU backend URL (``stack.ports["gpu"]``) that nothing listens on until a
    test calls ``stack.start("gpu")``, so fallback and routing are exercised for real.
    """
    ports = dict(zip(("tiny", "base", "gpu", "proxy"), free_ports(4), strict=True))
    env = {"STT_ADMIN_TOKEN": ADMIN_TOKEN, "STT_LOG_FORMAT": "json", "STT_BATCH_WINDOW_MS": "20"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("STT_MODEL_CACHE")})
    run_dir = tmp_path_factory.mktemp("stack")
    s = Stack(ports=ports, env=env, run_dir=run_dir)
    try:
        s.up()
        yield s
    finally:
        s.down()


@pytest.fixture(scope="session")
def speech_clips():
    from corpus import speech_clips as load

    return load()


@pytest.fixture(scope="session")
def nonspeech_clips():
    from corpus import nonspeech_clips as load

    return load()


@pytest.fixture(scope="session")
def dev_clips():
    """The dev split of the dev set by name (corpus/devset.py), built on first use."""
    from corpus.devset import dev_set

    try:
        return {c.name: c for c in dev_set("dev")}
    except Exception as exc:  # offline and never built: nothing to measure
        pytest.skip(f"dev set unavailable: {exc}")


@pytest.fixture(scope="session")
def librivox(speech_clips):
    """Five read sentences by a LibriVox speaker (a different voice from the Asterisk prompts)."""
    return [c for c in speech_clips if c.name.startswith("librivox")]


def wav_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()
