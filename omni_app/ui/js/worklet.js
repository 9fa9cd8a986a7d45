/*
 * The AudioWorklet processor around Playout (playout.js is loaded in front of this file).
 * Messages from the page: begin, chunk, end, stop. Events back: start, gap, done,
 * stopped, each stamped with the context time of its frame.
 */

class OmniSpeechProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.playout = new Playout(sampleRate);
    this.base = currentFrame;
    this.port.onmessage = (event) => this.receive(event.data);
  }

  receive(message) {
    const p = this.playout;
    if (message.type === "begin") p.begin(message.reply);
    else if (message.type === "chunk") p.push(message.reply, message.samples, message.info);
    else if (message.type === "end") p.end(message.reply);
    else if (message.type === "stop") p.stop(message.reply);
  }

  process(inputs, outputs) {
    this.playout.render(outputs[0][0]);
    for (const event of this.playout.drain()) {
      event.time = (this.base + event.frame) / sampleRate;
      this.port.postMessage(event);
    }
    return true;
  }
}

registerProcessor("omni-speech-playout", OmniSpeechProcessor);
