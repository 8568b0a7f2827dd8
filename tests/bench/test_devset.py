"""The dev set's held-out split, its loader and its refusal of unverified downloads (fast: no
network, no corpus; downloads are faked where the client would run)."""

import importlib
import json
import subprocess
from pathlib import Path

import pytest

import corpus.devset as devset
from corpus.fetch import ChecksumError, in_split, is_held_out, sha256_of, verify_sha256

fetch = importlib.import_module("corpus.fetch")  # the module (``corpus.fetch`` the attribute is the function)


def test_held_out_split_is_deterministic_and_about_a_third() -> None:
    names = [f"clip-{i}" for i in range(3000)]
    first = [is_held_out(n) for n in names]
    assert first == [is_held_out(n) for n in names]
    assert 0.30 < sum(first) / len(first) < 0.37
    # Pinned: a change of the hash scheme would silently move clips between the sides.
    pinned = {"ami-tst00": False, "c2-hts": True, "silero-aepyx": False, "ps-cards-002": True, "ps-cards-001": False}
    assert {name: is_held_out(name) for name in pinned} == pinned


def test_in_split_picks_dev_held_out_or_both() -> None:
    assert in_split(False, "dev") and not in_split(True, "dev")
    assert in_split(True, "held-out") and not in_split(False, "held-out")
    assert in_split(True, "all") and in_split(False, "all")
    with pytest.raises(ValueError):
        in_split(True, "test")


def test_verify_sha256_refuses_a_corrupted_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 40)
    good = sha256_of(path)
    verify_sha256(path, good)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="refusing"):
        verify_sha256(path, good)


def _fake_download(payload: bytes, calls: list):
    """Stands in for `apt-get download` / `pip download`: writes a file where they would."""

    def run(cmd, *args, cwd=None, **kwargs):
        calls.append(cmd)
        if cmd[0] == "apt-get":
            for pin in cmd[2:]:
                name, version = pin.split("=")
                (Path(cwd) / f"{name}_{version}_all.deb").write_bytes(payload)
        elif "pip" in cmd:
            dest = Path(cmd[cmd.index("--dest") + 1])
            (dest / "pkg-1.0.tar.gz").write_bytes(payload)
        else:
            raise AssertionError(f"unexpected command {cmd}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run


def test_apt_download_refuses_a_package_whose_sha256_differs(tmp_path: Path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(fetch.subprocess, "run", _fake_download(b"not the pinned package", calls))
    tree = tmp_path / "debs"
    with pytest.raises(ChecksumError):
        fetch.apt_download({"some-package": ("1.0-1", "0" * 64)}, tree)
    assert calls and calls[0][:2] == ["apt-get", "download"]
    assert not (tree / ".complete").exists()  # nothing is marked usable
    assert not any(p.is_file() for p in tree.rglob("*"))  # and nothing was unpacked


def test_pip_sdist_refuses_an_archive_whose_sha256_differs(tmp_path: Path, monkeypatch) -> None:
    calls: list = []
    monkeypatch.setattr(devset.subprocess, "run", _fake_download(b"tampered sdist", calls))
    spec = devset.Sdist("1.0", "0" * 64, ("tests/data/",))
    with pytest.raises(ChecksumError):
        devset.pip_sdist("pkg", spec, tmp_path)
    assert "--no-deps" in calls[0] and "pkg==1.0" in calls[0]
    assert not list(tmp_path.rglob(".*complete"))  # nothing is marked usable
    assert not list(tmp_path.rglob("*.wav"))  # and nothing was unpacked


def _fake_manifest(root: Path) -> None:
    clips = []
    for i, (category, held) in enumerate(
        [("read", False), ("read", True), ("telephone", False), ("spontaneous", True), ("quiet", False)]
    ):
        clips.append(
            {
                "name": f"c{i}",
                "path": str(root / f"c{i}.wav"),
                "text": "" if category == "spontaneous" else "hello",
                "kind": "speech",
                "category": category,
                "language": "en",
                "held_out": held,
                "split_key": f"c{i}",
                "condition": "clean",
                "source": "test",
                "speech": [[0.1, 0.9]],
                "timing": "energy",
                "seconds": 1.0,
            }
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"version": devset.VERSION, "clips": clips}))


def test_dev_set_loader_returns_dev_held_out_or_both(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STT_CORPUS_CACHE", str(tmp_path))
    _fake_manifest(tmp_path / "dev")
    dev = devset.dev_set()  # the default: only what may be tuned on
    held = devset.dev_set("held-out")
    both = devset.dev_set("all")
    assert [c.name for c in dev] == ["c0", "c2", "c4"]
    assert [c.name for c in held] == ["c1", "c3"]
    assert sorted(c.name for c in both) == sorted(c.name for c in dev + held)
    assert all(not c.held_out for c in dev) and all(c.held_out for c in held)
    assert [c.name for c in devset.dev_set("all", ("read",))] == ["c0", "c1"]
    spont = devset.dev_set("held-out", ("spontaneous",))[0]
    assert spont.speech == ((0.1, 0.9),) and not spont.has_reference
    with pytest.raises(ValueError):
        devset.dev_set("train")


def test_recipe_is_consistent() -> None:
    names = [r.name for r in devset.RECORDINGS]
    assert len(names) == len(set(names))
    assert {r.category for r in devset.RECORDINGS} <= set(devset.CATEGORIES)
    timing = devset.load_timing()
    for rec in devset.RECORDINGS:
        if rec.timing == "whisper-base":  # committed timing, pinned to the file it was made on
            assert len(timing[rec.name]["sha256"]) == 64 and timing[rec.name]["regions"], rec.name
        if rec.pool:
            assert rec.text and rec.language == "en", rec.name
    for spec in (*devset.SDISTS.values(), *(devset.Sdist(v, s, ()) for v, s in devset.DEBS.values())):
        assert len(spec.sha256) == 64 and "=" not in spec.version
