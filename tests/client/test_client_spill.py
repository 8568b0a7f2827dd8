"""The client never loses audio: spilled chunks are written atomically, kept until answered,
replayed after a kill; a full disk, a damaged file or a malformed answer never stops a worker,
and every chunk ends transcribed or counted as dropped with a reason."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import spill
from client.api import ChunkResult, RetryableError, SttApi, Word
from client.chunker import Chunk
from client.cli import failures
from client.cli import main as cli_main
from client.dispatcher import Backoff, Dispatcher
from client.display import Display
from client.pipeline import Recovery, Settings
from client.spill import ChunkStore, find_leftovers
from client.stats import Stats

FAST = Backoff(first_s=0.001, max_s=0.01)
REPO = Path(__file__).resolve().parents[2]


def chunk(i: int) -> Chunk:
    """3 s chunks back to back (no overlap: the stitcher just appends), samples say their index."""
    return Chunk(i, i * 3.0, np.full(48000, (i + 1) / 1000, np.float32))


def ident(samples: np.ndarray) -> int:
    return round(float(samples[-1]) * 1000) - 1


class Service:
    """Answers a chunk with ``c<index>``; ``answers`` overrides what comes back for some chunks
    (an object, or an exception to raise); ``gate`` holds every answer until it is set."""

    def __init__(self, answers: dict | None = None, gate: asyncio.Event | None = None, fail: int = 0) -> None:
        self.answers = answers or {}
        self.gate = gate
        self.fail = fail
        self.seen: list[int] = []

    async def detect(self, samples: np.ndarray) -> bool:
        return True

    async def transcribe(self, samples, offset, language=None, prompt=None):
        if self.gate is not None:
            await self.gate.wait()
        i = ident(samples)
        self.seen.append(i)
        if self.fail > 0:
            self.fail -= 1
            raise RetryableError("503 backend_unavailable")
        answer = self.answers.get(i)
        if isinstance(answer, BaseException):
            raise answer
        if answer is not None:
            return answer
        return ChunkResult([Word(offset + 0.5, offset + 0.9, f" c{i}")], f"c{i}")


def chunk_files(root: Path) -> list[Path]:
    return sorted(root.rglob("chunk-*.npy"))


async def drain(dispatcher: Dispatcher) -> list:
    return [o async for o in dispatcher.results()]


# ---------------------------------------------------------------------------------------------
# Atomic writes


@pytest.mark.parametrize("where", ["mid_write", "before_rename"])
async def test_a_crash_while_spilling_never_leaves_a_partial_chunk_file(tmp_path: Path, monkeypatch, where) -> None:
    """A reader (this run or the next) only ever sees complete files under a chunk's name."""
    real_save = np.save

    def half_then_crash(file, data, *args, **kwargs) -> None:
        buf = io.BytesIO()
        real_save(buf, data)
        raw = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(file, "write"):
            file.write(raw)
        else:  # a path (written in place, without the atomic rename)
            Path(file).write_bytes(raw)
        raise RuntimeError("killed mid-write")

    def crash_on_rename(*args, **kwargs) -> None:
        raise RuntimeError("killed before the rename")

    store = ChunkStore(max_in_memory=0, spill_dir=tmp_path)
    store.run.directory()  # the run's directory exists: the crash hits the chunk's own write
    if where == "mid_write":
        monkeypatch.setattr(np, "save", half_then_crash)
    else:
        monkeypatch.setattr(spill.os, "replace", crash_on_rename)
    with pytest.raises(RuntimeError):
        await store.put(chunk(0))
    monkeypatch.undo()
    assert chunk_files(tmp_path) == []  # nothing to load by mistake
    for path in tmp_path.rglob("*.npy"):  # and nothing half-written anywhere under a loadable name
        np.load(path)


async def test_a_temp_file_left_by_a_kill_is_counted_as_damaged_and_never_loaded(tmp_path: Path) -> None:
    """SIGKILL between write and rename leaves a hidden temp file: the next run removes it and
    counts that chunk as dropped (damaged_spill); the complete chunks are replayed."""
    store = ChunkStore(max_in_memory=0, spill_dir=tmp_path, run_meta={"source": "test"})
    await store.put(chunk(0))
    run_dir = store.run.path
    assert run_dir is not None
    good = chunk_files(tmp_path)[0]
    partial = run_dir / f".{spill.chunk_file_name(chunk(1))}.dead{spill.TMP_SUFFIX}"
    partial.write_bytes(good.read_bytes()[:100])
    os.close(store.run._lock)  # the process is gone: its lock with it
    store.run._lock = None

    stats = Stats()
    service = Service()
    recovered = await Recovery(service, Settings(backoff=FAST), stats, root=tmp_path).run()
    assert service.seen == [0]
    assert [r.text for r in recovered] == ["c0"]
    assert stats.drop_reasons == {"damaged_spill": 1}
    assert not run_dir.exists()


