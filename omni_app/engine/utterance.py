"""One reply (or one sentence of an exact-text reply) as a state machine the batched engine advances.

An utterance runs its prompt (media encoders, then the prompt in pieces), then decodes:
each Thinker token feeds the Talker one step later, every code goes to the streaming
speech decoder, and a chunk of speech is decoded as soon as its codes and their
look-ahead exist. The engine (:mod:`.streaming`) asks each utterance what it can do next
and does that work for many utterances at once; an utterance never runs a model itself
except for its own prompt, which no other reply shares.

Given its conversation's cache (:class:`~.sessions.CacheSlot`), an utterance runs only the
part of its prompt the cache does not hold, and leaves the cache for the next turn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..events import AudioChunk, Event, TextDelta
from ..prompt import PreparedInputs
from .code2wav import StreamingCode2Wav, WindowDecoder
from .common import TALKER_STOP_CODES, Job, to_device, to_int16
from .dit import DitRunner
from .loader import OUTPUT_SAMPLE_RATE
from .prompt_inputs import prompt_positions
from .sessions import CacheSlot, after_turn
from .stepper import TalkerStepper, ThinkerStepper
from .text import IncrementalDecoder
from .timing import StageClock


class Utterance:
    """Thinker, Talker and speech decoder state of one utterance."""

    def __init__(self, loaded, prepared: PreparedInputs, job: Job, forced: list[int] | None, randomness,
                 slot: CacheSlot | None, runner: DitRunner, schedule: tuple[int, ...], prefill_chunk: int,
                 emit: Callable[[Event], None], clock: StageClock) -> None:
        model = loaded.model
        self.loaded, self.prepared, self.slot = loaded, prepared, slot
        self.emit, self.clock = emit, clock
        rope_inputs = to_device(prepared.rope_inputs(), loaded)
        positions = prompt_positions(model.thinker, rope_inputs, prepared.use_audio_in_video)
        # Continue the conversation's cache where it still holds this prompt's start.
        cached = slot.take() if slot is not None else None
        start = cached.reusable(prepared, positions) if cached is not None else 0
        self.cached = cached = cached.cropped(start) if start else None
        first_media = sum(1 for m in prepared.media if m.start < start)
        self.inputs = to_device({"input_ids": prepared.input_ids, **prepared.media_tensors(first_media)}, loaded)
        self.reused = start
        limits = job.limits
        self.max_tokens = len(forced) if forced is not None else limits.max_new_tokens
        self.max_codes = limits.max_codec_codes
        self.eos_ids = set(eos_ids(model))
        self.text = IncrementalDecoder(loaded.processor.tokenizer)
        self.thinker = ThinkerStepper(model.thinker, self.inputs, prepared.use_audio_in_video, forced=forced,
                                      positions=positions, cache=cached.cache if cached else None,
                                      rows=cached.rows if cached else None, chunk=prefill_chunk)
        self.talker = self.audio = None
        if job.voice is not None:
            speaker = job.voice.as_speaker()
            self.talker = TalkerStepper(
                model.talker, model.thinker.get_input_embeddings(), rope_inputs, prepared.use_audio_in_video,
                job.voice.bos_token, job.request.speech_sampling, randomness[0],
                model.token2wav.code2wav_dit_model.config.num_embeds,
                cache=cached.talker_cache if cached else None,
                cache_positions=cached.talker_positions if cached else None, max_codes=self.max_codes)
            # One noise tensor per utterance, sliced per window (see code2wav).
            noise = torch.randn((1, 2 * self.max_codes, 80), generator=randomness[1])
            decoder = WindowDecoder(model.token2wav, speaker["cond"], speaker["ref_mel"], runner)
            self.audio = StreamingCode2Wav(decoder, noise, schedule)
        self.finished = False
        self._waiting = 0  # steps a ready speech window has waited for a partner

    # What it can do next ------------------------------------------------------------

    def prompt_left(self) -> int:
        """Prompt tokens still to run (0 once the first token exists)."""
        if self.thinker.prefilled:
            return 0
        return self.inputs["input_ids"].shape[1] - self.thinker.start

    def text_done(self) -> bool:
        tokens = self.thinker.tokens
        return bool(tokens) and (tokens[-1] in self.eos_ids or len(tokens) >= self.max_tokens)

    def wants_thinker(self) -> bool:
        """A Thinker step is due: the text goes on, and the Talker has used every vector so far."""
        if not self.thinker.prefilled or self.text_done():
            return False
        return self.audio is None or self.audio.finished or not self._talker_ready()

    def wants_talker_prefill(self) -> bool:
        return self._speaking() and not self.talker.codes and self._talker_ready()

    def wants_talker(self) -> bool:
        return self._speaking() and bool(self.talker.codes) and self._talker_ready()

    def _speaking(self) -> bool:
        return self.audio is not None and not self.audio.finished

    def _talker_ready(self) -> bool:
        step, vectors = len(self.talker.codes), self.thinker.vectors
        if step == 0:
            return len(vectors) >= 1  # the prefill needs reply(g0), from Thinker forward #1
        return self.text_done() or len(vectors) > step

    # Work ----------------------------------------------------------------------

    def prefill(self) -> None:
        """Run one piece of the prompt (the media encoders before the first)."""
        token = self.clock.timed("thinker", self.thinker.prefill_chunk)
        if token is not None:
            self.took_token(token)

    def took_token(self, token: int) -> None:
        self.clock.mark("token")
        delta = self.text.push(token)
        if delta:
            self.emit(TextDelta(delta))

    def talker_prefill(self) -> None:
        thinker = self.thinker
        code = self.clock.timed("talker", self.talker.prefill, thinker.prompt_rows, thinker.tokens[0],
                                thinker.vectors[0])
        self.took_code(code)

    def talker_input(self) -> torch.Tensor:
        """The Thinker's part of the next Talker step: the reply vector, then text eos, then text pad."""
        step, total = len(self.talker.codes), len(self.thinker.tokens)
        if not self.text_done() or step <= total - 2:
            return self.thinker.vectors[step]
        if step == total - 1:
            return self.talker.text_embedding(self.talker.talker.text_eos_token)
        return self.talker.text_embedding(self.talker.talker.text_pad_token)

    def took_code(self, code: int) -> None:
        if code in TALKER_STOP_CODES:
            self.audio.finish()
            return
        self.audio.add(code)
        self.clock.mark("code")
        if len(self.talker.codes) >= self.max_codes:
            self.audio.finish()

    def next_window(self):
        """The next speech chunk's plan, if one can be decoded now."""
        plan = self.audio.next_plan() if self.audio is not None else None
        if plan is None:
            self._waiting = 0
        else:
            self._waiting += 1
        return plan

    def upcoming_window(self, codes: int) -> int | None:
        """The length in frames of the next speech window, if it will be ready within ``codes`` more codes."""
        if not self._speaking() or not self.talker.codes:
            return None
        return self.audio.upcoming(codes, self.max_codes)

    def held_too_long(self, steps: int) -> bool:
        """Whether a ready window has waited ``steps`` for a partner (it goes alone now)."""
        return self._waiting > steps

    def took_wave(self, piece: torch.Tensor) -> None:
        if len(piece):
            self.emit(AudioChunk(OUTPUT_SAMPLE_RATE, to_int16(piece.float().numpy())))
        self.clock.mark("chunk")

    def settle(self) -> bool:
        """After a step: close the speech of a reply too short to speak; returns whether the utterance is over."""
        if not self.text_done():
            return False
        if self._speaking() and not self._talker_ready():
            self.audio.finish()  # fewer than 2 tokens: nothing to speak
        return self.audio is None or (self.audio.finished and self.audio.next_plan() is None)

    def close(self) -> None:
        """Flush the text and leave the conversation's cache for its next turn (also after a cancel)."""
        if self.finished:
            return
        self.finished = True
        tail = self.text.flush()
        if tail:
            self.emit(TextDelta(tail))
        if self.slot is not None:
            self.slot.keep(after_turn(self.prepared, self.thinker, self.talker, self.cached))


def eos_ids(model) -> list[int]:
    eos = model.thinker.generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]

