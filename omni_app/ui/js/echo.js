/*
 * The echo guard: an AudioWorklet in the speech players' AudioContext that tells the
 * person's voice from the reply's own sound coming back from the speakers.
 *
 * Input 0 is the microphone, input 1 what the players send to the speakers (the
 * reference), both on the same clock. Per 10 ms frame it compares the microphone's level
 * with the echo the reference predicts: the room's delay and coupling are learnt from the
 * last seconds of playback (learn()), and the echo's tail decays like a room's. A frame is "near" when the microphone is clearly louder than that
 * prediction: the person is speaking. This holds where the browser's echo canceller
 * removes nothing; where it does, the learnt coupling is just small.
 *
 * Posts {time, near, echo} per frame: `echo` when some echo may be on the microphone now.
 */

const FRAME_SECONDS = 0.01;
const MAX_DELAY = 40; // frames (400 ms): loudspeaker, room and capture latency together
const HISTORY = 300; // frames the coupling is learnt from (3 s)
const ACTIVE = 0.01; // reference RMS above which a frame counts as played sound (-40 dBFS)
const FLOOR = 0.004; // microphone RMS below which nothing counts as speech (-48 dBFS)
const MARGIN = 2; // the person must be this much (6 dB) above the predicted echo
const SPREAD = 2; // frames either side of the learnt delay: the capture and play-out paths' jitter.
// Wider over-predicts the echo of speech (its loudest syllable nearby), and a person talking
// over the reply went unheard until a louder word (at 4 frames: 2 of 20 tries, ~0.7 s late).
const TAIL = 0.82; // the predicted echo decays at most this much per frame (about 0.4 s to -60 dB)
const UNKNOWN_COUPLING = 1; // before anything is learnt: as loud as what is played

class OmniEchoGuard extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate * FRAME_SECONDS);
    this.filled = 0;
    this.micSum = 0;
    this.refSum = 0;
    this.mic = new Float32Array(HISTORY + MAX_DELAY);
    this.ref = new Float32Array(HISTORY + MAX_DELAY);
    this.count = 0; // frames seen
    this.delay = -1; // learnt delay in frames (-1: none)
    this.span = [0, MAX_DELAY]; // the reference frames the echo may come from
    this.coupling = UNKNOWN_COUPLING;
    this.predicted = 0;
    this.quiet = MAX_DELAY; // frames since the reference last sounded
    this.onset = 0; // frames left in which a new playback's echo may come at any delay
  }

  at(history, back) {
    return history[(this.count - 1 - back + history.length * 4) % history.length];
  }

  /** The loudest reference `from`..`to` frames before frame `back`. */
  window(back, from, to) {
    let level = 0;
    for (let d = from; d <= to; d++) level = Math.max(level, this.at(this.ref, back + d));
    return level;
  }

  /**
   * Learn the echo path from the frames where the reference was sounding: the delay whose
   * reference envelope best follows the microphone's, and the median ratio at it. Without
   * such a delay (no echo at all, or no clear one yet) the coupling is a high percentile of
   * the ratio of the microphone to the loudest reference that could have reached it: near
   * zero with headphones, so the person is heard over the reply from the start. A median is not moved
   * by a person who talks over the reply for less than half of the time. Only frames while
   * something was playing count: a person who cut the reply short goes on speaking after it
   * stopped, and those frames would pass for a long, loud echo.
   */
  learn() {
    const n = Math.min(HISTORY, this.count - MAX_DELAY);
    if (n < 50) return;
    let best = -1;
    let bestScore = 0.5; // a correlation below this says nothing about a delay
    for (let d = 0; d <= MAX_DELAY; d++) {
      let sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0, k = 0;
      for (let i = 0; i < n; i++) {
        const r = this.at(this.ref, i + d);
        if (r < ACTIVE || this.at(this.ref, i) < ACTIVE) continue;
        const m = this.at(this.mic, i);
        sx += r; sy += m; sxx += r * r; syy += m * m; sxy += r * m; k++;
      }
      if (k < 50) continue;
      const cov = sxy - (sx * sy) / k;
      const score = cov / Math.sqrt(Math.max(1e-12, (sxx - (sx * sx) / k) * (syy - (sy * sy) / k)));
      if (score > bestScore) { bestScore = score; best = d; }
    }
    const ratios = [];
    for (let i = 0; i < n; i++) {
      if (this.at(this.ref, i) < ACTIVE) continue;
      const r = best < 0 ? this.window(i, 0, MAX_DELAY) : this.at(this.ref, i + best);
      if (r >= ACTIVE) ratios.push(this.at(this.mic, i) / r);
    }
    if (ratios.length < 50) return;
    ratios.sort((a, b) => a - b);
    this.delay = best;
    this.span = best < 0 ? [0, MAX_DELAY] : [Math.max(0, best - SPREAD), best + SPREAD];
    // At a known delay the median ratio is the coupling; without one, the ratio to the loudest
    // reference is below the coupling whenever the reference varies: its 90th percentile.
    const rank = best < 0 ? Math.floor(ratios.length * 0.9) : ratios.length >> 1;
    this.coupling = Math.min(4, Math.max(0.001, ratios[rank]));
  }

  frame(micLevel, refLevel) {
    this.mic[this.count % this.mic.length] = micLevel;
    this.ref[this.count % this.ref.length] = refLevel;
    this.count++;
    if (this.count % 10 === 0) this.learn();
    // Playback that starts after a silence may come back at any delay: the play-out path
    // restarts, and a delay learnt from a reply the person cut short can be wrong (their
    // voice, right after the reply stopped, looks like a long echo). Until the longest delay
    // has passed, the echo is predicted from all of it.
    if (refLevel >= ACTIVE) {
      if (this.quiet >= MAX_DELAY) this.onset = MAX_DELAY;
      this.quiet = 0;
    } else this.quiet++;
    // The echo now: the reference around the learnt delay (any delay while none is learnt).
    const [from, to] = this.onset > 0 ? [0, MAX_DELAY] : this.span;
    if (this.onset > 0) this.onset--;
    const reference = this.window(0, from, Math.min(to, this.count - 1));
    this.predicted = Math.max(this.coupling * reference, this.predicted * TAIL);
    const near = micLevel > FLOOR && micLevel > MARGIN * this.predicted;
    this.port.postMessage({ time: currentTime, near, echo: this.predicted > FLOOR / MARGIN });
  }

  process(inputs) {
    const mic = inputs[0] && inputs[0][0];
    const ref = inputs[1] && inputs[1][0];
    const length = mic ? mic.length : ref ? ref.length : 128;
    for (let i = 0; i < length; i++) {
      const m = mic ? mic[i] : 0;
      const r = ref ? ref[i] : 0;
      this.micSum += m * m;
      this.refSum += r * r;
      if (++this.filled === this.size) {
        this.frame(Math.sqrt(this.micSum / this.size), Math.sqrt(this.refSum / this.size));
        this.filled = 0;
        this.micSum = 0;
        this.refSum = 0;
      }
    }
    return true;
  }
}

registerProcessor("omni-echo-guard", OmniEchoGuard);
