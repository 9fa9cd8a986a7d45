"""Scale-out on Ray Serve: two CPU replicas of the tiny model behind one endpoint, on this machine.

Ray starts once for the module, small (2 CPUs, no dashboard, its files in a temporary
folder), and is shut down at the end, with a check that none of its processes is left.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import yaml
from conftest import _free_port

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits, MediaLimits
from omni_app.conversation import Conversation
from omni_app.errors import BackendUnavailable, RequestError
from omni_app.events import AudioChunk, Done, Notice, TextDelta
from omni_app.serve.remote import RemoteBackend

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[1]
SHORT = GenerationLimits(max_new_tokens=16, max_speech_seconds=1)
#: A reply that would run for minutes on the tiny model: only a cancel ends it early.
LONG = GenerationLimits(max_new_tokens=4000, max_speech_seconds=60)


@pytest.fixture(scope="module")
def endpoint(_isolated_cache):
    """``omni_app`` on Ray Serve: two replicas of the tiny model, one HTTP endpoint."""
    import psutil
    from ray import serve

    from omni_app.engine.tiny import ensure_tiny_checkpoint
    from omni_app.scale.command import start_ray
    from omni_app.scale.deployment import application
    from omni_app.scale.settings import APP_NAME, parse_args

    ensure_tiny_checkpoint()  # built here once; the replicas inherit OMNI_APP_CACHE and load it
    # As on a loaded machine: Ray's router gives a replica 2 ms, not 100, to answer a probe of
    # its queue length (more on each retry), so idle replicas often miss it. The processes
    # Ray starts inherit the setting.
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "0.002")
    # Short: Ray's socket paths live under it and must fit in 107 bytes.
    temp = tempfile.mkdtemp(prefix="omni-ray-", dir="/tmp")
    # Servers other tests started earlier in this run are not Ray's: they must keep running.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    start_ray(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    ours = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
        # One reply at a time per replica, so that a replica is busy with one (these tests are
        # about routing and waiting; a replica's batch is tested without Ray, test_batching.py).
        args = {"model": "tiny", "replicas": 2, "cpus_per_replica": 1, "max_new_tokens": 4000,
                "max_speech_seconds": 60, "max_batch": 1}
        serve.run(application(*parse_args(args)), name=APP_NAME, route_prefix="/",
                  logging_config={"log_level": "WARNING"})
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            monkeypatch.undo()
            ours += [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
            _, left = psutil.wait_procs(ours, timeout=30)
            left = [p for p in left if _running(p)]  # an exited one nobody reaped yet is no longer running
            for process in left:
                process.kill()
            shutil.rmtree(temp, ignore_errors=True)
            assert not left, f"Ray left processes behind: {[p.pid for p in left]}"


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def remote(endpoint):
    return RemoteBackend(endpoint)


def ask(backend, text: str, seed: int, session: str | None = None, limits=SHORT, voice="Chelsie",
        cancel: CancelToken | None = None, on_event=None) -> list:
    events = []
    request = Request(Conversation().add_user(text), voice=voice, limits=limits, seed=seed, session=session)
    for event in backend.stream(request, cancel):
        events.append(event)
        if on_event is not None:
            on_event(event)
    return events


def reply_of(events) -> tuple[str, bytes]:
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    audio = [e.samples for e in events if isinstance(e, AudioChunk)]
    return text, np.concatenate(audio).tobytes() if audio else b""


def waited(events) -> list[int]:
    return [e.queue_position for e in events if isinstance(e, Notice) and e.queue_position is not None]


def in_threads(*calls) -> list:
    """Run each ``(function, args)`` in its own thread at once; their results (or exceptions), in order."""
    results: list = [None] * len(calls)

    def run(index, function, args):
        try:
            results[index] = function(*args)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, f, a)) for i, (f, a) in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return results


def test_concurrent_streams_are_each_what_they_are_alone_and_use_both_replicas(remote):
    prompts = [(f"Question number {i}", 10 + i) for i in range(4)]
    alone = [ask(remote, text, seed, session=f"alone-{i}") for i, (text, seed) in enumerate(prompts)]
    together = in_threads(*[(ask, (remote, text, seed, f"together-{i}")) for i, (text, seed) in enumerate(prompts)])
    for solo, crowd in zip(alone, together, strict=True):
        assert isinstance(crowd[-1], Done) and crowd[-1].reason in ("finished", "length")
        assert reply_of(crowd) == reply_of(solo) and reply_of(crowd)[1]
    served_by = {events[-1].stats.served_by for events in together}
    assert len(served_by) == 2 and all(served_by), served_by
    # Four requests on two replicas that each generate one at a time: some waited, and were told.
    assert any(waited(events) for events in together)


def test_a_conversation_stays_on_its_replica(remote):
    # Idle replicas tie: a new conversation goes to either (at random); its next turn goes back there.
    def turn(session: str) -> str:
        events = ask(remote, "Next turn", 1, session=session, limits=GenerationLimits(8, 1), voice=None)
        return events[-1].stats.served_by

    first = {f"stays-{i}": turn(f"stays-{i}") for i in range(5)}
    assert all(first.values())
    assert {session: turn(session) for session in first} == first


def test_a_made_voice_is_spoken_by_every_replica(remote, media_dir):
    from omni_app.media import load_audio

    voice = remote.create_voice("Reader", load_audio(media_dir / "speech.wav"), base="Ethan")
    speak = Request(voice=voice, speak_text="Read this, please.", limits=SHORT, seed=3)
    replies = in_threads(*[(lambda: list(remote.stream(speak)), ()) for _ in range(2)])
    assert len({events[-1].stats.served_by for events in replies}) == 2  # made on one, spoken by both
    assert reply_of(replies[0])[1] == reply_of(replies[1])[1] != b""
    # A mistake in a request comes back as the model service says it, not as Ray's traceback.
    with pytest.raises(RequestError) as unknown:
        ask(remote, "Hello", 1, voice="Nobody")
    assert str(unknown.value).startswith("Unknown voice 'Nobody'") and "Traceback" not in str(unknown.value)


def test_a_disconnect_frees_its_replica(remote):
    # Streaming: the client leaves after the first audio of a reply that would run for minutes.
    cancel = CancelToken()
    events = ask(remote, "Talk for a long time", 1, session="leaver", limits=LONG, cancel=cancel,
                 on_event=lambda e: isinstance(e, AudioChunk) and cancel.cancel())
    assert events[-1].reason == "cancelled"
    # Waiting: with both replicas busy, a second request of the session queues at its replica, and leaves.
    running, speaking = [CancelToken(), CancelToken()], [threading.Event(), threading.Event()]
    holders = [threading.Thread(target=ask, args=(remote, "Hold the replica", 2 + i, session, LONG, "Chelsie",
                                                  running[i], lambda e, i=i: speaking[i].set()))
               for i, session in enumerate(("leaver", "bystander"))]
    for holder in holders:
        holder.start()
    assert all(event.wait(120) for event in speaking)
    queued = CancelToken()
    events = ask(remote, "Wait", 3, session="leaver", limits=LONG, cancel=queued, on_event=lambda e: queued.cancel())
    assert waited(events)[:1] == [1] and events[-1].reason == "cancelled"
    for token, holder in zip(running, holders, strict=True):
        token.cancel()
        holder.join(60)
    # The session's replica is free: neither reply is still running there, nor waiting to.
    after = ask(remote, "Anyone there?", 4, session="leaver")
    assert waited(after) == [] and after[-1].reason in ("finished", "length")


def test_the_app_shows_its_place_while_every_replica_is_busy(endpoint):
    from omni_app.ui.app import build_app
    from omni_app.ui.context import AppContext

    demo = build_app(AppContext(RemoteBackend(endpoint), GenerationLimits(8, 1), MediaLimits()))
    handlers = {f.name: f.fn for f in demo.fns.values() if f.fn is not None}
    busy = [CancelToken(), CancelToken()]
    speaking = [threading.Event(), threading.Event()]
    remote = RemoteBackend(endpoint)
    holders = [threading.Thread(target=ask, args=(remote, f"Busy {i}", i, f"busy-{i}", LONG, "Chelsie", busy[i],
                                                  lambda e, i=i: isinstance(e, AudioChunk) and speaking[i].set()))
               for i in range(2)]
    for holder, spoke in zip(holders, speaking, strict=True):
        holder.start()
        assert spoke.wait(120)  # one after the other: the second goes to the free replica
    statuses = []
    try:
        for _chat, _speech, status, _replay in handlers["reply_to_text"]("Hello", "Chelsie", False,
                                                                gr.Request(session_hash="waiting")):
            if isinstance(status, str):
                statuses.append(status)
                if status.startswith("⏳"):
                    for token in busy:  # the replicas free up: the reply goes on
                        token.cancel()
    finally:
        for token in busy:
            token.cancel()
        for holder in holders:
            holder.join(60)
    assert statuses[1] == "⏳ Waiting for the model: 1 request ahead."
    assert "tokens in" in statuses[-1]


def test_stopping_a_replica_mid_run_fails_its_replies_clearly_and_the_others_finish(remote):
    replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#OmniModel#" in a["name"]]
    assert len(replicas) == 2
    victim = replicas[0].rsplit("#", 1)[1]
    started = [threading.Event() for _ in range(4)]
    # Long enough that none is over when the replica goes (a second after they all started).
    mid = GenerationLimits(max_new_tokens=64, max_speech_seconds=5)

    def reply(index):
        return ask(remote, f"Story {index}", index, session=f"crash-{index}", limits=mid,
                   on_event=lambda e: started[index].set())

    outcome: list = []
    runner = threading.Thread(target=lambda: outcome.extend(in_threads(*[(reply, (i,)) for i in range(4)])))
    runner.start()
    for event in started:
        assert event.wait(120)
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    runner.join(600)
    failed = [o for o in outcome if isinstance(o, Exception)]
    finished = [o for o in outcome if not isinstance(o, Exception)]
    assert failed and finished, outcome
    for error in failed:
        assert isinstance(error, BackendUnavailable) and "model replica answering this request stopped" in str(error)
    assert all(events[-1].reason in ("finished", "length") and not events[-1].stats.served_by.startswith(victim)
               for events in finished)
    # Ray replaces the replica; the endpoint serves on meanwhile.
    assert ask(remote, "Still there?", 1)[-1].reason in ("finished", "length")


def test_the_serve_config_file_builds_the_application(monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from omni_app.scale.deployment import build
    from omni_app.scale.settings import parse_args

    config = yaml.safe_load((ROOT / "deploy" / "ray-serve.yaml").read_text())
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == "omni_app.scale.deployment:build"
    replica, settings, scale = parse_args(app.args)
    assert replica.model == "Qwen/Qwen2.5-Omni-7B" and scale.gpus_per_replica == 1
    assert scale.autoscaling and scale.max_replicas >= 2 and settings.max_active >= scale.max_replicas
    built = build(app.args)  # the builder takes the file's arguments
    assert isinstance(built, ray.serve.Application)
    # The file's example key is refused where it takes effect (the replicas' environment).
    monkeypatch.setenv("OMNI_APP_API_KEY", config["applications"][0]["runtime_env"]["env_vars"]["OMNI_APP_API_KEY"])
    with pytest.raises(RequestError, match="still the example"):
        build(app.args)
    monkeypatch.setenv("OMNI_APP_API_KEY", "a-secret-of-our-own")
    assert parse_args(app.args)[1].api_key == "a-secret-of-our-own"


def test_bad_scale_options_are_refused_before_ray_starts(capsys):
    from omni_app.cli import main

    assert main(["serve", "--ray", "--model", "tiny", "--min-replicas", "2"]) == 2
    assert "both min_replicas and max_replicas" in capsys.readouterr().err
    assert main(["serve", "--ray", "--model", "tiny", "--replicas", "0"]) == 2
    assert "replicas must be at least 1" in capsys.readouterr().err
    assert main(["serve", "--model", "tiny", "--replicas", "2"]) == 2  # not silently one model
    assert "need --ray" in capsys.readouterr().err


def test_the_replicas_keep_the_contract_behind_the_endpoint_and_through_it(endpoint, remote):
    """The backend the endpoint serves (the replicas behind a deployment handle), and our server in front of it."""
    from contract import matrix_row, problems, run_contract
    from ray import serve

    from omni_app.scale.backend import ReplicaBackend
    from omni_app.scale.settings import APP_NAME, MODEL

    handle = serve.get_deployment_handle(MODEL, app_name=APP_NAME)
    replicas = ReplicaBackend(handle, handle.describe.remote().result(timeout_s=60))
    # Two replicas, one reply each at a time: a third request waits.
    for name, backend in (("ray", replicas), ("ray endpoint", remote)):
        report = run_contract(backend, batch=2)
        print(f"\n{name}:", json.dumps(matrix_row(report)))
        assert problems(report) == [], name


def test_the_endpoint_answers_bad_files_with_clean_messages(endpoint, media_dir, tmp_path):
    from test_bad_inputs import api_messages, clean, corpus

    for name, (status, message) in api_messages(endpoint, corpus(media_dir, tmp_path), None).items():
        assert status == 400 and clean(message), (name, message)


def test_a_realtime_conversation_through_the_endpoint(endpoint):
    from openai import OpenAI

    with OpenAI(base_url=f"{endpoint}/v1", api_key="none").realtime.connect(model="tiny") as conn:
        assert conn.recv().type == "session.created"
        conn.conversation.item.create(item={"type": "message", "role": "user",
                                            "content": [{"type": "input_text", "text": "Hello there."}]})
        conn.response.create(response={"max_output_tokens": 100})  # 100 text tokens, 2 s of speech at most
        kinds = []
        while (event := conn.recv()).type != "response.done":
            kinds.append(event.type)
        assert "response.output_audio.delta" in kinds and event.response.status in ("completed", "incomplete")
