"""Many replies at once: each equals itself made alone, whatever joins or leaves the batch, and a
reader that stops reading never holds the others up."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from omni_app.api import CancelToken, Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, ImagePart, VideoPart
from omni_app.engine.code2wav import WindowDecoder
from omni_app.engine.common import to_device
from omni_app.engine.dit import DitRunner
from omni_app.engine.service import ModelService
from omni_app.engine.stepper import ThinkerStepper, thinker_steps
from omni_app.engine.streaming import StreamingEngine
from omni_app.events import AudioChunk, Done, TextDelta
from omni_app.media import load_audio, load_image, load_video
from omni_app.prompt import build_inputs


@pytest.fixture(scope="module")
def batched(service):
    """The tiny model, up to 8 replies at once, prompts run in pieces of 32 tokens (so that they take several steps)."""
    return ModelService(service.loaded, StreamingEngine(prefill_chunk=32), max_batch=8)


def reply(service, request, cancel=None, delay=0.0):
    """(text, codes, waveform, Done) of one reply."""
    time.sleep(delay)
    events = list(service.stream(request, cancel))
    done = events[-1]
    assert isinstance(done, Done)
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    return ("".join(e.text for e in events if isinstance(e, TextDelta)), done.trace.codes,
            np.concatenate(chunks) if chunks else np.zeros(0, np.int16), done)


def together(service, requests, delays, cancels=None):
    """The requests at once, each starting after its delay; results in order."""
    results = [None] * len(requests)
    cancels = cancels or [None] * len(requests)

    def run(index):
        results[index] = reply(service, requests[index], cancels[index], delays[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def same(a, b) -> bool:
    return a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])


def mixed_requests(media_dir):
    """Every kind of media, with different lengths, so that replies leave the batch at different steps."""
    conversations = [
        Conversation().add_user("Tell me about the sea."),
        Conversation().add_user(AudioPart(load_audio(media_dir / "speech.wav"))),
        Conversation().add_user(ImagePart(load_image(media_dir / "photo.jpg")), "What is this?"),
        Conversation().add_user(VideoPart(load_video(media_dir / "mute.mp4")), "What happens?"),
        Conversation().add_user(VideoPart(load_video(media_dir / "talking.mp4"))),
    ]
    limits = [(30, 1.5), (20, 2.5), (40, 1.0), (16, 2.0), (24, 3.0)]
    return [Request(c, voice=("Chelsie", "Ethan")[i % 2], seed=10 + i,
                    limits=GenerationLimits(max_new_tokens=t, max_speech_seconds=s))
            for i, (c, (t, s)) in enumerate(zip(conversations, limits, strict=True))]


def test_replies_made_together_equal_themselves_alone(batched, media_dir):
    requests = mixed_requests(media_dir)
    alone = [reply(batched, r) for r in requests]
    # Some start together, others join while the first are speaking; they leave as their lengths say.
    mixed = together(batched, requests, delays=[0.0, 0.0, 0.4, 0.9, 1.5])
    for index, (one, other) in enumerate(zip(alone, mixed, strict=True)):
        assert same(one, other), f"request {index} changed in the batch"
        assert len(one[2]) == len(one[1]) * 480 > 0
    peaks = [r[3].stats.batch_peak for r in mixed]
    assert max(peaks) >= 3 and all(p >= 1 for p in peaks)  # they really were made together
    assert all(r[3].stats.batch_peak == 1 for r in alone)


def test_a_cancelled_reply_leaves_the_others_unchanged(batched, media_dir):
    requests = mixed_requests(media_dir)[:3]
    long = Request(Conversation().add_user("Go on and on"), seed=3,
                   limits=GenerationLimits(max_new_tokens=400, max_speech_seconds=30))
    alone = [reply(batched, r) for r in requests]
    cancel = CancelToken()
    threading.Timer(1.5, cancel.cancel).start()
    started = time.perf_counter()
    results = together(batched, requests + [long], delays=[0.0, 0.2, 0.0, 0.0], cancels=[None, None, None, cancel])
    assert results[3][3].reason == "cancelled" and time.perf_counter() - started < 60
    for one, other in zip(alone, results[:3], strict=True):
        assert same(one, other)


def test_a_cached_conversation_in_a_batch_equals_its_full_prefill(batched, media_dir):
    limits = GenerationLimits(max_new_tokens=16, max_speech_seconds=1.0)
    others = mixed_requests(media_dir)[1:3]
    conversation = Conversation()
    for index, parts in enumerate([["Hello, who are you?"], [AudioPart(load_audio(media_dir / "speech.wav"))],
                                   ["Thanks, and now?"]]):
        conversation = conversation.add_user(*parts)
        request = Request(conversation, seed=7, limits=limits, session="chat")
        cached, *_ = together(batched, [request, *others], delays=[0.3, 0.0, 0.0])
        full = reply(batched, Request(conversation, seed=7, limits=limits))
        assert same(cached, full)
        if index:
            assert cached[3].stats.extra["reused_tokens"] > 0  # the turn continued the conversation's cache
        conversation = conversation.add_assistant(cached[0])


def test_a_reader_that_stops_is_cancelled_and_never_holds_the_batch(service):
    model = ModelService(service.loaded, StreamingEngine(), max_batch=4, stall_seconds=1.5, channel_size=8)
    other = Request(Conversation().add_user("Keep talking"), seed=4,
                    limits=GenerationLimits(max_new_tokens=30, max_speech_seconds=2.0))
    alone = reply(model, other)
    stalled = model.stream(Request(Conversation().add_user("Nobody reads this"), voice=None,
                                   limits=GenerationLimits(max_new_tokens=3000), seed=5))
    assert isinstance(next(stalled), TextDelta)  # then its reader stops reading
    started = time.perf_counter()
    beside = reply(model, other)
    assert same(alone, beside) and time.perf_counter() - started < 30
    deadline = time.time() + 20
    while model.active and time.time() < deadline:  # the stalled reply is cancelled after its deadline
        time.sleep(0.1)
    assert model.active == 0
    rest = list(stalled)  # when its reader comes back, what was made, then the end
    assert isinstance(rest[-1], Done) and rest[-1].reason == "cancelled"
    assert 1 <= sum(isinstance(e, TextDelta) for e in rest) <= 8 + 8


def test_closing_a_stream_takes_its_reply_out_at_once(batched):
    stream = batched.stream(Request(Conversation().add_user("Long"), voice=None,
                                    limits=GenerationLimits(max_new_tokens=3000), seed=1))
    next(stream)
    assert batched.active == 1
    stream.close()
    assert batched.active == 0


def test_the_dit_runner_is_bit_exact_with_transformers_forward(service):
    """One window through the runner equals the DiT's own forward under the same flow; stacked windows equal alone."""
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

    token2wav = service.loaded.model.token2wav
    dit = token2wav.code2wav_dit_model
    voices = service.loaded.voices
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 8192, (3, 37), generator=generator)  # 74 frames: not whole blocks
    noise = torch.randn(3, 74, 80, generator=generator)
    runner = DitRunner(token2wav)

    def forward_mel(index, voice):
        cond = voice["cond"].float().unsqueeze(1).repeat(1, 74, 1)

        def velocity(t, x):
            out = dit(hidden_states=x, quantized_code=codes[index:index + 1], speaker_embedding=cond,
                      condition_vector=voice["ref_mel"].float(), time_step=t, apply_cfg=True)
            guided, null = torch.chunk(out, 2, dim=0)
            return guided + (guided - null) * 0.5

        solver = RungeKutta4ODESolver(function=velocity, initial_value=noise[index:index + 1])
        return solver.integrate(runner.times())[-1].permute(0, 2, 1)

    with torch.no_grad():
        decoders = [WindowDecoder(token2wav, v["cond"], v["ref_mel"], runner)
                    for v in (voices["Chelsie"], voices["Ethan"], voices["Chelsie"])]
        windows = [d.window(codes[i:i + 1], noise[i:i + 1]) for i, d in enumerate(decoders)]
        stacked = runner.mel(windows)
        assert torch.equal(runner.mel(windows[:1])[0], forward_mel(0, voices["Chelsie"]))
        assert torch.equal(stacked[1], forward_mel(1, voices["Ethan"]))
        assert all(torch.equal(stacked[i], runner.mel([w])[0]) for i, w in enumerate(windows))


def test_a_thinker_step_is_the_models_own_forward(service):
    """The engine's decode step (one row, no padding) gives the token and reply vector of the model's own forward."""
    import copy

    loaded = service.loaded
    thinker = loaded.model.thinker
    for text in ("first request", "a second, longer request"):
        prepared = build_inputs(Conversation().add_user(text), loaded.processor)
        with torch.no_grad():
            stepper = ThinkerStepper(thinker, to_device(prepared.tensors, loaded), prepared.use_audio_in_video)
            stepper.prefill()
            last = torch.tensor([[stepper.tokens[-1]]])
            hidden = thinker.model(input_ids=last, position_ids=stepper.next_position(),
                                   past_key_values=copy.deepcopy(stepper.cache), use_cache=True).last_hidden_state
            thinker_steps(thinker, [stepper], quantum=1)
        assert stepper.tokens[-1] == int(thinker.lm_head(hidden)[0, -1].argmax())
        assert torch.equal(stepper.vectors[-1], thinker.get_input_embeddings()(last) + hidden)
