"""The web app in front of a model server (``app.py --backend URL``): waiting there, and a server that is gone."""

from __future__ import annotations

import threading

import gradio as gr
import pytest
from conftest import SERVER_BATCH, SERVER_KEY, _free_port
from gradio_client import Client

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits, MediaLimits
from omni_app.conversation import Conversation
from omni_app.engine.local import LocalBackend
from omni_app.serve.remote import RemoteBackend


def test_replies_of_one_app_wait_at_the_server_together_and_are_told_their_place(remote_app, live_server):
    # The model's batch is full of long replies; two people ask through the same app. Both
    # requests reach the server at once (not one after the other through the app's own queue)
    # and each is told its place there: one app in front of several replicas uses them all.
    holding = CancelToken()
    server = RemoteBackend(live_server.url, api_key=SERVER_KEY)
    holders = []
    for index in range(SERVER_BATCH):
        long = Request(Conversation().add_user(f"Hold the model {index}"), limits=GenerationLimits(512, 60), seed=1)
        hold = threading.Event()
        holders.append(threading.Thread(target=lambda r=long, h=hold: [h.set() for _ in server.stream(r, holding)]))
        holders[-1].start()
        assert hold.wait(120)
    people = [Client(remote_app.url, verbose=False, download_files=False) for _ in range(2)]  # a session each
    statuses: list[list[str]] = [[], []]
    waiting = [threading.Event(), threading.Event()]

    def ask(index: int) -> None:
        job = people[index].submit(f"Question {index}", "Chelsie", False, api_name="/voice_chat_text")
        for _chat, _speech, status, _replay in job:
            if isinstance(status, str):
                statuses[index].append(status)
                if status.startswith("⏳"):
                    waiting[index].set()

    askers = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
    try:
        for asker, told in zip(askers, waiting, strict=True):
            asker.start()
            told.wait(120)
    finally:
        holding.cancel()
        for holder in holders:
            holder.join(60)
    for asker in askers:
        asker.join(120)
    places = [[s for s in shown if s.startswith("⏳")] for shown in statuses]
    assert places[0][:1] == ["⏳ Waiting for the model: 1 request ahead."]
    assert places[1][:1] == ["⏳ Waiting for the model: 2 requests ahead."]
    assert all("tokens in" in shown[-1] for shown in statuses)  # and both were answered


def test_the_app_says_when_its_model_server_went_down(service):
    import uvicorn

    from omni_app.serve.server import make_app
    from omni_app.ui.app import build_app
    from omni_app.ui.context import AppContext

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(LocalBackend(service)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    demo = build_app(AppContext(RemoteBackend(f"http://127.0.0.1:{port}"), GenerationLimits(8, 1), MediaLimits()))
    reply = next(f.fn for f in demo.fns.values() if f.name == "reply_to_text")
    session = gr.Request(session_hash="server-down")
    history = [chat for chat, _, _, _ in reply("Hello", "Chelsie", False, session) if isinstance(chat, list)][-1]
    server.should_exit = True
    thread.join(30)
    outputs = []
    with pytest.raises(gr.Error, match=f"The model server at http://127.0.0.1:{port} can't be reached"):
        for output in reply("Still there?", "Chelsie", False, session):
            outputs.append(output)
    chat, _, status, _ = outputs[-1]
    assert chat == history and status.startswith("⚠️ The model server")  # the conversation is kept as it was
