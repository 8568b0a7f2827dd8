"""What the images install, and from what: the static half of the supply-chain checks (no network).

- requirements.lock pins every runtime dependency of pyproject.toml exactly, inside its declared
  range, with a sha256 for every file, for both image interpreters (3.11 CPU, 3.12 GPU stage);
- every image build (the four Dockerfiles and the Docker-free hack/images/build.sh) resolves
  nothing on its own: each pip command installs the lock with --require-hashes, or adds nothing
  (--no-deps);
- every base image is pinned by digest, and ``make pin-base-images`` rewrites them correctly;
- nothing GPU-only (NVIDIA_* env, CUDA base, nvidia/cuda packages) reaches the CPU images.

``make lock`` and ``make test-min-versions`` are the networked half (docs/reliability.md).
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements.lock"
DOCKERFILES = [
    "services/base/Dockerfile",
    "services/tiny/Dockerfile",
    "services/proxy/Dockerfile",
    "controller/Dockerfile",
]
BUILD_SH = REPO / "hack" / "images" / "build.sh"
# The interpreters the images run: python:3.11-slim / Debian bookworm's python3, and the GPU
# stage's Ubuntu 24.04 python3 (services/base/Dockerfile, gpu-build)
IMAGE_PYTHONS = ["3.11.2", "3.12.3"]
GPU_WORDS = re.compile(r"NVIDIA_|cuda|cudnn|nvidia|cublas", re.IGNORECASE)

spec = importlib.util.spec_from_file_location("pin_base_images", REPO / "hack" / "images" / "pin_base_images.py")
assert spec and spec.loader
pin_base_images = importlib.util.module_from_spec(spec)
sys.modules["pin_base_images"] = pin_base_images
spec.loader.exec_module(pin_base_images)


# ---- the lock


@dataclass
class Pin:
    name: str
    operator: str
    version: str
    marker: Marker | None
    hashes: list[str] = field(default_factory=list)

    def applies(self, python: str) -> bool:
        """Whether pip on Linux x86_64 CPython ``python`` installs this line."""
        if self.marker is None:
            return True
        env = {
            "python_version": ".".join(python.split(".")[:2]),
            "python_full_version": python,
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "os_name": "posix",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
        }
        return self.marker.evaluate(env)


def parse_lock(text: str) -> list[Pin]:
    """The requirement lines of a pip requirements file, continuation lines joined."""
    entries: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and entries and entries[-1].endswith("\\"):
            entries[-1] = entries[-1][:-1] + " " + line.strip()
        else:
            entries.append(line.strip())
    pins = []
    for entry in entries:
        entry = entry.rstrip("\\").strip()
        hashes = re.findall(r"--hash=(\S+)", entry)
        req_text = re.sub(r"\s*--hash=\S+", "", entry).strip()
        m = re.fullmatch(r"([A-Za-z0-9._-]+)\s*(===|==|>=|<=|~=|!=|>|<)?\s*([^\s;]*)\s*(?:;\s*(.+))?", req_text)
        assert m, f"not a requirement line: {entry[:120]}"
        pins.append(
            Pin(canonicalize_name(m[1]), m[2] or "", m[3], Marker(m[4]) if m[4] else None, hashes),
        )
    return pins


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(dep) for dep in project["dependencies"]]


def check_lock(text: str) -> list[str]:
    """What is wrong with a lock against pyproject.toml's runtime dependencies (empty: nothing)."""
    problems = []
    pins = parse_lock(text)
    for pin in pins:
        if pin.operator != "==" or not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", pin.version):
            problems.append(f"{pin.name}: not pinned with == to one version")
        if not pin.hashes or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes):
            problems.append(f"{pin.name}: no sha256 --hash (pip --require-hashes refuses it)")
        if GPU_WORDS.search(pin.name):
            problems.append(f"{pin.name}: a GPU package in the lock the CPU images install")
    for python in IMAGE_PYTHONS:
        installed: dict[str, list[Pin]] = {}
        for pin in pins:
            if pin.applies(python):
                installed.setdefault(pin.name, []).append(pin)
        for name, same in installed.items():
            if len(same) > 1:
                problems.append(f"{name}: {len(same)} lines apply on Python {python}")
        for req in runtime_requirements():
            name = canonicalize_name(req.name)
            if name not in installed:
                problems.append(f"{req}: not in the lock for Python {python}")
            elif not all(req.specifier.contains(Version(p.version), prereleases=True) for p in installed[name]):
                problems.append(f"{req}: the lock pins {installed[name][0].version} (Python {python})")
    return problems


