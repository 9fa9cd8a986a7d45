"""The streaming engine against the reference: same text, same codes, same-length speech."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from batched import batched_generate

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, ImagePart, VideoPart
from omni_app.engine.code2wav import BLOCK_FRAMES, SAMPLES_PER_FRAME, StreamingCode2Wav, WindowDecoder
from omni_app.engine.common import to_device
from omni_app.engine.stepper import ThinkerStepper
from omni_app.events import AudioChunk, Done, TextDelta
from omni_app.media import load_audio, load_image, load_video
from omni_app.prompt import build_inputs

LIMITS = GenerationLimits(max_new_tokens=40, max_speech_seconds=2.0)


def text_of(events):
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def audio_of(events):
    chunks = [e.samples for e in events if isinstance(e, AudioChunk)]
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)


def conversation(kind, media_dir):
    if kind == "text":
        return Conversation().add_user("Tell me a long story about the sea.")
    if kind == "audio":
        return Conversation().add_user(AudioPart(load_audio(media_dir / "speech.wav")))
    if kind == "image":
        return Conversation().add_user(ImagePart(load_image(media_dir / "photo.jpg")), "What is this?")
    if kind == "video":
        return Conversation().add_user(VideoPart(load_video(media_dir / "mute.mp4")), "What happens?")
    return Conversation().add_user(VideoPart(load_video(media_dir / "talking.mp4")))


@pytest.mark.parametrize("kind", ["text", "audio", "image", "video", "video+audio"])
def test_same_text_codes_and_length_as_reference(service, reference_service, media_dir, kind):
    conv = conversation(kind, media_dir)
    streamed = list(service.stream(Request(conv, voice="Chelsie", limits=LIMITS, seed=11, speech_sampling=False)))
    reference = list(reference_service.stream(Request(conv, voice="Chelsie", limits=LIMITS, seed=11,
                                                      speech_sampling=False)))
    streamed_trace, reference_trace = streamed[-1].trace, reference[-1].trace
    assert text_of(streamed) == text_of(reference)
    assert streamed_trace.codes == reference_trace.codes and streamed_trace.codes
    assert len(audio_of(streamed)) == len(audio_of(reference)) == len(streamed_trace.codes) * 480
    assert sum(isinstance(e, AudioChunk) for e in streamed) > 1  # really streamed, not one block
    # Greedy codes equal generate()'s on the Talker's mask path (row 0 of a padded batch).
    reply, codes = batched_generate(service.loaded, conv, LIMITS.max_new_tokens, LIMITS.max_codec_codes)
    assert list(streamed_trace.reply_ids) == reply
    assert list(streamed_trace.codes) == codes


def test_sampled_speech_matches_reference_codes(service, reference_service):
    conv = Conversation().add_user("Sing")
    a = list(service.stream(Request(conv, voice="Ethan", limits=LIMITS, seed=5)))[-1].trace
    b = list(reference_service.stream(Request(conv, voice="Ethan", limits=LIMITS, seed=5)))[-1].trace
    assert a.codes == b.codes and a.codes


def test_first_audio_arrives_before_the_text_is_done(service):
    events = list(service.stream(Request(Conversation().add_user("Go"), limits=GenerationLimits(
        max_new_tokens=120, max_speech_seconds=4.0), seed=1)))
    trace = events[-1].trace
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, AudioChunk))
    last_text = max(i for i, e in enumerate(events) if isinstance(e, TextDelta))
    assert first_audio < last_text
    done = events[-1]
    assert done.stats.time_to_first_audio < done.stats.total_time / 2
    for key in ("thinker_tokens_per_s", "talker_codes_per_s", "code2wav_rtf"):
        assert done.stats.extra[key] > 0
    kinds = {k: max(c for _, kk, c in trace.timeline if kk == k) for k in ("token", "code", "chunk")}
    assert kinds["token"] == done.stats.text_tokens
    assert kinds["chunk"] == sum(isinstance(e, AudioChunk) for e in events) == len(trace.chunks)


def test_text_only_runs_no_talker(service, reference_service):
    conv = Conversation().add_user("Just text")
    events = list(service.stream(Request(conv, voice=None, limits=LIMITS, seed=1)))
    trace = events[-1].trace
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert trace.codes == () and all(kind == "token" for _, kind, _ in trace.timeline)
    reference = list(reference_service.stream(Request(conv, voice=None, limits=LIMITS, seed=1)))
    assert text_of(events) == text_of(reference)


@pytest.mark.parametrize("stage", ["text", "audio"])
def test_cancel_mid_reply(service, stage):
    cancel = threading.Event()
    long = GenerationLimits(max_new_tokens=2000, max_speech_seconds=60)
    events, cancelled_at = [], None
    trigger = TextDelta if stage == "text" else AudioChunk
    for event in service.stream(Request(Conversation().add_user("On and on"), limits=long, seed=2), cancel):
        events.append(event)
        if cancelled_at is None and isinstance(event, trigger):
            cancel.set()
            cancelled_at = len(events)
    assert isinstance(events[-1], Done) and events[-1].reason == "cancelled"
    # All three stages stop within one chunk: nothing more is spoken after the cancel.
    assert not any(isinstance(e, AudioChunk) for e in events[cancelled_at:])
    assert events[-1].stats.audio_seconds < 10
    again = list(service.stream(Request(Conversation().add_user("Next"), limits=LIMITS, seed=2)))
    assert again[-1].reason in ("finished", "length") and len(audio_of(again))


def _decode_in_chunks(decoder, codes, noise, schedule):
    stream = StreamingCode2Wav(decoder, noise, schedule)
    pieces = []
    for code in codes:
        stream.add(code)
        while (plan := stream.next_plan()) is not None:
            pieces.append(stream.decode(plan))
    stream.finish()
    while (plan := stream.next_plan()) is not None:
        pieces.append(stream.decode(plan))
    return pieces, stream.plans


@pytest.fixture(scope="module")
def decoder(service):
    voice = service.loaded.voices["Chelsie"]
    return WindowDecoder(service.loaded.model.token2wav, voice["cond"], voice["ref_mel"])


def test_one_window_is_bit_exact_with_token2wav(service, decoder):
    codes = torch.randint(0, 8192, (1, 90), generator=torch.Generator().manual_seed(0))
    voice = service.loaded.voices["Chelsie"]
    torch.manual_seed(7)
    with torch.no_grad():
        whole = service.loaded.model.token2wav(codes, conditioning=voice["cond"].float(),
                                               reference_mel=voice["ref_mel"].float()).reshape(-1)
    torch.manual_seed(7)
    noise = torch.randn(1, 180, 80)
    pieces, plans = _decode_in_chunks(decoder, codes[0].tolist(), noise, (100,))
    assert len(plans) == 1 and plans[0].last
    assert torch.equal(torch.cat(pieces), whole)


@pytest.mark.parametrize("n_codes", [1, 11, 37, 144, 150, 181])
def test_many_chunks_keep_length_and_joints(decoder, n_codes):
    generator = torch.Generator().manual_seed(n_codes)
    codes = torch.randint(0, 8192, (n_codes,), generator=generator).tolist()
    noise = torch.randn(1, 2 * n_codes, 80, generator=generator)
    whole = decoder.wave(decoder.mel(torch.tensor([codes]), noise)).numpy().astype(np.float64)
    pieces, plans = _decode_in_chunks(decoder, codes, noise, (1, 2, 3))
    out = torch.cat(pieces).numpy().astype(np.float64)
    assert len(out) == len(whole) == n_codes * 2 * SAMPLES_PER_FRAME
    # The plan: kept frames tile the utterance; windows start on block boundaries.
    assert plans[0].keep_start == 0 and plans[-1].keep_end == 2 * n_codes and plans[-1].last
    for a, b in zip(plans, plans[1:], strict=False):
        assert a.keep_end == b.keep_start and b.window_start % BLOCK_FRAMES == 0
    error = out - whole
    snr = 10 * np.log10(np.sum(whole**2) / max(np.sum(error**2), 1e-30))
    assert snr > 60, snr
    # No click at the joints: each jump is within the signal's normal sample-to-sample range.
    normal = np.percentile(np.abs(np.diff(whole)), 99.9)
    joints = np.cumsum([len(p) for p in pieces])[:-1]
    for j in joints:
        if 0 < j < len(out):
            assert abs(out[j] - out[j - 1]) <= normal


def test_interleaved_requests_do_not_disturb_each_other(service):
    loaded = service.loaded
    prompts = [Conversation().add_user("first request"), Conversation().add_user("a second, longer request")]
    inputs = [build_inputs(c, loaded.processor) for c in prompts]

    def steppers():
        return [ThinkerStepper(loaded.model.thinker, to_device(p.tensors, loaded), p.use_audio_in_video)
                for p in inputs]

    solo = []
    with torch.no_grad():
        for stepper in steppers():
            stepper.prefill()
            solo.append([stepper.step()[0] for _ in range(8)])
        pair = steppers()
        for s in pair:
            s.prefill()
        mixed = [[], []]
        for _ in range(8):
            for i, s in enumerate(pair):
                mixed[i].append(s.step()[0])
    assert mixed == solo
