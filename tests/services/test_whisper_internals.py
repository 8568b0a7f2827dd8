"""The adapter that holds every call into faster-whisper's non-public API
(``services/common/whisper_internals.py``): written against one pinned version, and the only
place in ``services/`` that makes such calls."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import faster_whisper

from services.common import whisper_internals

ROOT = Path(__file__).resolve().parents[2]

# Names that are faster-whisper's (or its CTranslate2 model's) internals, as the transcriber
# has used them; the public surface is WhisperModel(...) and WhisperModel.transcribe.
INTERNALS = re.compile(
    r"_split_segments_by_timestamps|add_word_timestamps|find_alignment|\.feature_extractor\b|hf_tokenizer"
    r"|\.get_prompt\(|\.model\.generate\(|\.model\.detect_language\(|\.model\.is_multilingual"
    r"|model\.frames_per_second\b|model\.max_length\b|model\.encode\("
    r"|_LANGUAGE_CODES|faster_whisper\.transcribe\b|faster_whisper\.tokenizer\b|get_suppressed_tokens"
    r"|faster_whisper\.vad\b|get_vad_model"
)


def test_the_pinned_version_is_the_one_installed_and_the_one_the_adapter_names() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = {
        dep.split("==", 1)[1]
        for deps in pyproject["project"]["optional-dependencies"].values()
        for dep in deps
        if dep.startswith("faster-whisper==")
    }
    assert pins == {whisper_internals.PINNED_VERSION}
    assert faster_whisper.__version__ == whisper_internals.PINNED_VERSION


def test_no_other_service_module_reaches_into_faster_whisper_internals() -> None:
    adapter = ROOT / "services" / "common" / "whisper_internals.py"
    offenders = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "services").rglob("*.py"))
        if path != adapter
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if INTERNALS.search(line)
    ]
    assert offenders == []


def test_language_codes_are_whispers() -> None:
    assert {"en", "de", "fr", "ko", "yue"} <= set(whisper_internals.LANGUAGE_CODES)
    assert "english" not in whisper_internals.LANGUAGE_CODES
