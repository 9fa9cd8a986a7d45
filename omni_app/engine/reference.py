"""The reference engine: transformers' own ``generate()``, as the official demo runs it.

The whole reply is generated first (its text streams as it is decoded), then all speech
codes, then the waveform, which arrives as one chunk at the end. It stays as the baseline
that a streaming engine must match and beat.

One deliberate difference from a plain call: transformers 5.x drops an all-ones attention
mask for a single unpadded sample, and the Talker then skips its mask branch (no codec
pad/bos embeddings on the last prefill rows, 1-D instead of 3-D positions), which changes
the speech. Qwen's original code always ran that branch. We prepend one masked pad token
to the prompt, so generate() keeps the mask and the Talker takes its mask path, exactly as
it does for the longest row of a padded batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..events import AudioChunk, Event, TextDelta, Trace
from ..prompt import PreparedInputs
from .common import Cancel, EngineResult, Job, reason_for, speech_codes, to_device, to_int16
from .loader import OUTPUT_SAMPLE_RATE, LoadedModel
from .text import IncrementalDecoder, TokenStreamer


class _Watch:
    """A stopping criterion that stops on cancel and remembers the ids it has seen."""

    def __init__(self, cancel: Cancel, prompt_length: int) -> None:
        self.cancel = cancel
        self.prompt_length = prompt_length
        self.generated: list[int] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.generated = input_ids[0, self.prompt_length:].tolist()
        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class ReferenceEngine:
    """Runs ``Qwen2_5OmniForConditionalGeneration.generate()`` and reports its output."""

    name = "reference"
    speaks_text = False
    reuses_cache = False
    #: generate() makes one reply at a time.
    batches = False

    def run(self, loaded: LoadedModel, prepared: PreparedInputs, job: Job,
            emit: Callable[[Event], None], cancel: Cancel) -> EngineResult:
        import torch

        model, tokenizer = loaded.model, loaded.processor.tokenizer
        inputs = to_device(prepared.tensors, loaded)
        decoder = IncrementalDecoder(tokenizer)

        def on_token(token_id: int) -> None:
            delta = decoder.push(token_id)
            if delta:
                emit(TextDelta(delta))

        streamer = TokenStreamer(on_token)
        torch.manual_seed(job.seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(job.seed)
        limits = job.limits
        eos = model.thinker.generation_config.eos_token_id
        started = time.perf_counter()

        if job.voice is None:
            watch = _Watch(cancel, inputs["input_ids"].shape[1])
            sequences = model.thinker.generate(
                **inputs, use_audio_in_video=prepared.use_audio_in_video,
                max_new_tokens=limits.max_new_tokens, do_sample=False,
                streamer=streamer, stopping_criteria=[watch],
            )
            _flush(decoder, emit)
            reply = sequences[0, inputs["input_ids"].shape[1]:].tolist()
            return EngineResult(reason_for(reply, eos, limits.max_new_tokens), len(reply), 0,
                                {"thinker_seconds": time.perf_counter() - started},
                                _trace(inputs["input_ids"], reply, []))

        inputs = _pad_one(inputs, tokenizer.pad_token_id)
        prompt_length = inputs["input_ids"].shape[1]
        thinker_watch = _Watch(cancel, prompt_length)
        # The Talker's prompt is the thinker prompt plus 2 rows (voice bos and first reply token).
        talker_watch = _Watch(cancel, prompt_length + 2)
        wave = None
        speaker = _register(model, job.voice)
        try:
            _, wave = model.generate(
                **inputs, speaker=speaker, use_audio_in_video=prepared.use_audio_in_video,
                thinker_max_new_tokens=limits.max_new_tokens, thinker_do_sample=False,
                thinker_streamer=streamer, thinker_stopping_criteria=[thinker_watch],
                talker_max_new_tokens=limits.max_codec_codes, talker_stopping_criteria=[talker_watch],
                talker_do_sample=job.request.speech_sampling,
                # generate() would hand the pixels to the Talker, which rejects them.
                talker_pixel_values=None, talker_pixel_values_videos=None,
            )
        except (RuntimeError, IndexError, ValueError):
            # Known transformers crashes with nothing to say: a reply shorter than 2 tokens, a
            # Talker that stops before its first code, or a cancel that cut either short.
            if not (cancel.is_set() or streamer.count < 2 or speech_codes(talker_watch.generated) == []):
                raise
        finally:
            if speaker != job.voice.name:
                model.speaker_map.pop(speaker, None)
        _flush(decoder, emit)
        reply_tokens = streamer.count
        codes = speech_codes(talker_watch.generated)
        if wave is not None and codes and not cancel.is_set():
            emit(AudioChunk(OUTPUT_SAMPLE_RATE, to_int16(wave.detach().float().cpu().numpy().reshape(-1))))
        reason = reason_for(thinker_watch.generated, eos, limits.max_new_tokens)
        if reason == "finished" and len(codes) >= limits.max_codec_codes:
            reason = "length"
        return EngineResult(reason, reply_tokens, len(codes), {"generate_seconds": time.perf_counter() - started},
                            _trace(inputs["input_ids"][:, 1:], thinker_watch.generated, codes))


def _register(model, voice) -> str:
    """The speaker name generate() should use; a custom voice is added for this call only.

    generate() only takes a name from the model's speaker map. Generations are serialised
    by the service's lock, so the temporary entry is never seen by another request.
    """
    stock = model.speaker_map.get(voice.name)
    if stock is not None and not voice.custom:
        return voice.name
    key = f"custom:{voice.name}"
    model.speaker_map[key] = voice.as_speaker()
    return key


def _trace(prompt_ids, reply: list[int], codes: list[int]) -> Trace:
    return Trace(prompt_ids=tuple(prompt_ids[0].tolist()), reply_ids=tuple(reply), codes=tuple(codes))


def _pad_one(inputs: dict, pad_id: int) -> dict:
    """Prepend one masked pad token so generate() keeps the attention mask (module docstring)."""
    import torch

    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask", torch.ones_like(ids))
    padded = dict(inputs)
    padded["input_ids"] = torch.cat([ids.new_full((ids.shape[0], 1), pad_id), ids], dim=1)
    padded["attention_mask"] = torch.cat([mask.new_zeros((mask.shape[0], 1)), mask], dim=1)
    return padded


def _flush(decoder: IncrementalDecoder, emit: Callable[[Event], None]) -> None:
    tail = decoder.flush()
    if tail:
        emit(TextDelta(tail))
