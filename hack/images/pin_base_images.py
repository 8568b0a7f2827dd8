"""Pin a Dockerfile's base images to digests: ``image:tag`` becomes ``image:tag@sha256:<digest>``.

A tag is a pointer the registry may move at any time (python:3.11-slim-bookworm is rebuilt every
few weeks), so a build from a tag is not reproducible and a replaced image arrives unnoticed. The
digest is the content address of the tag's multi-platform index: the same bytes on every build.
The tag stays in the reference so a reader (and this script, on the next run) knows what it tracks.

    python3 hack/images/pin_base_images.py [--check] DOCKERFILE...      (`make pin-base-images`)

Resolves each tag's current digest with ``docker buildx imagetools inspect``, ``crane digest`` or
``skopeo inspect --raw`` (the first one found) and rewrites ``ARG *_IMAGE=`` defaults and literal
``FROM`` references in place. --check only lists references that are not pinned (exit 1 if any).
tests/hack/test_supply_chain.py uses :func:`base_image_refs` to hold the project's Dockerfile to this.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# ARG PYTHON_IMAGE=python:3.11-slim-bookworm[@sha256:...]  (the Dockerfile's FROM lines use these)
ARG_RE = re.compile(r"^(?P<head>\s*ARG\s+\w*IMAGE=)(?P<ref>\S+)\s*$", re.IGNORECASE)
# FROM [--platform=...] ref [AS name]; a ref that is a variable or an earlier stage is not a base image
FROM_RE = re.compile(r"^(?P<head>\s*FROM\s+(?:--\S+\s+)*)(?P<ref>\S+)(?P<tail>(?:\s+AS\s+\S+)?\s*)$", re.IGNORECASE)
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")


def base_image_refs(text: str) -> list[tuple[int, str]]:
    """(line index, image reference) for every base image a Dockerfile names: ARG *IMAGE defaults
    and FROM lines that name an image rather than a ${VARIABLE}, an earlier stage or scratch."""
    stages: set[str] = set()
    refs: list[tuple[int, str]] = []
    for i, line in enumerate(text.splitlines()):
        if m := ARG_RE.match(line):
            refs.append((i, m["ref"]))
        elif m := FROM_RE.match(line):
            ref = m["ref"]
            if "$" not in ref and ref.lower() not in stages and ref != "scratch":
                refs.append((i, ref))
            if m["tail"].strip():
                stages.add(m["tail"].split()[-1].lower())
    return refs


def is_pinned(ref: str) -> bool:
    """``name:tag@sha256:<64 hex>``: a digest, and the tag it was resolved from."""
    return bool(DIGEST_RE.search(ref)) and ":" in ref.split("@", 1)[0].rsplit("/", 1)[-1]


def pin(text: str, resolve: Callable[[str], str]) -> str:
    """``text`` with every base image reference replaced by ``tag@<resolve(tag)>``."""
    lines = text.splitlines(keepends=True)
    for i, ref in base_image_refs(text):
        tag = ref.split("@", 1)[0]
        digest = resolve(tag)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ValueError(f"{tag}: resolver returned {digest!r}, not a sha256 digest")
        lines[i] = lines[i].replace(ref, f"{tag}@{digest}", 1)
    return "".join(lines)


def registry_resolver() -> Callable[[str], str]:
    """The digest of a tag's top-level manifest (the multi-platform index), from whichever tool exists."""
    if shutil.which("docker") and subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode == 0:
        cmd = ["docker", "buildx", "imagetools", "inspect", "--format", "{{.Manifest.Digest}}"]
        return lambda tag: subprocess.run([*cmd, tag], check=True, capture_output=True, text=True).stdout.strip()
    if shutil.which("crane"):
        return lambda tag: subprocess.run(
            ["crane", "digest", tag], check=True, capture_output=True, text=True
        ).stdout.strip()
    if shutil.which("skopeo"):
        # the digest is the sha256 of the manifest bytes exactly as the registry serves them
        def skopeo(tag: str) -> str:
            raw = subprocess.run(["skopeo", "inspect", "--raw", f"docker://{tag}"], check=True, capture_output=True)
            return "sha256:" + hashlib.sha256(raw.stdout).hexdigest()

        return skopeo
    sys.exit("pin-base-images needs `docker buildx`, crane or skopeo (and access to the registry)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list unpinned references; exit 1 if any")
    parser.add_argument("dockerfiles", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.check:
        loose = [
            f"{df}:{i + 1}: {ref}"
            for df in args.dockerfiles
            for i, ref in base_image_refs(df.read_text())
            if not is_pinned(ref)
        ]
        print("\n".join(loose) or "every base image is pinned by digest")
        return 1 if loose else 0
    resolve = registry_resolver()
    cache: dict[str, str] = {}

    def cached(tag: str) -> str:
        if tag not in cache:
            cache[tag] = resolve(tag)
            print(f"{tag} -> {cache[tag]}")
        return cache[tag]

    for df in args.dockerfiles:
        old = df.read_text()
        new = pin(old, cached)
        if new != old:
            df.write_text(new)
            print(f"pinned {df}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
