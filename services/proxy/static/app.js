// The live transcription page: microphone -> AudioWorklet (16 kHz s16le, 100 ms frames) ->
// WebSocket /v1/stream on this page's own origin -> transcript events -> the page.
//
// Protocol (docs/api.md, "Streaming sessions"; services/proxy/stream_ws.py): binary frames are
// PCM, the text frame {"type":"stop"} ends the stream, and the server answers with JSON events:
// session.started, speech.started/stopped, transcript.partial (replaces the previous partial),
// transcript.committed (append-only, words with times), session.lag, error, session.ended, then
// close code 1000.
//
// API key: when the server has keys on (docs/api.md, "API keys"), the key typed into the page is
// offered as the WebSocket subprotocol "openai-insecure-api-key.<key>" (a browser cannot set
// headers on a WebSocket) beside "stt", the one the server answers with. It is kept in
// sessionStorage only: gone when the tab closes.
//
// Several recordings in a row make one transcript: each session's word times are moved by the
// audio sent in the sessions before it, so the .srt file runs on one clock. "Clear" starts over.

const SAMPLE_RATE = 16000;
const SENTENCE_END = [".", "?", "!", "。", "？", "！", "…", "।", "؟"];
const SRT_MAX_CUE_S = 7; // a subtitle cue never spans more than this
const SRT_MAX_GAP_S = 1.5; // a pause this long starts a new cue
const SRT_MAX_CHARS = 84; // two lines of 42
const QUEUE_MAX_FRAMES = 300; // 30 s of audio held while the socket opens
const END_TIMEOUT_MS = 180000; // wait this long for session.ended after Stop
const LANGUAGE_KEY = "stt.language";
const API_KEY_KEY = "stt.apiKey";
const KEY_SUBPROTOCOL = "openai-insecure-api-key.";

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"),
  stop: $("stop"),
  language: $("language"),
  apiKey: $("api-key"),
  level: $("level"),
  status: $("status"),
  error: $("error"),
  transcript: $("transcript"),
  committed: $("committed"),
  partial: $("partial"),
  placeholder: $("placeholder"),
  meta: $("meta"),
  downloadTxt: $("download-txt"),
  downloadSrt: $("download-srt"),
  clear: $("clear"),
};

// ---------------------------------------------------------------------------------------------
// Text: Whisper marks the start of a word with a leading space; a piece without one continues
// the word before it (services/common/commit_policy.py, join_words).

export function joinWords(words, after = "") {
  let out = "";
  for (const word of words) {
    const text = word.text.trim();
    if (!text) continue;
    const spaced = /^\s/.test(word.text);
    out += (out || after) && spaced ? " " + text : text;
  }
  return out;
}

function endsSentence(word) {
  const text = word.text.trim();
  return SENTENCE_END.some((mark) => text.endsWith(mark));
}