# ---------------------------------------------------------------------------------------------
# Deleted only after the answer


async def test_a_spilled_chunk_stays_on_disk_until_its_answer_arrives(tmp_path: Path) -> None:
    """Read back from disk, sent, failed, retried: its file is still there the whole time, so a
    kill during the outage does not lose it; it goes once the answer is in."""
    on_disk_during_retries: list[bool] = []

    class Down(Service):
        async def transcribe(self, samples, offset, language=None, prompt=None):
            on_disk_during_retries.append(bool(chunk_files(tmp_path)))
            return await super().transcribe(samples, offset, language, prompt)

    stats = Stats()
    dispatcher = Dispatcher(
        Down(fail=5), stats, concurrency=1, max_in_memory=0, spill_dir=tmp_path, backoff=FAST, detector=False
    )
    await dispatcher.submit(chunk(0))
    await dispatcher.close()
    outcomes = await drain(dispatcher)
    assert on_disk_during_retries == [True] * 6  # 5 failures and the answer
    assert stats.chunks_retried == 5 and outcomes[0].result.text == "c0"
    assert chunk_files(tmp_path) == []
    assert list(tmp_path.iterdir()) == []  # the run's directory goes with its last chunk


# ---------------------------------------------------------------------------------------------
# Replay after a kill

