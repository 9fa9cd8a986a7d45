"""A conversation's next turn continues its KV caches: the same replies as a full prefill, far less work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, ImagePart, VideoPart
from omni_app.engine.common import to_device
from omni_app.engine.local import LocalBackend
from omni_app.engine.prompt_inputs import prompt_positions
from omni_app.engine.service import ModelService
from omni_app.engine.stepper import ThinkerStepper
from omni_app.engine.streaming import StreamingEngine
from omni_app.events import Done, TextDelta
from omni_app.media import load_audio, load_image, load_video
from omni_app.prompt import build_inputs

LIMITS = GenerationLimits(max_new_tokens=16, max_speech_seconds=1.0)


def reply(service, conversation, session, seed=7):
    events = list(service.stream(Request(conversation, voice="Chelsie", limits=LIMITS, seed=seed, session=session)))
    done = events[-1]
    assert isinstance(done, Done)
    return "".join(e.text for e in events if isinstance(e, TextDelta)), done


def test_cached_turns_equal_full_prefills_over_a_mixed_conversation(service, media_dir):
    turns = [
        ["Hello, who are you?"],
        [AudioPart(load_audio(media_dir / "speech.wav"))],
        [ImagePart(load_image(media_dir / "photo.jpg")), "What is this?"],
        [VideoPart(load_video(media_dir / "mute.mp4")), "What happens?"],
        [VideoPart(load_video(media_dir / "talking.mp4"))],  # sound in a video: the layout of all videos changes
        ["Thanks, bye."],
    ]
    conversation, reused = Conversation(), []
    for parts in turns:
        conversation = conversation.add_user(*parts)
        text, cached = reply(service, conversation, "mixed")
        _, full = reply(service, conversation, None)
        # Same tokens (greedy) and the same sampled speech codes with the same seed.
        assert cached.trace.reply_ids == full.trace.reply_ids
        assert cached.trace.codes == full.trace.codes and cached.trace.codes
        assert cached.trace.prompt_ids == full.trace.prompt_ids
        reused.append(int(cached.stats.extra["reused_tokens"]))
        conversation = conversation.add_assistant(text)
    before = [0] + [len(build_inputs(Conversation(turns=conversation.turns[:2 * i + 1]), service.loaded.processor)
                         .input_ids[0]) for i in range(len(turns) - 1)]
    # Every turn but the first and the one that switched the videos' sound on ran only its own part.
    assert reused[0] == 0 and reused[4] == 0
    for i in (1, 2, 3, 5):
        assert reused[i] >= before[i] - 2 > 0, (i, reused, before)

    # The cache's positions are get_rope_index's over the whole conversation as the model ran it.
    cached = service.sessions.state("mixed").cached
    assert cached is not None and cached.talker_cache is not None
    # Its hidden states (the Talker's rows) are a full prefill's, but for rounding.
    last = build_inputs(Conversation(turns=conversation.turns[:-1]), service.loaded.processor)
    full = ThinkerStepper(service.loaded.model.thinker, to_device(last.tensors, service.loaded), True)
    with torch.no_grad():
        full.prefill()
    difference = (cached.rows[:, :last.prompt_tokens] - full.prompt_rows).abs().max()
    assert difference < 1e-5, difference
    prepared = build_inputs(conversation.add_user("And now?"), service.loaded.processor)
    rope = prepared.rope_inputs()
    rope["input_ids"] = torch.from_numpy(cached.ids).view(1, -1)
    assert torch.equal(cached.positions, prompt_positions(service.loaded.model.thinker, rope, True))
    service.end_session("mixed")


def test_a_changed_image_of_the_same_size_is_not_reused(service, media_dir):
    photo = load_image(media_dir / "photo.jpg")
    flipped = photo.transpose(0)  # same size, so the same placeholder ids
    first = Conversation().add_user(ImagePart(photo), "Describe it.")
    reply(service, first, "swap")
    second = Conversation().add_user(ImagePart(flipped), "Describe it.")
    _, cached = reply(service, second, "swap")
    _, full = reply(service, second, None)
    ids = build_inputs(second, service.loaded.processor)
    image_start = ids.media[0].start
    assert 0 < cached.stats.extra["reused_tokens"] <= image_start
    assert cached.trace.reply_ids == full.trace.reply_ids and cached.trace.codes == full.trace.codes
    service.end_session("swap")


def first_difference(service, a: Conversation, b: Conversation) -> int:
    x, y = (build_inputs(c, service.loaded.processor).input_ids[0].numpy() for c in (a, b))
    return int(np.flatnonzero(x[:len(y)] != y[:len(x)])[0])


def test_edits_and_a_new_system_prompt_reuse_only_what_is_unchanged(service):
    base = Conversation().add_user("First question").add_assistant("An answer").add_user("Second question")
    reply(service, base, "edit")
    edited = Conversation().add_user("First question, edited").add_assistant("An answer").add_user("Second")
    _, cached = reply(service, edited, "edit")
    assert 0 < cached.stats.extra["reused_tokens"] <= first_difference(service, edited, base)
    assert cached.trace.reply_ids == reply(service, edited, None)[1].trace.reply_ids
    persona = Conversation(system_prompt="You are a pirate.").add_user("Second question")
    _, cached = reply(service, persona, "edit")
    assert cached.stats.extra["reused_tokens"] <= first_difference(service, persona, edited)
    assert cached.trace.reply_ids == reply(service, persona, None)[1].trace.reply_ids
    service.end_session("edit")


def test_caches_stay_within_the_budget_and_go_at_session_end(service):
    tiny = ModelService(service.loaded, StreamingEngine(), session_cache_mb=1)
    conversation = Conversation().add_user("Hello there")
    reply(tiny, conversation, "a")
    one = tiny.sessions.nbytes
    assert 0 < one <= 2**20
    tiny.sessions.budget_bytes = int(one * 1.5)  # room for one conversation's cache, not two
    reply(tiny, conversation, "b")
    assert tiny.sessions.state("a").cached is None  # the least recently used went
    assert tiny.sessions.state("b").cached is not None and tiny.sessions.nbytes <= tiny.sessions.budget_bytes
    _, again = reply(tiny, conversation.add_assistant("x").add_user("More"), "a")
    assert again.stats.extra["reused_tokens"] == 0  # it only costs a full prefill
    for session in ("a", "b"):
        tiny.end_session(session)
    assert tiny.sessions.nbytes == 0 and len(tiny.sessions) == 0
    off = ModelService(service.loaded, StreamingEngine(), session_cache_mb=0)
    reply(off, conversation, "c")
    assert off.sessions.nbytes == 0


class _Elsewhere:
    """Runs the GPU generator as ZeroGPU would: its arguments pickled, as in another process."""

    in_process = False

    def __init__(self, fn):
        self.fn = fn

    def stream(self, *args, cancel=None):
        import pickle

        yield from self.fn(*pickle.loads(pickle.dumps(args)))


@pytest.mark.parametrize("in_process", [True, False])
def test_local_backend_keeps_a_cache_only_in_its_own_process(service, in_process):
    fresh = ModelService(service.loaded, StreamingEngine())
    backend = LocalBackend(fresh)
    if not in_process:  # ZeroGPU: the generator runs in a process of its own
        backend._gpu = _Elsewhere(backend._gpu.fn)
    conversation = Conversation().add_user("Hi")
    list(backend.stream(Request(conversation, voice=None, limits=LIMITS, session="zg")))
    assert (fresh.sessions.nbytes > 0) == in_process
    backend.end_session("zg")
    assert fresh.sessions.nbytes == 0 and len(fresh.sessions) == 0
