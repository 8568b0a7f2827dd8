"""Wire the stages together: source → chunker → dispatcher (detect + transcribe) → stitcher.

Two commit policies (``Settings.policy``, docs/client.md): ``stitch`` sends overlapping 3 s
chunks with left context and merges their edges (:mod:`client.stitcher`); ``agreement`` cuts the
stream into steps and, each step, re-decodes the uncommitted audio as one window and commits
what two decodes agree on (:mod:`core.commit_policy`).

Two tasks run side by side: the producer reads the source and cuts chunks (never waiting on
the network, so capture cannot be held up by a slow or dead service), and the consumer takes
answers in order and stitches them. :meth:`Pipeline.stop` is the first Ctrl-C (stop reading,
finish what is in flight); :meth:`Pipeline.abort` is the second (give up on the rest).

:class:`Recovery` runs before any of that: chunks an interrupted run left in the spill
directory are transcribed first and their text handed back marked as recovered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from client.api import Word
from client.chunker import Chunk, Chunker
from client.dispatcher import AgreementDispatcher, Backoff, Dispatcher, Outcome, Transcriber
from client.display import Display
from client.sources import ArraySource, Source, level_dbfs
from client.spill import ChunkStore, LeftoverRun, default_spill_root, find_leftovers
from client.stats import DAMAGED_SPILL, Stats
from client.stitcher import Stitcher, join_words
from client.ws_transport import AudioLog, WsFatalError, WsSettings, WsTransport
from core.commit_policy import CommitPolicy, PolicyConfig
from core.vocabulary import SAMPLE_RATE

POLICIES = ("stitch", "agreement")

log = logging.getLogger(__name__)

PROMPT_CHARS = 200  # as whisper_streaming: enough context to keep style and names, short enough not to dominate


@dataclass
class Settings:
    chunk_s: float = 3.0
    overlap_s: float = 1.0
    detector: bool = True
    language: str | None = None
    prompt: bool = False
    resend_empty: bool = True  # a speech chunk that comes back empty is sent again with 1 s of lead-in
    context_s: float = 2.0  # audio before each chunk sent with it as left context (docs/client.md)
    concurrency: int = 2
    max_in_memory: int = 64
    spill_dir: Path | None = None  # root of the per-run spill directories (None: default_spill_root())
    source_label: str = ""  # what is being transcribed, recorded with spilled chunks for a later replay
    backoff: Backoff | None = None
    policy: str = "stitch"  # or "agreement" (docs/client.md, "Agreement policy")
    step_s: float = PolicyConfig.step_s  # agreement: new audio per decode
    window_s: float = PolicyConfig.max_window_s  # agreement: most uncommitted audio per decode
    trim_after_s: float = PolicyConfig.trim_after_s  # agreement: see PolicyConfig

    def policy_config(self) -> PolicyConfig:
        return PolicyConfig(
            step_s=self.step_s, max_window_s=self.window_s, context_s=self.context_s, trim_after_s=self.trim_after_s
        )

    def spill_meta(self) -> dict:
        """What ``run.json`` records, so that a later run knows what its chunks were."""
        return {
            "source": self.source_label,
            "policy": self.policy,
            "chunk_s": self.step_s if self.policy == "agreement" else self.chunk_s,
            "overlap_s": 0.0 if self.policy == "agreement" else self.overlap_s,
            "language": self.language,
        }


class Pipeline:
    def __init__(
        self,
        source: Source,
        api: Transcriber,
        settings: Settings | None = None,
        stats: Stats | None = None,
        display: Display | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.api = api
        self.settings = settings or Settings()
        self.stats = stats or Stats()
        self.display = display
        self.on_outcome = on_outcome
        self.clock = clock
        s = self.settings
        if s.policy not in POLICIES:
            raise ValueError(f"unknown policy {s.policy!r}; use one of {', '.join(POLICIES)}")
        self.stitcher = Stitcher()
        self.policy = CommitPolicy(s.policy_config()) if s.policy == "agreement" else None
        if self.policy:
            self.chunker = Chunker(s.step_s, 0.0)  # the policy's steps; it chooses what each one decodes
        else:
            self.chunker = Chunker(s.chunk_s, s.overlap_s, context_s=s.context_s)
        self.dispatcher: Dispatcher | None = None
        self.display_partial = ""  # the partial text the live view shows
        self._stopping = False

    @property
    def committed(self) -> list[Word]:
        """Final words so far (they never change)."""
        return self.policy.committed if self.policy else self.stitcher.committed

    @property
    def partial(self) -> list[Word]:
        """Words shown but not final yet."""
        return self.policy.partial if self.policy else self.stitcher.partial

    def prompt_for(self, chunk: Chunk) -> str | None:
        """The text heard before this chunk began (never words inside it: Whisper would skip them)."""
        if not self.settings.prompt:
            return None
        words: list[Word] = [w for w in self.stitcher.words() if w.end <= chunk.start]
        text = join_words(words)
        return text[-PROMPT_CHARS:].lstrip() or None

    def stop(self) -> None:
        """Stop reading input; everything already captured is still transcribed."""
        self._stopping = True
        self.source.stop()

    async def abort(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.abort()

    def _warn(self, text: str) -> None:
        if self.display:
            self.display.note(text)
        else:
            log.warning("%s", text)

    async def run(self) -> list[Word]:
        s = self.settings
        spill_meta = s.spill_meta()
        if self.policy:
            self.dispatcher = AgreementDispatcher(
                self.api,
                self.stats,
                self.policy,
                detector=s.detector,
                language=s.language,
                max_in_memory=s.max_in_memory,
                spill_dir=s.spill_dir,
                backoff=s.backoff,
                clock=self.clock,
                spill_meta=spill_meta,
                warn=self._warn,
            )
        else:
            self.dispatcher = Dispatcher(
                self.api,
                self.stats,
                concurrency=s.concurrency,
                detector=s.detector,
                language=s.language,
                prompt=self.prompt_for if s.prompt else None,
                max_in_memory=s.max_in_memory,
                spill_dir=s.spill_dir,
                backoff=s.backoff,
                resend_empty=s.resend_empty,
                context_s=s.context_s,
                clock=self.clock,
                spill_meta=spill_meta,
                warn=self._warn,
            )
        producer = asyncio.create_task(self._produce(), name="produce")
        refresher = asyncio.create_task(self._refresh(), name="refresh") if self.display else None
        try:
            await self._consume()
            await producer
        finally:
            producer.cancel()
            if refresher:
                refresher.cancel()
            self.stats.overruns = self.source.overruns
        newly = self.policy.finish().committed if self.policy else self.stitcher.finish()
        if self.display:
            self.display.partial = ""
            self.display.commit(newly)
        return self.committed

    async def _submit(self, chunk: Chunk) -> None:
        assert self.dispatcher is not None
        self.stats.chunks_captured += 1
        self.stats.audio_captured_s = chunk.end
        await self.dispatcher.submit(chunk)

    async def _produce(self) -> None:
        assert self.dispatcher is not None
        try:
            async for block in self.source.blocks():
                if self.display:
                    self.display.level = level_dbfs(block.samples)
                self.stats.overruns = self.source.overruns
                for chunk in self.chunker.feed(block.samples, self.clock()):
                    await self._submit(chunk)
                if self._stopping:
                    break
            for chunk in self.chunker.flush(self.clock()):
                await self._submit(chunk)
        finally:
            await self.dispatcher.close()

    async def _consume(self) -> None:
        assert self.dispatcher is not None
        async for outcome in self.dispatcher.results():
            chunk, result = outcome.chunk, outcome.result
            if self.policy:
                # The worker may already be on the next step: show this outcome's own view.
                newly = outcome.update.committed if outcome.update else []
                partial = join_words(outcome.update.partial) if outcome.update else self.display_partial
            else:
                newly = self.stitcher.add(outcome.audio_start, chunk.end, result.words if result else None)
                partial = self.stitcher.partial_text
            self.stats.chunks_done += 1
            self.stats.audio_done_s = chunk.end
            self.stats.lag_s = max(0.0, self.clock() - chunk.captured_at)
            if self.display:
                self.display.partial = partial
                self.display.commit(newly)
            self.display_partial = partial
            if self.on_outcome:
                self.on_outcome(outcome)

    async def _refresh(self) -> None:
        assert self.display is not None
        while True:
            self.display.refresh()
            await asyncio.sleep(0.2)


@dataclass
class RecoveredRun:
    """What became of one interrupted run's spilled chunks."""

    run: LeftoverRun
    words: list[Word] = field(default_factory=list)
    chunks: int = 0  # chunks on disk when found
    transcribed: int = 0
    dropped: int = 0  # damaged files, or refused/malformed answers
    left: int = 0  # still on disk (this recovery was stopped): the next run tries again

    @property
    def text(self) -> str:
        return join_words(self.words)


