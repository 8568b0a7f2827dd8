"""The offline baseline (``bench.offline``) hears what a user's own faster-whisper script hears:
the recording as a file, the same 16-bit WAV the whole-file endpoint is sent, not the dev set's
finer float samples (docs/performance.md, "The offline baseline reads the file")."""

from pathlib import Path

import pytest

from bench import offline
from bench.data import Item
from core.audio import to_wav_bytes


@pytest.mark.slow
def test_the_offline_baseline_transcribes_the_file_a_user_would_pass_to_faster_whisper(
    dev_clips, tmp_path: Path
) -> None:
    from faster_whisper import WhisperModel

    from services.common.models import provision

    clip = dev_clips["asterisk-vm-incorrect-mailbox"]  # "Login incorrect. Mailbox?"
    item = Item(clip.name, clip.samples(), clip.text)
    result = offline.run([item], "cpu", lambda: None)
    assert result["settings"]["input"] == "16-bit WAV" and result["files"] == 1

    recording = tmp_path / "recording.wav"
    recording.write_bytes(to_wav_bytes(item.samples))
    model = WhisperModel(str(provision("base")), device="cpu", compute_type="int8")
    segments, _ = model.transcribe(str(recording), language="en", beam_size=1)
    # word for word what the user's script writes for that file (on a 2-core EPYC the float
    # samples gave other words than the file)
    assert result["_texts"] == [" ".join(s.text.strip() for s in segments)]
    assert "mailbox" in result["_texts"][0].lower()