def test_the_lock_pins_every_runtime_dependency_exactly_within_its_range_with_hashes() -> None:
    text = LOCK.read_text()
    assert check_lock(text) == []
    assert len(parse_lock(text)) > len(runtime_requirements())  # the transitive ones are pinned too


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda t: re.sub(r"(?m)^fastapi==\S+", "fastapi==0.100.0", t), "fastapi>=0.1"),  # below its floor
        (lambda t: re.sub(r"(?m)^fastapi==", "fastapi>=", t), "fastapi: not pinned with =="),
        (lambda t: re.sub(r"(?m)^(kopf==\S+ \\\n)(\s+--hash=\S+( \\)?\n)+", r"kopf==1.45.2\n", t), "kopf: no sha256"),
        (lambda t: re.sub(r"(?m)^httpx==\S+ \\\n(\s+--hash=\S+( \\)?\n)+", "", t), "httpx"),  # dropped
        (lambda t: t + "nvidia-cublas-cu12==12.6.4.1 \\\n    --hash=sha256:" + "0" * 64 + "\n", "nvidia-cublas"),
        (
            lambda t: t + "numpy==2.5.5 ; python_full_version >= '3.12' \\\n    --hash=sha256:" + "1" * 64 + "\n",
            "3.12.3",
        ),
    ],
)
def test_the_lock_check_finds_each_kind_of_fault(edit, problem: str) -> None:
    broken = edit(LOCK.read_text())
    assert broken != LOCK.read_text()
    problems = check_lock(broken)
    assert any(problem in p for p in problems), problems


# ---- the image builds install the lock and nothing else


def shell_commands(text: str) -> list[str]:
    """Each logical line (continuations joined, comments dropped) split at ;, && and ||."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [c.strip() for line in joined.splitlines() for c in re.split(r";|&&|\|\|", line) if c.strip()]


def pip_resolving_commands(text: str) -> list[str]:
    """pip install / wheel / download commands, with build.sh's PIPI array written out."""
    pipi = re.search(r"^PIPI=\((.*)\)$", text, re.M)
    if pipi:
        text = text.replace('"${PIPI[@]}"', pipi[1])
    commands = [c for c in shell_commands(text) if not c.startswith("PIPI=(")]
    return [c for c in commands if re.search(r"\bpip(3)?\s+(install|wheel|download)\b", c)]


def lock_problems(text: str, lock_paths: tuple[str, ...]) -> list[str]:
    problems = []
    commands = pip_resolving_commands(text)
    locked = 0
    for cmd in commands:
        reads_lock = any(re.search(rf"(-r|--requirement)[ =]\"?{re.escape(p)}\"?(\s|$)", cmd) for p in lock_paths)
        if reads_lock and "--require-hashes" in cmd:
            locked += 1
        elif "--no-deps" not in cmd:
            problems.append(f"resolves outside the lock: {cmd}")
    if not locked:
        problems.append("no pip install --require-hashes -r <lock>")
    return problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_each_dockerfile_installs_only_the_hashed_lock(dockerfile: str) -> None:
    text = (REPO / dockerfile).read_text()
    assert re.search(r"(?m)^COPY requirements\.lock /tmp/requirements\.lock$", text)
    assert lock_problems(text, ("/tmp/requirements.lock",)) == []
    # the GPU stage too: two venvs, two locked installs
    expected = 2 if "gpu-build" in text else 1
    assert sum("--require-hashes" in c for c in pip_resolving_commands(text)) == expected


