"""Pack layer tarballs (or directories) into a docker-archive image tarball.

``ctr images import`` and ``docker load`` both read this format: a ``manifest.json``, one image
config JSON per image and one uncompressed tar per layer. Several images may go into one archive;
a layer they share (the same tar file) is stored, hashed and imported once.

Single image:
  mkarchive.py --out IMG.tar --tag localhost/x:dev [--layer L.tar ...] [--layer-dir DIR ...]
               [--env K=V ...] [--user 10001:10001] [--workdir /] [--cmd JSON] [--entrypoint P]
               [--port 5004 ...] [--label K=V ...]
Several images:
  mkarchive.py --out ALL.tar --spec images.json
  where images.json is a list of objects with the keys tag, layers, layer_dirs, env, user,
  workdir, cmd, entrypoint, ports, labels (all but tag optional).
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

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tar_directory(directory: Path, dest: Path) -> None:
    """A reproducible, root-owned tar of ``directory``'s contents (mtime 0)."""

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


def image_config(spec: dict, diff_ids: list[str]) -> bytes:
    env = spec.get("env", [])
    if not any(item.startswith("PATH=") for item in env):
        env = [DEFAULT_PATH, *env]
    config: dict = {"Env": env}
    if spec.get("user"):
        config["User"] = spec["user"]
    if spec.get("workdir"):
        config["WorkingDir"] = spec["workdir"]
    if spec.get("cmd"):
        config["Cmd"] = spec["cmd"]
    if spec.get("entrypoint"):
        config["Entrypoint"] = [spec["entrypoint"]]
    if spec.get("ports"):
        config["ExposedPorts"] = {f"{p}/tcp": {} for p in spec["ports"]}
    if spec.get("labels"):
        config["Labels"] = spec["labels"]
    document = {
        "architecture": "amd64",
        "os": "linux",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": "hack/images/build.sh"} for _ in diff_ids],
    }
    return json.dumps(document, sort_keys=True).encode()


def write_archive(out: Path, specs: list[dict]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        digests: dict[Path, str] = {}
        manifest = []
        configs: dict[str, bytes] = {}
        for i, spec in enumerate(specs):
            layers = [Path(p) for p in spec.get("layers", [])]
            for j, directory in enumerate(spec.get("layer_dirs", [])):
                dest = Path(tmp) / f"img{i}-dir{j}.tar"
                tar_directory(Path(directory), dest)
                layers.append(dest)
            if not layers:
                raise SystemExit(f"image {spec['tag']}: no layers")
            for layer in layers:
                if layer.resolve() not in digests:
                    digests[layer.resolve()] = sha256_file(layer)
            diff_ids = [digests[layer.resolve()] for layer in layers]
            config_bytes = image_config(spec, diff_ids)
            config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
            configs[config_name] = config_bytes
            manifest.append(
                {"Config": config_name, "RepoTags": [spec["tag"]], "Layers": [f"{d}/layer.tar" for d in diff_ids]}
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w") as archive:
            for name, data in configs.items():
                add_bytes(archive, name, data)
            for layer, digest in digests.items():
                archive.add(str(layer), arcname=f"{digest}/layer.tar")
            add_bytes(archive, "manifest.json", json.dumps(manifest).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--spec", type=Path, help="JSON list of image specs (several images)")
    parser.add_argument("--tag")
    parser.add_argument("--layer", action="append", default=[], help="layer tar (in order)")
    parser.add_argument("--layer-dir", action="append", default=[], help="directory packed as a layer")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--user", default="")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--cmd", default="", help="JSON list")
    parser.add_argument("--entrypoint", default="")
    parser.add_argument("--port", action="append", default=[])
    args = parser.parse_args()
    if args.spec:
        specs = json.loads(args.spec.read_text())
    elif args.tag:
        specs = [
            {
                "tag": args.tag,
                "layers": args.layer,
                "layer_dirs": args.layer_dir,
                "env": args.env,
                "user": args.user,
                "workdir": args.workdir,
                "cmd": json.loads(args.cmd) if args.cmd else None,
                "entrypoint": args.entrypoint,
                "ports": args.port,
                "labels": dict(item.split("=", 1) for item in args.label),
            }
        ]
    else:
        parser.error("--tag or --spec is required")
    write_archive(args.out, specs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
