"""The streaming engine: Thinker, Talker and code2wav of many replies, advanced together in steps.

Each reply is a :class:`ReplyRun` (its utterances are state machines, :mod:`.utterance`).
One call of :meth:`StreamingEngine.iterate` advances every reply it is given by one step:

1. prompts: pieces of newcomers' prompts (media encoders, then up to ``prefill_chunk``
   tokens in all), so that a long video prompt never holds up the speech of the others;
2. one batched Thinker step for every reply whose text goes on and whose Talker has used
   every vector so far, then one batched Talker step for every reply whose next code can
   be made (the Talker's own prompt runs per reply);
3. every speech window that is ready, windows of equal length stacked in one DiT pass.

So speech starts as soon as ~36 codes exist (~38 Thinker tokens), long before the reply
is finished, and a reply can join or leave between any two steps. A reply's text, codes
and waveform do not depend on the others in its steps (:mod:`.rows`, :mod:`.invariance`),
and equal the reference engine's text and codes for the same request and seed; only the
waveform differs slightly at chunk joints because each window is decoded with limited context.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from ..config import ServiceConfig
from ..conversation import Conversation
from ..events import Event, Trace
from ..prompt import PreparedInputs, build_inputs
from ..voices import split_sentences
from .common import Cancel, EngineResult, Job, reason_for
from .dit import DitRunner
from .invariance import Invariance, invariance
from .loader import LoadedModel
from .rows import pad_to, padded
from .stepper import PREFILL_CHUNK, talker_steps, thinker_steps
from .timing import StageClock
from .utterance import Utterance, eos_ids

log = logging.getLogger(__name__)

#: The user turn in exact-text mode; the reply is then forced to be the text itself.
READ_ALOUD = "Read this text aloud, exactly as written:\n"


class ReplyRun:
    """One request in the engine: its utterances one after another, its events and its outcome."""

    def __init__(self, engine: StreamingEngine, loaded: LoadedModel, prepared: PreparedInputs | None, job: Job,
                 emit: Callable[[Event], None]) -> None:
        self.engine, self.loaded, self.job, self.emit = engine, loaded, job, emit
        self.clock = StageClock()
        # One random stream for the Talker's sampling, one for the decoder's noise.
        self.randomness = (_generator(job.seed, loaded.device), _generator(job.seed, "cpu"))
        self.segments = iter(self._segments(prepared))
        self.utterance: Utterance | None = None
        self.reason = "finished"
        self.done = False
        #: An exception raised by this reply's work (or a batched step it was in); it ends the reply.
        self.error: BaseException | None = None
        self.prompt_ids: list[int] = []
        self.reply_ids: list[int] = []
        self.codes: list[int] = []
        self.chunks: list = []
        self.reused = 0
        self.advance()

    def _segments(self, prepared):
        request = self.job.request
        if request.speak_text is None:
            yield prepared, None, self.job.slot
            return
        # Exact-text speech: each sentence is the Thinker's reply, teacher-forced, so the
        # Talker gets exactly these words; sentences follow each other without a gap.
        processor = self.loaded.processor
        for segment in split_sentences(request.speak_text):
            inputs = build_inputs(Conversation().add_user(READ_ALOUD + segment), processor)
            forced = processor.tokenizer(segment, add_special_tokens=False).input_ids + [eos_ids(self.loaded.model)[0]]
            yield inputs, forced, None

    def advance(self) -> None:
        """Start the next utterance, or end the reply when there is none."""
        try:
            prepared, forced, slot = next(self.segments)
        except StopIteration:
            self.utterance, self.done = None, True
            return
        engine = self.engine
        self.utterance = Utterance(self.loaded, prepared, self.job, forced, self.randomness, slot, engine.runner,
                                   engine.chunk_blocks, engine.prefill_chunk, self.emit, self.clock)
        self.reused += self.utterance.reused

    def finish_utterance(self) -> None:
        """Close the current utterance, note what it made, and go on to the next."""
        self._close_utterance()
        self.advance()

    def _close_utterance(self) -> None:
        u = self.utterance
        u.close()
        codes = list(u.audio.codes) if u.audio is not None else []
        self.prompt_ids = u.inputs["input_ids"][0].tolist()
        self.reply_ids += u.thinker.tokens
        self.codes += codes
        self.chunks += list(u.audio.plans) if u.audio is not None else []
        self.reason = reason_for(u.thinker.tokens, list(u.eos_ids), u.max_tokens)
        if self.reason == "finished" and len(codes) >= u.max_codes:
            self.reason = "length"

    def cancel(self) -> None:
        """Stop now (the conversation keeps what its cache holds)."""
        if self.utterance is not None and not self.done:
            try:
                self._close_utterance()  # not the next sentence: nothing more is made
            except Exception:  # the reply is over either way; its cache is simply not kept
                log.exception("closing a cancelled reply failed")
        self.reason, self.done, self.utterance = "cancelled", True, None

    def fail(self, error: BaseException) -> None:
        self.error = error

    def result(self) -> EngineResult:
        clock = self.clock
        extra = clock.stats()
        extra["prompt_tokens"] = float(len(self.prompt_ids))
        extra["reused_tokens"] = float(self.reused)
        trace = Trace(prompt_ids=tuple(self.prompt_ids), reply_ids=tuple(self.reply_ids), codes=tuple(self.codes),
                      chunks=tuple(self.chunks), timeline=tuple(clock.timeline))
        return EngineResult(self.reason, clock.tokens, clock.codes, extra, trace, batch_peak=clock.batch_peak)


class StreamingEngine:
    """Streams text and speech of many replies while they are still being generated (module docstring)."""

    name = "streaming"
    speaks_text = True
    reuses_cache = True
    #: Advances many replies at once (:meth:`start` / :meth:`iterate`).
    batches = True

    def __init__(self, chunk_blocks: tuple[int, ...] = ServiceConfig.chunk_blocks,
                 prefill_chunk: int = PREFILL_CHUNK, compile: bool = False) -> None:
        self.chunk_blocks = tuple(chunk_blocks)
        self.prefill_chunk = prefill_chunk
        #: ``torch.compile`` the DiT's evaluation (one graph per window shape; see ServiceConfig.compile).
        self.compile = compile
        self.runner: DitRunner | None = None
        self.invariance: Invariance | None = None

    def setup(self, loaded: LoadedModel, max_batch: int) -> None:
        """Check the machine's kernels for batching (once per model) and make the shared DiT runner."""
        if self.runner is None or self.runner.dit is not loaded.model.token2wav.code2wav_dit_model:
            self.runner = DitRunner(loaded.model.token2wav)
            if self.compile:
                self.runner.compile()
        self.invariance = invariance(loaded.model, max_batch)

    def start(self, loaded: LoadedModel, prepared: PreparedInputs | None, job: Job,
              emit: Callable[[Event], None]) -> ReplyRun:
        """A new reply, ready for :meth:`iterate`; its events go to ``emit``."""
        if self.invariance is None:
            self.setup(loaded, 1)
        return ReplyRun(self, loaded, prepared, job, emit)

    @torch.no_grad()
    def run(self, loaded: LoadedModel, prepared: PreparedInputs | None, job: Job,
            emit: Callable[[Event], None], cancel: Cancel) -> EngineResult:
        """One reply alone, start to end."""
        reply = self.start(loaded, prepared, job, emit)
        while not reply.done:
            if cancel.is_set():
                reply.cancel()
                break
            self.iterate(loaded, [reply])
            if reply.error is not None:
                raise reply.error
        return reply.result()

    @torch.no_grad()
    def iterate(self, loaded: LoadedModel, replies: list[ReplyRun]) -> None:
        """Advance each reply by one step (module docstring); a failing reply is marked, the others go on."""
        model = loaded.model
        live = [r for r in replies if not r.done and r.error is None]
        self._prompts(live)
        quantum = self.invariance.quantum
        rows = [r for r in _ok(live) if r.utterance.wants_thinker()]
        if rows:
            _batched(rows, "thinker", thinker_steps, model.thinker, [r.utterance.thinker for r in rows], quantum)
            for r in _ok(rows):
                _alone(r, r.utterance.took_token, r.utterance.thinker.tokens[-1])
        for r in _ok(live):
            if r.utterance.wants_talker_prefill():
                _alone(r, r.utterance.talker_prefill)
        rows = [r for r in _ok(live) if r.utterance.wants_talker()]
        if rows:
            inputs = [r.utterance.talker_input() for r in rows]
            _batched(rows, "talker", talker_steps, model.talker, [r.utterance.talker for r in rows], inputs, quantum)
            for r in _ok(rows):
                _alone(r, r.utterance.took_code, r.utterance.talker.codes[-1])
        self._speech(_ok(live))
        for r in _ok(live):
            _alone(r, self._settle, r)

    @staticmethod
    def _settle(reply: ReplyRun) -> None:
        if reply.utterance.settle():
            reply.finish_utterance()

    def _prompts(self, replies: list[ReplyRun]) -> None:
        """Pieces of prompts, oldest reply first, about ``prefill_chunk`` tokens in all per step."""
        budget = self.prefill_chunk
        for r in replies:
            left = r.utterance.prompt_left() if r.utterance is not None else 0
            if not left or budget <= 0:
                continue
            _alone(r, r.utterance.prefill)
            budget -= min(left, self.prefill_chunk)

    def _speech(self, replies: list[ReplyRun]) -> None:
        """Decode the speech windows that are ready: equal lengths stacked in one pass where that is exact.

        A ready window waits a few steps (:data:`HOLD_CODES` codes at most) when another reply
        will have a window of the same length by then, so that the two share one pass.
        """
        ready = [(r, plan) for r in replies if (plan := r.utterance.next_window()) is not None]
        if self.invariance.window_quantum:
            ready = _unheld(ready, replies)
        vocode = []
        for batch in _batches(ready, _window_frames, self.invariance.window_quantum):
            vocode += self._mel(batch)
        for batch in _batches(vocode, _mel_frames, self.invariance.vocoder_quantum):
            self._vocode(batch)

    def _mel(self, batch: list) -> list:
        """The DiT pass for ``batch`` of (reply, plan); returns (reply, plan, vocoder input) of each."""
        windows = [r.utterance.audio.window(plan) for r, plan in batch]
        spares = padded(len(windows), self.invariance.window_quantum or 1) - len(windows)
        mels = _batched([r for r, _ in batch], "code2wav", self.runner.mel, windows + windows[:1] * spares)
        if mels is None:
            return []
        return [(r, plan, r.utterance.audio.vocoder_input(plan, mel))
                for (r, plan), mel in zip(batch, mels, strict=False)]

    def _vocode(self, batch: list) -> None:
        """The vocoder for ``batch`` of (reply, plan, mel); each reply gets its piece of speech."""
        vocoder = batch[0][0].utterance.audio.decoder.vocoder
        mels = torch.cat([mel for _, _, mel in batch], dim=0)
        mels = pad_to(mels, padded(len(batch), self.invariance.vocoder_quantum or 1))
        waves = _batched([r for r, _, _ in batch], "code2wav", vocoder, mels)
        if waves is None:
            return
        waves = waves.reshape(mels.shape[0], -1)
        for (r, plan, _), wave in zip(batch, waves, strict=False):
            _alone(r, r.utterance.took_wave, r.utterance.audio.cut(plan, wave))


