"""What the images install, and from what: the static half of the supply-chain checks (no network).

- requirements/<role>.lock (one per image role, the pyproject.toml extra of that name) pins every
  dependency of its role exactly, inside its declared range, with a sha256 for every file, for
  both image interpreters (3.11 CPU, 3.12 GPU stage); the locks agree on every version they
  share, and none carries what its role must not (Whisper in the proxy, kopf in the services...);
- every image build (the Dockerfile's targets and the Docker-free hack/images/build.sh) resolves
  nothing on its own: each pip command installs a lock with --require-hashes, or adds nothing
  (--no-deps), and each target installs its own role's lock and no other;
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
ROLES = ["detector", "transcriber", "proxy", "operator"]
LOCKS = {role: REPO / "requirements" / f"{role}.lock" for role in ROLES}
DOCKERFILE = REPO / "Dockerfile"
# the CPU targets are the roles; transcriber-gpu is the same role on the CUDA base
CPU_TARGETS = ROLES
GPU_TARGET = "transcriber-gpu"
# what each role's image must not carry (hack/images/dockerfile-check.sh checks the built images)
FORBIDDEN = {
    "detector": ["kopf", "kubernetes"],
    "transcriber": ["kopf", "kubernetes"],
    "proxy": ["faster-whisper", "ctranslate2", "onnxruntime", "kopf"],
    "operator": ["faster-whisper", "ctranslate2", "onnxruntime", "fastapi", "starlette", "uvicorn"],
}
BUILD_SH = REPO / "hack" / "images" / "build.sh"
# The interpreters the images run: python:3.11-slim / Debian bookworm's python3, and the GPU
# stage's Ubuntu 24.04 python3 (Dockerfile, transcriber-gpu-venv)
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


def role_requirements(role: str) -> list[Requirement]:
    """The core dependencies plus the role's extra, the project's own extras it names expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    own = canonicalize_name(project["name"])
    result = [Requirement(dep) for dep in project["dependencies"]]
    todo, seen = [role], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for dep in map(Requirement, project["optional-dependencies"][extra]):
            if canonicalize_name(dep.name) == own:
                todo += sorted(dep.extras)
            else:
                result.append(dep)
    return result


def check_lock(text: str, role: str) -> list[str]:
    """What is wrong with a role's lock against its pyproject.toml dependencies (empty: nothing)."""
    problems = []
    pins = parse_lock(text)
    for pin in pins:
        if pin.operator != "==" or not re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", pin.version):
            problems.append(f"{pin.name}: not pinned with == to one version")
        if not pin.hashes or not all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes):
            problems.append(f"{pin.name}: no sha256 --hash (pip --require-hashes refuses it)")
        if GPU_WORDS.search(pin.name):
            problems.append(f"{pin.name}: a GPU package in the lock the CPU images install")
        if pin.name in FORBIDDEN[role]:
            problems.append(f"{pin.name}: in the {role} lock, but the {role} image must not carry it")
    for python in IMAGE_PYTHONS:
        installed: dict[str, list[Pin]] = {}
        for pin in pins:
            if pin.applies(python):
                installed.setdefault(pin.name, []).append(pin)
        for name, same in installed.items():
            if len(same) > 1:
                problems.append(f"{name}: {len(same)} lines apply on Python {python}")
        for req in role_requirements(role):
            name = canonicalize_name(req.name)
            if name not in installed:
                problems.append(f"{req}: not in the lock for Python {python}")
            elif not all(req.specifier.contains(Version(p.version), prereleases=True) for p in installed[name]):
                problems.append(f"{req}: the lock pins {installed[name][0].version} (Python {python})")
    return problems


@pytest.mark.parametrize("role", ROLES)
def test_each_lock_pins_every_dependency_of_its_role_exactly_within_its_range_with_hashes(role: str) -> None:
    text = LOCKS[role].read_text()
    assert check_lock(text, role) == []
    assert len(parse_lock(text)) > len(role_requirements(role))  # the transitive ones are pinned too


def test_there_is_one_lock_per_role_and_no_other() -> None:
    assert sorted(p.name for p in (REPO / "requirements").iterdir()) == sorted(f"{r}.lock" for r in ROLES)
    assert not (REPO / "requirements.lock").exists()


