// AudioWorklet processor "pcm16k": microphone audio at the AudioContext's rate in, 16 kHz mono
// s16le frames of 100 ms out (posted to the main thread, which sends them on the WebSocket).
//
// Resampling is band-limited interpolation: every output sample is the input convolved with a
// Blackman-windowed sinc low-pass whose cutoff sits below the lower of the two Nyquist
// frequencies (7.2 kHz for 48 kHz or 44.1 kHz in), evaluated at the output sample's exact
// fractional input position. That is the anti-alias filter and the decimation in one step, for
// any ratio (48000 -> 16000 is 3:1, 44100 -> 16000 is 441:160). Output positions are kept as
// whole input samples plus a phase in 1/L of a sample (L = 16000 / gcd(rate, 16000): 1 for 48 kHz,
// 160 for 44.1 kHz), and the taps of each phase are computed once (polyphase); past 1024 phases
// (odd rates) the phase is rounded to 1/1024 of a sample. Input history and the position carry
// over from one 128-sample render quantum to the next, so block edges leave no seams.
//
// Messages to the main thread: {pcm: ArrayBuffer (Int16 LE), peak, rms} per frame, where peak and
// rms (0..1) describe the frame, for the level meter; {flushed: true} after a "flush" request,
// which first posts the part-filled frame.

const OUT_RATE = 16000;
const FRAME = 1600; // 100 ms at 16 kHz
const ZERO_CROSSINGS = 16; // sinc lobes on each side of the kernel
const TABLE_STEPS = 64; // kernel table resolution, per input sample
const MAX_PHASES = 1024;

function gcd(a, b) {
  while (b) [a, b] = [b, a % b];
  return a;
}

class Pcm16kProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    const inRate = Math.round(sampleRate); // AudioWorkletGlobalScope's rate: the AudioContext's
    const g = gcd(inRate, OUT_RATE);
    this.L = OUT_RATE / g; // phases per input sample
    this.M = inRate / g; // output step, in phases (L / M = OUT_RATE / inRate)
    this.phases = Math.min(this.L, MAX_PHASES);
    this.bank = new Array(this.phases); // taps per phase, filled on first use
    // Cutoff in cycles per input sample: 0.45 of the lower Nyquist rate (keeps 7.2 kHz, the
    // transition band ends before 8 kHz so nothing folds back into speech).
    this.cutoff = 0.45 * Math.min(inRate, OUT_RATE) / inRate;
    this.half = Math.ceil(ZERO_CROSSINGS / (2 * this.cutoff)); // kernel half-width, input samples
    this.gain = 2 * this.cutoff;
    this.table = this.buildTable();
    // Input history: samples from absolute input index this.base on.
    this.buf = new Float32Array(8192);
    this.len = 0;
    this.base = 0;
    this.centre = 0; // the next output sample sits at input index centre + phase / L
    this.phase = 0;
    // Start with half a kernel of silence, so the first output sample is centred on input 0.
    this.len = this.half;
    this.base = -this.half;
    this.frame = new Int16Array(FRAME);
    this.filled = 0;
    this.peak = 0;
    this.sumSquares = 0;
    this.stopped = false;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.postFrame();
        this.port.postMessage({ flushed: true });
      } else if (event.data === "stop") {
        this.stopped = true;
      }
    };
  }

  buildTable() {
    const n = this.half * TABLE_STEPS;
    const table = new Float32Array(n + 2);
    for (let i = 0; i <= n; i++) {
      const x = i / TABLE_STEPS; // distance from the centre, input samples
      const arg = 2 * this.cutoff * x;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * arg) / (Math.PI * arg);
      const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / this.half) + 0.08 * Math.cos((2 * Math.PI * x) / this.half);
      table[i] = this.gain * sinc * w;
    }
    table[n + 1] = 0;
    return table;
  }

  kernel(distance) {
    const x = Math.abs(distance) * TABLE_STEPS;
    const i = Math.floor(x);
    if (i >= this.table.length - 1) return 0;
    const f = x - i;
    return this.table[i] + f * (this.table[i + 1] - this.table[i]);
  }

  // The 2 * half taps of the output samples `phase / L` of an input sample past their centre.
  taps(phase) {
    let index = phase;
    if (this.L > MAX_PHASES) index = Math.floor((phase * MAX_PHASES) / this.L);
    let weights = this.bank[index];
    if (weights === undefined) {
      const frac = index / this.phases;
      weights = new Float32Array(2 * this.half);
      for (let j = -this.half + 1, i = 0; j <= this.half; j++, i++) weights[i] = this.kernel(j - frac);
      this.bank[index] = weights;
    }
    return weights;
  }

  append(samples) {
    if (this.len + samples.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + samples.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(samples, this.len);
    this.len += samples.length;
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no source connected (yet)
    let mono = input[0];
    if (input.length > 1) {
      mono = new Float32Array(input[0].length);
      for (const channel of input) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / input.length;
    }
    this.append(mono);
    this.resample();
    return true;
  }

  resample() {
    const { buf, half, L, M } = this;
    const end = this.base + this.len; // absolute index after the newest input sample
    // An output sample centred at input index c needs input up to c + half.
    while (this.centre + half < end) {
      const weights = this.taps(this.phase);
      let acc = 0;
      for (let j = 0, k = this.centre - half + 1 - this.base; j < weights.length; j++, k++) acc += buf[k] * weights[j];
      this.emit(acc);
      this.phase += M;
      this.centre += Math.floor(this.phase / L);
      this.phase %= L;
    }
    // Drop history no future output sample reaches.
    const keepFrom = this.centre - half + 1;
    const drop = keepFrom - this.base;
    if (drop > 0) {
      buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.base = keepFrom;
    }
  }

  emit(value) {
    const clipped = value > 1 ? 1 : value < -1 ? -1 : value;
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    const magnitude = Math.abs(clipped);
    if (magnitude > this.peak) this.peak = magnitude;
    this.sumSquares += clipped * clipped;
    if (this.filled === FRAME) this.postFrame();
  }

  postFrame() {
    if (this.filled === 0) return;
    const pcm = this.frame.slice(0, this.filled).buffer;
    const rms = Math.sqrt(this.sumSquares / this.filled);
    this.port.postMessage({ pcm, peak: this.peak, rms }, [pcm]);
    this.filled = 0;
    this.peak = 0;
    this.sumSquares = 0;
  }
}

registerProcessor("pcm16k", Pcm16kProcessor);
