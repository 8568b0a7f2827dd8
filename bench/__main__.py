"""``python -m bench [--quick] [--device cpu|cuda]``: run every measurement, write the results,
print PASS/FAIL per goal. ``make bench`` (mk/bench.mk) prepares models and corpus first."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from bench import accuracy, capacity, designs, detectors, live, machine, offline, peer, proxy, recall, report
from bench.data import FULL, QUICK, Item, Sizes, detector_chunks, long_files, recall_set
from bench.goals import check
from bench.metrics import scrape, summarize_ms
from bench.progress import Progress
from bench.stacks import BenchStack, cpu_delta, make_stacks
from bench.streaming import PREVIOUS_DEFAULT
from corpus import nonspeech_clips

CHUNK_S = PREVIOUS_DEFAULT.chunk_s
RECALL_CLIPS_PER_UNIT = 20  # dev-set clips per progress unit (~1 s of in-process Silero)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller samples everywhere, no what-if stack, no peer (~12 min instead of ~40 on a 2-core Xeon)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device for base (STT_DEVICE)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="results directory")
    p.add_argument("--max-streams", type=int, help="upper bound of the capacity search")
    p.add_argument("--no-peer", action="store_true", help="skip the WhisperLive comparison")
    p.add_argument("--no-whatif", action="store_true", help="skip the what-if stack (trimmed window, STT_BATCH_MAX=1)")
    return p.parse_args(argv)


def machine_line() -> str:
    load = os.getloadavg()[0]
    return f"{platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at start, Python {platform.python_version()}"


def plan_units(
    sizes: Sizes, wer_items: int, det_speech: int, det_nonspeech: int, recall_clips: int = 0, peer_s: float = 0.0
) -> int:
    """Units of work, roughly one per second or two of wall time, so the bar moves evenly."""
    return (
        (1 + len(accuracy.PATHS)) * wer_items  # offline + each service path
        + det_speech
        + det_nonspeech
        + recall_clips // RECALL_CLIPS_PER_UNIT
        + sizes.proxy_pairs // 10
        + 4 * realtime_units(sizes.design_seconds)  # seed, this, session, what-if
        + 15 * realtime_units(sizes.step_seconds)  # capacity steps, roughly
        + realtime_units(peer_s)  # the peer's streams, at least as long as their audio
    )


def realtime_units(seconds: float) -> int:
    return max(1, int(seconds // 3))


def service_pass(stack: BenchStack, path: str, items: list[Item], tick) -> dict:
    """One service path over the dev items: WER per category and split, and its CPU cost."""
    before = stack.cpu_seconds()
    greedy_before = beam_searches_dropped(stack)
    began = time.monotonic()
    texts = asyncio.run(accuracy.transcribe(path, stack.proxy_url, items, tick))
    cpu = cpu_delta(before, stack.cpu_seconds())
    audio = sum(i.seconds for i in items)
    return {
        **accuracy.breakdown(items, texts),
        "wall_s": round(time.monotonic() - began, 1),
        "cpu_s_per_audio_s": round(sum(cpu.values()) / audio, 4),
        "in_parallel": accuracy.PARALLEL[path],
        # Windows that asked for a beam search and were decoded greedily because the backend was
        # behind: a pass that measures the default's accuracy has none.
        "greedy_under_load": beam_searches_dropped(stack) - greedy_before,
        "_texts": texts,
    }


def beam_searches_dropped(stack: BenchStack) -> int:
    """Base's count of live chunks decoded greedily under load (``stt_chunks_greedy_under_load_total``)."""
    return int(sum(value for _, value in scrape(stack.base_url, "stt_chunks_greedy_under_load_total")))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:  # the comparisons that no goal depends on stay for the full run
        args.no_whatif = args.no_peer = True
    sizes = QUICK if args.quick else FULL
    limit = args.max_streams or (sizes.max_streams * (4 if args.device == "cuda" else 1))
    started = time.monotonic()
    results: dict = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "command": "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
            "machine": machine_line(),
            "device": args.device,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "chunk_s": CHUNK_S,
            "cpu": machine.describe(),
        }
    }
    out = args.out
    stacks = make_stacks(out / "logs", args.device, whatif=not args.no_whatif)
    for stack in stacks.values():
        stack.start()
    try:
        items = accuracy.dev_items(sizes.accuracy_seconds)
        quiet = [Item(c.name, c.samples(), "") for c in nonspeech_clips()]
        speech_chunks, nonspeech_chunks = detector_chunks(sizes)
        design_audio = long_files(1, sizes.design_seconds, first_seed=50)[0]
        # The peer streams the design recording twice (at real-time pace, then flow-controlled)
        # and the dev set's long recordings flow-controlled (bench.peer).
        peer_items = [] if args.no_peer else peer.long_recordings(items)
        peer_s = 0.0 if args.no_peer else 2 * design_audio.seconds + sum(i.seconds for i in peer_items)
        try:
            dev_clips, dev_error = recall_set("all"), ""
        except (OSError, RuntimeError) as exc:  # e.g. no registry reachable: the rest still runs
            dev_clips, dev_error = [], f"{type(exc).__name__}: {str(exc)[-500:]}"
        progress = Progress(
            plan_units(
                sizes, len(items) + len(quiet), len(speech_chunks), len(nonspeech_chunks), len(dev_clips), peer_s
            )
        )
        progress.start("starting services")
        for stack in stacks.values():
            stack.wait()
        design, baseline = stacks["design"], stacks["baseline"]
        results["meta"]["compute_type"] = live.compute_type(design)

        def save() -> None:
            report.write_json(results, out)

        progress.start(f"offline faster-whisper over {len(items)} dev-set files")
        results["offline"] = offline.run(items, args.device, progress.tick, results["meta"]["compute_type"])
        results["offline"].update(accuracy.breakdown(items, results["offline"]["_texts"]))
        save()

        for path, label in (
            ("whole_file", "whole-file endpoint"),
            ("streamed", "streamed: /v1/stream sessions (the default)"),
            ("previous_default", "streamed: the previous default (HTTP chunks, stitching)"),
        ):
            progress.start(f"{label} over {len(items)} dev-set files")
            results[path] = service_pass(design, path, items, progress.tick)
            results[path]["nonspeech"] = accuracy.nonspeech_words(path, design.proxy_url, quiet, progress.tick)
            save()
        report.write_transcripts(
            [i.name for i in items],
            [i.text for i in items],
            {path: results[path]["_texts"] for path in ("offline", *accuracy.PATHS)},
            out,
            [i.language for i in items],
        )

        progress.start(f"detectors on {len(speech_chunks)} speech + {len(nonspeech_chunks)} non-speech chunks")
        results["detector"] = detectors.run(
            design.tiny_url,
            speech_chunks,
            nonspeech_chunks,
            sizes.whisper_tiny_speech,
            sizes.whisper_tiny_nonspeech,
            progress.tick,
        )
        save()

        progress.start(f"detector recall per category ({len(dev_clips)} dev-set clips, in-process Silero)")
        clips_done = [0]

        def recall_tick() -> None:
            clips_done[0] += 1
            if clips_done[0] % RECALL_CLIPS_PER_UNIT == 0:
                progress.tick()

        if dev_clips:
            results["detector_recall"] = recall.run(dev_clips, nonspeech_clips(), recall_tick)
        else:
            results["detector_recall"] = {"status": "not measured", "reason": f"dev set unavailable: {dev_error}"}
        save()

        progress.start("proxy overhead")
        results["proxy"] = proxy.run(design.base_url, design.proxy_url, sizes.proxy_pairs, progress.tick)
        save()

        progress.start(f"seed vs this design ({design_audio.seconds:.0f} s real time each)")
        whatif = stacks.get("design_batch1")
        results["designs"], this_stream = designs.run(
            design,
            baseline,
            design_audio.samples,
            design_audio.text,
            lambda: progress.tick(units=realtime_units(sizes.design_seconds)),
            whatif,
        )
        results["previous_default"]["latency_ms"] = summarize_ms(this_stream.latencies_s)
        results["previous_default"]["commit_latency_ms"] = summarize_ms(this_stream.commit_latencies_s)
        results["previous_default"]["cpu_s_per_audio_s_one_stream"] = results["designs"]["this_design"][
            "cpu_s_per_audio_s"
        ]
        save()

        progress.start(f"one real-time session ({design_audio.seconds:.0f} s)")
        session = live.session(design, design_audio.samples, design_audio.text)
        results["streamed"].update(
            {
                "latency_ms": session["first_partial_ms"],
                "commit_latency_ms": session["commit_ms"],
                "cpu_s_per_audio_s_one_stream": session["cpu_s_per_audio_s"],
                "latency_source": session["source"],
            }
        )
        results["designs"]["session"] = session
        progress.tick(units=realtime_units(sizes.design_seconds))
        save()

        progress.start("capacity search (baseline, previous default and sessions interleaved)")
        compared = {"baseline": baseline, "design": design, "design_session": design}
        if whatif:
            compared["design_batch1"] = whatif

        def step_done(detail: str) -> None:
            progress.tick(detail, realtime_units(sizes.step_seconds))

        results["capacity"] = capacity.run(
            compared, sizes.step_seconds, limit, CHUNK_S, step_done, start=sizes.first_streams
        )
        save()

        if not args.no_peer:
            progress.start("peer: WhisperLive")
            results["peer"] = peer.run(design_audio, args.device, out / "logs", progress.note, peer_items)
            results["peer"]["compared"] = peer.compared(results, items, design_audio.name)
            progress.tick(units=realtime_units(peer_s))
            save()
        progress.close()
        results["meta"]["phase_s"] = progress.phase_seconds

        curves = {
            "sessions (default), first partial": results["designs"]["session"]["_first_partial"],
            "sessions (default), commit": results["designs"]["session"]["_commit"],
            "HTTP chunks (previous default)": this_stream.latencies_s,
            "HTTP chunks, commit": this_stream.commit_latencies_s,
        }
        for key, label in (("this_design_batch1", "HTTP chunks, STT_BATCH_MAX=1"), ("seed_design", "seed design")):
            if results["designs"].get(key, {}).get("_latencies"):
                curves[label] = results["designs"][key]["_latencies"]
        peer_run, how = report.peer_design_run(results.get("peer", {}))
        if peer_run.get("_latencies"):
            curves[f"WhisperLive, {how} (segment commit)"] = peer_run["_latencies"]
        report.plot_latency_cdf(curves, out / "latency_cdf.png", CHUNK_S)
        report.plot_capacity(results["capacity"], out / "throughput_vs_streams.png", CHUNK_S)
    finally:
        for stack in stacks.values():
            stack.stop()
    results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
    results["meta"]["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["goals"] = check(results)
    report.write_json(results, out)
    report.write_markdown(results, out)
    print(report.markdown(results))
    for g in results["goals"]:
        print(f"{'PASS' if g['pass'] else 'FAIL'}  {g['goal']}: {g['value']}")
    print(
        f"\nresults: {out / 'latest.json'}, {out / 'latest.md'}, {out / 'latency_cdf.png'}, "
        f"{out / 'throughput_vs_streams.png'}"
    )
    return 0 if all(g["pass"] for g in results["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
