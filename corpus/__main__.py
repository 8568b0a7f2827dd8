"""``python -m corpus`` (``make corpus``): fetch and prepare the speech and non-speech corpora."""

from __future__ import annotations

import argparse
import sys

from corpus.devset import dev_set, summary
from corpus.fetch import fetch, long_recording, nonspeech_clips, speech_clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch and prepare the speech / non-speech corpora.")
    parser.add_argument("--long", type=float, default=0, help="also build a long recording of this many seconds")
    parser.add_argument(
        "--dev-set",
        action="store_true",
        help="also fetch and build the broader dev set (corpus.devset: ~140 MB of downloads, a minute or two)",
    )
    args = parser.parse_args(argv)
    root = fetch()
    print(f"corpus ready in {root}: {len(speech_clips())} speech clips, {len(nonspeech_clips())} non-speech clips")
    if args.long:
        clip = long_recording(args.long)
        print(clip.path)
    if args.dev_set:
        print(summary(dev_set("all")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
