"""Metrics of the Whisper transcription service."""

from prometheus_client import Counter, Gauge, Histogram

AUDIO_RECEIVED_SECONDS = Counter("stt_audio_received_seconds_total", "Seconds of audio accepted for transcription")
AUDIO_TRANSCRIBED_SECONDS = Counter("stt_audio_transcribed_seconds_total", "Seconds of audio transcribed", ["device"])
TRANSCRIBE_SECONDS = Histogram(
    "stt_transcription_processing_seconds",
    "Model time per batch call",
    ["device"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30),
)
REALTIME_FACTOR = Histogram(
    "stt_transcription_realtime_factor",
    "Processing time divided by audio duration, per batch (below 1 is faster than real time)",
    ["device"],
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
)
BATCH_SIZE = Histogram("stt_batch_size", "Chunks per model call", buckets=(1, 2, 3, 4, 6, 8, 12, 16))
QUEUE_DEPTH = Gauge("stt_queue_depth", "Chunks waiting for the model")
QUEUE_WAIT_SECONDS = Histogram(
    "stt_queue_wait_seconds",
    "Time a chunk waited before its batch started",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
DEVICE_INFO = Gauge(
    "stt_device_info",
    "Always 1; labels say which device was requested and which is really used",
    ["requested", "device", "compute_type", "model"],
)
CUDA_FALLBACK = Gauge("stt_cuda_fallback", "1 when CUDA was requested but the model runs on CPU")
QUEUE_DEPTH_BY_PRIORITY = Gauge(
    "stt_queue_depth_by_priority", "Chunks waiting for the model, by class (live chunks, file windows)", ["priority"]
)
BATCH_CANCELLED = Counter(
    "stt_queue_cancelled_total",
    "Queued chunks removed unrun because their caller went away (hung up or gave up)",
    ["priority"],
)
BATCH_EXPIRED = Counter(
    "stt_queue_expired_total",
    "Queued chunks dropped unrun because their deadline passed before their batch started (answered 504)",
    ["priority"],
)
BATCH_REFUSED_WAIT = Counter(
    "stt_queue_refused_wait_total",
    "Live chunks refused (429) because the queued live work would have made them wait over STT_MAX_QUEUE_WAIT_S",
)
SKIPPED_SPEECH_REPAIRED = Counter(
    "stt_file_skipped_speech_total",
    "Stretches of whole-file speech the model left out of a window, decoded again on their own",
    ["outcome"],  # "recovered": words came back; "empty": the second decode found none either
)
LIVE_SKIPPED_SPEECH_REPAIRED = Counter(
    "stt_chunk_skipped_speech_total",
    "Stretches of speech between two words of a live chunk (fill_skipped), or after its last word (fill_tail), "
    "that the model left out, decoded again",
    ["outcome"],  # as stt_file_skipped_speech_total
)
SEAMS_CARRIED = Counter(
    "stt_file_seams_carried_total",
    "Whole-file windows cut inside speech whose last segment was decoded again with the next window",
)
CHUNKS_BY_BEAM_SIZE = Counter(
    "stt_chunks_decoded_total",
    "Live chunks and whole-file windows decoded, by the beam size of their first decode (1: greedy; "
    "streaming sessions may ask for more)",
    ["beam_size"],
)
GREEDY_UNDER_LOAD = Counter(
    "stt_chunks_greedy_under_load_total",
    "Live chunks that asked for a beam search but were decoded greedily because live chunks had waited "
    "STT_LIVE_GREEDY_AFTER_WAIT_S or longer (the backend had fallen behind)",
)
UNSURE_RETRIED = Counter(
    "stt_unsure_retried_total",
    "Live chunks and whole-file windows whose greedy decode failed Whisper's quality checks, decoded again by "
    "beam search",
    ["outcome"],  # "passed": the beam search's decode passed; "surest": it did not either, the surer was kept
)