def test_the_docker_free_builder_installs_only_the_hashed_lock() -> None:
    text = BUILD_SH.read_text()
    assert re.search(r'(?m)^LOCK="\$REPO/requirements\.lock"$', text)
    assert 'cp "$LOCK" "$ROOT/tmp/requirements.lock"' in text
    assert lock_problems(text, ("$LOCK", "/tmp/requirements.lock")) == []
    download = [c for c in pip_resolving_commands(text) if " download " in c]
    assert download and all("--only-binary :all:" in c and "--require-hashes" in c for c in download)


@pytest.mark.parametrize(
    "bad",
    [
        "RUN pip install /src",  # the old way: resolves the newest versions at build time
        "RUN pip install -r /tmp/requirements.lock && pip install --no-deps /src",  # no hashes
        "RUN pip install --require-hashes -r /tmp/other.txt",  # another file
        "RUN test -f x || \\\n    pip install fastapi",
    ],
)
def test_the_install_check_rejects_unlocked_installs(bad: str) -> None:
    assert lock_problems(bad, ("/tmp/requirements.lock",)) != []


# ---- base images pinned by digest


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_base_image_is_pinned_by_digest(dockerfile: str) -> None:
    refs = pin_base_images.base_image_refs((REPO / dockerfile).read_text())
    assert refs, "no base image found: the parser no longer matches the Dockerfile"
    assert [ref for _, ref in refs if not pin_base_images.is_pinned(ref)] == []
    tags = {ref.split("@")[0] for _, ref in refs}
    assert "python:3.11-slim-bookworm" in tags
    if "gpu" in dockerfile or "base" in dockerfile:
        assert "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04" in tags


def test_pin_rewrites_tags_and_old_digests_and_leaves_stages_alone() -> None:
    old = "sha256:" + "a" * 64
    text = (
        "ARG PYTHON_IMAGE=python:3.11-slim-bookworm\n"
        f"ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04@{old}\n"
        "FROM ${PYTHON_IMAGE} AS build\n"
        "FROM --platform=linux/amd64 debian:bookworm-slim AS other\n"
        "FROM build AS final\n"
        "COPY --from=build /a /a\n"
    )
    digests = {
        tag: "sha256:" + f"{i}" * 64 for i, tag in enumerate(["python:3.11-slim-bookworm", "debian:bookworm-slim"])
    }
    digests["nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"] = "sha256:" + "c" * 64
    asked: list[str] = []

    def resolve(tag: str) -> str:
        asked.append(tag)
        return digests[tag]

    pinned = pin_base_images.pin(text, resolve)
    assert sorted(asked) == sorted(digests)  # build (a stage) and ${PYTHON_IMAGE} are no images
    assert f"ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:{'0' * 64}\n" in pinned
    assert f"ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04@sha256:{'c' * 64}\n" in pinned
    assert f"FROM --platform=linux/amd64 debian:bookworm-slim@sha256:{'1' * 64} AS other\n" in pinned
    assert "FROM build AS final\n" in pinned
    assert all(pin_base_images.is_pinned(ref) for _, ref in pin_base_images.base_image_refs(pinned))
    assert not pin_base_images.is_pinned("python:3.11-slim-bookworm")
    assert not pin_base_images.is_pinned(f"python@{old}")  # a digest without the tag it tracks
    with pytest.raises(ValueError):
        pin_base_images.pin(text, lambda tag: "latest")


def test_pin_check_mode_reports_unpinned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    df = tmp_path / "Dockerfile"
    df.write_text("ARG PYTHON_IMAGE=python:3.11-slim-bookworm\nFROM ${PYTHON_IMAGE}\n")
    assert pin_base_images.main(["--check", str(df)]) == 1
    assert "python:3.11-slim-bookworm" in capsys.readouterr().out
    assert pin_base_images.main(["--check", *(str(REPO / d) for d in DOCKERFILES)]) == 0


