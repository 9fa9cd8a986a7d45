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
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..config import ServiceConfig
from ..conversation import PreparedInputs
from ..events import AudioChunk, Event, TextDelta
from .code2wav import StreamingCode2Wav, WindowDecoder
from .loader import OUTPUT_SAMPLE_RATE, LoadedModel
from .reference import _to_device, reason_for
from .service import Cancel, EngineResult, Request, to_int16
from .stepper import TALKER_STOP_CODES, TalkerStepper, ThinkerStepper
from .text import IncrementalDecoder


class StreamingEngine:
    """Streams text and speech while both are still being generated."""

    name = "streaming"

    def __init__(self, chunk_blocks: tuple[int, ...] = ServiceConfig.chunk_blocks) -> None:
        self.chunk_blocks = tuple(chunk_blocks)

    @torch.no_grad()
    def run(self, loaded: LoadedModel, prepared: PreparedInputs, request: Request,
            emit: Callable[[Event], None], cancel: Cancel) -> EngineResult:
        model = loaded.model
        inputs = _to_device(prepared.tensors, loaded)
        limits = request.limits
        eos = model.thinker.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        speak = request.voice is not None
        run = _Run()
        decoder = IncrementalDecoder(loaded.processor.tokenizer)

        thinker = ThinkerStepper(model.thinker, inputs, prepared.use_audio_in_video, want_vectors=speak)
        vectors: list[torch.Tensor] = []  # vectors[j] = reply vector of token j

        def thinker_step() -> None:
            if not thinker.tokens:
                token = run.timed("thinker", thinker.prefill)
            else:
                token, vector = run.timed("thinker", thinker.step)
                if vector is not None:
                    vectors.append(vector)
            run.mark("token", len(thinker.tokens))
            delta = decoder.push(token)
            if delta:
                emit(TextDelta(delta))

        def thinker_done() -> bool:
            tokens = thinker.tokens
            return bool(tokens) and (tokens[-1] in eos_ids or len(tokens) >= limits.max_new_tokens)

        talker = audio = None
        if speak:
            voice = loaded.voices[request.voice]
            generator = _generator(request.seed, inputs["input_ids"].device)
            talker = TalkerStepper(model.talker, model.thinker.get_input_embeddings(), inputs,
                                   prepared.use_audio_in_video, int(voice["bos_token"]), request.speech_sampling,
                                   generator, model.token2wav.code2wav_dit_model.config.num_embeds)
            noise = torch.randn((1, 2 * limits.max_codec_codes, 80), generator=_generator(request.seed, "cpu"))
            audio = StreamingCode2Wav(WindowDecoder(model.token2wav, voice["cond"], voice["ref_mel"]), noise,
                                      self.chunk_blocks)

        while not cancel.is_set():
            if audio is not None and (plan := audio.next_plan()) is not None:
                piece = run.timed("code2wav", audio.decode, plan)
                if len(piece):
                    emit(AudioChunk(OUTPUT_SAMPLE_RATE, to_int16(piece.float().numpy())))
                run.mark("chunk", len(audio.plans))
            elif audio is not None and not audio.finished and self._talker_ready(talker, thinker, vectors,
                                                                                thinker_done()):
                code = run.timed("talker", self._talker_step, talker, thinker, vectors, thinker_done())
                run.mark("code", len(talker.codes))
                if code in TALKER_STOP_CODES:
                    audio.finish()
                else:
                    audio.add(code)
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
        codes = list(audio.codes) if audio is not None else []
        if request.trace is not None:
            request.trace.prompt_ids = inputs["input_ids"][0].tolist()
            request.trace.reply_ids = list(thinker.tokens)
            request.trace.codes = codes
            request.trace.chunks = list(audio.plans) if audio is not None else []
            request.trace.timeline = run.timeline
        reason = reason_for(thinker.tokens, eos, limits.max_new_tokens)
        if reason == "finished" and len(codes) >= limits.max_codec_codes:
            reason = "length"
        return EngineResult(reason, len(thinker.tokens), len(codes), run.stats(len(thinker.tokens), len(codes)))

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

    def timed(self, stage: str, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.perf_counter() - t0

    def mark(self, kind: str, count: int) -> None:
        self.timeline.append((time.perf_counter() - self.started, kind, count))

    def stats(self, tokens: int, codes: int) -> dict[str, float]:
        extra = {f"{k}_seconds": v for k, v in self.seconds.items()}
        if self.seconds["thinker"] > 0:
            extra["thinker_tokens_per_s"] = tokens / self.seconds["thinker"]
        if self.seconds["talker"] > 0:
            extra["talker_codes_per_s"] = codes / self.seconds["talker"]
        if codes:
            extra["code2wav_rtf"] = self.seconds["code2wav"] / (codes / 50.0)
        return extra


def _generator(seed: int, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
