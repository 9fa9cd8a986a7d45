""""Inside the model" tab: six pictures of the user's own turn, drawn from the model's code."""

from __future__ import annotations

import logging

import gradio as gr

from .. import inside_plots as plots
from ..api import Request
from ..conversation import AudioPart, Conversation, ImagePart, VideoPart
from ..errors import RequestError
from ..events import Done
from ..media import audio_from_array, load_image, load_video
from .context import AppContext, LastReply
from .errors import shown

log = logging.getLogger(__name__)

EXPLAIN = {
    "tokens": "**Token map.** Everything becomes one sequence of tokens: text, and placeholders that the audio "
              "and vision encoders fill in. In a video with sound, every 2 seconds the frames' tokens come "
              "first, then that stretch's audio tokens.",
    "rope": "**TMRoPE.** Each token gets three position ids: time, height and width. Media share one clock — "
            "25 ids per second — so a frame and the sound at the same moment get the same time id; text "
            "continues after the largest id before it.",
    "audio": "**Audio encoder.** 16 kHz sound becomes a 128-band mel spectrogram (10 ms per frame). The encoder "
             "works in 2-second blocks and gives one token per 40 ms: 25 tokens per second.",
    "vision": "**Vision encoder.** The picture is resized to a multiple of 28 px within a pixel budget, cut into "
              "14x14 patches, and each 2x2 group of patches becomes one token. Videos are sampled at 2 frames "
              "per second, two frames per temporal patch.",
    "dit": "**Speech decoder.** Speech codes become a mel spectrogram in blocks of 24 frames; attention reaches "
           "2 blocks back and 1 ahead, so a chunk can be decoded as soon as the block after it exists. Right: "
           "the chunks this reply was streamed in (grey context is decoded again, green is kept).",
    "timeline": "**Latency.** Thinker tokens and Talker codes as they were produced, the audio chunks as they "
                "left the server, and the playback they allowed: speech starts long before the reply is done "
                "and stays ahead of the listener when the line of audio played never has gaps.",
}


#: Said instead of the pictures when the model runs elsewhere.
REMOTE_NOTE = ("**This app talks to a model on a server**, and these pictures are computed from the model's own "
               "weights, code and config, which are not in this process. Start the app with the model in-process "
               "(`python app.py --model ...`, no `--backend`) to look inside it.")


def build(app: AppContext, gpu_queue: str) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    backend = app.backend
    gr.Markdown("Run a turn in any tab, then press **Explain my last turn** — or give an input here. "
                "Every picture comes from the loaded model's own code and config.")
    if not backend.info.can_inspect:
        gr.Markdown(REMOTE_NOTE, elem_id="inside-remote")
    with gr.Row():
        last = gr.Button("Explain my last turn", variant="primary", elem_id="inside-last")
        with gr.Accordion("Or a new input", open=False):
            text = gr.Textbox(label="Text", value="What is happening here?")
            audio = gr.Audio(sources=["upload", "microphone"], type="numpy", label="Audio")
            image = gr.Image(sources=["upload"], type="pil", label="Image")
            video = gr.Video(sources=["upload"], label="Video (its sound is used)")
            new = gr.Button("Explain this input", elem_id="inside-new")
    summary = gr.Markdown("", elem_id="inside-summary")
    images = {}
    for key, title in (("tokens", "Token map"), ("rope", "TMRoPE positions"), ("audio", "Audio encoder"),
                       ("vision", "Vision encoder"), ("dit", "Speech decoder"), ("timeline", "Latency timeline")):
        with gr.Row():
            images[key] = gr.Image(label=title, format="png", interactive=False, scale=3, elem_id=f"inside-{key}")
            gr.Markdown(EXPLAIN[key])
    outputs = [summary, *images.values()]

    @shown
    def explain_last(request: gr.Request):
        reply = app.last(request)
        if reply is None:
            raise RequestError("No turn yet in this session: talk, type or ask in another tab first.")
        return _explain(app, reply)

    @shown
    def explain_new(words, sound, picture, clip, request: gr.Request):
        parts = []
        if clip:
            parts.append(VideoPart(load_video(clip, app.media)))
        if picture is not None:
            parts.append(ImagePart(load_image(picture, app.media)))
        if sound is not None:
            parts.append(AudioPart(audio_from_array(sound[1], sound[0], app.media)))
        conversation = Conversation().add_user(*parts, words or "")
        done = None
        voice = backend.stock_voices()[0]
        for event in backend.stream(Request(conversation, voice=voice, limits=app.limits)):
            if isinstance(event, Done):
                done = event
        if done is None:
            raise RequestError("The model gave no reply to explain.")
        reply = LastReply(conversation, done)
        app.remember(request, reply)
        return _explain(app, reply)

    last.click(explain_last, outputs=outputs, concurrency_limit=app.concurrency, concurrency_id=gpu_queue,
               api_name="inside_last")
    new.click(explain_new, inputs=[text, audio, image, video], outputs=outputs, concurrency_limit=app.concurrency,
              concurrency_id=gpu_queue, api_name="inside_new")


def _explain(app: AppContext, reply: LastReply) -> list:
    seen = app.backend.inspect(reply.conversation, reply.done.trace)
    stats = reply.done.stats
    tokens = seen.tokens
    out = {"tokens": plots.draw_token_map(tokens), "rope": plots.draw_rope(seen.positions, seen.per_second,
                                                                           tokens.kinds)}
    out["audio"] = plots.draw_audio(seen.audio) if seen.audio is not None else None
    out["vision"] = plots.draw_vision(seen.vision) if seen.vision is not None else None
    out["dit"] = plots.draw_dit(seen.attention, seen.chunk_spans, seen.chunks) if seen.attention else None
    out["timeline"] = plots.draw_timeline(seen.timeline, stats.audio_seconds) if seen.timeline else None
    summary = (f"**This turn:** {len(tokens.kinds)} prompt tokens ("
               + ", ".join(f"{k} {n}" for k, n in tokens.counts.items() if n)
               + f") · reply {stats.text_tokens} tokens, {stats.codec_codes} speech codes, "
               f"{stats.audio_seconds:.1f} s of speech · {len(seen.chunks)} audio chunks")
    if seen.timeline is None:
        summary += " · (the reference engine records no timeline: use the streaming engine)"
    return [summary, *out.values()]