function srtTime(seconds) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const pad = (n, width) => String(n).padStart(width, "0");
  const h = Math.floor(ms / 3600000);
  const m = Math.floor(ms / 60000) % 60;
  const s = Math.floor(ms / 1000) % 60;
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)},${pad(ms % 1000, 3)}`;
}

function wrapCue(text) {
  if (text.length <= SRT_MAX_CHARS / 2) return text;
  const middle = Math.floor(text.length / 2);
  const before = text.lastIndexOf(" ", middle);
  const after = text.indexOf(" ", middle);
  const cut = before < 0 ? after : after < 0 ? before : middle - before <= after - middle ? before : after;
  return cut < 0 ? text : text.slice(0, cut) + "\n" + text.slice(cut + 1);
}

// Cues from committed words: a cue ends at a sentence end, before a pause of SRT_MAX_GAP_S, and
// before it would span more than SRT_MAX_CUE_S or hold more than SRT_MAX_CHARS characters.
export function buildSrt(words) {
  const cues = [];
  let cue = [];
  for (const word of words) {
    if (!word.text.trim()) continue;
    if (cue.length) {
      const last = cue[cue.length - 1];
      const tooLong = word.end - cue[0].start > SRT_MAX_CUE_S;
      const pause = word.start - last.end > SRT_MAX_GAP_S;
      const tooWide = joinWords([...cue, word]).length > SRT_MAX_CHARS;
      if (tooLong || pause || tooWide) {
        cues.push(cue);
        cue = [];
      }
    }
    cue.push(word);
    if (endsSentence(word)) {
      cues.push(cue);
      cue = [];
    }
  }
  if (cue.length) cues.push(cue);
  return cues
    .map((words, i) => {
      const start = words[0].start;
      const next = cues[i + 1];
      let end = Math.max(words[words.length - 1].end, start + 0.2);
      if (next) end = Math.min(end, next[0].start);
      if (end <= start) end = start + 0.001;
      return `${i + 1}\n${srtTime(start)} --> ${srtTime(end)}\n${wrapCue(joinWords(words))}\n`;
    })
    .join("\n");
}

// ---------------------------------------------------------------------------------------------
// Transcript: committed words of every session so far, and the current session's partial words.

const transcript = {
  words: [], // committed, times on the transcript's clock (seconds)
  text: "", // what #committed shows
  partial: [],
  offsetS: 0, // where the current session's time 0 sits on the transcript's clock
  partialEvents: 0,
  committedEvents: 0,
};

function renderPartial() {
  const text = joinWords(transcript.partial, transcript.text);
  ui.partial.textContent = text;
  ui.placeholder.hidden = Boolean(transcript.text || text);
}

function addCommitted(words) {
  const moved = words.map((w) => ({ ...w, start: w.start + transcript.offsetS, end: w.end + transcript.offsetS }));
  const piece = joinWords(moved, transcript.text);
  transcript.words.push(...moved);
  if (piece) {
    // Appended, never rewritten: a screen reader announces only the new words (aria-live).
    ui.committed.append(document.createTextNode(piece));
    transcript.text += piece;
  }
  const haveText = transcript.text.length > 0;
  ui.downloadTxt.disabled = ui.downloadSrt.disabled = !haveText;
  ui.clear.disabled = !haveText || session !== null;
}

function clearTranscript() {
  Object.assign(transcript, { words: [], text: "", partial: [], offsetS: 0 });
  ui.committed.textContent = "";
  renderPartial();
  ui.downloadTxt.disabled = ui.downloadSrt.disabled = ui.clear.disabled = true;
  ui.meta.textContent = "";
}

function download(text, extension, type) {
  const stamp = new Date().toISOString().slice(0, 19).replaceAll(":", "-");
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `transcript-${stamp}.${extension}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---------------------------------------------------------------------------------------------
// Status and errors

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
  document.body.dataset.state = state;
}

function showError(message, { warning = false } = {}) {
  ui.error.textContent = message;
  ui.error.classList.toggle("warning", warning);
  ui.error.hidden = false;
}

function hideError() {
  ui.error.hidden = true;
  ui.error.textContent = "";
  ui.error.classList.remove("warning");
}

function micError(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "The microphone was not allowed: allow it for this site in the browser's settings, then press Start again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found: connect one and press Start again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone could not be opened (another application may be using it).";
    default:
      return `The microphone could not be started: ${error && error.message ? error.message : error}`;
  }
}

const CLOSE_REASONS = {
  1001: "The server closed the session (no audio for too long, or the server is shutting down).",
  1008: "The server refused this page: its origin is not allowed (STT_ALLOWED_ORIGINS), or the API key is missing or wrong.",
  1009: "The server refused an audio frame as too large.",
  1011: "The server hit an internal error and closed the session.",
  1013: "The server is busy (too many sessions, or it fell too far behind): try again in a few seconds.",
};

// ---------------------------------------------------------------------------------------------
// A recording session: microphone, worklet and socket.

let session = null;

function streamUrl(language) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams();
  if (language) params.set("language", language);
  const query = params.toString();
  return `${scheme}//${location.host}/v1/stream${query ? "?" + query : ""}`;
}

// The subprotocols a session offers: none without a key (as before keys existed), else "stt"
// (accepted by the server) and the key.
function subprotocols(apiKey) {
  return apiKey ? ["stt", KEY_SUBPROTOCOL + apiKey] : [];
}

const KEY_ERRORS = {
  missing_api_key: "This server needs an API key: enter it in the API key field and press Start again.",
  invalid_api_key: "The server refused the API key: check it and press Start again.",
};

