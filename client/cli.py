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
from client.pipeline import POLICIES, Pipeline, RecoveredRun, Recovery, Settings
from client.sources import MicSource, Source, SourceError, StdinSource, file_source, list_devices
from client.spill import LeftoverRun, default_spill_root, find_leftovers
from client.stats import Stats
from client.stitcher import join_words
from client.ws_transport import WsFatalError, WsSettings, WsTransport, stream_url
from core.vocabulary import MAX_BEAM_SIZE, SESSION_BEAM_SIZE

DEFAULT_URL = "http://127.0.0.1:5001"
TRANSPORTS = ("ws", "http")
DEFAULT_TRANSPORT = "ws"  # measured: docs/client.md, "Transport"
# Options only the HTTP chunk pipeline has, with their defaults. Given without --transport they
# choose http, so commands written before the WebSocket transport keep meaning what they meant.
HTTP_ONLY_DEFAULTS = {
    "policy": Settings.policy,
    "chunk": Settings.chunk_s,
    "overlap": Settings.overlap_s,
    "prompt": "off",
    "concurrency": 2,
}


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
    p.add_argument(
        "--url",
        action="append",
        help=f"proxy URL (default {DEFAULT_URL}); with --transport ws it may repeat: after a lost connection "
        "the client resumes on the next one",
    )
    p.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="'ws': one streaming session (/v1/stream), the proxy commits words, resumed on another URL "
        "if the connection drops; 'http': the client cuts chunks and sends each to /transcribe "
        f"(default {DEFAULT_TRANSPORT}, or http when an http-only option such as --policy or --chunk is given; "
        "measured: see docs/client.md)",
    )
    p.add_argument("--language", help="language code, e.g. en (default: detected by the service)")
    p.add_argument(
        "--detector",
        choices=("on", "off"),
        default="on",
        help="ask /detect first and skip chunks without speech (default on)",
    )
    p.add_argument("--output", type=Path, help="also write the transcript to PATH (.txt, .jsonl, .srt or .vtt)")
    p.add_argument("--chunk", type=float, help=f"http: chunk length in seconds (default {Settings.chunk_s:g})")
    p.add_argument(
        "--overlap",
        type=float,
        help=f"http: overlap between chunks in seconds (default {Settings.overlap_s:g}, measured: see docs/client.md)",
    )
    p.add_argument(
        "--context",
        type=float,
        default=Settings.context_s,
        help=f"seconds of audio before each chunk sent with it as left context; agreement and ws: committed "
        f"audio decoded before the uncommitted part (default {Settings.context_s:g}, measured: see "
        "docs/client.md; 0 sends the chunk alone)",
    )
    p.add_argument(
        "--policy",
        choices=POLICIES,
        help="http: how words become final: 'stitch' merges overlapping chunks; 'agreement' re-decodes the "
        "uncommitted audio every --step seconds and commits what two decodes agree on "
        f"(default {Settings.policy}; measured: see docs/client.md). ws: the proxy always uses agreement",
    )
    p.add_argument(
        "--step",
        type=float,
        default=Settings.step_s,
        help=f"agreement and ws: seconds of new audio per decode (default {Settings.step_s:g})",
    )
    p.add_argument(
        "--beam-size",
        type=int,
        help=f"ws: Whisper's beams per window, 1 (greedy) to {MAX_BEAM_SIZE} (default: the proxy's, "
        f"{SESSION_BEAM_SIZE}); a wider search costs the backend more decoder time (measured: see docs/client.md)",
    )
    p.add_argument(
        "--window",
        type=float,
        default=Settings.window_s,
        help=f"agreement and ws: most seconds of uncommitted audio in one decode; older words are committed "
        f"even without agreement, which bounds latency (default {Settings.window_s:g})",
    )
    p.add_argument(
        "--prompt",
        choices=("on", "off"),
        help="http: send the text heard so far as Whisper's prompt (default off: measured worse, see docs/client.md)",
    )
    p.add_argument("--concurrency", type=int, help="http: transcription requests in flight (default 2)")
    p.add_argument(
        "--max-held",
        type=int,
        default=64,
        help="chunks held in memory while the service is unreachable before spilling to disk (default 64); "
        "ws: audio not yet acknowledged, in memory up to this many --step seconds, then read back from disk",
    )
    p.add_argument(
        "--spill-dir",
        type=Path,
        help=f"directory for spilled chunks, one run-* directory per run (default {default_spill_root()}, "
        "$XDG_STATE_HOME respected): kept until each chunk is answered, so a killed run's chunks can be "
        "replayed by the next one; ws: the audio not yet acknowledged, written about once a second",
    )
    p.add_argument(
        "--recover",
        choices=("first", "off", "only"),
        default="first",
        help="chunks (ws: audio) a killed run left in --spill-dir: 'first' transcribes them before capturing "
        "(their text goes to stderr, marked recovered); 'off' leaves them for a later run; 'only' transcribes them, "
        "prints their text on stdout and exits (default first)",
    )
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--quiet", action="store_true", help="no live view on stderr")
    return p


