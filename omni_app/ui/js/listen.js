/*
 * The page listens for itself: microphone, turn-taking and barge-in, all in the browser.
 *
 * "Start listening" opens the microphone with echo cancellation, noise suppression and
 * automatic gain asked for explicitly (on the device chosen in the list), and runs silero
 * VAD on it (@ricky0123/vad-web with onnxruntime-web, served by the app). Nothing goes to
 * the server while the person is quiet. When a turn ends (a pause as long as the setting),
 * its audio goes to the server once, as 16 kHz PCM, through the component's `voice_turn`
 * or `video_turn` event (whichever chat tab is shown), with the moments the speech began
 * and ended, so video chat takes the webcam frames of that span.
 *
 * Barge-in is decided here: when the person starts speaking over a reply, its player is
 * silenced at once and then the server is told (`barge`). The reply's own sound coming
 * back from the speakers must not count as the person speaking, even where the browser's
 * echo canceller removes nothing: the echo guard (echo.js) compares the microphone with
 * what the players send to the speakers, and speech over a reply counts only when the
 * microphone is clearly louder than the echo it predicts. A turn heard while a reply
 * played that never rose above its echo is the reply itself, and is dropped.
 *
 * The microphone, the VAD and the players share one AudioContext (the players'), so the
 * guard sees microphone and speakers on one clock. Where the browser cannot feed the
 * microphone into that context, listening still works, without the guard (the line says
 * to use headphones).
 */
