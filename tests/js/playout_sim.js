/*
 * Drives omni_app/ui/js/playout.js (the code the page's AudioWorklet runs) with synthetic
 * arrival times, one render quantum at a time, as the audio thread does.
 *
 * stdin: {"sampleRate", "quantum", "duration", "options", "actions": [{"t", "do": "begin"|"push"|"end"|"stop",
 *         "id", "seconds", "rate", "left", "value"}]}
 * stdout: {"events": [...], "maxStep", "sound": [[start, end], ...], "samples": {"id": count}, "lastSound"}
 * Every pushed chunk is a constant (`value`, default 0.5), so any step in the output is the gain moving.
 */
const path = require("path");
const { Playout } = require(path.join(__dirname, "..", "..", "omni_app", "ui", "js", "playout.js"));

const scenario = JSON.parse(require("fs").readFileSync(0, "utf8"));
const sr = scenario.sampleRate || 24000;
const quantum = scenario.quantum || 128;
const playout = new Playout(sr, scenario.options || {});
const actions = scenario.actions.slice().sort((a, b) => a.t - b.t);
const total = Math.ceil((scenario.duration * sr) / quantum);
const out = new Float32Array(quantum);
const events = [];
let previous = 0;
let maxStep = 0;
let soundStart = null;
let lastSound = null;
const sound = [];
let next = 0;

for (let k = 0; k < total; k++) {
  const now = (k * quantum) / sr;
  while (next < actions.length && actions[next].t <= now) {
    const a = actions[next++];
    if (a.do === "begin") playout.begin(a.id);
    else if (a.do === "push") {
      const samples = new Float32Array(Math.round(a.seconds * sr)).fill(a.value === undefined ? 0.5 : a.value);
      playout.push(a.id, samples, { rate: a.rate, left: a.left });
    } else if (a.do === "end") playout.end(a.id);
    else if (a.do === "stop") playout.stop(a.id);
  }
  playout.render(out);
  for (let i = 0; i < quantum; i++) {
    const t = (k * quantum + i) / sr;
    maxStep = Math.max(maxStep, Math.abs(out[i] - previous));
    previous = out[i];
    if (out[i] !== 0) {
      if (soundStart === null) soundStart = t;
      lastSound = t;
    } else if (soundStart !== null) {
      sound.push([soundStart, t]);
      soundStart = null;
    }
  }
  for (const e of playout.drain()) events.push(Object.assign({ t: e.frame / sr }, e));
}
if (soundStart !== null) sound.push([soundStart, (total * quantum) / sr]);
process.stdout.write(JSON.stringify({ events, maxStep, sound, lastSound, ramp: playout.ramp }));
