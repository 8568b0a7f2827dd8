"""An ordered holding area for chunks that cannot be sent yet, bounded in memory, that survives a kill.

While the transcriber is unreachable the microphone keeps producing a chunk every couple of
seconds; holding them all in memory would grow without bound during a long outage, and
dropping them would lose speech. Past ``max_in_memory`` chunks the samples go to files
(float32 ``.npy``, ~190 KB per 3 s chunk) and come back in order.

The files are the only copy of that audio, so they follow three rules (docs/client.md, "Spilled
chunks"):

- **atomic**: a chunk is written to a hidden temporary name in the same directory, fsynced,
  then renamed (``os.replace``) to its final name, so a reader (this run, or the next one
  after a kill) never sees half a file: a name matching :data:`CHUNK_NAME` is complete;
- **kept until answered**: reading a chunk back does not delete it; :meth:`ChunkStore.done`
  does, once its transcription answer has arrived or it was counted as dropped;
- **findable**: each run spills into its own directory ``run-<UTC time>-<pid>-<random>`` under
  a stable root (``--spill-dir``, default :func:`default_spill_root`), with a ``run.json``
  saying what it was recording and a lock held while it lives. The chunk's order, start and
  lead-in are in its file name. A later run finds unlocked directories with chunks in them
  (:func:`find_leftovers`) and transcribes them first (:mod:`client.pipeline`, ``recover``).

``--transport ws`` keeps audio, not chunks, until the server acknowledges it
(:class:`client.ws_transport.AudioLog`). It uses the same run directories, rules and replay,
with *segments* instead of chunks: ``audio-at-<first stream sample>.npy`` (int16), written
atomically about once a second, plus ``ws.json`` (:data:`WS_STATE`), atomically rewritten, saying
up to which sample the run had its words committed (a replay treats audio before it as context).

A full disk (any ``OSError`` while writing) keeps the chunk in memory instead: capture goes on,
and ``on_spill_failure`` lets the caller count it and warn once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from client.chunker import Chunk
from core.vocabulary import SAMPLE_RATE

try:  # POSIX; elsewhere runs are not locked (a second client at once could replay a live run's files)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SPILL_VERSION = 1
RUN_PREFIX = "run-"
RUN_META = "run.json"
LOCK_NAME = "lock"
TMP_SUFFIX = ".tmp"
# chunk-<index>-at-<start sample>-lead-<lead-in samples>[-final].npy; the file holds lead + samples.
CHUNK_NAME = re.compile(r"^chunk-(?P<index>\d+)-at-(?P<at>\d+)-lead-(?P<lead>\d+)(?P<final>-final)?\.npy$")
# --transport ws: audio-at-<stream sample of its first sample>.npy, int16 samples not yet acknowledged.
SEGMENT_NAME = re.compile(r"^audio-at-(?P<at>\d+)\.npy$")
WS_STATE = "ws.json"  # {"settled_sample": N}: the ws run's words before sample N were committed (shown)
# Files that hold no audio: a kill while rewriting one leaves a temporary copy that costs no words.
BOOKKEEPING = (RUN_META, WS_STATE)


def default_spill_root() -> Path:
    """``$XDG_STATE_HOME/stt-client/spill`` (``~/.local/state/...`` when unset): per user and kept
    across reboots, unlike the system temp dir, so a run killed with chunks on disk can be replayed."""
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state else Path.home() / ".local" / "state"
    return base / "stt-client" / "spill"


def chunk_file_name(chunk: Chunk) -> str:
    at = round(chunk.start * SAMPLE_RATE)
    final = "-final" if chunk.final else ""
    return f"chunk-{chunk.index:08d}-at-{at:012d}-lead-{chunk.lead.size}{final}.npy"


def segment_file_name(start: int) -> str:
    return f"audio-at-{start:012d}.npy"


@dataclass
class Segment:
    """A ws run's segment file: int16 stream samples from ``start`` on (their count is in the file)."""

    start: int
    path: Path