@pytest.mark.parametrize("python", IMAGE_PYTHONS)
def test_the_locks_agree_on_every_version_they_share(python: str) -> None:
    """`make lock` compiles each role against one resolution of all roles: numpy in the detector
    is numpy in the proxy."""
    versions: dict[str, dict[str, str]] = {}
    for role, path in LOCKS.items():
        for pin in parse_lock(path.read_text()):
            if pin.applies(python):
                versions.setdefault(pin.name, {})[role] = pin.version
    assert {name: v for name, v in versions.items() if len(set(v.values())) > 1} == {}
    assert len(versions["numpy"]) == len(ROLES)  # shared by every image, so the check does compare


@pytest.mark.parametrize(
    ("role", "edit", "problem"),
    [
        ("proxy", lambda t: re.sub(r"(?m)^fastapi==\S+", "fastapi==0.100.0", t), "fastapi>=0.1"),  # below its floor
        ("proxy", lambda t: re.sub(r"(?m)^fastapi==", "fastapi>=", t), "fastapi: not pinned with =="),
        (
            "operator",
            lambda t: re.sub(r"(?m)^(kopf==\S+ \\\n)(\s+--hash=\S+( \\)?\n)+", r"kopf==1.45.2\n", t),
            "kopf: no sha256",
        ),
        ("proxy", lambda t: re.sub(r"(?m)^httpx==\S+ \\\n(\s+--hash=\S+( \\)?\n)+", "", t), "httpx"),  # dropped
        (
            "transcriber",
            lambda t: t + "nvidia-cublas-cu12==12.6.4.1 \\\n    --hash=sha256:" + "0" * 64 + "\n",
            "nvidia-cublas",
        ),
        (
            "detector",
            lambda t: t + "numpy==2.5.5 ; python_full_version >= '3.12' \\\n    --hash=sha256:" + "1" * 64 + "\n",
            "3.12.3",
        ),
        (
            "proxy",
            lambda t: t + "ctranslate2==4.8.5 \\\n    --hash=sha256:" + "2" * 64 + "\n",
            "ctranslate2: in the proxy",
        ),
        (
            "operator",
            lambda t: t + "fastapi==0.165.0 \\\n    --hash=sha256:" + "3" * 64 + "\n",
            "fastapi: in the operator",
        ),
    ],
)
def test_the_lock_check_finds_each_kind_of_fault(role: str, edit, problem: str) -> None:
    text = LOCKS[role].read_text()
    broken = edit(text)
    assert broken != text
    problems = check_lock(broken, role)
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


def test_the_dockerfile_installs_only_hashed_locks() -> None:
    text = DOCKERFILE.read_text()
    assert lock_problems(text, ("/tmp/requirements.lock",)) == []
    # one locked install per venv: the four roles and the GPU transcriber
    assert sum("--require-hashes" in c for c in pip_resolving_commands(text)) == len(ROLES) + 1


@pytest.mark.parametrize(("target", "role"), [*((r, r) for r in CPU_TARGETS), (GPU_TARGET, "transcriber")])
def test_each_target_installs_its_own_role_lock_and_no_other(target: str, role: str) -> None:
    all_stages = stages(DOCKERFILE.read_text())
    by_name = {s.name: s for s in all_stages}
    # the stage the image's /opt/stt/venv comes from (models come from elsewhere, and only models)
    sources = [m for instr in by_name[target].body for m in re.findall(r"^COPY --from=(\S+) /opt/stt/venv ", instr)]
    assert len(sources) == 1, sources
    copied = {
        lock
        for stage in image_stages(all_stages, sources[0])
        for instr in stage.body
        for lock in re.findall(r"^COPY (requirements/\S+\.lock) /tmp/requirements\.lock$", instr)
    }
    assert copied == {f"requirements/{role}.lock"}


@pytest.mark.parametrize("target", [*CPU_TARGETS, GPU_TARGET])
def test_each_image_takes_only_its_venv_and_models_from_the_build_stages(target: str) -> None:
    copies = [
        instr.split()[1:]
        for instr in {s.name: s for s in stages(DOCKERFILE.read_text())}[target].body
        if instr.startswith("COPY")
    ]
    assert copies and all(c[0].startswith("--from=") for c in copies)
    assert [c[1:] for c in copies if c[1] == "/opt/stt/venv"] == [["/opt/stt/venv", "/opt/stt/venv"]]
    assert all(c[1].startswith("/opt/stt/models") and c[1] == c[2] for c in copies if c[1] != "/opt/stt/venv")


