/*
 * Play-out of streamed speech: when to start, when to pause, how to join.
 *
 * Pure logic, no Web Audio: the page's AudioWorklet (player.js) calls render() once per
 * render quantum and its clock is the number of frames rendered so far. Tests drive the
 * same code under node with synthetic arrival times.
 *
 * When to start. With every chunk the server sends how fast speech has been produced so
 * far (`rate`, seconds of speech per second) and an upper bound on the speech still to
 * come (`left`, seconds). The player predicts the chunks still to come: each up to
 * `growth` times the one before (the streaming engine's chunks double, up to
 * `maxChunkSeconds`), until `left` is used up, produced at `rate` (times `rateSafety`)
 * from the last chunk's arrival. Starting now is safe when every predicted chunk arrives
 * before its turn to play: for each future chunk k, with C(k) the speech of the future
 * chunks up to and including k,
 *     buffered >= C(k) / rate - C(k - 1) - (time since the last arrival) + margin.
 * The need shrinks while time passes, so the start comes as soon as it holds. The first
 * start looks at most `horizonSeconds` ahead (a long reply on a slow machine would
 * otherwise wait for nearly all of it). If production does fall behind, the buffer runs
 * out with a short fade, the player pauses once, and it resumes (fading in) when the
 * whole remaining speech is covered.
 *
 * Joins never click: the output gain moves at most 1/ramp per sample, towards 0 for the
 * last `rampSeconds` of what is buffered (an underrun or the end), for stop(), and for a
 * new reply replacing one still audible; towards 1 otherwise.
 */

const PLAYOUT_DEFAULTS = {
  rampSeconds: 0.005,
  marginSeconds: 0.05,
  rateSafety: 0.9,
  horizonSeconds: 4,
  growth: 2,
  maxChunkSeconds: 3,
};

class PlayoutReply {
  constructor(id) {
    this.id = id;
    this.chunks = [];      // Float32Array pieces not yet played, the first one from `offset`
    this.offset = 0;
    this.buffered = 0;     // frames not yet played
    this.received = 0;     // frames received
    this.played = 0;       // frames played (fades included)
    this.ended = false;    // the server sent everything
    this.state = "waiting"; // waiting | playing | paused | stopping | done | stopped
    this.rate = 0;
    this.left = null;
    this.lastChunk = 0;
    this.largestChunk = 0;
    this.firstArrival = null;
    this.lastArrival = null;
    this.startFrame = null;
    this.gapStart = null;
    this.gaps = [];        // seconds of each pause
  }

  get silent() {
    return this.state !== "playing" && this.state !== "stopping";
  }

  take() {
    const chunk = this.chunks[0];
    const sample = chunk[this.offset++];
    if (this.offset >= chunk.length) {
      this.chunks.shift();
      this.offset = 0;
    }
    this.buffered--;
    this.played++;
    return sample;
  }

  flush() {
    this.chunks = [];
    this.offset = 0;
    this.buffered = 0;
  }
}

class Playout {
  constructor(sampleRate, options = {}) {
    this.sampleRate = sampleRate;
    this.options = Object.assign({}, PLAYOUT_DEFAULTS, options);
    this.ramp = Math.max(1, Math.round(this.options.rampSeconds * sampleRate));
    this.frame = 0;
    this.gain = 0;
    this.current = null;
    this.next = null;
    this.events = [];
  }

  /** A new reply: the one playing fades out first, so the two never overlap. */
  begin(id) {
    if ((this.current && this.current.id === id) || (this.next && this.next.id === id)) return;
    const fresh = new PlayoutReply(id);
    if (this.current && !this.current.silent) {
      this.current.state = "stopping";
      this._close(this.next, "stopped");
      this.next = fresh;
    } else {
      this._close(this.current, "stopped");
      this.current = fresh;
      this.next = null;
    }
  }

  /** Speech of reply `id` arrived; `info` is {rate, left}. Returns false when it is not wanted. */
  push(id, samples, info = {}) {
    const reply = this._find(id);
    if (!reply || reply.ended || reply.state === "stopping" || reply.state === "stopped") return false;
    reply.chunks.push(samples);
    reply.buffered += samples.length;
    reply.received += samples.length;
    reply.lastChunk = samples.length;
    reply.largestChunk = Math.max(reply.largestChunk, samples.length);
    reply.lastArrival = this.frame;
    if (reply.firstArrival === null) reply.firstArrival = this.frame;
    if (info.rate > 0) reply.rate = info.rate;
    if (info.left !== undefined && info.left !== null) reply.left = Math.max(0, info.left);
    return true;
  }

