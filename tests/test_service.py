"""The model service on the tiny model, with each engine: modalities, determinism, stats, cancel, errors."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import AudioPart, Conversation, ImagePart, VideoPart
from omni_app.engine.service import ModelService
from omni_app.errors import RequestError
from omni_app.events import AudioChunk, Done, Notice, TextDelta
from omni_app.media import load_audio, load_image, load_video

SHORT = GenerationLimits(max_new_tokens=12, max_speech_seconds=1.0)


def run(service, request, cancel=None):
    events = list(service.stream(request, cancel))
    assert isinstance(events[-1], Done) and not any(isinstance(e, Done) for e in events[:-1])
    return events


def text_of(events):
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def audio_of(events):
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    return np.concatenate([c.samples for c in chunks]) if chunks else np.zeros(0, np.int16)


def conversations(media_dir):
    return {
        "text": Conversation().add_user("Tell me about the sea."),
        "audio": Conversation().add_user(AudioPart(load_audio(media_dir / "speech.wav"))),
        "image": Conversation().add_user(ImagePart(load_image(media_dir / "photo.jpg")), "What is this?"),
        "video": Conversation().add_user(VideoPart(load_video(media_dir / "mute.mp4")), "What happens?"),
        "video+audio": Conversation().add_user(VideoPart(load_video(media_dir / "talking.mp4"))),
    }


@pytest.mark.parametrize("kind", ["text", "audio", "image", "video", "video+audio"])
def test_every_modality_gets_text_and_speech(any_service, media_dir, kind):
    conv = conversations(media_dir)[kind]
    events = run(any_service, Request(conv, voice="Chelsie", limits=SHORT, seed=3))
    done = events[-1]
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert chunks and all(c.sample_rate == 24000 and c.samples.dtype == np.int16 for c in chunks)
    audio = audio_of(events)
    assert np.abs(audio.astype(np.int32)).max() > 300  # audible
    assert done.stats.codec_codes == len(audio) // 480  # one codec code is 20 ms
    assert done.stats.audio_seconds == pytest.approx(len(audio) / 24000)
    assert done.stats.text_tokens >= 2
    assert done.reason in ("finished", "length")


def test_text_only_yields_no_audio(any_service, media_dir):
    events = run(any_service, Request(conversations(media_dir)["image"], voice=None, limits=SHORT, seed=1))
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert events[-1].stats.codec_codes == 0 and events[-1].stats.time_to_first_audio is None


def test_fixed_seed_repeats_exactly(any_service):
    request = Request(Conversation().add_user("Again"), voice="Ethan", limits=SHORT, seed=42)
    first, second = run(any_service, request), run(any_service, request)
    assert text_of(first) == text_of(second)
    assert np.array_equal(audio_of(first), audio_of(second))
    other = run(any_service, Request(Conversation().add_user("Again"), voice="Ethan", limits=SHORT, seed=43))
    assert not np.array_equal(audio_of(first), audio_of(other))


def test_voices_differ(any_service):
    conv = Conversation().add_user("Voices")
    chelsie = audio_of(run(any_service, Request(conv, voice="Chelsie", limits=SHORT, seed=5)))
    ethan = audio_of(run(any_service, Request(conv, voice="Ethan", limits=SHORT, seed=5)))
    assert not np.array_equal(chelsie[: len(ethan)], ethan[: len(chelsie)])


def test_stats_are_consistent(any_service):
    events = run(any_service, Request(Conversation().add_user("Stats"), limits=SHORT, seed=9))
    trace = events[-1].trace
    stats = events[-1].stats
    assert stats.text_tokens == len(trace.reply_ids) == 12
    assert stats.codec_codes == len(trace.codes)
    assert 0 <= stats.time_to_first_text <= stats.time_to_first_audio <= stats.total_time
    assert stats.engine == any_service.engine.name and stats.real_time_factor > 0
    assert text_of(events) == any_service.loaded.processor.tokenizer.decode(trace.reply_ids, skip_special_tokens=True)


def test_changed_system_prompt_warns(any_service):
    conv = Conversation(system_prompt="You are a pirate.").add_user("Ahoy")
    events = run(any_service, Request(conv, limits=SHORT, seed=1))
    assert isinstance(events[0], Notice) and "system prompt" in events[0].message
    quiet = run(any_service, Request(conv, voice=None, limits=SHORT, seed=1))
    assert not any(isinstance(e, Notice) for e in quiet)


def test_cancel_stops_promptly_and_model_stays_usable(any_service):
    cancel = threading.Event()
    long = GenerationLimits(max_new_tokens=4000, max_speech_seconds=600)
    started = time.perf_counter()
    events = []
    for event in any_service.stream(Request(Conversation().add_user("Go on and on"), limits=long, seed=1), cancel):
        events.append(event)
        if isinstance(event, TextDelta):
            cancel.set()
    elapsed = time.perf_counter() - started
    assert events[-1].reason == "cancelled"
    assert not any(isinstance(e, AudioChunk) for e in events)
    assert elapsed < 30
    after = run(any_service, Request(Conversation().add_user("Still there?"), limits=SHORT, seed=1))
    assert after[-1].reason in ("finished", "length") and audio_of(after).size


def test_closing_the_stream_releases_the_model(any_service):
    stream = any_service.stream(Request(Conversation().add_user("Close me"), voice=None,
                                    limits=GenerationLimits(max_new_tokens=4000), seed=1))
    assert isinstance(next(stream), TextDelta)
    stream.close()
    assert run(any_service, Request(Conversation().add_user("Next"), voice=None, limits=SHORT, seed=1))


def test_one_token_reply_with_speech_does_not_crash(any_service):
    events = run(any_service, Request(Conversation().add_user("Hi"), limits=GenerationLimits(max_new_tokens=1), seed=1))
    assert events[-1].stats.text_tokens == 1
    assert not any(isinstance(e, AudioChunk) for e in events)


def test_replies_beyond_the_batch_wait_and_each_equals_itself_alone(any_service):
    limited = ModelService(any_service.loaded, any_service.engine, max_batch=2)
    most, results, running = 0, {}, threading.Event()
    running.set()

    def watch():
        nonlocal most
        while running.is_set():
            most = max(most, limited.active)
            time.sleep(0.002)

    def worker(name):
        results[name] = run(limited, Request(Conversation().add_user(name), limits=SHORT, seed=2))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=worker, args=(n,)) for n in ("one", "two", "three")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    running.clear()
    watcher.join()
    assert all(r[-1].reason in ("finished", "length") for r in results.values())
    assert most == limited.batch_limit  # 2 at once with the streaming engine, 1 with generate()
    assert max(r[-1].stats.queue_time for r in results.values()) > 0.05  # someone waited for a place
    alone = run(any_service, Request(Conversation().add_user("one"), limits=SHORT, seed=2))
    assert np.array_equal(audio_of(alone), audio_of(results["one"]))


def test_a_closed_stream_frees_the_model_for_the_next_request(any_service):
    stream = any_service.stream(Request(Conversation().add_user("Long"), voice=None,
                                        limits=GenerationLimits(max_new_tokens=4000), seed=1))
    next(stream)
    assert any_service.busy
    stream.close()
    assert not any_service.busy  # the worker noticed within one step and gave the model back


def test_bad_requests_raise_clear_errors(any_service):
    with pytest.raises(RequestError, match="Unknown voice 'Nobody'"):
        run(any_service, Request(Conversation().add_user("x"), voice="Nobody"))
    with pytest.raises(RequestError, match="max_new_tokens"):
        GenerationLimits(max_new_tokens=0)


class _FailingEngine:
    """The real engine, but a reply's work fails after its first event, like a crash mid-reply."""

    name = "failing"

    def __init__(self, inner):
        self.inner = inner
        self.speaks_text, self.reuses_cache, self.batches = inner.speaks_text, inner.reuses_cache, inner.batches

    @staticmethod
    def _failing(emit):
        def emit_then_fail(event):
            emit(event)
            raise RuntimeError("device lost")

        return emit_then_fail

    def run(self, loaded, prepared, job, emit, cancel):
        return self.inner.run(loaded, prepared, job, self._failing(emit), cancel)

    def setup(self, loaded, max_batch):
        self.inner.setup(loaded, max_batch)

    def start(self, loaded, prepared, job, emit):
        return self.inner.start(loaded, prepared, job, self._failing(emit))

    def iterate(self, loaded, replies):
        self.inner.iterate(loaded, replies)


def test_worker_errors_reach_the_consumer(any_service):
    failing = ModelService(any_service.loaded, _FailingEngine(any_service.engine))
    seen = []
    with pytest.raises(RuntimeError, match="device lost"):
        for event in failing.stream(Request(Conversation().add_user("boom"), voice=None, limits=SHORT, seed=1)):
            seen.append(event)
    assert len(seen) == 1 and isinstance(seen[0], TextDelta)
    assert run(any_service, Request(Conversation().add_user("fine"), voice=None, limits=SHORT, seed=1))
