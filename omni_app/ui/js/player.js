/*
 * The page side of the speech player, shared by every tab that speaks.
 *
 * Each player is a gr.HTML component whose value the reply generator replaces with every
 * new chunk: a header line (the reply's id, how the turn ended) and JSON records, one per
 * chunk (sequence number, sample rate, production rate so far, speech still to come,
 * base64 int16 PCM), then an end record with the number of chunks. The page hands each
 * chunk, in sequence order and once, to an AudioWorklet running Playout (playout.js);
 * a chunk it missed is asked for again through the component's server function.
 *
 * One AudioContext serves the page; it is opened on the first user activation (browsers
 * allow sound only after one): pointerup, click, touchend and keydown are what the HTML
 * spec counts for touch screens too (pointerdown counts only for a mouse). A context the
 * browser suspends or interrupts (iOS: a call, another app) is resumed on the next one;
 * while it cannot play, each speaking player shows a "tap to turn on sound" button. The
 * players play into one output bus, which the page's listener (listen.js) also takes as
 * the reference of what the speakers play. A new reply in any tab stops the one playing;
 * Stop and barge-in call OmniSpeech.stop(name).
 */
(() => {
  if (window.OmniSpeech) return;
  const WORKLET_SOURCE = "__WORKLET_SOURCE__";
  const SAMPLE_RATE = __SPEECH_SAMPLE_RATE__; // the model's speech (omni_app.config)
  let context = null;
  let ready = null;
  let output = null;

  function audio() {
    if (!context) {
      context = new AudioContext({ sampleRate: SAMPLE_RATE, latencyHint: "interactive" });
      output = context.createGain();
      output.connect(context.destination);
      context.addEventListener("statechange", muted);
      const url = URL.createObjectURL(new Blob([WORKLET_SOURCE], { type: "text/javascript" }));
      ready = context.audioWorklet.addModule(url).then(() => context);
    }
    if (context.state !== "running" && context.state !== "closed") {
      // "suspended" (no activation yet, or the browser paused it) or iOS's "interrupted".
      context.resume().then(muted, muted);
    }
    muted();
    return ready;
  }

  /** Show or hide every speaking player's "tap to turn on sound" button. */
  function muted() {
    const off = !context || context.state !== "running";
    for (const player of players.values()) player.muted(off && player.opened && !player.stopped && !player.played);
  }

  // Activation-triggering events (HTML spec): a touch screen's tap activates on pointerup,
  // touchend and click, a mouse already on pointerdown.
  for (const type of ["pointerdown", "pointerup", "touchend", "click", "keydown"]) {
    document.addEventListener(type, () => { audio(); }, { capture: true, passive: true });
  }

  /** Context time (s) -> epoch milliseconds, the moment it reaches the speakers. */
  function wallClock(time) {
    const stamp = context.getOutputTimestamp();
    if (!stamp || stamp.contextTime === undefined) return Date.now();
    return performance.timeOrigin + stamp.performanceTime + (time - stamp.contextTime) * 1000;
  }

  function decode(b64, rate) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
    let samples = Float32Array.from(pcm, (v) => v / 32768);
    if (rate !== SAMPLE_RATE && samples.length) samples = resample(samples, rate, SAMPLE_RATE);
    return { pcm, samples };
  }

  function resample(samples, from, to) {
    // Linear interpolation: only for a backend that speaks at another rate than the model's 24 kHz.
    const out = new Float32Array(Math.round((samples.length * to) / from));
    for (let i = 0; i < out.length; i++) {
      const x = (i * from) / to;
      const j = Math.floor(x);
      const a = samples[Math.min(j, samples.length - 1)];
      const b = samples[Math.min(j + 1, samples.length - 1)];
      out[i] = a + (b - a) * (x - j);
    }
    return out;
  }

  const seconds = (s) => `${s.toFixed(2)} s`;

  class Player {
    constructor(name, element, server) {
      this.name = name;
      this.line = element.querySelector(".omni-speech-line");
      this.unmute = element.querySelector(".omni-speech-unmute");
      if (this.unmute) this.unmute.addEventListener("click", () => { audio(); });
      this.server = server;
      this.node = null;
      this.queue = Promise.resolve();
      this.reply = null;
      this.events = [];
      this.reset();
    }

    reset() {
      this.expected = 0;
      this.held = new Map();
      this.total = null;
      this.stopped = false;
      this.asking = false;
      this.opened = false;
      this.ended = false;
      /** Playback of this reply finished (done or stopped). */
      this.played = false;
      this.turnEnd = null;
      this.started = null;
      /** The current reply's speech as received (Int16Array pieces): what the WAV must equal. */
      this.received = [];
    }

    /** The gr.HTML value changed: a new reply, new chunks, the end, or cleared. */
    update(value) {
      if (!value) {
        this.stop();
        this.show("");
        return;
      }
      const lines = value.split("\n").filter(Boolean).map((line) => JSON.parse(line));
      const head = lines[0];
      if (head.reply !== this.reply) this.begin(head);
      for (const record of lines.slice(1)) this.record(record);
    }

    begin(head) {
      for (const other of players.values()) if (other !== this) other.stop();
      this.send({ type: "stop" });
      this.reply = head.reply;
      this.reset();
      const turn = head.turn || {};
      if (turn.at) this.turnEnd = turn.at * 1000;
      else if (turn.ago !== undefined && turn.ago !== null) this.turnEnd = Date.now() - turn.ago * 1000;
      else this.turnEnd = Date.now();
      this.show(head.speak ? "🔊 waiting for speech…" : "");
      if (head.speak) {
        this.opened = true;
        this.send({ type: "begin", reply: head.reply });
        muted();
      }
    }

    record(record) {
      if (this.stopped) return;
      if (record.end !== undefined) this.total = record.end;
      else if (record.seq >= this.expected && !this.held.has(record.seq)) this.held.set(record.seq, record);
      while (this.held.has(this.expected)) {
        const next = this.held.get(this.expected);
        this.held.delete(this.expected);
        this.expected++;
        this.deliver(next);
      }
      if (this.total !== null && this.expected >= this.total) {
        if (!this.ended) this.send({ type: "end", reply: this.reply });
        this.ended = true;
      } else if (this.held.size || (this.total !== null && this.expected < this.total)) this.recover();
    }

    deliver(record) {
      const { pcm, samples } = decode(record.pcm, record.sr || SAMPLE_RATE);
      this.received.push(pcm);
      const info = { rate: record.rate, left: record.left };
      this.send({ type: "chunk", reply: this.reply, samples, info }, [samples.buffer]);
    }

    /** A chunk went missing between server and page: ask for it again. */
    recover() {
      if (this.asking || !this.server || !this.server.resend) return;
      const reply = this.reply;
      const until = this.held.size ? Math.min(...this.held.keys()) : this.total;
      this.asking = true;
      this.server.resend({ reply, start: this.expected, stop: until }).then((text) => {
        this.asking = false;
        if (reply !== this.reply || !text) return;
        for (const line of text.split("\n").filter(Boolean)) this.record(JSON.parse(line));
      }, () => { this.asking = false; });
    }

    /** Silence now and drop what is queued (Stop, barge-in, another reply). */
    stop() {
      if (this.reply === null || this.stopped) return;
      this.stopped = true;
      this.stoppedAt = Date.now();
      this.send({ type: "stop" });
      if (!this.started) this.show("");
    }

    send(message, transfer) {
      if (!this.opened) return;
      this.queue = this.queue.then(() => this.port()).then((port) => port.postMessage(message, transfer || []))
        .catch((error) => this.show(`⚠️ Speech could not play: ${error.message || error}`));
    }

    async port() {
      const ctx = await audio();
      if (!this.node) {
        this.node = new AudioWorkletNode(ctx, "omni-speech-playout",
          { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
        this.node.connect(output);
        this.node.port.onmessage = (event) => this.event(event.data);
      }
      return this.node.port;
    }

    /** What the worklet reports: start, gap, done, stopped. */
    event(ev) {
      ev.at = wallClock(ev.time);
      this.events.push(ev);
      if (this.events.length > 200) this.events.splice(0, 100);
      if (ev.reply !== this.reply) return;
      if (ev.type === "start") {
        this.started = ev;
        this.show(`🔊 speaking · heard ${seconds((ev.at - this.turnEnd) / 1000)} after your turn ended · ` +
          `start delay ${seconds(ev.delay)} (speech made at ${ev.rate.toFixed(2)}× real time)`);
      } else if (ev.type === "gap") {
        this.show(`🔊 speaking · paused ${seconds(ev.seconds)} waiting for speech`);
      } else if (ev.type === "done" || ev.type === "stopped") {
        this.played = true;
        muted();
        const parts = [ev.type === "done" ? "🔊 played" : "⏹ stopped"];
        if (this.started) {
          parts.push(`heard ${seconds((this.started.at - this.turnEnd) / 1000)} after your turn ended`);
          parts.push(`start delay ${seconds(ev.delay)}`);
          parts.push(ev.gaps ? `${ev.gaps} gap${ev.gaps > 1 ? "s" : ""} (${seconds(ev.gapSeconds)})` : "no gap");
        }
        parts.push(`${seconds(ev.played)} of speech`);
        this.show(parts.join(" · "));
      }
    }

    show(text) {
      if (this.line) this.line.textContent = text;
    }

    muted(on) {
      if (this.unmute) this.unmute.hidden = !on;
    }

    /** A spoken reply is on its way or sounding (not yet played to its end or stopped). */
    sounding() {
      return Boolean(this.opened && !this.stopped && !this.played);
    }
  }

  const players = new Map();

  window.OmniSpeech = {
    players,
    /** Called by each player component's js_on_load. */
    attach(name, element, props, watch, server) {
      const player = new Player(name, element, server);
      players.set(name, player);
      watch("value", () => player.update(props.value));
    },
    stop(name) {
      const player = players.get(name);
      if (player) player.stop();
    },
    stopAll() {
      for (const player of players.values()) player.stop();
    },
    /** The name of the player whose reply is on its way or sounding, or null. */
    sounding() {
      for (const player of players.values()) if (player.sounding()) return player.name;
      return null;
    },
    context: () => context,
    /** What the players send to the speakers (created with the context). */
    output: () => output,
    open: audio,
  };
})();