def source_label(args: argparse.Namespace) -> str:
    """What the run records with its spilled chunks, for the run that may replay them."""
    if args.file:
        return f"file {args.file}"
    if args.stdin:
        return "stdin"
    return f"microphone {args.device or 'default'}"


def make_source(args: argparse.Namespace) -> Source:
    if args.file:
        return file_source(args.file, realtime=args.realtime)
    if args.stdin:
        return StdinSource()
    return MicSource(args.device)


def ws_settings(args: argparse.Namespace) -> WsSettings:
    return WsSettings(
        language=args.language,
        detector=args.detector == "on",
        step_s=args.step,
        window_s=args.window,
        context_s=args.context,
        beam_size=args.beam_size,
        max_in_memory_s=max(1, args.max_held) * args.step,
        spill_dir=args.spill_dir,
        source_label=source_label(args),
    )


def http_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        chunk_s=args.chunk,
        overlap_s=args.overlap,
        context_s=args.context,
        detector=args.detector == "on",
        language=args.language,
        prompt=args.prompt == "on",
        concurrency=max(1, args.concurrency),
        max_in_memory=args.max_held,
        spill_dir=args.spill_dir,
        source_label=source_label(args),
        policy=args.policy,
        step_s=args.step,
        window_s=args.window,
    )


def report_recovered(runs: list[RecoveredRun], stream) -> None:
    """The text of interrupted runs, each under a line that says it is recovered and from what."""
    for r in runs:
        stream.write(
            f"-- recovered from an interrupted run ({r.run.describe()}): {r.transcribed} of {r.chunks} chunks "
            f"transcribed, {r.dropped} dropped, {r.left} left on disk\n"
        )
        if r.words:
            span = f"{r.words[0].start:.1f}-{r.words[-1].end:.1f} s"
            stream.write(f"[recovered {span}] {r.text}\n")
    stream.flush()


def failures(stats: Stats) -> str:
    """What the exit status 1 is about, from the counters (empty when nothing is missing)."""
    if stats.chunks_dropped:
        return (
            f"{stats.chunks_dropped} chunks are missing from the transcript ({stats.drop_summary()}; "
            f"last error: {stats.last_error})"
        )
    return ""