(() => {
  if (window.OmniListen) return;
  const GUARD_SOURCE = "__GUARD_SOURCE__";
  const SAMPLE_RATE = __INPUT_SAMPLE_RATE__; // what the model hears (omni_app.config)
  const FRAME_SECONDS = 0.032; // silero v5: 512 samples at 16 kHz
  const THRESHOLD = 0.5; // speech probability of a speech frame
  const BARGE_FRAMES = 2; // consecutive frames of the person's speech over a reply
  const MIN_NEAR_FRAMES = 4; // a turn heard over a reply needs this many frames above its echo
  const KEEP_PAUSE_SECONDS = 0.2; // of the pause that ended a turn, kept in its audio
  const MAX_TURN_SECONDS = 60;
  const MAX_LAG_SECONDS = 2; // the VAD this far behind the sound: its frame count is re-anchored
  const CONSTRAINTS = { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true };

  const state = {
    element: null, trigger: null, config: null,
    vad: null, stream: null, source: null, guard: null,
    pauseMs: 600, flags: [], segment: null, run: 0, starting: false,
    frames: 0, origin: Infinity, lag: 0, // VAD frames since listening started, when they began, how late
    /** What happened, for the page and its tests: {type, at, ...}. */
    log: [],
  };

  const note = (type, extra = {}) => {
    state.log.push({ type, at: Date.now(), ...extra });
    if (state.log.length > 500) state.log.splice(0, 250);
  };
  const $ = (selector) => state.element && state.element.querySelector(selector);
  const show = (text) => { const line = $(".omni-listen-line"); if (line) line.textContent = text; };

  /** The chat tab on show ("voice" or "video"), or null. */
  function shownTab() {
    for (const tab of ["voice", "video"]) {
      const chat = document.getElementById(`${tab}-chat`);
      if (chat && chat.offsetParent !== null) return tab;
    }
    return null;
  }

  function base64(samples) {
    const pcm = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32767)));
    const bytes = new Uint8Array(pcm.buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }

  /** Guard flags of the `seconds` before `until` (context time). */
  function recentFlags(seconds, until) {
    const since = until - seconds;
    return state.flags.filter((f) => f.time >= since && f.time <= until);
  }

  /**
   * When (context time) the audio of the VAD frame just processed ended. Frames come one
   * after another, 32 ms apart in sound, but the model runs on the page's busy main thread
   * and may fall behind: the least late frame anchors the count, so a frame is judged
   * against the guard's flags of its own moment, not of the moment it was processed.
   */
  function frameTime() {
    const now = OmniSpeech.context().currentTime;
    state.frames++;
    const anchor = now - state.frames * FRAME_SECONDS;
    // Far behind means the count went astray (the context was suspended): anchor again.
    if (anchor < state.origin || now - (state.origin + state.frames * FRAME_SECONDS) > MAX_LAG_SECONDS) {
      state.origin = anchor;
    }
    const end = state.origin + state.frames * FRAME_SECONDS;
    state.lag = now - end;
    return end;
  }

  /** One VAD frame: is it the person speaking (not the reply's echo), and is it a barge-in? */
  function frame(probability) {
    const speech = probability >= THRESHOLD;
    const at = frameTime();
    let near = speech;
    if (speech && state.guard) {
      const flags = recentFlags(0.08, at);
      const echo = OmniSpeech.sounding() !== null || flags.some((f) => f.echo);
      if (echo) near = flags.length > 0 && flags.filter((f) => f.near).length * 2 >= flags.length;
    }
    const segment = state.segment;
    if (segment) {
      segment.frames++;
      if (near) segment.near++;
      if (segment.frames * FRAME_SECONDS > MAX_TURN_SECONDS) cutLongTurn();
    }
    state.run = near ? state.run + 1 : 0;
    const playing = OmniSpeech.sounding();
    if (playing && state.run >= BARGE_FRAMES) bargeIn(playing);
  }

  function bargeIn(name) {
    OmniSpeech.stop(name);
    if (state.segment) state.segment.barged = true;
    note("barge", { tab: name, lagMs: Math.round(state.lag * 1000) });
    show("⏹ You spoke: the reply stopped.");
    state.trigger("barge", { tab: name });
  }

  function speechStart() {
    // Speech that begins while a reply sounds must prove itself louder than the echo.
    state.segment = { frames: 0, near: 0, overReply: OmniSpeech.sounding() !== null, barged: false,
      began: Date.now() };
    note("speech");
    show("🗣 Hearing you…");
  }

  function speechEnd(audio) {
    const segment = state.segment || { overReply: false, near: MIN_NEAR_FRAMES, barged: false, began: Date.now() };
    state.segment = null;
    const now = Date.now();
    if (segment.overReply && !segment.barged && segment.near < MIN_NEAR_FRAMES) {
      note("echo", { seconds: audio.length / SAMPLE_RATE });
      show("👂 Listening… (the reply's own sound was ignored)");
      return;
    }
    // The pause that ended the turn is in the audio: keep only its beginning.
    const pause = Math.max(0, state.pauseMs / 1000 - KEEP_PAUSE_SECONDS);
    const keep = Math.max(0, audio.length - Math.round(pause * SAMPLE_RATE));
    const samples = audio.subarray(0, keep);
    const ended = now - state.pauseMs;
    const began = ended - (keep / SAMPLE_RATE - KEEP_PAUSE_SECONDS) * 1000;
    note("heard", { seconds: samples.length / SAMPLE_RATE, began, ended });
    const tab = shownTab();
    if (!tab) {
      show("👂 Listening: open Voice chat or Video chat to talk.");
      return;
    }
    note("turn", { tab, seconds: samples.length / SAMPLE_RATE, ended });
    show(`👂 Listening · sent ${(samples.length / SAMPLE_RATE).toFixed(1)} s to ${tab} chat`);
    state.trigger(`${tab}_turn`, { pcm: base64(samples), sample_rate: SAMPLE_RATE, began: began / 1000,
      ended: ended / 1000, sent: Date.now() / 1000 });
  }

  /** A turn as long as the limit is sent as it is; listening goes on. */
  function cutLongTurn() {
    if (!state.vad) return;
    state.vad.pause().then(() => state.vad && state.vad.start());
  }

  async function devices() {
    const select = $(".omni-listen-device");
    if (!select || !navigator.mediaDevices.enumerateDevices) return;
    const chosen = select.value;
    const inputs = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "audioinput");
    select.replaceChildren(new Option("Default microphone", ""),
      ...inputs.filter((d) => d.deviceId && d.deviceId !== "default")
        .map((d, i) => new Option(d.label || `Microphone ${i + 1}`, d.deviceId)));
    select.value = chosen;
  }

  async function start() {
    if (state.vad || state.starting) return;
    state.starting = true;
    const opened = OmniSpeech.open(); // within the click: the players may then sound
    const toggle = $(".omni-listen-toggle");
    show("Opening the microphone…");
    try {
      if (!window.vad || !window.ort) throw new Error("the voice detection scripts did not load");
      const deviceId = ($(".omni-listen-device") || {}).value;
      const audio = deviceId ? { ...CONSTRAINTS, deviceId: { exact: deviceId } } : { ...CONSTRAINTS };
      const stream = await navigator.mediaDevices.getUserMedia({ audio });
      state.stream = stream;
      const ctx = await opened;
      let shared = ctx;
      try {
        state.source = ctx.createMediaStreamSource(stream);
        const url = URL.createObjectURL(new Blob([GUARD_SOURCE], { type: "text/javascript" }));
        await ctx.audioWorklet.addModule(url);
        state.guard = new AudioWorkletNode(ctx, "omni-echo-guard", { numberOfInputs: 2, numberOfOutputs: 0 });
        state.guard.port.onmessage = (event) => {
          state.flags.push(event.data);
          // Kept for as long as the VAD may lag behind (10 ms each).
          if (state.flags.length > MAX_LAG_SECONDS * 150) state.flags.splice(0, MAX_LAG_SECONDS * 50);
        };
        state.source.connect(state.guard, 0, 0);
        OmniSpeech.output().connect(state.guard, 0, 1);
      } catch (error) {
        // e.g. a browser that cannot take a microphone into a 24 kHz context: no guard.
        shared = undefined;
        state.guard = null;
        note("no-guard", { error: String(error) });
      }
      const urls = state.config.urls;
      window.ort.env.logLevel = "error";
      state.vad = await window.vad.MicVAD.new({
        model: "v5", baseAssetPath: urls.vadAssets, onnxWASMBasePath: urls.ortAssets,
        audioContext: shared, getStream: async () => stream, pauseStream: async () => {},
        resumeStream: async () => stream, startOnLoad: false,
        positiveSpeechThreshold: THRESHOLD, negativeSpeechThreshold: THRESHOLD - 0.15,
        redemptionMs: state.pauseMs, preSpeechPadMs: 300, minSpeechMs: 250, submitUserSpeechOnPause: true,
        onFrameProcessed: (probabilities) => frame(probabilities.isSpeech),
        onSpeechStart: speechStart,
        onSpeechEnd: speechEnd,
        onVADMisfire: () => { state.segment = null; note("misfire"); show("👂 Listening…"); },
      });
      await state.vad.start();
      note("listening", { guard: Boolean(state.guard), constraints: CONSTRAINTS });
      if (toggle) toggle.textContent = "⏹ Stop listening";
      show(state.guard ? "👂 Listening: talk, then pause." :
        "👂 Listening: talk, then pause. (Use headphones: this browser cannot tell your voice from the reply's.)");
      devices();
    } catch (error) {
      await stop(true);
      const denied = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
      show(denied ? "⚠️ The microphone was not allowed: allow it in the browser's address bar, then try again." :
        `⚠️ Could not start listening: ${error && error.message ? error.message : error}`);
      note("error", { error: String(error) });
    } finally {
      state.starting = false;
    }
  }

  async function stop(quiet = false) {
    const vad = state.vad;
    state.vad = null;
    state.segment = null;
    if (vad) await vad.destroy().catch(() => {});
    if (state.guard) state.guard.disconnect();
    if (state.source) state.source.disconnect();
    try { if (state.guard) OmniSpeech.output().disconnect(state.guard); } catch (error) { /* already apart */ }
    if (state.stream) for (const track of state.stream.getTracks()) track.stop();
    state.stream = state.source = state.guard = null;
    state.flags = [];
    state.frames = 0;
    state.origin = Infinity;
    const toggle = $(".omni-listen-toggle");
    if (toggle) toggle.textContent = "🎙 Start listening";
    if (!quiet) {
      note("stopped");
      show("The microphone is off.");
    }
  }

  window.OmniListen = {
    state,
    /** Called by the listener component's js_on_load. */
    attach(element, trigger, config) {
      state.element = element;
      state.trigger = trigger;
      state.config = config;
      state.pauseMs = config.pauseMs;
      $(".omni-listen-toggle").addEventListener("click", () => (state.vad ? stop() : start()));
      $(".omni-listen-device").addEventListener("change", () => { if (state.vad) stop(true).then(start); });
      if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
        navigator.mediaDevices.addEventListener("devicechange", devices);
      }
    },
    start,
    stop,
    listening: () => Boolean(state.vad),
    /** The pause that ends a turn (ms), from the slider. */
    setPause(ms) {
      state.pauseMs = Number(ms);
      if (state.vad) state.vad.setOptions({ redemptionMs: state.pauseMs });
    },
  };
})();