  /** Reply `id` has no more speech: play out what is buffered. */
  end(id) {
    const reply = this._find(id);
    if (!reply || reply.state === "stopping" || reply.state === "stopped") return;
    reply.ended = true;
    if (reply.buffered === 0 && reply.state !== "playing") this._close(reply, "done");
  }

  /** Silence now (a short fade) and drop everything queued; `id` limits it to that reply. */
  stop(id) {
    if (id !== undefined && id !== null && !this._find(id)) return;
    this._close(this.next, "stopped");
    this.next = null;
    const reply = this.current;
    if (!reply) return;
    if (reply.state === "playing") reply.state = "stopping";
    else if (reply.state !== "stopping") this._close(reply, "stopped");
  }

  /** Fill `out` with the next frames; returns it. */
  render(out) {
    const n = out.length;
    let i = 0;
    while (i < n) {
      let reply = this.current;
      if (reply && (reply.state === "done" || reply.state === "stopped") && this.next) {
        reply = this.current = this.next;
        this.next = null;
      }
      if (!reply || reply.state === "done" || reply.state === "stopped") break;
      if (reply.state === "waiting" || reply.state === "paused") {
        if (!this._ready(reply)) break;
        this._play(reply, i);
      }
      i = this._samples(reply, out, i);
    }
    out.fill(0, i);
    this.frame += n;
    return out;
  }

  /** Events since the last call: start, gap, done, stopped (each with the reply's id). */
  drain() {
    const events = this.events;
    this.events = [];
    return events;
  }

  _find(id) {
    if (this.current && this.current.id === id) return this.current;
    if (this.next && this.next.id === id) return this.next;
    return null;
  }

  _ready(reply) {
    if (reply.buffered === 0) return false;
    if (reply.ended) return true;
    const o = this.options;
    const rate = reply.rate * o.rateSafety;
    if (!(rate > 0)) return false;
    const sr = this.sampleRate;
    const left = reply.left === null ? o.horizonSeconds : reply.left;
    // After a pause the whole remaining speech is in view, so there is no second one.
    let ahead = reply.state === "paused" ? left : Math.min(left, o.horizonSeconds);
    const biggest = Math.max(o.maxChunkSeconds, reply.largestChunk / sr);
    const since = (this.frame - reply.lastArrival) / sr;
    let chunk = reply.lastChunk / sr;
    let before = 0;  // future speech before chunk k
    let need = 0;
    while (ahead > 1e-9) {
      chunk = Math.min(o.growth * chunk, biggest, ahead);
      if (!(chunk > 0)) break;
      need = Math.max(need, (before + chunk) / rate - before);
      before += chunk;
      ahead -= chunk;
    }
    return reply.buffered / sr >= need - since + o.marginSeconds;
  }

  _play(reply, i) {
    const at = this.frame + i;
    if (reply.state === "waiting") {
      reply.startFrame = at;
      this.events.push({
        type: "start", reply: reply.id, frame: at, rate: reply.rate,
        delay: (at - reply.firstArrival) / this.sampleRate,
      });
    } else {
      const seconds = (at - reply.gapStart) / this.sampleRate;
      reply.gaps.push(seconds);
      this.events.push({ type: "gap", reply: reply.id, frame: at, seconds });
    }
    reply.state = "playing";
    this.gain = 0;
  }

  _samples(reply, out, i) {
    const n = out.length;
    const step = 1 / this.ramp;
    for (; i < n; i++) {
      if (reply.buffered === 0) {
        this.gain = 0;
        if (reply.state === "stopping") this._close(reply, "stopped", this.frame + i);
        else if (reply.ended) this._close(reply, "done", this.frame + i);
        else {
          reply.state = "paused";
          reply.gapStart = this.frame + i;
        }
        return i;
      }
      const fading = reply.state === "stopping" || reply.buffered <= this.ramp;
      if (fading) this.gain = Math.max(0, this.gain - step);
      else this.gain = Math.min(1, this.gain + step);
      out[i] = reply.take() * this.gain;
      if (reply.state === "stopping" && this.gain === 0) {
        this._close(reply, "stopped", this.frame + i + 1);
        return i + 1;
      }
    }
    return i;
  }

  _close(reply, how, at = this.frame) {
    if (!reply || reply.state === "done" || reply.state === "stopped") return;
    reply.flush();
    reply.state = how;
    this.events.push({
      type: how, reply: reply.id, frame: at,
      delay: reply.startFrame === null ? null : (reply.startFrame - reply.firstArrival) / this.sampleRate,
      gaps: reply.gaps.length,
      gapSeconds: reply.gaps.reduce((a, b) => a + b, 0),
      played: reply.played / this.sampleRate,
      received: reply.received / this.sampleRate,
    });
  }
}

if (typeof module === "object" && module.exports) module.exports = { Playout, PLAYOUT_DEFAULTS };
