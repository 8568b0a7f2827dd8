"""An ordered holding area for chunks that cannot be sent yet, bounded in memory.

While the transcriber is unreachable the microphone keeps producing a chunk every couple of
seconds; holding them all in memory would grow without bound during a long outage, and
dropping them would lose speech. Past ``max_in_memory`` chunks the samples go to files in a
temporary directory (float32 ``.npy``, ~190 KB per 3 s chunk) and come back in order.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import deque
from pathlib import Path

import numpy as np

from client.chunker import Chunk


class ChunkStore:
    """FIFO of chunks; ``get`` waits for the next one and returns None once closed and empty."""

    def __init__(self, max_in_memory: int = 64, spill_dir: Path | None = None) -> None:
        self.max_in_memory = max_in_memory
        self._spill_root = spill_dir
        self._tmp: Path | None = None
        self._items: deque[Chunk] = deque()
        self._in_memory = 0
        self._closed = False
        self._changed = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def spilled(self) -> int:
        return len(self._items) - self._in_memory

    def _spill_path(self, chunk: Chunk) -> Path:
        if self._tmp is None:
            root = self._spill_root
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix="stt-client-spill-", dir=root))
        return self._tmp / f"chunk-{chunk.index:08d}.npy"

    async def put(self, chunk: Chunk) -> None:
        if self._in_memory >= self.max_in_memory:
            path = self._spill_path(chunk)
            await asyncio.to_thread(np.save, path, np.concatenate([chunk.lead, chunk.samples]))
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
        path = chunk.meta.pop("spilled", None)
        if path is None:
            self._in_memory -= 1
            return chunk
        data = await asyncio.to_thread(np.load, path)
        path.unlink(missing_ok=True)
        lead = chunk.meta.pop("lead", 0)
        return Chunk(chunk.index, chunk.start, data[lead:], chunk.captured_at, chunk.final, chunk.meta, data[:lead])

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
