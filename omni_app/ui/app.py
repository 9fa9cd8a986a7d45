"""The whole web app: a banner, one tab per way of talking to the model."""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from ..config import TABS, check_tabs
from . import image_qa, inside_tab, video_chat, voice_chat, voice_clone
from .context import AppContext
from .listen import PageListener

#: All model work shares one queue, ``concurrency`` wide: a model in this process makes a batch
#: of replies at once; in front of a server, as many as it queues itself.
GPU_QUEUE = "model"

CSS = """
#banner { padding: 0.6em 1em; border-radius: 8px; background: #fff4e5; border: 1px solid #f0b35b; }
#banner p { margin: 0; }
"""


def banner_text(app: AppContext) -> str:
    info = app.info
    if info.is_tiny:
        return ("⚠️ **Tiny test model loaded** — its weights are random, so its replies are noise. "
                "Everything else is real: use it to try the app. Start with `--model Qwen/Qwen2.5-Omni-7B` "
                f"(or `-3B`) on a GPU for real answers. · {info.description}")
    return f"Model: {info.description}"


def build_app(app: AppContext, tabs: Sequence[str] = TABS, concurrency: int = 1) -> gr.Blocks:
    """Compose the ``tabs`` (ids from :data:`~omni_app.config.TABS`; the first one named opens first).

    ``concurrency`` replies are generated at once (one per GPU worker on ZeroGPU; a model in
    this process makes them in one batch). Serve it with :func:`omni_app.ui.launch.serve_page`,
    whose page head carries the speech players' script.
    """
    tabs = check_tabs(tabs)
    with gr.Blocks(title="omni_app · Qwen2.5-Omni") as demo:
        gr.Markdown("# omni_app · talk to Qwen2.5-Omni\nSpeak, show, ask: the answer streams as text and "
                    "speech while it is still being generated.")
        gr.Markdown(banner_text(app), elem_id="banner")
        # One listener for the chat tabs: the page hears the person and sends finished turns.
        live = PageListener(app.vad) if {"voice", "video"} & set(tabs) else None
        pickers, shown = [], {}
        # Opens on the first tab asked for (the tabs are laid out in a fixed order), which
        # is also the chat tab the listener's turns go to until another one is shown.
        with gr.Tabs(selected=tabs[0]):
            for tab_id, title, module in (("voice", "Voice chat", voice_chat), ("video", "Video chat", video_chat),
                                          ("image", "Image Q&A", image_qa)):
                if tab_id not in tabs:
                    continue
                with gr.Tab(title, id=tab_id) as shown[tab_id]:
                    chat_tab = tab_id in ("voice", "video")  # the page's listener sends them its turns
                    _, picker = module.build(app, GPU_QUEUE, live) if chat_tab else module.build(app, GPU_QUEUE)
                    pickers.append(picker)
            if "tts" in tabs:
                with gr.Tab("Voice cloning TTS", id="tts") as shown["tts"]:
                    voice_clone.build(app, GPU_QUEUE, pickers)
            if "inside" in tabs:
                with gr.Tab("Inside the model", id="inside") as shown["inside"]:
                    inside_tab.build(app, GPU_QUEUE)
        if live is not None:
            live.wire()
        # Every model event shares one concurrency group; gradio applies its lowest limit.
        for fn in demo.fns.values():
            if fn.concurrency_id == GPU_QUEUE:
                fn.concurrency_limit = concurrency

        def forget(request: gr.Request):
            app.drop_session(request)

        demo.unload(forget)
    return demo
