// The web phone's audio thread: what Twilio's media edge does for a phone call.
//
// "ulaw-encoder": microphone at the context's rate -> low-pass + resample to 8 kHz -> G.711
//   mu-law -> 160-byte (20 ms) frames posted to the page, paced by the audio clock itself.
// "ulaw-player": the bot's mu-law frames -> one gapless queue played in real time; a mark is
//   posted back once the audio queued before it has played (at once if nothing is queued);
//   "clear" drops the queue and returns every pending mark at once, as Twilio does.

const FRAME = 160; // 20 ms at 8 kHz
const PHONE_RATE = 8000;

// --- G.711 mu-law, exactly as CPython's audioop (the server's codec) computes it -----------
const BIAS = 0x84;
const SEG_END = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];

function linearToUlaw(sample) {
  let v = (sample | 0) >> 2; // 14-bit magnitude, as audioop does
  let mask = 0xff;
  if (v < 0) {
    v = -v;
    mask = 0x7f;
  }
  if (v > 8159) v = 8159;
  v += BIAS >> 2;
  let seg = 0;
  while (seg < 8 && v > SEG_END[seg]) seg++;
  if (seg >= 8) return 0x7f ^ mask;
  return ((seg << 4) | ((v >> (seg + 1)) & 0x0f)) ^ mask;
}

const ULAW_TO_FLOAT = new Float32Array(256);
for (let i = 0; i < 256; i++) {
  const u = ~i & 0xff;
  const exponent = (u >> 4) & 7;
  let sample = (((u & 0x0f) << 3) + BIAS) << exponent;
  sample -= BIAS;
  ULAW_TO_FLOAT[i] = (u & 0x80 ? -sample : sample) / 32768;
}

// --- resampling -------------------------------------------------------------------------
// Windowed-sinc low-pass (Blackman), unity gain at DC.
function lowpass(cutoffHz, rate, taps) {
  const h = new Float32Array(taps);
  const half = (taps - 1) / 2;
  const fc = cutoffHz / rate;
  let sum = 0;
  for (let k = 0; k < taps; k++) {
    const x = k - half;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * k) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * k) / (taps - 1));
    h[k] = sinc * w;
    sum += h[k];
  }
  for (let k = 0; k < taps; k++) h[k] /= sum;
  return h;
}

// Context rate -> 8 kHz. The filter is only evaluated where an output sample falls (one in
// six at 48 kHz); a fractional step (44.1 kHz) interpolates between two filtered points.
class Downsampler {
  constructor(inRate) {
    this.step = inRate / PHONE_RATE;
    const taps = Math.max(31, Math.round((3.3 * inRate) / 500)) | 1;
    this.h = lowpass(3600, inRate, taps);
    this.half = (taps - 1) / 2;
    this.buf = new Float32Array(16384);
    this.len = this.half; // leading zeros: the filter's history before the first sample
    this.pos = this.half;
  }

  fir(i) {
    const h = this.h, buf = this.buf, base = i - this.half;
    let s = 0;
    for (let k = 0; k < h.length; k++) s += h[k] * buf[base + k];
    return s;
  }

  push(input, out) {
    if (this.len + input.length > this.buf.length) {
      const drop = Math.max(0, Math.floor(this.pos) - this.half);
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    while (Math.floor(this.pos) + 1 + this.half < this.len) {
      const i = Math.floor(this.pos);
      const f = this.pos - i;
      let y = this.fir(i);
      if (f > 1e-9) y += (this.fir(i + 1) - y) * f;
      out.push(y);
      this.pos += this.step;
    }
  }
}

// Second-order low-pass (RBJ cookbook): two in cascade take the images of the player's
// linear interpolation away above the phone band.
class Biquad {
  constructor(cutoffHz, rate, q) {
    const w = (2 * Math.PI * cutoffHz) / rate;
    const alpha = Math.sin(w) / (2 * q);
    const cos = Math.cos(w);
    const a0 = 1 + alpha;
    this.b0 = (1 - cos) / 2 / a0;
    this.b1 = (1 - cos) / a0;
    this.b2 = this.b0;
    this.a1 = (-2 * cos) / a0;
    this.a2 = (1 - alpha) / a0;
    this.x1 = this.x2 = this.y1 = this.y2 = 0;
  }

