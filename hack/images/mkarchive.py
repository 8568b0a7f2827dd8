"""Pack layer tarballs (or directories) into a docker-archive image tarball.

``ctr images import`` and ``docker load`` both read this format: a ``manifest.json``, an
image config JSON and one uncompressed tar per layer. Layers given as tar files are used as
they are, so several images built from the same base layer share it (same digest) in the
container runtime's content store.

Usage:
  mkarchive.py --out IMG.tar --tag localhost/x:dev [--layer L.tar ...] [--layer-dir DIR]
               [--env K=V ...] [--user 10001:10001] [--workdir /] [--cmd JSON] [--entrypoint P]
               [--port 5004] [--label K=V ...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tar_directory(directory: Path, dest: Path) -> None:
    """A reproducible, root-owned tar of ``directory``'s contents."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False, filter=normalise)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--layer", action="append", default=[], type=Path, help="layer tar (in order)")
    parser.add_argument("--layer-dir", action="append", default=[], type=Path, help="directory packed as a layer")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--user", default="")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--cmd", default="", help="JSON list")
    parser.add_argument("--entrypoint", default="")
    parser.add_argument("--port", action="append", default=[])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        layers = list(args.layer)
        for i, directory in enumerate(args.layer_dir):
            dest = Path(tmp) / f"dir{i}.tar"
            tar_directory(directory, dest)
            layers.append(dest)
        if not layers:
            parser.error("no layers")
        diff_ids = [sha256_file(layer) for layer in layers]
        config: dict = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *args.env]}
        if args.user:
            config["User"] = args.user
        if args.workdir:
            config["WorkingDir"] = args.workdir
        if args.cmd:
            config["Cmd"] = json.loads(args.cmd)
        if args.entrypoint:
            config["Entrypoint"] = [args.entrypoint]
        if args.port:
            config["ExposedPorts"] = {f"{p}/tcp": {} for p in args.port}
        if args.label:
            config["Labels"] = dict(item.split("=", 1) for item in args.label)
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
            "history": [{"created_by": "hack/images/build.sh"} for _ in layers],
        }
        config_bytes = json.dumps(image_config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        manifest = [
            {"Config": config_name, "RepoTags": [args.tag], "Layers": [f"{d}/layer.tar" for d in diff_ids]}
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(args.out, "w") as out:
            add_bytes(out, config_name, config_bytes)
            for digest, layer in zip(diff_ids, layers, strict=True):
                out.add(str(layer), arcname=f"{digest}/layer.tar")
            add_bytes(out, "manifest.json", json.dumps(manifest).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
