"""``hack/need-debs.sh``: the one way make targets install Debian packages.

It must say what to do where it cannot install (no apt-get, no root) and, for optional
packages, only warn. Each case runs the real script with a PATH that holds only the tools the
case allows, so these checks hold on any machine, root or not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "need-debs.sh"
MISSING = "stt-no-such-package-xyz"


def restricted_path(tmp_path: Path, tools: list[str]) -> str:
    """A PATH with only ``tools`` (symlinked from this machine) and bash's builtins."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def run(path: str, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash
    cmd = [bash, str(SCRIPT), *args]
    if user is not None:
        cmd = [shutil.which("setpriv") or "setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env={"PATH": path}, timeout=60)


def test_without_apt_get_it_names_the_packages_to_install_by_hand(tmp_path: Path) -> None:
    result = run(restricted_path(tmp_path, ["date", "id", "grep"]), MISSING)
    assert result.returncode != 0
    assert "not a Debian/Ubuntu machine" in result.stderr
    assert MISSING in result.stderr


def test_an_optional_package_only_warns(tmp_path: Path) -> None:
    result = run(restricted_path(tmp_path, ["date", "id", "grep"]), "--optional", MISSING)
    assert result.returncode == 0
    assert "WARNING" in result.stderr and "skipped" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to another user")
def test_without_root_or_sudo_it_says_to_run_apt_get_as_root() -> None:
    # pytest's tmp_path lies under a 0700 directory that the unprivileged user cannot enter
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp).chmod(0o755)
        path = restricted_path(Path(tmp), ["date", "id", "grep", "dpkg-query", "apt-get"])
        result = run(path, MISSING, user=65534)
    assert result.returncode != 0
    assert f"apt-get install {MISSING}" in result.stderr and "as root" in result.stderr


def test_installed_packages_are_left_alone(tmp_path: Path) -> None:
    if not shutil.which("dpkg-query"):
        pytest.skip("not a Debian/Ubuntu machine")
    # bash is always installed; with no apt-get on PATH, any attempt to install would fail
    result = run(restricted_path(tmp_path, ["date", "id", "grep", "dpkg-query"]), "bash")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
