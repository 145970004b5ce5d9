// The web phone: a Twilio Media Stream client in the browser (see ../README.md).
//
// /media hears exactly what Twilio would send (connected, start, media, dtmf, mark, stop) and
// the bot's media/mark/clear are played as Twilio plays them (phone-worklet.js). What a phone
// cannot show -- the transcript, the call state, each turn's latency -- comes from the side
// channel /phone/events, keyed by this call's streamSid.

const $ = (id) => document.getElementById(id);
const STATIC = "/phone/static/";

function hex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

function wsUrl(path) {
  const u = new URL(path, location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

function b64encode(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
  return btoa(s);
}

function b64decode(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function opened(ws) {
  return new Promise((resolve, reject) => {
    ws.addEventListener("open", resolve, { once: true });
    ws.addEventListener("close", () => reject(new Error("refused or closed")), { once: true });
  });
}

function parseParams(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

// --- the transcript ------------------------------------------------------------------------

class Transcript {
  constructor(root, latencies) {
    this.root = root;
    this.latencies = latencies;
    this.turns = new Map(); // bot turn number -> element
    this.played = new Set(); // marks whose audio has played
  }

  clear() {
    this.root.replaceChildren();
    this.latencies.replaceChildren();
    this.turns.clear();
    this.played.clear();
  }

  line(role, label) {
    const div = document.createElement("div");
    div.className = "line " + role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = label;
    const text = document.createElement("span");
    text.className = "text";
    div.append(who, text);
    this.root.append(div);
    this.root.scrollTop = this.root.scrollHeight;
    return div;
  }

  caller(text) {
    this.line("caller", "you").querySelector(".text").textContent = text;
  }

  note(text) {
    const div = this.line("note", "");
    div.querySelector(".text").textContent = text;
  }

  botTurn(turn) {
    let div = this.turns.get(turn);
    if (!div) {
      div = this.line("bot", "bot");
      div.dataset.turn = turn;
      this.turns.set(turn, div);
    }
    return div;
  }

  piece(ev) {
    const span = document.createElement("span");
    span.className = "piece" + (this.played.has(ev.mark) ? " played" : "");
    span.dataset.mark = ev.mark;
    span.textContent = ev.text + " ";
    this.botTurn(ev.turn).querySelector(".text").append(span);
  }

  markPlayed(name, cleared) {
    if (cleared) return; // dropped by a clear, not heard: the cut event says what was
    this.played.add(name);
    const span = this.root.querySelector(`.piece[data-mark="${CSS.escape(name)}"]`);
    if (span) span.classList.add("played");
  }

  // What the caller heard of a cut turn stays; the rest is struck through.
  cut(ev) {
    const div = this.botTurn(ev.turn);
    div.classList.add("interrupted");
    for (const p of ev.pieces) {
      const span = div.querySelector(`.piece[data-mark="${CSS.escape(p.mark)}"]`);
      if (!span) continue;
      const heard = p.heard || "";
      const rest = p.text.startsWith(heard) ? p.text.slice(heard.length) : p.text;
      span.replaceChildren();
      span.classList.add("played");
      if (heard) span.append(document.createTextNode(heard));
      if (rest.trim()) {
        const s = document.createElement("s");
        s.textContent = rest.trim();
        span.append(document.createTextNode(heard ? " " : ""), s);
      }
      span.append(document.createTextNode(" "));
    }
  }

  latency(ev) {
    const ms = (v) => (v === null || v === undefined ? "–" : Math.round(v) + " ms");
    const div = this.botTurn(ev.turn);
    const tag = document.createElement("span");
    tag.className = "latency";
    tag.textContent = ms(ev.total_ms);
    tag.title = ev.greeting ? "call start -> first audio" : "end of your speech -> bot's first audio (server)";
    div.querySelector(".who").after(tag);
    const row = document.createElement("tr");
    const cells = ev.greeting
      ? [`${ev.turn} (greeting)`, ms(ev.total_ms), "", "", ""]
      : [String(ev.turn), ms(ev.total_ms), ms(ev.stt_ms), ms(ev.brain_ms), ms(ev.tts_ms)];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      row.append(td);
    }
    this.latencies.append(row);
  }
}

// --- the bot's voice, through a peer connection to this page -------------------------------
//
// Through speakers the microphone hears the bot too. Chromium's echo canceller takes out what
// WebRTC plays but not what a page plays through Web Audio (crbug.com/687574), unless its
// "chrome-wide" echo cancellation runs (not on every platform or version): the bot's greeting
// then reaches the recogniser mixed with the caller's first words. So the player's output is
// sent over a peer connection from this page to itself and played by an <audio> element, which
// the echo canceller knows to take out. The numbers behind the codec and its settings are in
// ivr/web/README.md ("Echo").

const LOOP_TIMEOUT_MS = 3000;
// Opus at a high bitrate (PCMU would encode the mu-law audio a second time, and L16 is not
// offered), without DTX so that its pauses are not replaced by comfort noise.
const OPUS_FMTP = { maxaveragebitrate: "128000", usedtx: "0", stereo: "0" };

function opusFmtp(sdp) {
  const m = /a=rtpmap:(\d+) opus\/48000[^\r\n]*/i.exec(sdp);
  if (!m) return sdp;
  const line = new RegExp(`a=fmtp:${m[1]} ([^\\r\\n]*)`);
  const set = (params) => {
    const kv = new Map(params.split(";").filter(Boolean).map((p) => p.split("=").map((x) => x.trim())));
    for (const [k, v] of Object.entries(OPUS_FMTP)) kv.set(k, v);
    return Array.from(kv, ([k, v]) => `${k}=${v}`).join(";");
  };
  if (line.test(sdp)) return sdp.replace(line, (_, params) => `a=fmtp:${m[1]} ${set(params)}`);
  return sdp.replace(m[0], `${m[0]}\r\na=fmtp:${m[1]} ${set("")}`);
}

class VoiceLoop {
  constructor(ctx, audio) {
    this.ctx = ctx;
    this.audio = audio;
    this.tx = new RTCPeerConnection();
    this.rx = new RTCPeerConnection();
  }

  // The node to play into, once the page's own loop carries sound; throws if it does not in time.
  async open() {
    const dest = this.ctx.createMediaStreamDestination();
    dest.channelCount = 1;
    const pair = [
      [this.tx, this.rx],
      [this.rx, this.tx],
    ];
    for (const [from, to] of pair) from.onicecandidate = (e) => e.candidate && to.addIceCandidate(e.candidate).catch(() => {});
    const track = new Promise((resolve) => (this.rx.ontrack = (e) => resolve(e)));
    this.sender = this.tx.addTrack(dest.stream.getAudioTracks()[0]);
    const offer = await this.tx.createOffer();
    await this.tx.setLocalDescription(offer);
    await this.rx.setRemoteDescription({ type: "offer", sdp: opusFmtp(offer.sdp) });
    const answer = await this.rx.createAnswer();
    await this.rx.setLocalDescription(answer);
    await this.tx.setRemoteDescription({ type: "answer", sdp: opusFmtp(answer.sdp) });
    const connected = new Promise((resolve, reject) => {
      const check = () => {
        const state = this.rx.connectionState;
        if (state === "connected") resolve();
        else if (state === "failed" || state === "closed") reject(new Error("the voice loop did not connect"));
      };
      this.rx.addEventListener("connectionstatechange", check);
      check();
    });
    connected.catch(() => {}); // when it times out instead, that is the error
    let timer;
    const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("the voice loop timed out")), LOOP_TIMEOUT_MS)));
    try {
      const { track: received, receiver } = await Promise.race([track, late]);
      await Promise.race([connected, late]);
      // No extra jitter buffering: nothing on loopback is late.
      if ("jitterBufferTarget" in receiver) receiver.jitterBufferTarget = 0;
      this.receiver = receiver;
      this.audio.srcObject = new MediaStream([received]);
      await Promise.race([this.audio.play(), late]);
    } finally {
      clearTimeout(timer);
    }
    return dest;
  }

  close() {
    this.audio.pause();
    this.audio.srcObject = null;
    this.tx.close();
    this.rx.close();
  }
}

