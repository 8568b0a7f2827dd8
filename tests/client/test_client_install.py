"""``pip install '.[client]'`` in an empty venv: the client alone, working against a real stack.

Someone who only wants the microphone client on a laptop (talking to a cluster through a
port-forward) installs a small package: no web framework, no Whisper, no Kubernetes client,
and none of the development tools. The import contracts in ``make lint`` keep the client's
code from reaching for those; this test proves the packaging agrees, from a copy of the
sources (so nothing of the checkout is importable) and from a working directory outside it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.client_eval import wer
from corpus import long_recording

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# what the server roles and the development tools need, and the client must not pull in
SERVER_SIDE = {"fastapi", "starlette", "uvicorn", "faster-whisper", "ctranslate2", "onnxruntime", "kopf", "kubernetes"}
DEV_TOOLS = {"jiwer", "whisper-normalizer", "pytest", "matplotlib"}


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("client-install")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "core", "client", "services", "controller"):
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{src}[client]"],
        check=True,
        timeout=900,
    )
    return venv


def installed(venv: Path) -> set[str]:
    out = subprocess.run(
        [venv / "bin/python", "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split("==")[0].lower().replace("_", "-") for line in out.splitlines() if "==" in line}


def test_the_client_extra_installs_no_server_stack_and_no_dev_tools(client_venv: Path) -> None:
    names = installed(client_venv)
    assert {"stt-platform", "numpy", "av", "httpx", "websockets", "sounddevice"} <= names, names
    assert not names & SERVER_SIDE, names & SERVER_SIDE
    assert not names & DEV_TOOLS, names & DEV_TOOLS
    # the development tools are not in the distribution either
    probe = "import importlib.util as u; print([m for m in ('bench', 'corpus', 'monitoring') if u.find_spec(m)])"
    out = subprocess.run([client_venv / "bin/python", "-c", probe], cwd=client_venv, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out


@pytest.mark.parametrize("transport", ["ws", "http"])
def test_the_installed_client_transcribes_a_file_through_the_stack(
    client_venv: Path, stack, tmp_path: Path, transport: str
) -> None:
    clip = long_recording(30, seed=0)
    args = ["--url", stack.proxy_url, "--transport", transport, "--file", str(clip.path), "--language", "en", "--quiet"]
    proc = subprocess.run(
        [client_venv / "bin/stt-client", *args],
        cwd=tmp_path,  # not the checkout: only what the venv installed can be imported
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert wer(clip.text, proc.stdout) < 12.0, (proc.stdout, clip.text)
