"""Download, verify and prepare the speech and non-speech corpora (see package docstring)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from core.audio import to_wav_bytes
from core.vocabulary import SAMPLE_RATE

# Pinned Debian bookworm packages and the sha256 of each .deb as downloaded.
PACKAGES: dict[str, tuple[str, str]] = {
    "asterisk-core-sounds-en-g722": ("1.6.1-1", "38c5261820b406dcb0ecb37675720da2b0864850690690352ca52707eb623806"),
    "asterisk-core-sounds-en": ("1.6.1-1", "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50"),
    "pocketsphinx-testdata": ("0.8+5prealpha+1-15", "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0"),
    "asterisk-moh-opsound-wav": ("2.03-1.1", "8f9d808a729d305c2d3343993f21ca5e6829e411682618dc8ea7aa8bc24a566c"),
    "sound-theme-freedesktop": ("0.8-2", "135cc4893ba590d428577bc3bf42df756a165c05a2a43f84311ad7db779a70ea"),
    "bucklespring-data": ("1.4.0-2", "2add9f5583b3afc9c0b528066f4578baff930b74d4a94c8a25d103ef79a444e5"),
}
ALLISON = "usr/share/asterisk/sounds/en_US_f_Allison"
PROMPTS_TXT = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
LIBRIVOX = "usr/share/pocketsphinx/test/data/librivox"


Split = Literal["dev", "held-out", "all"]
SPLITS: tuple[str, ...] = ("dev", "held-out", "all")


@dataclass(frozen=True)
class Clip:
    """One 16 kHz mono WAV file and, for speech, what is said in it.

    The fields after ``kind`` describe the dev set (:mod:`corpus.devset`); base-corpus clips
    leave them at their defaults except ``held_out``.
    """

    name: str
    path: Path
    text: str  # "" where no reference transcript exists (detector recall only)
    kind: str  # "speech" or the non-speech category (music, noise, tone, keys, silence, chime)
    category: str = ""  # read, continuous, spontaneous, telephone, noisy, quiet, other-languages
    language: str = "en"
    held_out: bool = False  # in the fixed held-out third that nobody tunes on
    condition: str = "clean"  # e.g. telephone-g711, gain-20db, snr5-music, real-8khz
    source: str = ""  # package, version and file it was made from
    speech: tuple[tuple[float, float], ...] = ()  # reference speech regions, seconds
    timing: str = ""  # where ``speech`` comes from: energy, rttm, whisper-base

    def samples(self) -> np.ndarray:
        return read_wav(self.path)

    @property
    def has_reference(self) -> bool:
        return bool(self.text)


def is_held_out(key: str) -> bool:
    """The fixed held-out split: a third of all keys (clip or source names), by sha256 of the name."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 3 == 0