async def run(args: argparse.Namespace) -> int:
    leftovers: list[LeftoverRun] = []
    if args.recover != "off":
        try:
            leftovers = find_leftovers(args.spill_dir or default_spill_root())
        except OSError as exc:  # an unreadable spill dir must not stop capture
            print(f"stt-client: cannot look for chunks left by an interrupted run: {exc}", file=sys.stderr)
        if not leftovers and args.recover == "only":
            print("stt-client: no chunks left by an interrupted run to recover", file=sys.stderr)
    # With chunks to replay first the source is opened after them: a microphone would overflow meanwhile.
    source = make_source(args) if not leftovers and args.recover != "only" else None
    stats = Stats()
    if args.metrics_port:
        from client.metrics import serve

        serve(stats, args.metrics_port)
    display = Display(
        stats, total_s=source.duration_s if source else None, live=source.live if source else True, quiet=args.quiet
    )
    api: SttApi | None = None
    runner: Pipeline | WsTransport | Recovery | None = None
    finishing = "finishing the recovered chunks in flight"
    loop = asyncio.get_running_loop()
    interrupts = 0
    tasks: set[asyncio.Task] = set()  # keep a reference: the loop holds tasks only weakly

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if isinstance(runner, Recovery):  # the chunks stay on disk: nothing is lost by stopping now
            display.stream.write("\n-- stopping: the recovered chunks not yet answered stay on disk\n")
            interrupts = max(interrupts, 2)
            runner.stop()
        elif runner is None:  # between replay and capture: acted on once the runner exists
            pass
        elif interrupts == 1:
            display.stream.write(f"\n-- stopping: {finishing} (Ctrl-C again to give up on them)\n")
            runner.stop()
        else:
            display.stream.write("\n-- giving up on what is still in flight\n")
            tasks.add(loop.create_task(runner.abort()))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    failure = ""
    words = None
    recovered: list[RecoveredRun] = []
    try:
        if leftovers:
            api = SttApi(args.url[0])  # the proxy's /transcribe, whichever transport the live stream uses
            recovery = runner = Recovery(
                api, http_settings(args), stats, display, runs=leftovers, urls=args.url, ws=ws_settings(args)
            )
            recovered = await recovery.run()
            runner = None
        if recovered or args.recover == "only":
            report_recovered(recovered, sys.stdout if args.recover == "only" else display.stream)
        if args.recover != "only" and interrupts < 2:
            if source is None:
                source = make_source(args)
                display.begin(total_s=source.duration_s, live=source.live)
            if args.transport == "ws":
                runner = WsTransport(source, args.url, ws_settings(args), stats, display)
                finishing = "sending the rest and waiting for the last words"
            else:
                api = api or SttApi(args.url[0])
                runner = Pipeline(source, api, http_settings(args), stats, display)
                finishing = "finishing the chunks in flight"
            if interrupts:  # Ctrl-C came while the runner was being made
                runner.stop()
            words = await runner.run()
    except WsFatalError as exc:
        failure = f"the service refused the stream: {exc}"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if api is not None:
            await api.aclose()
        display.close()
    if source is not None:
        words = words if words else (runner.committed if runner is not None else [])
        if args.output:
            output.write(args.output, words)
        sys.stdout.write(join_words(words) + "\n")
        sys.stdout.flush()
    if isinstance(runner, WsTransport) and not failure and runner.gave_up and runner.unacknowledged_s > 0:
        failure = f"the last {runner.unacknowledged_s:.1f} s of audio were not transcribed ({stats.last_error})"
    failure = failures(stats) or failure
    if stats.chunks_left_on_disk:
        where = args.spill_dir or default_spill_root()
        print(
            f"stt-client: {stats.chunks_left_on_disk} chunks (ws: audio files) were not answered and wait in {where}; "
            "the next run transcribes them first (--recover)",
            file=sys.stderr,
        )
    if stats.spill_failures:
        print(
            f"stt-client: {stats.spill_failures} chunks could not be written to disk and were held in memory",
            file=sys.stderr,
        )
    if failure:
        print(f"stt-client: {failure}", file=sys.stderr)
        return 1
    return 0


def resolve(args: argparse.Namespace) -> str | None:
    """Choose the transport, check the options against it and fill in the defaults left open;
    returns what is wrong, if anything (before anything is opened)."""
    args.url = args.url or [DEFAULT_URL]
    given = [name for name in HTTP_ONLY_DEFAULTS if getattr(args, name) is not None]
    if args.transport is None:
        args.transport = "http" if given else DEFAULT_TRANSPORT
    if args.output and args.output.suffix.lower() not in output.FORMATS:
        return f"--output must end in one of {', '.join(output.FORMATS)}"
    if args.transport == "ws":
        if args.policy == "stitch":
            return "--policy stitch needs --transport http (the streaming proxy commits by agreement)"
        wrong = [f"--{name}" for name in given if name != "policy"]
        if wrong:
            return f"{', '.join(wrong)} only apply to --transport http"
        try:
            for url in args.url:
                stream_url(url)
        except ValueError as exc:
            return f"--url: {exc}"
        if not 1.0 <= args.step <= 10.0:
            return "--step must be between 1 and 10 seconds with --transport ws"
        if args.beam_size is not None and not 1 <= args.beam_size <= MAX_BEAM_SIZE:
            return f"--beam-size must be between 1 (greedy) and {MAX_BEAM_SIZE}"
    elif args.beam_size is not None:
        return "--beam-size needs --transport ws (the streaming proxy asks the backend for it)"
    elif len(args.url) > 1:
        return "--url may repeat only with --transport ws"
    for name, default in HTTP_ONLY_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.transport == "ws" or args.policy == "agreement":
        try:
            Settings(context_s=args.context, step_s=args.step, window_s=args.window).policy_config()
        except ValueError as exc:
            return f"--step/--window/--context: {exc}"
    elif not 0 <= args.overlap < args.chunk:
        return f"--overlap must be at least 0 and less than --chunk ({args.chunk})"
    elif not 0 <= args.context <= args.chunk:
        return f"--context must be at least 0 and at most --chunk ({args.chunk})"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="stt-client: %(message)s")
    problem = resolve(args)
    if problem:
        print(f"stt-client: {problem}", file=sys.stderr)
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