# ---- nothing GPU-only in the CPU images


@dataclass
class Stage:
    name: str
    base: str
    body: list[str]


def stages(text: str) -> list[Stage]:
    """A Dockerfile's stages, their base (global ARG defaults substituted) and instructions."""
    defaults: dict[str, str] = {}
    result: list[Stage] = []
    for instr in shell_commands_by_instruction(text):
        keyword, _, rest = instr.partition(" ")
        if keyword.upper() == "ARG" and not result and "=" in rest:
            key, _, value = rest.partition("=")
            defaults[key.strip()] = value.strip()
        elif keyword.upper() == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else str(len(result))
            result.append(Stage(name, base, []))
        elif result:
            result[-1].body.append(instr)
    return result


def shell_commands_by_instruction(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def image_stages(all_stages: list[Stage], target: str) -> list[Stage]:
    """The stages whose files or settings end up in ``target``: its FROM chain and COPY --from sources."""
    by_name = {s.name: s for s in all_stages}
    seen: list[Stage] = []
    todo = [target]
    while todo:
        stage = by_name[todo.pop()]
        if stage in seen:
            continue
        seen.append(stage)
        if stage.base in by_name:
            todo.append(stage.base)
        todo += [m for instr in stage.body for m in re.findall(r"--from=(\S+)", instr) if m in by_name]
    return seen


def gpu_bits(all_stages: list[Stage], target: str) -> list[str]:
    found = []
    for stage in image_stages(all_stages, target):
        if GPU_WORDS.search(stage.base):
            found.append(f"stage {stage.name} is built FROM {stage.base}")
        found += [f"stage {stage.name}: {instr}" for instr in stage.body if GPU_WORDS.search(instr)]
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_the_cpu_images_carry_no_gpu_settings(dockerfile: str) -> None:
    all_stages = stages((REPO / dockerfile).read_text())
    default = all_stages[-1]  # `docker build` without --target builds the last stage
    if dockerfile == "services/base/Dockerfile":
        assert default.name == "cpu"
        # the check does see GPU bits where they belong: the gpu target has them
        assert any("NVIDIA_VISIBLE_DEVICES" in b for b in gpu_bits(all_stages, "gpu"))
        assert any("nvidia/cuda" in b for b in gpu_bits(all_stages, "gpu"))
    assert gpu_bits(all_stages, default.name) == []


def test_the_gpu_check_catches_a_cuda_setting_leaking_into_cpu() -> None:
    text = (REPO / "services/base/Dockerfile").read_text()
    # an env line added to the shared build stage reaches the cpu image through COPY --from=build
    leaky = text.replace(
        "FROM ${PYTHON_IMAGE} AS build\n", "FROM ${PYTHON_IMAGE} AS build\nENV NVIDIA_VISIBLE_DEVICES=all\n"
    )
    assert leaky != text
    assert gpu_bits(stages(leaky), "cpu") != []
    # and so does a cpu stage built on the CUDA image
    cuda_based = text.replace("FROM ${PYTHON_IMAGE} AS cpu", "FROM ${CUDA_IMAGE} AS cpu")
    assert cuda_based != text
    assert gpu_bits(stages(cuda_based), "cpu") != []


def test_the_docker_free_images_carry_no_gpu_settings() -> None:
    text = BUILD_SH.read_text()
    env_lines = re.findall(r'"env": \[(.*?)\]', text, re.S)
    assert env_lines and "STT_MODEL_CACHE" in env_lines[0]
    assert not any(GPU_WORDS.search(e) for e in env_lines)
    debs = re.search(r'^DEBS="(.*)"$', text, re.M)
    assert debs and "python3" in debs[1] and not GPU_WORDS.search(debs[1])
