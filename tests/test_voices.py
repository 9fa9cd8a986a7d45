"""Custom voices from a reference recording, exact-text speech, voice files, the say command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation
from omni_app.engine.code2wav import WindowDecoder
from omni_app.errors import MediaError, RequestError
from omni_app.events import AudioChunk, TextDelta
from omni_app.media import load_audio
from omni_app.voices import load_voice, load_voice_folder, save_voice, split_sentences, voice_from_reference

ROOT = Path(__file__).resolve().parents[1]
LIMITS = GenerationLimits(max_new_tokens=16, max_speech_seconds=1.0)


@pytest.fixture(scope="module")
def reference_clip(tmp_path_factory) -> np.ndarray:
    out = tmp_path_factory.mktemp("ref") / "ref.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(out),
                    "This is my reference recording. I speak for a few seconds so the voice can be rendered."],
                   check=True)
    return load_audio(out)


@pytest.fixture(scope="module")
def custom(service, reference_clip):
    return voice_from_reference("Narrator", reference_clip, service.voice("Ethan"))


def test_reference_mel_matches_the_shipped_format(service, custom, reference_clip):
    stock = service.voice("Chelsie")
    assert custom.ref_mel.shape[0] == 1 and custom.ref_mel.shape[2] == stock.ref_mel.shape[2] == 80
    assert custom.ref_mel.shape[1] == 400 == stock.ref_mel.shape[1]  # 4 s at 100 frames per second
    assert custom.ref_mel.dtype == np.float32
    low, high = float(custom.ref_mel.min()), float(custom.ref_mel.max())
    # Natural log of a clamped (>= 1e-5) mel magnitude, as in the shipped voices.
    assert np.log(1e-5) - 1e-3 <= low < -5 and -5 < high < 3
    assert stock.ref_mel.min() >= np.log(1e-5) - 1e-3
    assert custom.bos_token == service.voice("Ethan").bos_token and custom.base == "Ethan"


def test_reference_round_trips_through_the_vocoder(service, custom):
    decoder = WindowDecoder(service.loaded.model.token2wav, torch.from_numpy(custom.cond),
                            torch.from_numpy(custom.ref_mel))
    mel = torch.from_numpy(custom.ref_mel).permute(0, 2, 1)
    wave = decoder.wave(mel)
    assert len(wave) == custom.ref_mel.shape[1] * 240 and float(wave.abs().max()) > 0.01


def test_custom_voice_changes_the_decoder_input_only(service, custom):
    model = service.loaded.model
    codes = torch.randint(0, 8192, (1, 40), generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 80, 80, generator=torch.Generator().manual_seed(1))
    base = service.voice("Ethan")
    stock_before = base.ref_mel.copy()

    def render(voice):
        decoder = WindowDecoder(model.token2wav, torch.from_numpy(voice.cond), torch.from_numpy(voice.ref_mel))
        return decoder.wave(decoder.mel(codes, noise)).numpy()

    assert not np.allclose(render(base), render(custom))
    assert np.array_equal(base.ref_mel, stock_before)
    assert np.array_equal(service.loaded.voices["Ethan"]["ref_mel"].numpy(), stock_before)


def test_sentences_split_at_their_ends_and_short_ones_join():
    assert split_sentences("Good morning to you, my friend. The quick brown fox jumps over the lazy dog! "
                           "你好，今天天气怎么样？我们去公园散步吧。") == [
        "Good morning to you, my friend.", "The quick brown fox jumps over the lazy dog!",
        "你好，今天天气怎么样？我们去公园散步吧。"]
    assert split_sentences("Hi. Ok. This sentence is long enough to stand alone. Yes!") == [
        "Hi. Ok. This sentence is long enough to stand alone. Yes!"]
    long = split_sentences("word " * 60)
    assert [len(s) for s in long] == [199, 99] and " ".join(long) == ("word " * 60).strip()


def test_exact_text_feeds_the_talker_exactly_those_tokens(service, custom):
    sentences = ["Good morning to you, my friend.", "The quick brown fox jumps over the lazy dog!",
                 "你好，今天天气怎么样？我们去公园散步吧。"]
    voice_id = service.add_custom_voice(custom)
    events = list(service.stream(Request(Conversation(), voice=voice_id, limits=LIMITS, seed=3,
                                         speak_text=" ".join(sentences))))
    trace = events[-1].trace
    tokenizer = service.loaded.processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = []
    for sentence in sentences:
        expected += tokenizer(sentence, add_special_tokens=False).input_ids + [eos]
    assert list(trace.reply_ids) == expected
    spoken = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert spoken == "".join(sentences)
    assert sum(isinstance(e, AudioChunk) for e in events) >= len(sentences)


def test_reference_engine_speaks_custom_voices_and_restores_the_map(reference_service, custom):
    before = dict(reference_service.loaded.model.speaker_map)
    voice_id = reference_service.add_custom_voice(custom)
    events = list(reference_service.stream(Request(Conversation().add_user("Hi"), voice=voice_id, limits=LIMITS,
                                                   seed=1)))
    assert any(isinstance(e, AudioChunk) for e in events)
    assert reference_service.loaded.model.speaker_map.keys() == before.keys()
    with pytest.raises(RequestError, match="streaming engine"):
        list(reference_service.stream(Request(Conversation(), voice=voice_id, speak_text="Hello")))


def test_bad_references_are_rejected(service, tmp_path, media_dir):
    base = service.voice("Chelsie")
    rng = np.random.default_rng(0)
    one_second = (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 220)).astype(np.float32)
    with pytest.raises(MediaError, match="at least 3 s"):
        voice_from_reference("x", one_second, base)
    ten_minutes = (0.1 * rng.standard_normal(16000 * 600)).astype(np.float32)
    with pytest.raises(MediaError, match="limit|too long"):
        voice_from_reference("x", ten_minutes, base)
    with pytest.raises(MediaError, match="silent"):
        voice_from_reference("x", np.zeros(16000 * 5, np.float32), base)
    clipped = np.clip(3 * np.sin(np.arange(16000 * 5) / 16000 * 2 * np.pi * 200), -1, 1).astype(np.float32)
    with pytest.raises(MediaError, match="clipped"):
        voice_from_reference("x", clipped, base)
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    with pytest.raises(MediaError):
        load_audio(not_audio)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(8))
    with pytest.raises(MediaError):
        load_audio(corrupt)
    with pytest.raises(RequestError, match="name"):
        voice_from_reference("", one_second, base)


def test_voice_files_round_trip_and_bad_files_are_skipped(service, custom, tmp_path):
    path = save_voice(custom, tmp_path)
    loaded = load_voice(path)
    assert loaded.name == "Narrator" and loaded.bos_token == custom.bos_token and loaded.base == "Ethan"
    assert np.array_equal(loaded.ref_mel, custom.ref_mel)
    (tmp_path / "broken.voice.safetensors").write_bytes(b"\x00" * 64)
    voices, problems = load_voice_folder(tmp_path)
    assert [v.name for v in voices] == ["Narrator"]
    assert len(problems) == 1 and "broken.voice.safetensors" in problems[0]
    service.add_voices(voices)
    assert "Narrator" in service.voices
    events = list(service.stream(Request(Conversation().add_user("Hi"), voice="Narrator", limits=LIMITS, seed=1)))
    assert any(isinstance(e, AudioChunk) for e in events)


def test_say_command_writes_the_speech(tmp_path, reference_clip):
    ref = tmp_path / "ref.wav"
    sf.write(str(ref), reference_clip, 16000)
    out = tmp_path / "speech.wav"
    result = subprocess.run([sys.executable, "-m", "omni_app", "say", "--model", "tiny", "--voice-ref", str(ref),
                             "--seed", "2", "--max-speech-seconds", "1", "--out", str(out), "Exactly these words."],
                            cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    info = sf.info(str(out))
    assert info.samplerate == 24000 and info.frames > 0