// --- one call ------------------------------------------------------------------------------

class PhoneCall {
  constructor(ui) {
    this.ui = ui;
    this.streamSid = "MZ" + hex(16);
    this.callSid = "CA" + hex(16);
    this.accountSid = "AC" + "0".repeat(32); // no Twilio account: a web phone call
    this.seq = 0;
    this.chunk = 0;
    this.stopped = false;
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  next() {
    return String(++this.seq);
  }

  async start(params) {
    // Audio first, while the click still counts as a user gesture.
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    await this.ctx.audioWorklet.addModule(STATIC + "phone-worklet.js");
    await this.ctx.resume();
    // Echo cancellation works on what the page plays through VoiceLoop (above).
    this.mic = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    this.player = new AudioWorkletNode(this.ctx, "ulaw-player", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
    this.player.port.onmessage = (e) => this.onPlayer(e.data);
    this.player.connect(await this.voiceOut());
    // The side channel before the call, so that no event of it is missed.
    this.events = new WebSocket(wsUrl("/phone/events?streamSid=" + this.streamSid));
    await new Promise((resolve, reject) => {
      this.events.addEventListener("message", (e) => this.onEvent(JSON.parse(e.data), resolve));
      this.events.addEventListener("close", () => reject(new Error("the event channel was refused")), { once: true });
    });
    this.ws = new WebSocket(wsUrl("/media"));
    await opened(this.ws);
    this.ws.addEventListener("message", (e) => this.onMessage(JSON.parse(e.data)));
    this.ws.addEventListener("close", () => this.ended(this.stopped ? "you hung up" : "the bot hung up"));
    this.ws.send(JSON.stringify({ event: "connected", protocol: "Call", version: "1.0.0" }));
    this.send({
      event: "start",
      sequenceNumber: this.next(),
      start: {
        accountSid: this.accountSid,
        streamSid: this.streamSid,
        callSid: this.callSid,
        tracks: ["inbound"],
        customParameters: params,
        mediaFormat: { encoding: "audio/x-mulaw", sampleRate: 8000, channels: 1 },
      },
      streamSid: this.streamSid,
    });
    this.encoder = new AudioWorkletNode(this.ctx, "ulaw-encoder", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    this.encoder.port.onmessage = (e) => this.onFrame(e.data);
    this.source = this.ctx.createMediaStreamSource(this.mic);
    this.source.connect(this.encoder);
    // The encoder outputs silence; being connected keeps it in the rendered graph.
    this.encoder.connect(this.ctx.destination);
    this.ui.connected(this);
  }

  // Where the bot's voice goes: the peer connection loop, or the speakers straight from Web
  // Audio where the browser has no WebRTC or the loop does not come up.
  async voiceOut() {
    let why = "no WebRTC in this browser";
    if (typeof RTCPeerConnection === "function") {
      const loop = new VoiceLoop(this.ctx, this.ui.voice);
      try {
        const node = await loop.open();
        this.loop = loop;
        this.playback = "webrtc";
        return node;
      } catch (err) {
        loop.close();
        why = err.message;
      }
    }
    this.playback = "webaudio";
    this.ui.transcript.note(`the bot's voice plays through Web Audio (${why}), out of the echo canceller's sight: use headphones`);
    return this.ctx.destination;
  }

  onFrame({ frame, rms }) {
    if (this.stopped) return;
    this.chunk++;
    this.send({
      event: "media",
      sequenceNumber: this.next(),
      media: { track: "inbound", chunk: String(this.chunk), timestamp: String((this.chunk - 1) * 20), payload: b64encode(frame) },
      streamSid: this.streamSid,
    });
    this.ui.level(rms);
  }

  onMessage(msg) {
    if (msg.streamSid !== undefined && msg.streamSid !== this.streamSid) return;
    if (msg.event === "media") {
      const bytes = b64decode(msg.media.payload);
      this.player.port.postMessage({ media: bytes }, [bytes.buffer]);
      this.ui.counts.media++;
    } else if (msg.event === "mark") {
      this.player.port.postMessage({ mark: msg.mark.name });
    } else if (msg.event === "clear") {
      this.player.port.postMessage({ clear: true });
      this.ui.counts.clears++;
    }
  }

  onPlayer(data) {
    if (data.marks) {
      for (const name of data.marks) {
        // Twilio echoes a mark when its audio has played, or at once when a clear dropped it.
        this.send({ event: "mark", sequenceNumber: this.next(), streamSid: this.streamSid, mark: { name } });
        this.ui.counts.marks++;
        this.ui.transcript.markPlayed(name, data.cleared);
      }
    } else if (data.queuedMs !== undefined) {
      this.ui.queued(data.queuedMs);
    }
  }

  onEvent(ev, hello) {
    const t = this.ui.transcript;
    if (ev.type === "hello") hello();
    else if (ev.type === "state") this.ui.callState(ev.state);
    else if (ev.type === "caller") t.caller(ev.text);
    else if (ev.type === "bot") t.piece(ev);
    else if (ev.type === "cut") t.cut(ev);
    else if (ev.type === "latency") t.latency(ev);
    else if (ev.type === "ended") this.ui.callState("ended");
  }

  dtmf(digit) {
    this.send({ event: "dtmf", streamSid: this.streamSid, sequenceNumber: this.next(), dtmf: { track: "inbound_track", digit } });
    this.ui.transcript.note(`you pressed ${digit}`);
  }

  hangUp() {
    if (this.stopped) return;
    this.stopped = true;
    this.send({
      event: "stop",
      sequenceNumber: this.next(),
      streamSid: this.streamSid,
      stop: { accountSid: this.accountSid, callSid: this.callSid },
    });
    if (this.ws) this.ws.close(1000);
    this.ended("you hung up");
  }

  ended(why) {
    if (this.done) return;
    this.done = true;
    this.stopped = true;
    for (const track of this.mic ? this.mic.getTracks() : []) track.stop();
    if (this.encoder) this.encoder.port.postMessage("stop");
    if (this.player) this.player.port.postMessage({ stop: true });
    if (this.loop) this.loop.close();
    if (this.ctx) this.ctx.close();
    if (this.events && this.events.readyState <= WebSocket.OPEN) this.events.close();
    this.ui.ended(why);
  }
}

// --- the page ------------------------------------------------------------------------------

const ui = {
  transcript: new Transcript($("transcript"), $("latencies")),
  voice: $("voice"),
  counts: { media: 0, marks: 0, clears: 0 },
  call: null,

  setStatus(text) {
    $("status").textContent = text;
    document.body.dataset.phone = text;
  },
  callState(state) {
    $("callstate").textContent = state;
    document.body.dataset.callState = state;
  },
  connected(call) {
    this.setStatus("in call");
    $("call").disabled = true;
    $("hangup").disabled = false;
    $("sid").textContent = call.streamSid;
  },
  ended(why) {
    this.setStatus("idle");
    this.transcript.note("call ended: " + why);
    $("call").disabled = false;
    $("hangup").disabled = true;
    this.call = null;
  },
  level(rms) {
    $("mic").value = Math.min(1, rms * 4);
  },
  queued(ms) {
    $("queued").textContent = Math.round(ms) + " ms";
  },
};

$("call").addEventListener("click", async () => {
  if (ui.call) return;
  ui.transcript.clear();
  ui.counts = { media: 0, marks: 0, clears: 0 };
  ui.callState("–");
  ui.setStatus("calling");
  $("call").disabled = true;
  const call = (ui.call = new PhoneCall(ui));
  window.ivrPhone = { call, ui };
  try {
    await call.start(parseParams($("params").value));
  } catch (err) {
    ui.transcript.note("could not call: " + err.message);
    call.ended("failed");
  }
});

$("hangup").addEventListener("click", () => ui.call && ui.call.hangUp());

for (const key of document.querySelectorAll("#keypad button")) {
  key.addEventListener("click", () => ui.call && !ui.call.stopped && ui.call.dtmf(key.dataset.digit));
}

document.addEventListener("keydown", (e) => {
  if (ui.call && !ui.call.stopped && /^[0-9*#]$/.test(e.key) && e.target === document.body) ui.call.dtmf(e.key);
});

window.ivrPhone = { call: null, ui };
document.body.dataset.ready = "1";