class Session {
  constructor(language, apiKey) {
    this.language = language;
    this.apiKey = apiKey;
    this.queue = [];
    this.samplesSent = 0;
    this.ended = null; // the session.ended event
    this.lastError = null;
    this.stopping = false;
    this.opened = false;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  async start() {
    setStatus("starting", "Starting the microphone…");
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error(
        "The browser offers the microphone only to secure pages: open this page at http://localhost:5001 " +
          "(for example through kubectl port-forward) or over HTTPS.",
      );
    }
    if (typeof AudioWorkletNode === "undefined") throw new Error("This browser has no AudioWorklet support.");
    try {
      this.media = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
    } catch (error) {
      throw new Error(micError(error));
    }
    if (this.stopping) return this.releaseAudio(); // Stop was pressed while the browser asked for the microphone
    this.context = new AudioContext();
    await this.context.audioWorklet.addModule("/static/pcm-worklet.js");
    if (this.stopping) return this.releaseAudio();
    this.source = this.context.createMediaStreamSource(this.media);
    this.node = new AudioWorkletNode(this.context, "pcm16k", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: "explicit",
      channelInterpretation: "speakers",
    });
    this.node.port.onmessage = (event) => this.onWorklet(event.data);
    // Connected to the output through a muted gain, so every browser keeps pulling audio through it.
    this.mute = new GainNode(this.context, { gain: 0 });
    this.source.connect(this.node).connect(this.mute).connect(this.context.destination);
    await this.context.resume();
    this.connect();
  }

  connect() {
    const url = streamUrl(this.language);
    setStatus("connecting", `Connecting to ${url}…`);
    try {
      this.socket = new WebSocket(url, subprotocols(this.apiKey));
    } catch (error) {
      // A subprotocol may hold only token characters: letters, digits and !#$%&'*+-.^_`|~
      throw new Error(`The API key cannot be sent from a browser (${error.message}).`);
    }
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => {
      this.opened = true;
      for (const frame of this.queue) this.send(frame);
      this.queue = [];
      if (this.stopping) this.socket.send(JSON.stringify({ type: "stop" }));
    };
    this.socket.onmessage = (event) => {
      if (typeof event.data === "string") this.onEvent(JSON.parse(event.data));
    };
    this.socket.onclose = (event) => this.onClose(event);
  }

  send(frame) {
    this.socket.send(frame);
    const before = Math.floor(this.samplesSent / SAMPLE_RATE);
    this.samplesSent += frame.byteLength / 2;
    if (Math.floor(this.samplesSent / SAMPLE_RATE) !== before) this.showMeta(); // once a second
  }

  onWorklet(message) {
    if (message.pcm) {
      ui.level.value = message.rms > 0 ? Math.min(1, Math.max(0, (20 * Math.log10(message.rms) + 60) / 60)) : 0;
      if (this.socket && this.socket.readyState === WebSocket.OPEN) {
        this.send(message.pcm);
      } else if (!this.socket || this.socket.readyState === WebSocket.CONNECTING) {
        this.queue.push(message.pcm);
        if (this.queue.length > QUEUE_MAX_FRAMES) this.queue.shift();
      }
    } else if (message.flushed && this.onFlushed) {
      this.onFlushed();
    }
  }

  onEvent(event) {
    // A warning about something the server retries (a busy backend) goes once words flow again.
    if (event.type.startsWith("transcript.") && ui.error.classList.contains("warning")) hideError();
    switch (event.type) {
      case "session.started":
        this.id = event.session_id;
        setStatus("recording", `Recording: speak now (session ${event.session_id})`);
        break;
      case "speech.started":
      case "speech.stopped":
        this.speaking = event.type === "speech.started";
        this.showMeta();
        break;
      case "transcript.partial":
        transcript.partial = event.words || [];
        transcript.partialEvents += 1;
        ui.transcript.dataset.partialEvents = String(transcript.partialEvents);
        renderPartial();
        break;
      case "transcript.committed":
        addCommitted(event.words || []);
        transcript.committedEvents += 1;
        ui.transcript.dataset.committedEvents = String(transcript.committedEvents);
        this.backend = event.backend || this.backend;
        renderPartial();
        this.showMeta();
        break;
      case "session.lag":
        this.lagS = event.lag_s;
        this.showMeta();
        break;
      case "error":
        this.lastError = event;
        this.lastErrorAt = performance.now();
        showError(
          event.retryable ? `${event.message} (the server retries by itself)` : event.message,
          { warning: Boolean(event.retryable) },
        );
        break;
      case "session.ended":
        this.ended = event;
        transcript.partial = [];
        renderPartial();
        break;
      default:
        break;
    }
  }

  showMeta() {
    const parts = [];
    if (this.speaking !== undefined) parts.push(this.speaking ? "speech" : "silence");
    parts.push(`${(this.samplesSent / SAMPLE_RATE).toFixed(1)} s sent`);
    if (this.backend) parts.push(`backend ${this.backend}`);
    if (this.lagS) parts.push(`transcription ${this.lagS.toFixed(1)} s behind`);
    ui.meta.textContent = parts.join(" · ");
  }

  // Stop: last samples out of the worklet, microphone off, {"type":"stop"}, then wait for
  // session.ended (the server transcribes what is left first).
  async stop() {
    if (this.stopping) return;
    this.stopping = true;
    setStatus("finishing", "Finishing: transcribing the last words…");
    if (this.node) {
      await new Promise((resolve) => {
        this.onFlushed = resolve;
        this.node.port.postMessage("flush");
        setTimeout(resolve, 500);
      });
      this.node.port.postMessage("stop");
    }
    this.releaseAudio();
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: "stop" }));
    } else if (!this.socket || this.socket.readyState !== WebSocket.CONNECTING) {
      this.finish();
      return;
    }
    const timer = setTimeout(() => {
      this.timedOut = true;
      this.socket.close();
    }, END_TIMEOUT_MS);
    await this.closed;
    clearTimeout(timer);
  }

  releaseAudio() {
    if (this.media) for (const track of this.media.getTracks()) track.stop();
    if (this.context && this.context.state !== "closed") this.context.close();
    this.media = this.context = null;
    ui.level.value = 0;
  }

  onClose(event) {
    this.releaseAudio();
    if (this.ended) {
      setStatus(
        "done",
        `Done: ${this.ended.audio_s.toFixed(1)} s of audio, ${transcript.words.length} words in the transcript.`,
      );
    } else {
      let message = CLOSE_REASONS[event.code];
      // The server says why in an error event just before it closes (session cap, too far behind, idle).
      const recent = this.lastError && performance.now() - this.lastErrorAt < 2000;
      if (this.lastError && (recent || !this.lastError.retryable)) message = this.lastError.message;
      if (this.lastError && KEY_ERRORS[this.lastError.code]) message = KEY_ERRORS[this.lastError.code];
      if (this.timedOut) message = "The server did not finish the session in time; the transcript so far is kept.";
      if (!message) {
        message = this.opened
          ? `The connection was lost (code ${event.code}); the transcript so far is kept.`
          : `Could not open ${streamUrl(this.language)}: the server is unreachable or refused this page ` +
            "(streams are accepted only from the server's own origin or STT_ALLOWED_ORIGINS).";
      }
      showError(message);
      setStatus("error", "Stopped: see the message below.");
    }
    this.finish();
    this.resolveClosed();
  }

  finish() {
    transcript.offsetS += this.samplesSent / SAMPLE_RATE;
    transcript.partial = [];
    renderPartial();
    if (session === this) session = null;
    ui.start.disabled = false;
    ui.stop.disabled = true;
    ui.language.disabled = false;
    ui.apiKey.disabled = false;
    ui.clear.disabled = !transcript.text;
  }
}