KILLED_RUN = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from client.chunker import Chunk
    from client.spill import ChunkStore

    async def main():
        store = ChunkStore(max_in_memory=0, spill_dir=sys.argv[1], run_meta={"source": "microphone test"})
        for i in (3, 1, 4, 0, 2):  # any order in, index order out
            await store.put(Chunk(i, i * 3.0, np.full(48000, (i + 1) / 1000, np.float32)))
        print("spilled", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_chunks_of_a_killed_run_are_replayed_first_in_order_and_marked(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "spilled"
        assert find_leftovers(tmp_path) == []  # alive: its run is locked, not anybody's to replay
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(chunk_files(tmp_path)) == 5

    stats = Stats()
    service = Service()
    recovery = Recovery(service, Settings(backoff=FAST, concurrency=2), stats, root=tmp_path)
    recovered = await recovery.run()
    assert len(recovered) == 1
    r = recovered[0]
    assert r.text == "c0 c1 c2 c3 c4" and [w.start for w in r.words] == [0.5, 3.5, 6.5, 9.5, 12.5]
    assert "microphone test" in r.run.describe()
    assert (r.chunks, r.transcribed, r.dropped, r.left) == (5, 5, 0, 0)
    assert stats.chunks_recovered == 5 and stats.chunks_dropped == 0
    assert list(tmp_path.iterdir()) == []  # answered: nothing is replayed twice


async def test_chunks_left_by_an_abort_are_replayed_by_the_next_run(tmp_path: Path) -> None:
    """Ctrl-C twice during an outage: held chunks on disk stay (counted as left on disk), those in
    memory are counted as dropped (aborted); the next run transcribes the ones on disk."""
    stats = Stats()
    dispatcher = Dispatcher(Service(gate=asyncio.Event()), stats, concurrency=1, max_in_memory=1, spill_dir=tmp_path)
    for i in range(4):
        await dispatcher.submit(chunk(i))
    await asyncio.sleep(0.05)
    await dispatcher.abort()
    assert await drain(dispatcher) == []
    assert stats.chunks_left_on_disk + stats.drop_reasons.get("aborted", 0) == 4
    assert stats.chunks_left_on_disk == len(chunk_files(tmp_path)) >= 2

    later = Stats()
    recovered = await Recovery(Service(), Settings(backoff=FAST), later, root=tmp_path).run()
    assert recovered[0].transcribed == stats.chunks_left_on_disk
    assert chunk_files(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Damaged files, malformed answers, any error: dropped with a reason, the worker goes on


async def test_a_damaged_spill_file_is_dropped_with_a_reason_and_the_worker_goes_on(tmp_path: Path) -> None:
    gate = asyncio.Event()
    stats = Stats()
    dispatcher = Dispatcher(
        Service(gate=gate), stats, concurrency=1, max_in_memory=0, spill_dir=tmp_path, backoff=FAST, detector=False
    )
    for i in range(4):
        await dispatcher.submit(chunk(i))
    await dispatcher.close()
    await asyncio.sleep(0.05)  # chunk 0 is with the worker, waiting for the service
    files = chunk_files(tmp_path)
    assert len(files) == 4
    files[2].write_bytes(files[2].read_bytes()[:300])  # truncated (a disk error, a full disk elsewhere)
    gate.set()
    outcomes = await asyncio.wait_for(drain(dispatcher), 5)
    assert [o.chunk.index for o in outcomes] == [0, 1, 2, 3]
    assert [o.result.text if o.result else o.dropped for o in outcomes] == ["c0", "c1", "damaged_spill", "c3"]
    assert stats.chunks_dropped == 1 and stats.drop_reasons == {"damaged_spill": 1}
    assert chunk_files(tmp_path) == []  # the damaged file is gone too, not replayed forever


async def test_malformed_answers_are_dropped_with_a_reason_and_later_chunks_still_transcribed() -> None:
    answers = {
        1: {"no": "text, no words"},  # a 200 that is not a transcription
        2: KeyError("start"),  # what parsing a segment word without times raises
        3: ChunkResult([Word(float("nan"), 1.0, " x")], "x"),
    }
    stats = Stats()
    dispatcher = Dispatcher(Service(answers), stats, concurrency=1, backoff=FAST)
    for i in range(6):
        await dispatcher.submit(chunk(i))
    await dispatcher.close()
    outcomes = await asyncio.wait_for(drain(dispatcher), 5)
    assert [o.result.text if o.result else o.dropped for o in outcomes] == [
        "c0",
        "malformed_answer",
        "malformed_answer",
        "malformed_answer",
        "c4",
        "c5",
    ]
    assert stats.drop_reasons == {"malformed_answer": 3} and stats.chunks_sent == 3
    assert "malformed_answer 3" in failures(stats)


async def test_a_malformed_200_from_the_real_api_client_is_dropped_not_fatal() -> None:
    bodies = iter(
        [
            {"text": "a", "segments": [{"start": 0, "end": 1, "words": [{"word": " a"}]}]},  # word without times
            {"text": "b", "segments": [{"start": 0, "end": 1, "words": [{"start": 0.1, "end": 0.5, "word": " b"}]}]},
        ]
    )
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=next(bodies)))
    api = SttApi("http://stt.test", transport=transport)
    stats = Stats()
    dispatcher = Dispatcher(api, stats, concurrency=1, detector=False, backoff=FAST)
    for i in range(2):
        await dispatcher.submit(chunk(i))
    await dispatcher.close()
    outcomes = await asyncio.wait_for(drain(dispatcher), 5)
    await api.aclose()
    assert outcomes[0].dropped == "malformed_answer"
    assert [w.text for w in outcomes[1].result.words] == [" b"]


async def test_any_exception_drops_that_chunk_only_and_the_reason_is_reported() -> None:
    class Broken(Service):
        async def detect(self, samples: np.ndarray) -> bool:
            if ident(samples) == 1:
                raise ZeroDivisionError("a bug")
            return True

    stats = Stats()
    dispatcher = Dispatcher(Broken(), stats, concurrency=1, backoff=FAST)
    for i in range(3):
        await dispatcher.submit(chunk(i))
    await dispatcher.close()
    outcomes = await asyncio.wait_for(drain(dispatcher), 5)
    assert [o.dropped or o.result.text for o in outcomes] == ["c0", "error", "c2"]
    assert stats.drop_reasons == {"error": 1} and "ZeroDivisionError" in stats.last_error
    display = Display(stats, stream=io.StringIO(), tty=False, total_s=9.0)
    assert "1 dropped (error 1)" in display.summary()
    assert "DROPPED 1 (error 1)" in display.status_line()


# ---------------------------------------------------------------------------------------------
# Full disk


@pytest.mark.parametrize("cause", ["disk_full", "not_a_directory"])
async def test_a_full_disk_keeps_chunks_in_memory_with_one_warning(tmp_path: Path, monkeypatch, cause) -> None:
    def disk_full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    spill_dir = tmp_path
    if cause == "disk_full":
        monkeypatch.setattr(np, "save", disk_full)
    else:  # the run's directory cannot even be made
        (tmp_path / "file").write_text("")
        spill_dir = tmp_path / "file" / "spill"
    gate = asyncio.Event()
    warnings: list[str] = []
    stats = Stats()
    dispatcher = Dispatcher(
        Service(gate=gate),
        stats,
        concurrency=1,
        max_in_memory=1,
        spill_dir=spill_dir,
        backoff=FAST,
        detector=False,
        warn=warnings.append,
    )
    for i in range(10):
        await dispatcher.submit(chunk(i))  # capture goes on: no exception
    assert stats.spill_failures >= 8 and stats.spill_failures == dispatcher.store.spill_failures
    assert len(warnings) == 1 and "keeping them in memory" in warnings[0]
    assert chunk_files(tmp_path) == []
    gate.set()
    await dispatcher.close()
    outcomes = await asyncio.wait_for(drain(dispatcher), 5)
    assert [o.result.text for o in outcomes] == [f"c{i}" for i in range(10)]
    assert stats.chunks_dropped == 0
    assert [p.name for p in tmp_path.iterdir()] == ([] if cause == "disk_full" else ["file"])  # nothing left behind
    display = Display(stats, stream=io.StringIO(), tty=False, total_s=30.0)
    assert f"{stats.spill_failures} not spilled (disk)" in display.summary()


# ---------------------------------------------------------------------------------------------
# What the person sees: the CLI's report and exit status


class FakeProxy(BaseHTTPRequestHandler):
    """``/detect`` says speech, ``/transcribe`` answers one word (enough for the CLI end to end)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"speech": True}
        if self.path.startswith("/transcribe"):
            body = {
                "text": "hi",
                "segments": [{"start": 0, "end": 1, "words": [{"start": 0.2, "end": 0.6, "word": " hi"}]}],
            }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_cli_recovers_a_killed_run_and_reports_the_damaged_chunk_with_exit_status_1(tmp_path: Path, capsys) -> None:
    async def killed_run() -> None:
        store = ChunkStore(max_in_memory=0, spill_dir=tmp_path, run_meta={"source": "microphone default"})
        for i in range(3):
            await store.put(chunk(i))
        os.close(store.run._lock)  # killed: the kernel drops the lock
        store.run._lock = None

    asyncio.run(killed_run())
    damaged = chunk_files(tmp_path)[1]
    damaged.write_bytes(damaged.read_bytes()[:200])
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        rc = cli_main(["--recover", "only", "--spill-dir", str(tmp_path), "--url", url, "--quiet"])
    finally:
        server.shutdown()
    out, err = capsys.readouterr()
    assert rc == 1
    assert "recovered from an interrupted run (microphone default" in out and "2 of 3 chunks transcribed" in out
    assert "[recovered 0.2-6.6 s] hi hi" in out
    assert "1 chunks are missing from the transcript (damaged_spill 1" in err
    assert list(tmp_path.iterdir()) == []


def test_a_ws_run_is_found_with_its_segments_in_order_and_its_settled_sample(tmp_path: Path) -> None:
    """A killed ``--transport ws`` run leaves audio segments and ``ws.json``: found like chunks (a
    temporary file of a kill mid-write is damaged and removed), ``ws.json`` is read, not damaged;
    an unreadable one only costs the settled sample, and a kill while it was rewritten (its
    temporary copy left) costs nothing: no audio was in it."""
    run = spill.SpillRun(tmp_path, {"source": "stdin", "transport": "ws"})
    for start in (32_000, 0, 16_000):
        run.write_segment(start, np.arange(16_000, dtype=np.int16))
    run.write_state({"settled_sample": 12_345})
    (run.path / f".{spill.segment_file_name(48_000)}.dead{spill.TMP_SUFFIX}").write_bytes(b"\x93NUMPY")
    (run.path / f".{spill.WS_STATE}.dead{spill.TMP_SUFFIX}").write_text('{"settled_sam')
    run.release()  # killed: the lock goes with the process

    [found] = find_leftovers(tmp_path)
    assert [s.start for s in found.segments] == [0, 16_000, 32_000] and found.chunks == []
    assert found.settled == 12_345 and found.damaged == [f".{spill.segment_file_name(48_000)}.dead{spill.TMP_SUFFIX}"]
    assert sorted(p.name for p in run.path.iterdir() if p.name.startswith(".")) == []  # both temporaries gone
    assert round(found.audio_s) == 3 and "stdin" in found.describe()
    assert found.release() == 3  # left for a replay
    (run.path / spill.WS_STATE).write_text("{not json")
    [found] = find_leftovers(tmp_path)
    assert found.settled is None and found.damaged == [] and len(found.segments) == 3
    found.release()
