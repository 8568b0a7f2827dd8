"""The model store a cluster's transcriber pods share (``modelStore`` in the chart): pinned
models fetched once, verified file by file, named only when whole. A directory holding the real
tiny.en conversion stands in for the hub (this machine reaches none); the hub path differs only
in the download call (huggingface_hub's ``snapshot_download`` at the pinned revision)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.common import models
from services.common.models import KNOWN_MODELS, CacheEntry, ModelError, cache_model

TINY = KNOWN_MODELS["tiny.en"].sha256


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A stand-in for the hub: the real, provisioned tiny.en files plus one the entry does not list."""
    directory = tmp_path_factory.mktemp("hub") / "faster-whisper-tiny.en"
    shutil.copytree(models.provision("tiny.en"), directory, ignore=shutil.ignore_patterns(models.MARKER))
    (directory / "README.md").write_text("not part of the model\n")
    return directory


def entry(hub: Path, **changes) -> CacheEntry:
    return CacheEntry.from_dict({"name": "tiny-en", "source": f"file://{hub}", "sha256": TINY, **changes})


def test_a_model_is_fetched_once_verified_and_loads(hub: Path, tmp_path: Path, monkeypatch) -> None:
    store = tmp_path / "store"
    target = cache_model(entry(hub), store)
    assert target == store / "tiny-en"
    assert {p.name for p in target.iterdir()} - {models.MARKER} == set(TINY)  # README.md not fetched
    assert [p.name for p in store.iterdir()] == ["tiny-en"]  # no staging left behind

    def no_fetch(*_: object) -> None:
        raise AssertionError("an intact model must not be fetched again")

    monkeypatch.setattr(models, "_fetch", no_fetch)
    assert cache_model(entry(hub), store) == target
    # what the transcriber will do with spec.models: /models/tiny-en
    from faster_whisper import WhisperModel

    assert models.resolve_model(str(target)) == str(target)
    WhisperModel(str(target), device="cpu", compute_type="int8", cpu_threads=1)


def test_a_tampered_source_is_refused_and_leaves_nothing(hub: Path, tmp_path: Path) -> None:
    bad = dict(TINY, **{"config.json": "0" * 64})
    store = tmp_path / "store"
    with pytest.raises(ModelError, match=r"sha256 of config\.json"):
        cache_model(entry(hub, sha256=bad), store)
    assert list(store.iterdir()) == []


def test_a_damaged_copy_in_the_store_is_fetched_again(hub: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    target = cache_model(entry(hub), store)
    (target / models.MARKER).unlink()
    with (target / "vocabulary.txt").open("a") as fh:
        fh.write("tampered\n")
    assert cache_model(entry(hub), store) == target
    assert models.sha256_of(target / "vocabulary.txt") == TINY["vocabulary.txt"]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"name": "../x", "source": "file:///m", "sha256": TINY}, "name='../x'"),
        ({"name": "m", "source": "https://example.com/m", "sha256": TINY}, "use hf://"),
        ({"name": "m", "source": "hf://Systran/faster-whisper-small", "sha256": TINY}, "use hf://"),  # no revision
        ({"name": "m", "source": "file:///m", "sha256": {"model.bin": "abc"}}, "64-hex"),
        ({"name": "m", "source": "file:///m", "sha256": {"sub/model.bin": "0" * 64}}, "64-hex"),
        ({"name": "m", "source": "file:///m", "sha256": {"model.bin": "0" * 64}}, "lacks config.json"),
    ],
)
def test_store_entries_are_checked_before_anything_is_fetched(raw: dict, says: str) -> None:
    with pytest.raises(ModelError) as err:
        CacheEntry.from_dict(raw)
    assert says in str(err.value)


def test_the_command_the_chart_runs(hub: Path, tmp_path: Path) -> None:
    spec = json.dumps([{"name": "tiny-en", "source": f"file://{hub}", "sha256": TINY}])
    cmd = [sys.executable, "-m", "services.common.models", "store", "--into", str(tmp_path), "--spec", spec]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(tmp_path / "tiny-en")
    bad = subprocess.run([*cmd[:-1], "[{}]"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.startswith("error: model store entry name=None")