class Recovery:
    """Transcribe, oldest first, the chunks that runs killed before their answer came left in
    the spill directory (:func:`client.spill.find_leftovers`), before this run captures audio.

    Each run's chunks go through a :class:`Dispatcher` (same retries; a file is deleted once
    answered) and a :class:`Stitcher` of their own: they are a separate stream, with gaps where
    chunks were held in memory when the run died. A damaged file is counted as dropped
    (``damaged_spill``), never loaded. :meth:`stop` (Ctrl-C) leaves what is unanswered on disk.

    A ``--transport ws`` run leaves audio segments instead (:mod:`client.spill`): they are sent
    again over a ``/v1/stream`` session to ``urls`` (:meth:`client.ws_transport.AudioLog.adopt`),
    from where the run's log began and with ``committed_until`` = the sample its words were
    committed up to, as a reconnect of that run would; the proxy commits words exactly as it
    would have, and each segment file is deleted once acknowledged. Over ``/transcribe`` the
    client would have to re-cut, stitch and de-duplicate that audio itself.
    """

    def __init__(
        self,
        api: Transcriber,
        settings: Settings | None = None,
        stats: Stats | None = None,
        display: Display | None = None,
        root: Path | None = None,
        runs: list[LeftoverRun] | None = None,
        urls: Sequence[str] = (),
        ws: WsSettings | None = None,
    ) -> None:
        """``runs``: already found (and locked) by :func:`client.spill.find_leftovers`; None: look in
        ``root``. ``urls`` and ``ws``: where and how ws runs' audio is sent again (no URL: left on disk)."""
        self.api = api
        self.settings = settings or Settings()
        self.stats = stats or Stats()
        self.display = display
        self.root = root if root is not None else (self.settings.spill_dir or default_spill_root())
        self.recovered: list[RecoveredRun] = []
        self._runs = runs
        self.urls = list(urls)
        self.ws = ws or WsSettings()
        self._dispatcher: Dispatcher | WsTransport | None = None
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    @property
    def committed(self) -> list[Word]:
        """Nothing of the live stream: recovered words are reported apart (see ``recovered``)."""
        return []

    def stop(self) -> None:
        """Ctrl-C: stop now; unanswered chunks stay on disk for the next run."""
        self._stopping = True
        if self._dispatcher is not None:
            self._tasks.add(asyncio.get_running_loop().create_task(self._dispatcher.abort()))

    async def abort(self) -> None:
        self._stopping = True
        if self._dispatcher is not None:
            await self._dispatcher.abort()

    async def run(self) -> list[RecoveredRun]:
        runs = self._runs
        if runs is None:
            try:
                runs = await asyncio.to_thread(find_leftovers, self.root)
            except OSError as exc:
                log.warning("cannot look for spilled chunks in %s: %s", self.root, exc)
                return []
        # The live view shows an outage during replay as it would during capture.
        refresher = asyncio.create_task(self._refresh(), name="recover-refresh") if self.display and runs else None
        try:
            for i, run in enumerate(runs):
                if self._stopping:
                    for later in runs[i:]:
                        later.release()
                    break
                self.recovered.append(await self._recover(run))
        finally:
            if refresher:
                refresher.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        return self.recovered

    async def _refresh(self) -> None:
        assert self.display is not None
        while True:
            self.display.refresh()
            await asyncio.sleep(0.2)

    async def _recover(self, run: LeftoverRun) -> RecoveredRun:
        s = self.settings
        out = RecoveredRun(run, chunks=len(run.chunks) + len(run.segments) + len(run.damaged))
        for name in run.damaged:
            log.warning("spill file %s/%s is incomplete (killed while writing?) and was removed", run.path, name)
            self.stats.drop(DAMAGED_SPILL)
            out.dropped += 1
        if run.segments:
            return await self._recover_ws(run, out)
        if self.display:
            self.display.note(
                f"recovering {len(run.chunks)} chunks (~{run.audio_s:.0f} s of audio) left on disk by an "
                f"interrupted run ({run.describe()})"
            )
        store = ChunkStore(0, self.root)  # only adopted chunks: it never writes
        await store.adopt(run.chunks)
        self._dispatcher = dispatcher = Dispatcher(
            self.api,
            self.stats,
            concurrency=s.concurrency,
            detector=s.detector,
            language=s.language or run.meta.get("language"),
            backoff=s.backoff,
            resend_empty=s.resend_empty,
            context_s=s.context_s,
            store=store,
        )
        stitcher = Stitcher()
        try:
            async for outcome in dispatcher.results():
                self.stats.chunks_recovered += 1
                if outcome.dropped:
                    out.dropped += 1
                elif outcome.result is not None:
                    out.transcribed += 1
                words = outcome.result.words if outcome.result else None
                stitcher.add(outcome.audio_start, outcome.chunk.end, words)
        finally:
            self._dispatcher = None
            out.left = run.release()
        stitcher.finish()
        out.words = list(stitcher.committed)
        return out

    async def _recover_ws(self, run: LeftoverRun, out: RecoveredRun) -> RecoveredRun:
        """A ws run's segments, sent again over a session of their own (see the class docstring)."""
        segments = len(run.segments)
        audio = AudioLog.adopt(run, round(self.ws.max_in_memory_s * SAMPLE_RATE))
        if self.display:
            self.display.note(
                f"recovering ~{len(audio) / SAMPLE_RATE:.0f} s of audio left on disk by an interrupted run "
                f"({run.describe()})"
            )
        try:
            if not self.urls:
                log.warning("no URL to send the audio of %s to; it stays on disk", run.path)
            elif audio.settled >= audio.end:  # all of it was committed: the files were about to go
                audio.release(audio.end)
            else:
                settings = replace(self.ws, language=self.ws.language or run.meta.get("language"))
                empty = ArraySource(np.zeros(0, np.float32))  # nothing new: only the adopted log is sent
                self._dispatcher = transport = WsTransport(empty, self.urls, settings, self.stats, audio=audio)
                try:
                    out.words = await transport.run()
                except WsFatalError as exc:
                    log.warning("cannot send the audio of %s again (%s); it stays on disk", run.path, exc)
        finally:
            self._dispatcher = None
            await audio.aclose()
            out.left = run.release()
        for _ in audio.damaged:
            self.stats.drop(DAMAGED_SPILL)
            out.dropped += 1
        out.transcribed = max(0, segments - out.left - len(audio.damaged))
        self.stats.chunks_recovered += out.transcribed
        return out
