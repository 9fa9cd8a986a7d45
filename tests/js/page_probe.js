/*
 * Instruments a page for the browser tests and bench/browser_latency.py (an init script,
 * run before the page's own scripts).
 *
 * 1. A tap in front of the speakers of the speech players' AudioContext: whatever is
 *    connected to its destination goes through an AudioWorklet that reports each change
 *    between sound and silence with the moment it reaches the output (epoch ms). Pages
 *    that play through <audio> elements are routed through a context, tapped the same way.
 * 2. A microphone the test speaks into: getUserMedia's audio comes from a Web Audio graph
 *    (from the first call on: gradio may open the microphone as the page loads), and
 *    __probe.say(base64 wav) plays a recording into it; the returned promise gives the
 *    epoch ms at which the speech in it starts and ends. getUserMedia's constraints are kept
 *    (__probe.constraints).
 * 3. A room: __probe.echo(gain, delayMs) mixes what the speech players send to the speakers
 *    back into that microphone, attenuated and delayed, with no echo canceller on the way.
 */
(() => {
  const THRESHOLD = 1e-4; // about -80 dBFS: below the quietest speech sample that matters
  const TAP = `
    class OmniTap extends AudioWorkletProcessor {
      constructor() { super(); this.loud = false; }
      process(inputs, outputs) {
        const input = inputs[0];
        const output = outputs[0];
        let peak = 0;
        for (let c = 0; c < output.length; c++) {
          const source = input.length ? input[Math.min(c, input.length - 1)] : null;
          if (source) {
            output[c].set(source);
            for (let i = 0; i < source.length; i++) peak = Math.max(peak, Math.abs(source[i]));
          } else output[c].fill(0);
        }
        const loud = peak > ${THRESHOLD};
        if (loud !== this.loud) {
          this.loud = loud;
          this.port.postMessage({ loud, time: currentTime });
        }
        return true;
      }
    }
    registerProcessor("omni-tap", OmniTap);`;
  const tapUrl = URL.createObjectURL(new Blob([TAP], { type: "text/javascript" }));
  // sound: {loud, at, context} per change; context numbers the tapped AudioContexts (see tapOf).
  // media: play/playing/waiting/ended events of <audio> elements, {type, at, id}.
  const probe = (window.__probe = { sound: [], media: [], fakeMic: true, contexts: 0, errors: [] });
  let mediaContext = null;
  const connect = AudioNode.prototype.connect;

  const wall = (ctx, time) => {
    const stamp = ctx.getOutputTimestamp();
    return performance.timeOrigin + stamp.performanceTime + (time - stamp.contextTime) * 1000;
  };

  function tapped(ctx) {
    const bus = ctx.createGain();
    connect.call(bus, ctx.destination);
    ctx.__bus = bus;
    const id = (ctx.__tap = ++probe.contexts);
    ctx.audioWorklet.addModule(tapUrl).then(() => {
      const tap = new AudioWorkletNode(ctx, "omni-tap",
        { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [2] });
      tap.port.onmessage = (event) =>
        probe.sound.push({ loud: event.data.loud, at: wall(ctx, event.data.time), context: id });
      bus.disconnect();
      connect.call(bus, tap);
      connect.call(tap, ctx.destination);
    }).catch((error) => probe.errors.push(`tap ${id}: ${error}`));
    return bus;
  }

  // Only the speech players' context and the one <audio> elements are routed through are
  // tapped: other libraries' contexts (gradio's recorder) are left alone.
  const playing = (ctx) => ctx === mediaContext || (window.OmniSpeech && OmniSpeech.context() === ctx);
  AudioNode.prototype.connect = function (target, ...rest) {
    if (target instanceof AudioDestinationNode && playing(target.context)) {
      return connect.call(this, target.context.__bus || tapped(target.context), ...rest);
    }
    return connect.call(this, target, ...rest);
  };

  // <audio> elements (gradio's streamed audio) play through a tapped context too.
  const routeMedia = (el) => {
    if (el.__probed) return;
    el.__probed = true;
    for (const type of ["play", "playing", "waiting", "ended"]) {
      el.addEventListener(type, () => probe.media.push({ type, at: Date.now(), id: (el.closest("[id]") || {}).id }));
    }
    el.addEventListener("play", () => {
      if (el.__routed) return;
      el.__routed = true;
      mediaContext = probe.mediaContext = mediaContext || new AudioContext();
      mediaContext.resume();
      mediaContext.createMediaElementSource(el).connect(mediaContext.destination);
    });
  };
  new MutationObserver(() => document.querySelectorAll("audio").forEach(routeMedia))
    .observe(document, { subtree: true, childList: true });

  // The microphone the test speaks into: every getUserMedia gets its own stream (a page may
  // stop the tracks it got), all fed by one mixer that recordings are played into.
  let mic = null;
  const realGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  const microphone = () => {
    if (!mic) {
      const ctx = new AudioContext({ sampleRate: 48000 });
      mic = { ctx, mixer: ctx.createGain() };
      // A silent source keeps the streams delivering audio between the recordings.
      const silence = ctx.createConstantSource();
      silence.offset.value = 0;
      connect.call(silence, mic.mixer);
      silence.start();
      ctx.resume();
    }
    return mic;
  };
  probe.constraints = [];
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    probe.constraints.push(constraints);
    if (!probe.fakeMic || !constraints || !constraints.audio) return realGetUserMedia(constraints);
    const { ctx, mixer } = microphone();
    const out = ctx.createMediaStreamDestination();
    connect.call(mixer, out);
    const tracks = out.stream.getAudioTracks();
    if (constraints.video) tracks.push(...(await realGetUserMedia({ video: constraints.video })).getVideoTracks());
    return new MediaStream(tracks);
  };
  /** The number of a tapped context (its sound events carry it). */
  probe.tapOf = (ctx) => (ctx ? ctx.__tap : null);
  probe.say = async (b64) => {
    const { ctx, mixer } = microphone();
    await ctx.resume();
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const buffer = await ctx.decodeAudioData(bytes.buffer);
    const samples = buffer.getChannelData(0);
    let last = samples.length - 1;
    while (last > 0 && Math.abs(samples[last]) < 0.01) last--;
    let first = 0;
    while (first < last && Math.abs(samples[first]) < 0.01) first++;
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    connect.call(source, mixer);
    const start = ctx.currentTime + 0.05;
    source.start(start);
    const startsAt = wall(ctx, start);
    return { start: startsAt, speechStart: startsAt + (first / buffer.sampleRate) * 1000,
      speechEnd: startsAt + (last / buffer.sampleRate) * 1000, end: startsAt + buffer.duration * 1000 };
  };
  probe.echo = (gain, delayMs) => {
    const players = OmniSpeech.context();
    const { ctx, mixer } = microphone();
    const out = players.createMediaStreamDestination();
    connect.call(OmniSpeech.output(), out);
    const source = ctx.createMediaStreamSource(out.stream);
    const delay = ctx.createDelay(1);
    delay.delayTime.value = delayMs / 1000;
    const level = ctx.createGain();
    level.gain.value = gain;
    connect.call(source, delay);
    connect.call(delay, level);
    connect.call(level, mixer);
    probe.room = { out, source, delay, level };
  };
})();