def test_the_docker_free_builder_installs_only_the_hashed_role_locks() -> None:
    text = BUILD_SH.read_text()
    assert 'LOCK="$REPO/requirements/$(role "$img").lock"' in text
    assert 'cp "$REPO/requirements/$r.lock" "$ROOT/tmp/requirements.lock"' in text
    assert lock_problems(text, ("$LOCK", "/tmp/requirements.lock")) == []
    download = [c for c in pip_resolving_commands(text) if " download " in c]
    assert download and all("--only-binary :all:" in c and "--require-hashes" in c for c in download)


def test_the_docker_free_builder_maps_each_image_to_a_dockerfile_target() -> None:
    text = BUILD_SH.read_text()
    mapping = dict(re.findall(r"(\w+)\) echo (\w+) ;;", text))
    assert mapping == {"tiny": "detector", "base": "transcriber", "proxy": "proxy", "controller": "operator"}
    targets = {s.name for s in stages(DOCKERFILE.read_text())}
    assert set(mapping.values()) | {GPU_TARGET} <= targets
    assert "target=transcriber-gpu" in text  # STT_BASE_TARGET=gpu


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


def test_every_base_image_is_pinned_by_digest() -> None:
    refs = pin_base_images.base_image_refs(DOCKERFILE.read_text())
    assert refs, "no base image found: the parser no longer matches the Dockerfile"
    assert [ref for _, ref in refs if not pin_base_images.is_pinned(ref)] == []
    tags = {ref.split("@")[0] for _, ref in refs}
    # the plain CUDA runtime: CTranslate2 >= 4.6.3 needs cuBLAS, not cuDNN (the Dockerfile says why)
    assert tags == {"python:3.11-slim-bookworm", "nvidia/cuda:12.6.3-runtime-ubuntu24.04"}


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
    assert pin_base_images.main(["--check", str(DOCKERFILE)]) == 0


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


@pytest.mark.parametrize("target", CPU_TARGETS)
def test_the_cpu_images_carry_no_gpu_settings(target: str) -> None:
    assert gpu_bits(stages(DOCKERFILE.read_text()), target) == []


def test_the_default_target_is_a_cpu_image_and_the_gpu_target_is_seen() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    assert all_stages[-1].name in CPU_TARGETS  # `docker build` without --target builds the last stage
    # the check does see GPU bits where they belong: the gpu target has them
    assert any("NVIDIA_VISIBLE_DEVICES" in b for b in gpu_bits(all_stages, GPU_TARGET))
    assert any("nvidia/cuda" in b for b in gpu_bits(all_stages, GPU_TARGET))


def test_the_gpu_check_catches_a_cuda_setting_leaking_into_cpu() -> None:
    text = DOCKERFILE.read_text()
    # an env line added to the shared venv stage reaches every cpu image through COPY --from=<role>-venv
    leaky = text.replace(
        "FROM ${PYTHON_IMAGE} AS venv\n", "FROM ${PYTHON_IMAGE} AS venv\nENV NVIDIA_VISIBLE_DEVICES=all\n"
    )
    assert leaky != text
    assert all(gpu_bits(stages(leaky), target) != [] for target in CPU_TARGETS)
    # and so does a cpu runtime built on the CUDA image
    cuda_based = text.replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM ${CUDA_IMAGE} AS runtime")
    assert cuda_based != text
    assert all(gpu_bits(stages(cuda_based), target) != [] for target in CPU_TARGETS)


def test_the_docker_free_images_carry_no_gpu_settings() -> None:
    text = BUILD_SH.read_text()
    env_lines = re.findall(r'"env": \[(.*?)\]', text, re.S)
    assert env_lines and "STT_MODEL_CACHE" in env_lines[0]
    assert not any(GPU_WORDS.search(e) for e in env_lines)
    debs = re.search(r'^DEBS="(.*)"$', text, re.M)
    assert debs and "python3" in debs[1] and not GPU_WORDS.search(debs[1])