  run(x) {
    const y = this.b0 * x + this.b1 * this.x1 + this.b2 * this.x2 - this.a1 * this.y1 - this.a2 * this.y2;
    this.x2 = this.x1;
    this.x1 = x;
    this.y2 = this.y1;
    this.y1 = y;
    return y;
  }
}

globalThis.ivrCodec = { linearToUlaw, ULAW_TO_FLOAT, Downsampler, lowpass };

if (typeof registerProcessor === "function") {
  class UlawEncoder extends AudioWorkletProcessor {
    constructor() {
      super();
      this.down = new Downsampler(sampleRate);
      this.frame = new Uint8Array(FRAME);
      this.n = 0;
      this.energy = 0;
      this.out = [];
      this.running = true;
      this.port.onmessage = (e) => {
        if (e.data === "stop") this.running = false;
      };
    }

    process(inputs) {
      const input = inputs[0];
      if (input && input.length) {
        const out = this.out;
        out.length = 0;
        this.down.push(input[0], out);
        for (let i = 0; i < out.length; i++) {
          const v = Math.max(-1, Math.min(1, out[i]));
          this.energy += v * v;
          this.frame[this.n++] = linearToUlaw(Math.round(v * 32767));
          if (this.n === FRAME) {
            const rms = Math.sqrt(this.energy / FRAME);
            this.port.postMessage({ frame: this.frame, rms }, [this.frame.buffer]);
            this.frame = new Uint8Array(FRAME);
            this.n = 0;
            this.energy = 0;
          }
        }
      }
      return this.running;
    }
  }

  class UlawPlayer extends AudioWorkletProcessor {
    constructor() {
      super();
      this.step = PHONE_RATE / sampleRate;
      this.chunks = []; // Float32Array pieces at 8 kHz, in play order
      this.head = 0; // next sample of chunks[0]
      this.frac = 0; // position between that sample and the one after it
      this.played = 0; // 8 kHz samples played since the call began
      this.queued = 0; // 8 kHz samples ever queued (dropped ones included)
      this.marks = []; // {name, at}: echo once `played` reaches `at`
      this.lp = [new Biquad(3700, sampleRate, 0.54), new Biquad(3700, sampleRate, 1.31)];
      this.ticks = 0;
      this.running = true;
      this.port.onmessage = (e) => this.command(e.data);
    }

    command(msg) {
      if (msg.media) {
        const bytes = msg.media;
        const pcm = new Float32Array(bytes.length);
        for (let i = 0; i < bytes.length; i++) pcm[i] = ULAW_TO_FLOAT[bytes[i]];
        this.chunks.push(pcm);
        this.queued += pcm.length;
      } else if (msg.mark !== undefined) {
        this.marks.push({ name: msg.mark, at: this.queued });
        this.echoDue();
      } else if (msg.clear) {
        this.chunks = [];
        this.head = 0;
        this.frac = 0;
        this.queued = this.played;
        const names = this.marks.map((m) => m.name);
        this.marks = [];
        this.port.postMessage({ marks: names, cleared: true });
      } else if (msg.stop) {
        this.running = false;
      }
    }

    echoDue() {
      let n = 0;
      while (n < this.marks.length && this.marks[n].at <= this.played) n++;
      if (n) this.port.postMessage({ marks: this.marks.splice(0, n).map((m) => m.name), cleared: false });
    }

    process(_inputs, outputs) {
      const out = outputs[0][0];
      for (let j = 0; j < out.length; j++) {
        let y = 0;
        if (this.chunks.length) {
          const c = this.chunks[0];
          const x0 = c[this.head];
          const x1 = this.head + 1 < c.length ? c[this.head + 1] : this.chunks.length > 1 ? this.chunks[1][0] : x0;
          y = x0 + (x1 - x0) * this.frac;
          this.frac += this.step;
          while (this.frac >= 1 && this.chunks.length) {
            this.frac -= 1;
            this.played++;
            if (++this.head >= this.chunks[0].length) {
              this.chunks.shift();
              this.head = 0;
            }
          }
          if (!this.chunks.length) this.frac = 0;
        }
        y = this.lp[1].run(this.lp[0].run(y));
        out[j] = y;
      }
      for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
      this.echoDue();
      if (++this.ticks % 16 === 0) this.port.postMessage({ queuedMs: (this.queued - this.played) / 8 });
      return this.running;
    }
  }

  registerProcessor("ulaw-encoder", UlawEncoder);
  registerProcessor("ulaw-player", UlawPlayer);
}