def in_split(held_out: bool, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split == "all" or held_out == (split == "held-out")


class ChecksumError(RuntimeError):
    """A downloaded file does not hash to its pinned sha256: refuse to use it."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` hashes to ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumError(f"{Path(path).name}: sha256 {actual}, expected {expected}; refusing to use it")


def cache_dir() -> Path:
    return Path(os.environ.get("STT_CORPUS_CACHE", Path.home() / ".cache" / "stt-corpus"))


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        frames = wav.readframes(wav.getnframes())
    return np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_wav_bytes(samples))


def _decode(path: Path, fmt: str | None = None, rate: int | None = None) -> np.ndarray:
    options = {"sample_rate": str(rate)} if rate else {}
    with av.open(str(path), format=fmt, options=options) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pieces = [o.to_ndarray().reshape(-1) for f in container.decode(audio=0) for o in resampler.resample(f)]
        pieces += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _download(root: Path) -> Path:
    """apt-get download the pinned packages, verify sha256, unpack; return the unpacked tree."""
    return apt_download(PACKAGES, root / "debs")


def apt_download(packages: dict[str, tuple[str, str]], tree: Path) -> Path:
    """``apt-get download`` each ``name: (version, sha256)``, refuse any whose sha256 differs,
    unpack them all into ``tree`` (once: a ``.complete`` stamp marks a finished tree)."""
    stamp = tree / ".complete"
    if stamp.is_file():
        return tree
    tree.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pins = [f"{name}={ver}" for name, (ver, _) in packages.items()]
        result = subprocess.run(["apt-get", "download", *pins], cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"apt-get download failed (run `apt-get update` first?):\n{result.stderr.strip()}")
        debs = {name: next(Path(tmp).glob(f"{name}_*.deb")) for name in packages}
        for name, (_, expected) in packages.items():
            verify_sha256(debs[name], expected)
        for deb in debs.values():
            subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    stamp.write_text("ok")
    return tree


def _prompt_texts(tree: Path) -> dict[str, str]:
    texts = {}
    with gzip.open(tree / PROMPTS_TXT, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if ":" in line and not line.startswith(";"):
                name, text = line.split(":", 1)
                texts[name.strip()] = text.strip()
    return texts


def _is_clean_sentence(name: str, text: str) -> bool:
    """Multi-word prompts without stage directions ("[beep]"), notes or trailing ellipses."""
    if name.startswith("silence/") or any(mark in text for mark in ("[", "(", "...")):
        return False
    return len(text.split()) >= 3


def fetch() -> Path:
    """Prepare everything once; return the corpus directory holding ``manifest.json``."""
    root = cache_dir()
    manifest = root / "manifest.json"
    if manifest.is_file():
        return root
    tree = _download(root)
    clips: list[dict] = []
    texts = _prompt_texts(tree)
    for name in sorted(texts):
        src = tree / ALLISON / f"{name}.g722"
        if src.is_file() and _is_clean_sentence(name, texts[name]):
            out = root / "speech" / f"asterisk-{name}.wav"
            write_wav(out, _decode(src, fmt="g722", rate=SAMPLE_RATE))
            clips.append({"name": f"asterisk-{name}", "path": str(out), "text": texts[name], "kind": "speech"})
    for line in (tree / LIBRIVOX / "transcription").read_text().splitlines():
        match = re.match(r"<s>(.*)</s>\s*\((.+)\)", line.strip())
        if match:
            text, name = match.group(1).strip(), match.group(2)
            out = root / "speech" / f"librivox-{name}.wav"
            write_wav(out, _decode(tree / LIBRIVOX / f"{name}.wav"))
            clips.append({"name": f"librivox-{name}", "path": str(out), "text": text, "kind": "speech"})
    clips += _nonspeech(tree, root)
    manifest.write_text(json.dumps(clips, indent=1))
    return root


def _nonspeech(tree: Path, root: Path) -> list[dict]:
    out: list[dict] = []

    def add(name: str, samples: np.ndarray, kind: str) -> None:
        path = root / "nonspeech" / f"{name}.wav"
        write_wav(path, samples.astype(np.float32))
        out.append({"name": name, "path": str(path), "text": "", "kind": kind})

    for wav in sorted((tree / "usr/share/asterisk/moh").glob("*.wav")):
        music = _decode(wav)
        for i in range(4):  # four 8 s excerpts spread over each track
            start = int(len(music) * (i + 1) / 6)
            add(f"music-{wav.stem}-{i}", music[start : start + 8 * SAMPLE_RATE], "music")
    for oga in sorted((tree / "usr/share/sounds/freedesktop/stereo").glob("*.oga")):
        if oga.stem.startswith("audio-channel"):  # these say "front left" etc.: speech
            continue
        add(f"chime-{oga.stem}", _decode(oga), "chime")
    keys = sorted((tree / "usr/share/buckle/wav").glob("*.wav"))
    rng = np.random.default_rng(7)
    for i in range(4):  # typing: key sounds at irregular 80–250 ms intervals for 6 s
        track = np.zeros(6 * SAMPLE_RATE, np.float32)
        pos = 0
        while pos < len(track):
            click = _decode(keys[int(rng.integers(len(keys)))])[: SAMPLE_RATE // 4]
            end = min(len(track), pos + len(click))
            track[pos:end] += click[: end - pos]
            pos += int(rng.integers(SAMPLE_RATE * 8 // 100, SAMPLE_RATE // 4))
        add(f"keys-typing-{i}", track, "keys")
    t = np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE
    for level in (0.02, 0.1, 0.3):
        add(f"noise-white-{level}", rng.normal(0, level, t.size), "noise")
        brown = np.cumsum(rng.normal(0, 1, t.size))
        add(f"noise-brown-{level}", level * brown / np.abs(brown).max(), "noise")
    for freq in (440, 1000, 3000):
        add(f"tone-{freq}hz", 0.3 * np.sin(2 * np.pi * freq * t), "tone")
    add("tone-dtmf-sweep", 0.2 * np.sin(2 * np.pi * (300 + 600 * t) * t), "tone")
    add("silence-digital", np.zeros(t.size), "silence")
    add("silence-room", rng.normal(0, 0.002, t.size), "silence")
    return out


def _load(kind_filter) -> list[Clip]:
    entries = json.loads((fetch() / "manifest.json").read_text())
    return [
        Clip(e["name"], Path(e["path"]), e["text"], e["kind"], held_out=is_held_out(e["name"]))
        for e in entries
        if kind_filter(e["kind"])
    ]


def speech_clips(split: Split = "all") -> list[Clip]:
    """The base corpus's speech (Asterisk prompts, LibriVox sentences). ``split`` picks the dev
    part, the held-out part (by :func:`is_held_out` of the clip name) or both (the default,
    which is what the bench's WER set has always used)."""
    return [c for c in _load(lambda kind: kind == "speech") if in_split(c.held_out, split)]


def nonspeech_clips() -> list[Clip]:
    return _load(lambda kind: kind != "speech")


def long_recording(seconds: float, seed: int = 0, gap: float = 0.6) -> Clip:
    """Concatenate speech clips (with short pauses) into one file of at least ``seconds``.

    ``gap`` is the pause between clips; 0 makes continuous speech (sentences running on)."""
    root = cache_dir() / "long"
    suffix = "" if gap == 0.6 else f"-gap{gap:g}"  # the default keeps the name recordings were cached under
    path = root / f"long-{int(seconds)}s-seed{seed}{suffix}.wav"
    meta = path.with_suffix(".txt")
    if path.is_file() and meta.is_file():
        return Clip(path.stem, path, meta.read_text(), "speech")
    clips = speech_clips()
    order = np.random.default_rng(seed).permutation(len(clips))
    pieces, texts, total = [], [], 0
    pause = np.zeros(int(gap * SAMPLE_RATE), np.float32)
    for i in order:
        clip = clips[int(i)]
        samples = clip.samples()
        pieces += [samples, pause]
        texts.append(clip.text)
        total += samples.size + pause.size
        if total >= seconds * SAMPLE_RATE:
            break
    write_wav(path, np.concatenate(pieces))
    meta.write_text(" ".join(texts))
    return Clip(path.stem, path, meta.read_text(), "speech")
