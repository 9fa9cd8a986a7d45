""""Inside the model" tab: six pictures of the user's own turn, drawn from the model's code."""

from __future__ import annotations

import logging
import threading

import gradio as gr

from .. import inside
from .. import inside_plots as plots
from ..conversation import AudioPart, Conversation, ImagePart, VideoPart, build_inputs
from ..engine.service import Trace
from ..errors import OmniError
from ..events import Done
from ..media import audio_from_array, load_image, load_video
from .reply import Backend, LastReply
from .session import session_key

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


def build(backend: Backend, gpu_queue: str) -> None:
    """Lay out the tab inside the current ``gr.Blocks`` and wire its events."""
    gr.Markdown("Run a turn in any tab, then press **Explain my last turn** — or give an input here. "
                "Every picture comes from the loaded model's own code and config.")
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

    def explain_last(request: gr.Request):
        reply = backend.last.get(session_key(request))
        if reply is None:
            raise gr.Error("No turn yet in this session: talk, type or ask in another tab first.")
        return _safely(_explain, backend, reply)

    def explain_new(words, sound, picture, clip, request: gr.Request):
        parts = []
        try:
            if clip:
                parts.append(VideoPart(load_video(clip, backend.media)))
            if picture is not None:
                parts.append(ImagePart(load_image(picture, backend.media)))
            if sound is not None:
                parts.append(AudioPart(audio_from_array(sound[1], sound[0], backend.media)))
            conversation = Conversation().add_user(*parts, words or "")
            trace, done = Trace(), None
            voice = backend.service.stock_voices[0]
            for event in backend.stream(conversation, voice, threading.Event(), trace):
                if isinstance(event, Done):
                    done = event
        except OmniError as exc:
            raise gr.Error(str(exc)) from exc
        if done is None:
            raise gr.Error("The model gave no reply to explain.")
        reply = LastReply(conversation, trace, done)
        backend.remember(request, reply)
        return _safely(_explain, backend, reply)

    last.click(explain_last, outputs=outputs, concurrency_limit=1, concurrency_id=gpu_queue,
               api_name="inside_last")
    new.click(explain_new, inputs=[text, audio, image, video], outputs=outputs, concurrency_limit=1,
              concurrency_id=gpu_queue, api_name="inside_new")


def _safely(fn, *args):
    try:
        return fn(*args)
    except OmniError as exc:
        raise gr.Error(str(exc)) from exc
    except Exception as exc:
        log.exception("drawing failed")
        raise gr.Error(f"The pictures could not be drawn: {type(exc).__name__}: {exc}") from exc


def _explain(backend: Backend, reply: LastReply) -> list:
    loaded = backend.service.loaded
    prepared = build_inputs(reply.conversation, loaded.processor)
    tokens = inside.token_map(loaded, prepared)
    positions, per_second = inside.rope_positions(loaded, prepared)
    out = {"tokens": plots.draw_token_map(tokens), "rope": plots.draw_rope(positions, per_second, tokens.kinds)}
    audio = inside.audio_view(loaded, prepared)
    out["audio"] = plots.draw_audio(audio) if audio is not None else None
    picture = _first_picture(reply.conversation)
    out["vision"] = plots.draw_vision(inside.vision_view(loaded, prepared, *picture)) if picture else None
    trace, stats = reply.trace, reply.done.stats
    if trace.codes and trace.chunks:
        attention = inside.dit_attention(loaded, len(trace.codes))
        out["dit"] = plots.draw_dit(attention, inside.chunk_audio(trace.chunks), trace.chunks)
    else:
        out["dit"] = None
    out["timeline"] = plots.draw_timeline(inside.timeline(trace.timeline, trace.chunks), stats.audio_seconds) \
        if trace.timeline else None
    summary = (f"**This turn:** {len(tokens.kinds)} prompt tokens ("
               + ", ".join(f"{k} {n}" for k, n in tokens.counts.items() if n)
               + f") · reply {stats.text_tokens} tokens, {stats.codec_codes} speech codes, "
               f"{stats.audio_seconds:.1f} s of speech · {len(trace.chunks)} audio chunks")
    if not trace.timeline:
        summary += " · (the reference engine records no timeline: use the streaming engine)"
    return [summary, *out.values()]


def _first_picture(conversation: Conversation):
    import numpy as np

    # The first picture: its grid is the first one the processor reports.
    for turn in conversation.turns:
        for part in turn.parts:
            if isinstance(part, ImagePart):
                return np.asarray(part.image), "image"
            if isinstance(part, VideoPart):
                return part.clip.frames[0], "video"
    return None
