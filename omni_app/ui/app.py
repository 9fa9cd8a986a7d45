"""The whole web app: a banner, one tab per way of talking to the model."""

from __future__ import annotations

import gradio as gr

from . import image_qa, inside_tab, video_chat, voice_chat, voice_clone
from .context import AppContext

#: All model work shares one queue, ``AppContext.concurrency`` wide: one generation at a time on
#: a model in this process (one GPU); in front of a server, as many as it queues itself.
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


def build_app(app: AppContext) -> gr.Blocks:
    """Compose the tabs. Launch with ``.queue().launch()`` (see app.py)."""
    with gr.Blocks(title="omni_app · Qwen2.5-Omni") as demo:
        gr.Markdown("# omni_app · talk to Qwen2.5-Omni\nSpeak, show, ask: the answer streams as text and "
                    "speech while it is still being generated.")
        gr.Markdown(banner_text(app), elem_id="banner")
        stores, pickers = [], []
        with gr.Tabs():
            for tab_id, title, module in (("voice", "Voice chat", voice_chat), ("video", "Video chat", video_chat),
                                          ("image", "Image Q&A", image_qa)):
                with gr.Tab(title, id=tab_id):
                    store, picker = module.build(app, GPU_QUEUE)
                    stores.append(store)
                    pickers.append(picker)
            with gr.Tab("Voice cloning TTS", id="tts"):
                voice_clone.build(app, GPU_QUEUE, pickers)
            with gr.Tab("Inside the model", id="inside"):
                inside_tab.build(app, GPU_QUEUE)

        def forget(request: gr.Request):
            for store in stores:
                for key in store.drop(request):
                    app.backend.end_session(key)
            app.drop_session(request)

        demo.unload(forget)
    return demo
