"""The streaming engine: Thinker, Talker and code2wav interleaved in one loop.

Every turn of the loop does the most urgent piece of work that is possible now:
1. decode an audio chunk if its codes (and their look-ahead) exist,
2. else step the Talker if the Thinker vector it needs exists,
3. else step the Thinker.
So speech starts as soon as ~36 codes exist (~38 Thinker tokens), long before the reply
is finished, and cancel is noticed within one chunk. The text, codes and waveform equal
the reference engine's for the same request and seed (the sampling settings, the
Talker's mask path and the random streams are the same); only the waveform differs
slightly at chunk joints because each window is decoded with limited context.

Given its conversation's cache (:attr:`Job.slot`, see :mod:`.sessions`), a turn runs only
the part of its prompt the cache does not hold, and leaves the cache for the next turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..config import ServiceConfig
from ..conversation import Conversation
from ..events import AudioChunk, Event, TextDelta, Trace
from ..prompt import PreparedInputs, build_inputs
from ..voices import split_sentences
from .code2wav import StreamingCode2Wav, WindowDecoder
from .common import TALKER_STOP_CODES, Cancel, EngineResult, Job, reason_for, to_device, to_int16
from .loader import OUTPUT_SAMPLE_RATE, LoadedModel
from .sessions import CacheSlot, after_turn
from .stepper import TalkerStepper, ThinkerStepper, prompt_positions
from .text import IncrementalDecoder

#: The user turn in exact-text mode; the reply is then forced to be the text itself.
READ_ALOUD = "Read this text aloud, exactly as written:\n"


class StreamingEngine:
    """Streams text and speech while both are still being generated."""

    name = "streaming"
    speaks_text = True
    reuses_cache = True

    def __init__(self, chunk_blocks: tuple[int, ...] = ServiceConfig.chunk_blocks) -> None:
        self.chunk_blocks = tuple(chunk_blocks)

    @torch.no_grad()
    def run(self, loaded: LoadedModel, prepared: PreparedInputs | None, job: Job,
            emit: Callable[[Event], None], cancel: Cancel) -> EngineResult:
        run = _Run()
        device = loaded.device
        # One random stream for the Talker's sampling, one for the decoder's noise.
        randomness = (_generator(job.seed, device), _generator(job.seed, "cpu"))
        request = job.request
        if request.speak_text is None:
            reason = self._utterance(loaded, prepared, job, emit, cancel, run, randomness, None, job.slot)
        else:
            # Exact-text speech: each sentence is the Thinker's reply, teacher-forced, so the
            # Talker gets exactly these words; sentences follow each other without a gap.
            tokenizer = loaded.processor.tokenizer
            reason = "finished"
            for segment in split_sentences(request.speak_text):
                if cancel.is_set():
                    break
                segment_inputs = build_inputs(Conversation().add_user(READ_ALOUD + segment), loaded.processor)
                forced = tokenizer(segment, add_special_tokens=False).input_ids + [_eos_ids(loaded.model)[0]]
                reason = self._utterance(loaded, segment_inputs, job, emit, cancel, run, randomness, forced)
        return EngineResult(reason, run.tokens, run.codes, run.stats(), run.trace())

    def _utterance(self, loaded, prepared, job: Job, emit, cancel, run: "_Run", randomness, forced,
                   slot: CacheSlot | None = None) -> str:
        """One reply (or one forced sentence) through Thinker, Talker and code2wav."""
        model = loaded.model
        rope_inputs = to_device(prepared.rope_inputs(), loaded)
        positions = prompt_positions(model.thinker, rope_inputs, prepared.use_audio_in_video)
        # Continue the conversation's cache where it still holds this prompt's start.
        cached = slot.take() if slot is not None else None
        start = cached.reusable(prepared, positions) if cached is not None else 0
        cached = cached.cropped(start) if start else None
        first_media = sum(1 for m in prepared.media if m.start < start)
        inputs = to_device({"input_ids": prepared.input_ids, **prepared.media_tensors(first_media)}, loaded)
        run.reused = start
        limits = job.limits
        max_tokens = len(forced) if forced is not None else limits.max_new_tokens
        eos_ids = set(_eos_ids(model))
        voice = job.voice
        decoder = IncrementalDecoder(loaded.processor.tokenizer)
        thinker = ThinkerStepper(model.thinker, inputs, prepared.use_audio_in_video, forced=forced,
                                 positions=positions, cache=cached.cache if cached else None,
                                 rows=cached.rows if cached else None)
        vectors = thinker.vectors  # vectors[j] = reply vector of token j

        def thinker_step() -> None:
            if not thinker.tokens:
                token = run.timed("thinker", thinker.prefill)
            else:
                token, _ = run.timed("thinker", thinker.step)
            run.mark("token")
            delta = decoder.push(token)
            if delta:
                emit(TextDelta(delta))

        def thinker_done() -> bool:
            tokens = thinker.tokens
            return bool(tokens) and (tokens[-1] in eos_ids or len(tokens) >= max_tokens)

        talker = audio = None
        if voice is not None:
            speaker = voice.as_speaker()
            talker = TalkerStepper(model.talker, model.thinker.get_input_embeddings(), rope_inputs,
                                   prepared.use_audio_in_video, voice.bos_token, job.request.speech_sampling,
                                   randomness[0], model.token2wav.code2wav_dit_model.config.num_embeds,
                                   cache=cached.talker_cache if cached else None,
                                   cache_positions=cached.talker_positions if cached else None)
            noise = torch.randn((1, 2 * limits.max_codec_codes, 80), generator=randomness[1])
            audio = StreamingCode2Wav(WindowDecoder(model.token2wav, speaker["cond"], speaker["ref_mel"]), noise,
                                      self.chunk_blocks)

        while not cancel.is_set():
            if audio is not None and (plan := audio.next_plan()) is not None:
                piece = run.timed("code2wav", audio.decode, plan)
                if len(piece):
                    emit(AudioChunk(OUTPUT_SAMPLE_RATE, to_int16(piece.float().numpy())))
                run.mark("chunk")
            elif audio is not None and not audio.finished and self._talker_ready(talker, thinker, vectors,
                                                                                thinker_done()):
                code = run.timed("talker", self._talker_step, talker, thinker, vectors, thinker_done())
                if code in TALKER_STOP_CODES:
                    audio.finish()
                else:
                    audio.add(code)
                    run.mark("code")
                    if len(talker.codes) >= limits.max_codec_codes:
                        audio.finish()
            elif not thinker_done():
                thinker_step()
            elif audio is not None and not audio.finished:
                audio.finish()  # a reply too short to speak (fewer than 2 tokens)
            else:
                break

        tail = decoder.flush()
        if tail:
            emit(TextDelta(tail))
        if slot is not None:
            slot.keep(after_turn(prepared, thinker, talker, cached))
        codes = list(audio.codes) if audio is not None else []
        run.prompt_ids = inputs["input_ids"][0].tolist()
        run.reply_ids += thinker.tokens
        run.all_codes += codes
        run.chunks += list(audio.plans) if audio is not None else []
        reason = reason_for(thinker.tokens, list(eos_ids), max_tokens)
        if reason == "finished" and len(codes) >= limits.max_codec_codes:
            reason = "length"
        return reason

    @staticmethod
    def _talker_ready(talker, thinker, vectors, text_done: bool) -> bool:
        step = len(talker.codes)
        if step == 0:
            return len(vectors) >= 1  # the prefill needs reply(g0), from Thinker forward #1
        return text_done or len(vectors) > step

    @staticmethod
    def _talker_step(talker: TalkerStepper, thinker: ThinkerStepper, vectors, text_done: bool) -> int:
        step = len(talker.codes)
        if step == 0:
            return talker.prefill(thinker.prompt_rows, thinker.tokens[0], vectors[0])
        total = len(thinker.tokens)  # the final count once the text is done
        if not text_done or step <= total - 2:
            reply = vectors[step]
        elif step == total - 1:
            reply = talker.text_embedding(talker.talker.text_eos_token)
        else:
            reply = talker.text_embedding(talker.talker.text_pad_token)
        return talker.step(reply)


class _Run:
    """Per-request timing of the three stages and a timeline of what happened when."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds = {"thinker": 0.0, "talker": 0.0, "code2wav": 0.0}
        self.timeline: list[tuple[float, str, int]] = []
        self.counts = {"token": 0, "code": 0, "chunk": 0}
        # What the reply was made of (every sentence of an exact-text request appended).
        self.prompt_ids: list[int] = []
        self.reply_ids: list[int] = []
        self.all_codes: list[int] = []
        self.chunks: list = []
        #: Prompt tokens the conversation's cache already held (not run again).
        self.reused = 0

    def trace(self) -> Trace:
        return Trace(prompt_ids=tuple(self.prompt_ids), reply_ids=tuple(self.reply_ids), codes=tuple(self.all_codes),
                     chunks=tuple(self.chunks), timeline=tuple(self.timeline))

    def timed(self, stage: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    @property
    def tokens(self) -> int:
        return self.counts["token"]

    @property
    def codes(self) -> int:
        return self.counts["code"]

    def mark(self, kind: str) -> None:
        """Count one token, code or chunk and note when it happened."""
        self.counts[kind] += 1
        self.timeline.append((time.perf_counter() - self.started, kind, self.counts[kind]))

    def stats(self) -> dict[str, float]:
        tokens, codes = self.tokens, self.codes
        extra = {f"{k}_seconds": v for k, v in self.seconds.items()}
        extra["prompt_tokens"] = float(len(self.prompt_ids))
        extra["reused_tokens"] = float(self.reused)
        if self.seconds["thinker"] > 0:
            extra["thinker_tokens_per_s"] = tokens / self.seconds["thinker"]
        if self.seconds["talker"] > 0:
            extra["talker_codes_per_s"] = codes / self.seconds["talker"]
        if codes:
            extra["code2wav_rtf"] = self.seconds["code2wav"] / (codes / 50.0)
        return extra


def _eos_ids(model) -> list[int]:
    eos = model.thinker.generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _generator(seed: int, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