async function start() {
  if (session) return;
  hideError();
  ui.start.disabled = true;
  ui.language.disabled = true;
  ui.apiKey.disabled = true;
  ui.clear.disabled = true;
  session = new Session(ui.language.value, ui.apiKey.value.trim());
  ui.stop.disabled = false;
  try {
    await session.start();
  } catch (error) {
    const failed = session;
    showError(error.message || String(error));
    setStatus("error", "Not recording: see the message below.");
    if (failed) {
      failed.releaseAudio();
      failed.finish();
    }
  }
}

async function stop() {
  ui.stop.disabled = true;
  if (session) await session.stop();
}

// ---------------------------------------------------------------------------------------------

function init() {
  const saved = localStorage.getItem(LANGUAGE_KEY);
  if (saved !== null && [...ui.language.options].some((o) => o.value === saved)) ui.language.value = saved;
  ui.language.addEventListener("change", () => localStorage.setItem(LANGUAGE_KEY, ui.language.value));
  ui.apiKey.value = sessionStorage.getItem(API_KEY_KEY) || "";
  ui.apiKey.addEventListener("change", () => sessionStorage.setItem(API_KEY_KEY, ui.apiKey.value.trim()));
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.clear.addEventListener("click", clearTranscript);
  ui.downloadTxt.addEventListener("click", () => download(transcript.text + "\n", "txt", "text/plain;charset=utf-8"));
  ui.downloadSrt.addEventListener("click", () =>
    download(buildSrt(transcript.words), "srt", "application/x-subrip;charset=utf-8"),
  );
  window.addEventListener("pagehide", () => {
    if (session && session.socket) session.socket.close();
  });
  ui.transcript.dataset.partialEvents = "0";
  ui.transcript.dataset.committedEvents = "0";
  setStatus("idle", "Idle: choose a language (or automatic) and press Start");
}

init();
