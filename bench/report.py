"""Write what a run measured: ``latest.json`` (every number), ``latest.md`` (the table a
person reads) and two PNG plots (latency CDF; throughput and p95 vs concurrent streams)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

from bench.metrics import normalize, word_errors

CAPACITY_STYLES = (("baseline", "s--"), ("design", "o-"), ("design_session", "D-"), ("design_batch1", "^:"))
PATH_LABELS = {
    "offline": "offline (plain faster-whisper on each 16-bit WAV file, no VAD)",
    "whole_file": "whole-file endpoint (/v1/audio/transcriptions)",
    "streamed": "streamed: /v1/stream session (the default)",
    "previous_default": "streamed: HTTP chunks + stitching (previous default)",
}


def _strip_private(node):
    """Drop ``_``-prefixed keys (raw transcripts and latency lists kept for plotting)."""
    if isinstance(node, dict):
        return {k: _strip_private(v) for k, v in node.items() if not k.startswith("_")}
    if isinstance(node, list):
        return [_strip_private(v) for v in node]
    return node


def write_json(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "latest.json"
    path.write_text(json.dumps(_strip_private(results), indent=1, sort_keys=False) + "\n")
    return path


def write_transcripts(
    names: list[str],
    references: list[str],
    paths: dict[str, list[str]],
    out_dir: Path,
    languages: list[str] | None = None,
) -> Path:
    """Every file's reference and each path's transcript with its error count, to see where a
    WER gap comes from (a seam, a prompt, a file) rather than only that there is one."""
    rows = []
    languages = languages or ["en"] * len(names)
    for i, (name, ref, lang) in enumerate(zip(names, references, languages, strict=True)):
        row: dict = {"name": name, "language": lang, "reference": normalize(ref, lang)}
        for label, texts in paths.items():
            counts = word_errors([ref], [texts[i]], [lang])
            row[label] = {"errors": counts.errors, "text": normalize(texts[i], lang)}
        rows.append(row)
    path = out_dir / "transcripts.json"
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "–"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2%}"


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    lines = [
        f"# Benchmark results ({meta.get('mode', '?')} run, {meta.get('finished_at', '?')})",
        "",
        f"Command: `{meta.get('command', '')}` · machine: {meta.get('machine', '')} · device: {meta.get('device', '')}"
        f" · wall time {meta.get('wall_s', '?')} s",
        "",
    ]
    goals = results.get("goals", [])
    if goals:
        lines += ["## Goals", "", "| goal | target | measured | verdict |", "|---|---|---|---|"]
        lines += [f"| {g['goal']} | {g['target']} | {g['value']} | {'PASS' if g['pass'] else 'FAIL'} |" for g in goals]
        lines.append("")
    lines += accuracy_markdown(results)
    det = results.get("detector", {})
    if det:
        lines += [
            "## Speech detectors (3 s chunks)",
            "",
            "| detector | ms per chunk | speech recall | non-speech false positives |",
            "|---|---|---|---|",
        ]
        for name in ("silero", "whisper-tiny"):
            d = det.get(name)
            if d:
                fp = round(d["nonspeech_false_positive_rate"] * d["nonspeech_chunks"])
                lines.append(
                    f"| {name} | {d['ms_per_chunk']:.1f} | {d['speech_recall']:.2%} of {d['speech_chunks']} "
                    f"| {fp} of {d['nonspeech_chunks']} {d.get('false_positives_by_kind') or ''} |"
                )
        lines += [f"\nWhisper tiny costs {det.get('cost_ratio_whisper_tiny_over_silero')}x Silero per chunk.", ""]
    lines += recall_markdown(results.get("detector_recall", {}))
    px = results.get("proxy", {})
    if px:
        o = px["overhead_ms"]
        lines += [
            "## Proxy overhead",
            "",
            f"p50 {o['p50']} ms, p95 {o['p95']} ms, p99 {o['p99']} ms over {px['pairs']} interleaved pairs "
            f"(direct p50 {px['direct_ms']['p50']} ms, proxied p50 {px['proxied_ms']['p50']} ms).",
            "",
        ]
    des = results.get("designs", {})
    if des:
        lines += [
            f"## Seed design vs this design ({des['audio_s']} s of speech, one real-time stream each)",
            "",
            "| | WER | latency p50 / p95 | commit latency p50 | service CPU s per audio s |",
            "|---|---|---|---|---|",
        ]
        for key in ("seed_design", "this_design", "this_design_batch1"):
            if key not in des:
                continue
            d = des[key]
            lines.append(
                f"| {key} | {_pct(d['wer'])} | {d['latency_ms'].get('p50')} / {d['latency_ms'].get('p95')} ms "
                f"| {d['commit_latency_ms'].get('p50')} ms | {d['cpu_s_per_audio_s']:.3f} |"
            )
        r = des["seed_over_this"]
        lines += [
            f"\nseed / this: CPU per audio second {r['cpu_s_per_audio_s']}x, latency p50 {r['latency_p50']}x.",
            "",
        ]
    cap = results.get("capacity", {})
    if cap:
        lines += [
            "## Capacity (concurrent real-time streams on one backend)",
            "",
            f"Criterion: {cap.get('criterion')}; {cap.get('seconds_per_stream')} s of speech per stream and step.",
            "",
            "| config | streams | p50 ms | p95 ms | last-third p95 ms | audio s / s | CPU s / audio s | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, _ in CAPACITY_STYLES:
            for s in cap.get(name, {}).get("steps", []):
                lat = s["latency_ms"]
                lines.append(
                    f"| {name} | {s['streams']} | {lat.get('p50')} | {lat.get('p95')} | {s['last_third_p95_ms']} "
                    f"| {s['throughput_audio_s_per_s']} | {s['cpu_s_per_audio_s']} "
                    f"| {'pass' if s['passed'] else 'FAIL'} |"
                )
        served = ", ".join(f"{name} {cap[name]['served_audio_s_per_s']}" for name, _ in CAPACITY_STYLES if name in cap)
        lines += [
            f"\nAudio seconds served per second within the criterion: {served}.",
            f"\nCapacity: baseline {cap.get('baseline', {}).get('realtime_streams')}, "
            f"sessions {cap.get('design_session', {}).get('realtime_streams')}, "
            f"HTTP chunks {cap.get('design', {}).get('realtime_streams')} "
            f"(ratio {cap.get('ratio_vs_baseline')}x)"
            + (
                f"; what-if design_batch1 {cap['design_batch1']['realtime_streams']} "
                f"({cap.get('ratio_design_batch1_vs_baseline')}x)."
                if "design_batch1" in cap
                else "."
            ),
            "",
        ]
    peer = results.get("peer", {})
    if peer:
        lines += ["## Peer", "", *peer_markdown(peer), ""]
    return "\n".join(lines) + "\n"


def peer_design_run(peer: dict) -> tuple[dict, str]:
    """The peer's run of the design recording to show beside the session's: at real-time pace
    when that one is a whole transcript, else flow-controlled when that one is; ({}, "") if neither."""
    if peer.get("status") == "measured":
        return peer, "real-time pace"
    files = peer.get("flow_controlled", {}).get("files", {})
    first: dict = next(iter(files.values()), {})
    if first.get("status") == "measured":
        return first, "flow-controlled"
    return {}, ""


def peer_markdown(peer: dict) -> list[str]:
    """The peer at real-time pace, then flow-controlled beside the session on the same audio."""
    lines = [
        f"{peer.get('name', 'WhisperLive')} at real-time pace: {peer.get('status')}"
        + (f" — {peer.get('reason')}" if peer.get("reason") else "")
        + (
            f" (WER {_pct(peer.get('wer'))}, {_fmt(peer.get('cpu_s_per_audio_s'), '.2f')} CPU s per audio s)"
            if "wer" in peer
            else ""
        )
    ]
    flow = peer.get("flow_controlled", {})
    for name, run in flow.get("files", {}).items():
        lines.append(
            f"- flow-controlled (at most {flow.get('max_ahead_s')} s ahead of what it decoded), {name}: "
            f"{run.get('status')}, WER {_pct(run.get('wer'))}, {_fmt(run.get('cpu_s_per_audio_s'), '.2f')} CPU s "
            f"per audio s, sent at {_fmt(run.get('pace'), '.2f')}× real time, {_fmt(run.get('stalls'))} stalls"
            + (f" — {run['reason']}" if run.get("reason") else "")
        )
    design = peer.get("compared", {}).get("design")
    if design:
        lines.append(
            f"- design recording: session WER {_pct(design['session_wer'])} at {design['session_cpu_s_per_audio_s']} "
            f"CPU s per audio s; peer {_pct(design['peer_wer'])} at {design['peer_cpu_s_per_audio_s']} "
            f"({design['cpu_ratio']}× the session's CPU; peer run {design['peer_status']})"
        )
    for category, pooled in peer.get("compared", {}).get("categories", {}).items():
        lines.append(
            f"- {category} ({', '.join(pooled['files'])}; {_fmt(pooled['audio_s'])} s): "
            f"session {_pct(pooled['session_wer'])}, peer {_pct(pooled['peer_wer'])}, "
            f"offline {_pct(pooled['offline_wer'])} (peer runs {', '.join(pooled['peer_status'])})"
        )
    return lines


def accuracy_markdown(results: dict) -> list[str]:
    """WER per path overall, per category (dev and held-out together) and per split; then the
    live figures of the two streamed paths."""
    paths = [p for p in PATH_LABELS if results.get(p, {}).get("categories")]
    if not paths:
        return []
    cats = sorted({c for p in paths for c in results[p]["categories"]})
    head = ["path", "all", "dev", "held-out", *cats]
    lines = [
        "## Accuracy on the dev set (WER; every file in its own language)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for p in paths:
        r = results[p]
        splits = r.get("splits", {})
        cells = [
            PATH_LABELS[p],
            _pct(r.get("wer")),
            _pct(splits.get("dev", {}).get("wer")),
            _pct(splits.get("held_out", {}).get("wer")),
        ]
        cells += [_pct(r["categories"].get(c, {}).get("wer")) for c in cats]
        lines.append("| " + " | ".join(cells) + " |")
    off = results.get("offline", {})
    lines += [
        "",
        f"{off.get('files', '?')} files, {off.get('audio_s', '?')} s of audio; "
        f"offline RTF {_fmt(off.get('rtf'), '.3f')}"
        f" ({off.get('settings', {}).get('compute_type', '?')}). Non-speech recordings: "
        + ", ".join(
            f"{p} {results[p]['nonspeech']['words']} words in {results[p]['nonspeech']['clips']} clips"
            for p in paths
            if "nonspeech" in results[p]
        )
        + "."
        + _in_flight(results, paths),
        "",
        "| live path (one real-time stream) | first partial p50 / p95 | commit p50 / p95 | CPU s / audio s |",
        "|---|---|---|---|",
    ]
    for p in ("streamed", "previous_default"):
        r = results.get(p, {})
        if "latency_ms" in r:
            lat, com = r["latency_ms"], r.get("commit_latency_ms", {})
            lines.append(
                f"| {PATH_LABELS[p]} | {lat.get('p50')} / {lat.get('p95')} ms | {com.get('p50')} / {com.get('p95')} ms "
                f"| {_fmt(r.get('cpu_s_per_audio_s_one_stream'), '.3f')} |"
            )
    peer = results.get("peer", {})
    run, how = peer_design_run(peer)
    if run:
        lat = run.get("latency_ms", {})
        lines.append(
            f"| peer: {peer.get('name')}, {how} (WER {_pct(run.get('wer'))}) | {lat.get('p50')} / {lat.get('p95')} ms "
            f"| – | {_fmt(run.get('cpu_s_per_audio_s'), '.3f')} |"
        )
    lines.append("")
    return lines


def _in_flight(results: dict, paths: list[str]) -> str:
    """How many files each path had in flight, and whether any session window lost its beam
    search to load (the accuracy pass measures the default only when none did)."""
    counts = ", ".join(f"{p} {results[p]['in_parallel']}" for p in paths if "in_parallel" in results[p])
    if not counts:
        return ""  # results written before these were recorded
    greedy = _fmt(results.get("streamed", {}).get("greedy_under_load"), "d")
    return (
        f" Files in flight at once: {counts}; session windows decoded greedily because the backend was behind: "
        f"{greedy}."
    )


def recall_markdown(rec: dict) -> list[str]:
    """Detector recall per dev-set category (bench.recall): one row per category, dev and
    held-out apart, the conditions below 99 %, and what the misses look like."""
    if rec.get("reason"):
        return ["## Speech detector recall by category (dev set)", "", f"Not measured: {rec['reason']}", ""]
    if not rec.get("categories"):
        return []
    det = rec.get("detector", {})
    lines = [
        "## Speech detector recall by category (dev set)",
        "",
        f"Client chunks ({rec.get('chunk_s')} s, {rec.get('overlap_s')} s overlap) holding more than "
        f"{rec.get('min_speech_s')} s of reference speech, asked of {det.get('name')} in-process as tiny builds it "
        f"(threshold {det.get('threshold')}, min speech {det.get('min_speech_ms')} ms). *Speech lost*: reference "
        "speech inside chunks of which none was called speech. Misses: median of the highest frame probability "
        "/ speech level.",
        "",
        "| category | recall | dev | held-out | speech lost | misses: max prob / speech dBFS | hits: speech dBFS |",
        "|---|---|---|---|---|---|---|",
    ]

    def share(d: dict) -> str:
        return "–" if not d.get("chunks") else f"{d['recall']:.1%} of {d['chunks']}"

    weak = []
    for cat, c in rec["categories"].items():
        miss = (
            f"{c['miss_max_prob_median']:.2f} / {c['miss_speech_dbfs_median']:.1f}"
            if c.get("miss_max_prob_median") is not None
            else "–"
        )
        lines.append(
            f"| {cat} | {_pct(c['recall'])} | {share(c['dev'])} | {share(c['held_out'])} "
            f"| {c['speech_lost_s']} of {c['speech_s']} s | {miss} | {_fmt(c.get('hit_speech_dbfs_median'))} |"
        )
        weak += [
            f"{cat}/{cond} {share(d)}" for cond, d in c.get("by_condition", {}).items() if (d["recall"] or 0) < 0.99
        ]
    ns = rec.get("nonspeech", {})
    lines += [
        "",
        f"Non-speech (same detector, same chunks): {ns.get('false_positives')} false positives in "
        f"{ns.get('chunks')} chunks"
        + (f" {ns['false_positives_by_kind']}." if ns.get("false_positives_by_kind") else "."),
    ]
    if weak:
        lines.append(f"Conditions below 99 %: {'; '.join(weak)}.")
    return [*lines, ""]


def write_markdown(results: dict, out_dir: Path) -> Path:
    path = out_dir / "latest.md"
    path.write_text(markdown(results))
    return path


def plot_latency_cdf(curves: dict[str, list[float]], path: Path, chunk_s: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, seconds in curves.items():
        if not seconds:
            continue
        xs = sorted(s * 1000 for s in seconds)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label} (n={len(xs)})")
    ax.axvline(chunk_s * 1000, color="grey", linestyle=":", label=f"chunk length {chunk_s:g} s")
    ax.set_xlabel("latency: end of chunk audio → text (ms)")
    ax.set_ylabel("fraction of chunks")
    ax.set_xscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Streamed latency CDF (one real-time stream)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_capacity(capacity: dict, path: Path, chunk_s: float) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, style in CAPACITY_STYLES:
        steps = capacity.get(name, {}).get("steps", [])
        if not steps:
            continue
        xs = [s["streams"] for s in steps]
        left.plot(xs, [s["throughput_audio_s_per_s"] for s in steps], style, label=name)
        right.plot(xs, [s["latency_ms"].get("p95", float("nan")) for s in steps], style, label=name)
    top = max([s["streams"] for n, _ in CAPACITY_STYLES for s in capacity.get(n, {}).get("steps", [])] or [1])
    left.plot([0, top], [0, top], ":", color="grey", label="keeping up (1 audio s/s per stream)")
    left.set_xlabel("concurrent real-time streams")
    left.set_ylabel("audio seconds transcribed per second")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.axhline(chunk_s * 1000, color="grey", linestyle=":", label="chunk length")
    right.set_xlabel("concurrent real-time streams")
    right.set_ylabel("p95 latency (ms)")
    right.set_yscale("log")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, which="both")
    fig.suptitle("Throughput and latency vs concurrent streams (one CPU backend)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
