"""``stt-client``: live transcription from the microphone, a file or stdin through the proxy.

The final transcript goes to stdout (other tools pipe it); everything meant for the person
watching (live view, progress, errors) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from client import output
from client.api import SttApi
from client.display import Display
from client.pipeline import POLICIES, Pipeline, Settings
from client.sources import MicSource, Source, SourceError, StdinSource, file_source, list_devices
from client.stats import Stats
from client.stitcher import join_words

DEFAULT_URL = "http://127.0.0.1:5001"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stt-client",
        description="Live speech-to-text through the STT proxy. Microphone by default; the final transcript "
        "is printed on stdout, the live view on stderr.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--file", type=Path, help="transcribe an audio file (WAV, FLAC, MP3, OGG, WebM, raw .pcm)")
    src.add_argument("--stdin", action="store_true", help="read raw 16 kHz mono s16le PCM from stdin")
    src.add_argument("--device", help="microphone: device name or index (default: the system default)")
    src.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--realtime", action="store_true", help="with --file: send at real-time pace, as a live source")
    p.add_argument("--url", default=DEFAULT_URL, help=f"proxy URL (default {DEFAULT_URL})")
    p.add_argument("--language", help="language code, e.g. en (default: detected by the service)")
    p.add_argument(
        "--detector",
        choices=("on", "off"),
        default="on",
        help="ask /detect first and skip chunks without speech (default on)",
    )
    p.add_argument("--output", type=Path, help="also write the transcript to PATH (.txt, .jsonl, .srt or .vtt)")
    p.add_argument(
        "--chunk", type=float, default=Settings.chunk_s, help=f"chunk length in seconds (default {Settings.chunk_s:g})"
    )
    p.add_argument(
        "--overlap",
        type=float,
        default=Settings.overlap_s,
        help=f"overlap between chunks in seconds (default {Settings.overlap_s:g}, measured: see docs/client.md)",
    )
    p.add_argument(
        "--context",
        type=float,
        default=Settings.context_s,
        help=f"seconds of audio before each chunk sent with it as left context "
        f"(default {Settings.context_s:g}, measured: see docs/client.md; 0 sends the chunk alone)",
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        default=Settings.policy,
        help="how words become final: 'stitch' merges overlapping chunks; 'agreement' re-decodes the "
        "uncommitted audio every --step seconds and commits what two decodes agree on "
        f"(default {Settings.policy}; measured: see docs/client.md)",
    )
    p.add_argument(
        "--step",
        type=float,
        default=Settings.step_s,
        help=f"agreement: seconds of new audio per decode (default {Settings.step_s:g})",
    )
    p.add_argument(
        "--window",
        type=float,
        default=Settings.window_s,
        help=f"agreement: most seconds of uncommitted audio in one decode; older words are committed "
        f"even without agreement, which bounds latency (default {Settings.window_s:g})",
    )
    p.add_argument(
        "--prompt",
        choices=("on", "off"),
        default="off",
        help="send the text heard so far as Whisper's prompt (default off: measured worse, see docs/client.md)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="transcription requests in flight (default 2)")
    p.add_argument(
        "--max-held",
        type=int,
        default=64,
        help="chunks held in memory while the service is unreachable before spilling to disk (default 64)",
    )
    p.add_argument("--spill-dir", type=Path, help="directory for spilled chunks (default: the system temp dir)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--quiet", action="store_true", help="no live view on stderr")
    return p


def make_source(args: argparse.Namespace) -> Source:
    if args.file:
        return file_source(args.file, realtime=args.realtime)
    if args.stdin:
        return StdinSource()
    return MicSource(args.device)


async def run(args: argparse.Namespace) -> int:
    source = make_source(args)
    stats = Stats()
    if args.metrics_port:
        from client.metrics import serve

        serve(stats, args.metrics_port)
    display = Display(stats, total_s=source.duration_s if not args.realtime else None, quiet=args.quiet)
    api = SttApi(args.url)
    settings = Settings(
        chunk_s=args.chunk,
        overlap_s=args.overlap,
        context_s=args.context,
        detector=args.detector == "on",
        language=args.language,
        prompt=args.prompt == "on",
        concurrency=max(1, args.concurrency),
        max_in_memory=args.max_held,
        spill_dir=args.spill_dir,
        policy=args.policy,
        step_s=args.step,
        window_s=args.window,
    )
    pipeline = Pipeline(source, api, settings, stats, display)
    loop = asyncio.get_running_loop()
    interrupts = 0
    tasks: set[asyncio.Task] = set()  # keep a reference: the loop holds tasks only weakly

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            display.stream.write("\n-- stopping: finishing the chunks in flight (Ctrl-C again to give up on them)\n")
            pipeline.stop()
        else:
            display.stream.write("\n-- giving up on the remaining chunks\n")
            tasks.add(loop.create_task(pipeline.abort()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    try:
        words = await pipeline.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await api.aclose()
        display.close()
    words = words if words else pipeline.committed
    if args.output:
        output.write(args.output, words)
    sys.stdout.write(join_words(words) + "\n")
    sys.stdout.flush()
    if stats.chunks_dropped:
        print(
            f"stt-client: {stats.chunks_dropped} chunks were refused by the service and are missing "
            f"({stats.last_error})",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="stt-client: %(message)s")
    if args.output and args.output.suffix.lower() not in output.FORMATS:
        print(f"stt-client: --output must end in one of {', '.join(output.FORMATS)}", file=sys.stderr)
        return 2
    if args.policy == "agreement":
        try:
            Settings(context_s=args.context, step_s=args.step, window_s=args.window).policy_config()
        except ValueError as exc:
            print(f"stt-client: --step/--window/--context: {exc}", file=sys.stderr)
            return 2
    elif not 0 <= args.overlap < args.chunk:
        print(f"stt-client: --overlap must be at least 0 and less than --chunk ({args.chunk})", file=sys.stderr)
        return 2
    elif not 0 <= args.context <= args.chunk:
        print(f"stt-client: --context must be at least 0 and at most --chunk ({args.chunk})", file=sys.stderr)
        return 2
    try:
        if args.list_devices:
            print(list_devices())
            return 0
        return asyncio.run(run(args))
    except SourceError as exc:
        print(f"stt-client: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