#: Steps (codes) a ready speech window may wait for another reply's window of the same length
#: (tens of milliseconds), so that both are decoded in one pass.
HOLD_STEPS = 8


def _unheld(ready: list, replies: list[ReplyRun]) -> list:
    """The ready windows not worth holding back: none other of their length is due within :data:`HOLD_STEPS`."""
    ready_ids = {id(r) for r, _ in ready}
    due = {r.utterance.upcoming_window(HOLD_STEPS) for r in replies if id(r) not in ready_ids}
    return [(r, plan) for r, plan in ready
            if plan.window_end - plan.window_start not in due or r.utterance.held_too_long(HOLD_STEPS)]


def _window_frames(item) -> int:
    return item[1].window_end - item[1].window_start


def _mel_frames(item) -> int:
    return item[2].shape[-1]


def _batches(items: list, key, quantum: int) -> list[list]:
    """``items`` grouped by ``key`` when stacking is exact (a ``quantum``), else one by one."""
    if not quantum:
        return [[item] for item in items]
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def _ok(replies: list[ReplyRun]) -> list[ReplyRun]:
    return [r for r in replies if r.error is None and not r.done]


def _alone(reply: ReplyRun, fn, *args) -> None:
    """Work for one reply; an exception fails that reply only."""
    try:
        fn(*args)
    except Exception as exc:  # reaches the reply's consumer
        reply.fail(exc)


def _batched(replies: list[ReplyRun], stage: str, fn, *args):
    """A step shared by ``replies``: timed, its time split among them; an exception fails them all."""
    started = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as exc:  # reaches every consumer in the step
        for reply in replies:
            reply.fail(exc)
        return None
    elapsed = time.perf_counter() - started
    for reply in replies:
        reply.clock.share(stage, elapsed, len(replies))
    return result


def _generator(seed: int, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