def load_segment(path: Path) -> np.ndarray:
    """A segment's samples, memory-mapped (a resend reads one second of a longer segment);
    raises ValueError (or OSError) if it is damaged."""
    data = np.load(path, mmap_mode="r", allow_pickle=False)
    if data.ndim != 1 or data.dtype != np.int16:
        raise ValueError(f"unexpected contents: {data.dtype} {data.shape}")
    return data


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (not possible everywhere: then best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save(file: Any, data: np.ndarray) -> None:
    """Write ``data`` as ``.npy`` to an open file and make it durable (tests replace this to
    simulate a full disk or a crash mid-write)."""
    np.save(file, data, allow_pickle=False)
    file.flush()
    os.fsync(file.fileno())


def write_atomic(path: Path, data: np.ndarray) -> None:
    """Write ``path`` so that it either does not exist or is complete: temp name, fsync, rename."""
    tmp = path.with_name(_tmp_name(path.name))
    try:
        with open(tmp, "wb") as file:
            _save(file, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def load_chunk_file(path: Path, lead: int) -> tuple[np.ndarray, np.ndarray]:
    """(lead-in, samples) from a spill file; raises ValueError (or OSError) if it is damaged."""
    data = np.load(path, allow_pickle=False)
    if data.ndim != 1 or data.dtype != np.float32 or data.size < lead:
        raise ValueError(f"unexpected contents: {data.dtype} {data.shape}, lead-in {lead}")
    return data[:lead], data[lead:]


def _try_lock(path: Path) -> int | None:
    """An exclusive lock on ``path`` (created if missing), or None if another process holds it.
    The kernel drops it when the process dies, which is what marks a run as abandoned."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if fcntl is None:  # pragma: no cover - Windows
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _chunk_files(directory: Path) -> list[Path]:
    """Chunk and segment files: the audio a run leaves for the next one."""
    return [p for p in directory.iterdir() if CHUNK_NAME.match(p.name) or SEGMENT_NAME.match(p.name)]


class SpillRun:
    """This run's spill directory, created (and locked) on the first spill only."""

    def __init__(self, root: Path, meta: dict[str, Any] | None = None) -> None:
        self.root = root
        self.meta = dict(meta or {})
        self.started = time.gmtime()  # the run's start (the directory is made later, on the first spill)
        self.path: Path | None = None
        self._lock: int | None = None

    @classmethod
    def existing(cls, path: Path) -> SpillRun:
        """An interrupted run's directory being replayed (its :class:`LeftoverRun` holds the lock)."""
        run = cls(path.parent)
        run.path = path
        return run

    def directory(self) -> Path:
        """The run's directory, made on first use; raises OSError (then nothing is left behind)."""
        if self.path is not None:
            return self.path
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{RUN_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', self.started)}-{os.getpid()}-{secrets.token_hex(2)}"
        # Built under a hidden name and renamed once locked, so another client's scan never
        # finds a run directory that is not locked yet.
        staging = self.root / f".{name}"
        try:
            staging.mkdir(mode=0o700)
            self._lock = _try_lock(staging / LOCK_NAME)
            meta = {
                "version": SPILL_VERSION,
                "sample_rate": SAMPLE_RATE,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", self.started),
                "pid": os.getpid(),
                **self.meta,
            }
            _write_json_atomic(staging / RUN_META, meta)
            os.replace(staging, self.root / name)
        except BaseException:  # a full disk: try again from scratch on the next chunk
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self.root)
        self.path = self.root / name
        return self.path

    def write(self, chunk: Chunk) -> Path:
        """Write the chunk (lead-in first) atomically; raises OSError (disk full, read-only, ...)."""
        path = self.directory() / chunk_file_name(chunk)
        write_atomic(path, np.concatenate([chunk.lead, chunk.samples]).astype(np.float32, copy=False))
        return path

    def write_segment(self, start: int, samples: np.ndarray) -> Path:
        """Write a ws segment atomically; raises OSError (disk full, read-only, ...)."""
        path = self.directory() / segment_file_name(start)
        write_atomic(path, samples.astype(np.int16, copy=False))
        return path

    def write_state(self, state: dict[str, Any]) -> bool:
        """Rewrite :data:`WS_STATE` atomically if the directory exists (no audio on disk: no need);
        returns whether it did. Raises OSError."""
        if self.path is None:
            return False
        _write_json_atomic(self.path / WS_STATE, state)
        return True

    def release(self) -> int:
        """End of the run: remove the directory if no chunk is left in it, else leave the chunks
        for the next run to replay. Returns how many were left."""
        left = _remove_if_empty(self.path) if self.path is not None else 0
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return left


def _remove_if_empty(path: Path) -> int:
    """Remove a run directory that holds no chunk; returns how many chunks it holds."""
    left = 0
    with contextlib.suppress(OSError):
        left = len(_chunk_files(path))
        if not left:
            shutil.rmtree(path, ignore_errors=True)
    return left


def _tmp_name(name: str) -> str:
    """The hidden name a file is written under before its rename (see :func:`write_atomic`)."""
    return f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"


def _is_bookkeeping_tmp(name: str) -> bool:
    """Whether ``name`` is a temporary copy of a :data:`BOOKKEEPING` file (no audio in it)."""
    return any(name.startswith(f".{kept}.") and name.endswith(TMP_SUFFIX) for kept in BOOKKEEPING)


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(_tmp_name(path.name))
    try:
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(value, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class ChunkStore:
    """FIFO of chunks; ``get`` waits for the next one and returns None once closed and empty.

    A chunk read back from disk keeps ``meta["spilled"]`` (its file) until :meth:`done`; one
    whose file cannot be loaded comes back with no samples and ``meta["damaged"]`` saying why.
    """

    def __init__(
        self,
        max_in_memory: int = 64,
        spill_dir: Path | None = None,
        *,
        run_meta: dict[str, Any] | None = None,
        on_spill_failure: Callable[[OSError], None] | None = None,
    ) -> None:
        self.max_in_memory = max_in_memory
        self.run = SpillRun(Path(spill_dir) if spill_dir is not None else default_spill_root(), run_meta)
        self.on_spill_failure = on_spill_failure
        self.spill_failures = 0  # chunks kept in memory because writing them failed
        self.spill_writes = 0  # chunks written to disk
        self._items: deque[Chunk] = deque()
        self._in_memory = 0
        self._closed = False
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def spilled(self) -> int:
        return len(self._items) - self._in_memory

    @property
    def held(self) -> list[Chunk]:
        """Chunks not yet taken by a worker (after an abort: what was abandoned)."""
        return list(self._items)

    async def put(self, chunk: Chunk) -> None:
        if self._in_memory >= self.max_in_memory:
            try:
                path = await asyncio.to_thread(self.run.write, chunk)
            except OSError as exc:
                # Disk full or not writable: memory is the only place left. Capture goes on.
                self.spill_failures += 1
                if self.on_spill_failure is not None:
                    self.on_spill_failure(exc)
                self._in_memory += 1
            else:
                self.spill_writes += 1
                chunk = Chunk(
                    chunk.index,
                    chunk.start,
                    np.zeros(0, np.float32),
                    chunk.captured_at,
                    chunk.final,
                    {**chunk.meta, "spilled": path, "lead": chunk.lead.size},
                )
        else:
            self._in_memory += 1
        await self._append(chunk)

    async def adopt(self, chunks: list[Chunk]) -> None:
        """Queue chunks already on disk (a previous run's, ``meta["spilled"]`` set) and close."""
        for chunk in chunks:
            await self._append(chunk)
        await self.close()

    async def _append(self, chunk: Chunk) -> None:
        async with self._changed:
            self._items.append(chunk)
            self._changed.notify()

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def get(self) -> Chunk | None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._items or self._closed)
            if not self._items:
                return None
            chunk = self._items.popleft()
        path = chunk.meta.get("spilled")
        if path is None:
            self._in_memory -= 1
            return chunk
        meta = {k: v for k, v in chunk.meta.items() if k != "lead"}
        try:
            lead, samples = await asyncio.to_thread(load_chunk_file, path, chunk.meta.get("lead", 0))
        except Exception as exc:  # truncated, not .npy, gone: the worker counts it as dropped
            meta["damaged"] = f"{path.name}: {type(exc).__name__}: {exc}"
            return Chunk(chunk.index, chunk.start, np.zeros(0, np.float32), chunk.captured_at, chunk.final, meta)
        return Chunk(chunk.index, chunk.start, samples, chunk.captured_at, chunk.final, meta, lead)

    def done(self, chunk: Chunk) -> None:
        """The chunk's answer arrived (or it was counted as dropped): its file is not needed."""
        path = chunk.meta.pop("spilled", None)
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # it will be replayed again by the next run: worth a word
                log.warning("could not delete the answered spill file %s: %s", path, exc)

    def release(self) -> int:
        """The run is over: remove its directory if empty; returns how many chunk files stay."""
        return self.run.release()


@dataclass
class LeftoverRun:
    """Spill files of a run that ended without answering them (killed, or given up on), locked
    by this process while it replays them."""

    path: Path
    meta: dict[str, Any]
    chunks: list[Chunk]  # in index order, samples still on disk (``meta["spilled"]``)
    damaged: list[str] = field(default_factory=list)  # files that could not even be named, already removed
    segments: list[Segment] = field(default_factory=list)  # --transport ws: in stream order
    settled: int | None = None  # --transport ws: words before this sample were committed (WS_STATE)
    _lock: int | None = None

    @property
    def audio_s(self) -> float:
        """Roughly how much audio is waiting (from the file sizes)."""
        size = 0.0
        for chunk in self.chunks:
            with contextlib.suppress(OSError):
                size += chunk.meta["spilled"].stat().st_size / 4  # float32
        for segment in self.segments:
            with contextlib.suppress(OSError):
                size += segment.path.stat().st_size / 2  # int16
        return size / SAMPLE_RATE

    def describe(self) -> str:
        source = self.meta.get("source") or "unknown source"
        started = self.meta.get("started", "?")
        return f"{source}, started {started}"

    def release(self) -> int:
        """Done with it: remove the directory if no chunk is left, unlock. Returns chunks left."""
        left = _remove_if_empty(self.path)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        return left


def find_leftovers(root: Path, exclude: Path | None = None) -> list[LeftoverRun]:
    """Runs under ``root`` whose process is gone (their lock is free), oldest first, each locked.

    Half-written temporary files (a kill between write and rename) and files whose name does
    not parse are removed and listed in ``damaged``: they are never loaded. A temporary copy of
    :data:`BOOKKEEPING` (a kill while ``ws.json`` was being rewritten, which the ws transport
    does on every acknowledgement) is removed without being listed: no audio was in it. A
    directory with nothing left in it is removed.
    """
    if not root.is_dir():
        return []
    runs = []
    for directory in sorted(root.iterdir()):
        if not directory.is_dir() or directory == exclude:
            continue
        staging = directory.name.startswith("." + RUN_PREFIX)
        if not directory.name.startswith(RUN_PREFIX) and not staging:
            continue
        with contextlib.suppress(OSError):
            if staging and time.time() - directory.stat().st_mtime < 60:
                continue  # another client may be between creating and locking it
        try:
            lock = _try_lock(directory / LOCK_NAME)
        except OSError:
            continue  # removed under us, or not ours to touch
        if lock is None:
            continue  # a live client's run
        run = LeftoverRun(directory, {}, [], _lock=lock)
        with contextlib.suppress(OSError, ValueError):  # without it, the chunks' names still say enough
            run.meta = json.loads((directory / RUN_META).read_text(encoding="utf-8"))
        try:
            names = sorted(p for p in directory.iterdir() if p.name not in (RUN_META, LOCK_NAME))
        except OSError as exc:
            log.warning("cannot read spill directory %s: %s", directory, exc)
            os.close(lock)
            continue
        for path in names:
            if path.name == WS_STATE:
                with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                    run.settled = int(json.loads(path.read_text(encoding="utf-8")).get("settled_sample"))
                continue
            m = SEGMENT_NAME.match(path.name)
            if m is not None:
                run.segments.append(Segment(int(m["at"]), path))
                continue
            m = CHUNK_NAME.match(path.name)
            if m is None:
                if not _is_bookkeeping_tmp(path.name):
                    run.damaged.append(path.name)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            chunk = Chunk(
                int(m["index"]),
                int(m["at"]) / SAMPLE_RATE,
                np.zeros(0, np.float32),
                final=bool(m["final"]),
                meta={"spilled": path, "lead": int(m["lead"]), "recovered": directory.name},
            )
            run.chunks.append(chunk)
        run.chunks.sort(key=lambda c: c.index)
        run.segments.sort(key=lambda seg: seg.start)
        if not run.chunks and not run.segments and not run.damaged:
            run.release()
            continue
        runs.append(run)
    return runs
