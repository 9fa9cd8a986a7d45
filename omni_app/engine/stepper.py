"""Thinker and Talker state for one reply, and their steps: alone, or many replies in one batch.

Each stepper owns its KV cache, positions and sampling state; nothing is written on the
shared modules (transformers keeps ``rope_deltas`` on them, which lets two interleaved
requests disturb each other), so replies are independent. :func:`thinker_steps` and
:func:`talker_steps` advance many steppers by one token in one batched step (see
:mod:`.rows`); a stepper's own ``step()`` is the same with one row.

Which Thinker forward feeds which Talker step (verified against ``generate()``):
forward #0 is the prefill and yields token g0; forward #k takes g(k-1) and yields gk. The
reply vector of gj is its embedding plus the final hidden state where gj is the *input*,
so it comes out of forward #(j+1). Talker code t needs reply(gt): t + 2 Thinker tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .prompt_inputs import ENCODER_INPUTS, audio_lengths, media_embeddings, prompt_positions
from .rows import decode, pad_to, padded
from .sampling import sample, talker_processors

#: Prompt tokens run in one piece; a longer prompt is run in pieces of this size, between the
#: batch's decode steps, so that it never holds up the speech of replies already playing.
PREFILL_CHUNK = 512


class ThinkerStepper:
    """Greedy (or teacher-forced) Thinker decoding with its KV cache, one token per step.

    ``inputs`` holds the prompt's ``input_ids`` and the encoder inputs of its media.
    Given a ``cache`` that already holds the prompt's first tokens (an earlier turn of the
    same conversation) and their Talker ``rows``, only the rest of the prompt is run, and
    ``inputs`` needs the encoder inputs of the media in that rest only; ``positions``
    (:func:`prompt_positions` of the whole prompt) then number it.

    The prompt runs in pieces: :meth:`prefill_chunk` (the media encoders before the first
    piece) until it returns the first token. :meth:`prefill` does all of it at once.
    """

    def __init__(self, thinker, inputs: dict, use_audio_in_video: bool, forced: list[int] | None = None,
                 positions: torch.Tensor | None = None, cache=None, rows: torch.Tensor | None = None,
                 chunk: int = PREFILL_CHUNK) -> None:
        self.thinker = thinker
        self.inputs = inputs
        self.use_audio_in_video = use_audio_in_video
        #: Teacher forcing: these tokens are the reply, whatever the logits say.
        self.forced = forced
        self.cache = cache if cache is not None else DynamicCache(config=thinker.config.get_text_config())
        #: Prompt tokens already in the cache (their rows come with them).
        self.start = self.cache.get_seq_length()
        self.chunk = chunk
        self._prefix_rows = rows
        self.tokens: list[int] = []
        #: Talker input rows: the prompt's after the prefill, then one per token fed back.
        self.prompt_rows: torch.Tensor | None = None
        self.vectors: list[torch.Tensor] = []
        #: Positions of the prompt, then of every token fed back: ``(4, 1, n)``.
        self.positions = positions if positions is not None else prompt_positions(thinker, inputs, use_audio_in_video)
        self._fed: list[torch.Tensor] = []  # positions of the tokens fed back, joined to ``positions`` on demand
        self._embeds: torch.Tensor | None = None  # the rest of the prompt, media encoded in
        self._done = 0  # prompt tokens of the rest already run
        self._rows: list[torch.Tensor] = []

    @property
    def prefilled(self) -> bool:
        return bool(self.tokens)

    def _encode(self) -> None:
        """Run the media encoders of the part of the prompt not in the cache."""
        new = self.inputs["input_ids"][:, self.start:]
        encoders = {k: v for k, v in self.inputs.items() if k in ENCODER_INPUTS and v is not None}
        self._embeds = media_embeddings(self.thinker.model, new, encoders)

    def prefill_chunk(self) -> int | None:
        """Run the next piece of the prompt; after the last one, returns the first token (else ``None``)."""
        if self._embeds is None:
            self._encode()
        begin, end = self._done, min(self._done + self.chunk, self._embeds.shape[1])
        at = self.start + begin
        hidden = self.thinker.model.language_model(
            inputs_embeds=self._embeds[:, begin:end], position_ids=self.positions[:, :, at:self.start + end],
            past_key_values=self.cache, use_cache=True).last_hidden_state
        # The Talker's prompt rows: embeddings (zeros at audio/image/video placeholders, as
        # generate() gives it) plus the last hidden state.
        ids = self.inputs["input_ids"][:, at:self.start + end]
        cfg = self.thinker.config
        media = torch.isin(ids, torch.tensor([cfg.audio_token_index, cfg.image_token_index, cfg.video_token_index],
                                             device=ids.device))
        self._rows.append(self.thinker.get_input_embeddings()(ids).masked_fill(media.unsqueeze(-1), 0) + hidden)
        self._done = end
        if end < self._embeds.shape[1]:
            return None
        rows = torch.cat(self._rows, dim=1)
        self.prompt_rows = rows if self._prefix_rows is None else torch.cat([self._prefix_rows, rows], dim=1)
        self._prefix_rows, self._rows, self._embeds = None, [], None
        return self._take(self.thinker.lm_head(hidden[:, -1:]))

    def prefill(self) -> int:
        """Run the whole prompt (the part not in the cache, with its media's encoders); returns the first token."""
        while (token := self.prefill_chunk()) is None:
            pass
        return token

    def step(self) -> tuple[int, torch.Tensor]:
        """Feed the last token; returns the next token and the reply vector of the fed one."""
        thinker_steps(self.thinker, [self], quantum=1)
        return self.tokens[-1], self.vectors[-1]

    def next_position(self) -> torch.Tensor:
        """The ``(4, 1, 1)`` position of the token fed back next."""
        last = self._fed[-1] if self._fed else self.positions[:, :, -1:]
        return last + 1

    def all_positions(self) -> torch.Tensor:
        """Positions of the prompt and of every token fed back: ``(4, 1, n)``."""
        if self._fed:
            self.positions = torch.cat([self.positions, *self._fed], dim=2)
            self._fed = []
        return self.positions

    def accept(self, position: torch.Tensor, vector: torch.Tensor, logits: torch.Tensor) -> int:
        """Record a decode step: the fed token's position and reply vector, and the next token."""
        self._fed.append(position)
        self.vectors.append(vector)
        return self._take(logits)

    def rows(self) -> torch.Tensor:
        """Talker rows of every token in the cache: the prompt's, then each fed reply token's."""
        return torch.cat([self.prompt_rows, *self.vectors], dim=1)

    def _take(self, logits: torch.Tensor) -> int:
        if self.forced is not None:
            token = self.forced[len(self.tokens)]
        else:
            token = int(logits[0, -1].argmax())
        self.tokens.append(token)
        return token


def thinker_steps(thinker, steppers: list[ThinkerStepper], quantum: int) -> None:
    """Feed each stepper's last token and take its next one, all in one batched step."""
    rows = padded(len(steppers), quantum)
    device = next(thinker.parameters()).device
    ids = pad_to(torch.tensor([[s.tokens[-1]] for s in steppers], device=device), rows)
    positions = [s.next_position() for s in steppers]
    embeds = thinker.get_input_embeddings()(ids)
    hidden = decode(thinker.model.language_model, embeds, pad_to(torch.cat(positions, dim=1), rows, dim=1)[1:],
                    [s.cache for s in steppers])
    vectors = embeds + hidden
    logits = thinker.lm_head(hidden)
    for row, stepper in enumerate(steppers):
        stepper.accept(positions[row], vectors[row:row + 1], logits[row:row + 1])


class TalkerStepper:
    """The Talker's mask path (codec pad/bos rows, 3-D positions), one codec code per step.

    ``inputs`` are the prompt's ids and media sizes (no pixels: the Talker sees none). A
    ``cache`` holding the Talker's first prompt rows (causal attention leaves them as they
    were in an earlier turn) is continued instead of running them again. ``max_codes``
    bounds the codes (room for the repetition penalty's ids is made once).
    """

    def __init__(self, talker, embed_tokens, inputs: dict, use_audio_in_video: bool, voice_bos: int,
                 sampling: bool, generator: torch.Generator | None, decodable_codes: int, cache=None,
                 cache_positions: torch.Tensor | None = None, max_codes: int = 30000) -> None:
        self.talker = talker
        self.embed_tokens = embed_tokens
        self.inputs = inputs
        self.use_audio_in_video = use_audio_in_video
        self.voice_bos = voice_bos
        self.device = inputs["input_ids"].device
        self.cache = cache if cache is not None else DynamicCache(config=talker.config)
        #: Prompt rows already in the cache (the same conversation's earlier turn), at these positions.
        self.start = self.cache.get_seq_length()
        self._cache_positions = cache_positions
        #: The prefill's positions, ``(3, 1, P + 2)``.
        self.positions: torch.Tensor | None = None
        self.generator = generator
        self.processors = talker_processors(talker, decodable_codes, sampling, self.device)
        self.sampling = sampling
        prompt = inputs["input_ids"].shape[1] + 2
        # The Talker's id sequence, for the repetition penalty: written in place, read as a view.
        self._ids = torch.empty((1, prompt + max_codes + 1), dtype=torch.long, device=self.device)
        self._length = 0
        self.codes: list[int] = []
        self._delta: torch.Tensor | None = None
        self._text_rows: dict[int, torch.Tensor] = {}

    @property
    def ids(self) -> torch.Tensor:
        """The Talker's id sequence so far ``(1, n)``: the prompt's placeholders, then the codes."""
        return self._ids[:, :self._length]

    def text_embedding(self, token_id: int) -> torch.Tensor:
        """A Thinker embedding row (reply bos/eos/pad live in the Thinker's table); made once per id."""
        row = self._text_rows.get(token_id)
        if row is None:
            row = self._text_rows[token_id] = self.embed_tokens(torch.tensor([[token_id]], device=self.device))
        return row

    def prefill(self, prompt_rows: torch.Tensor, first_token: int, first_vector: torch.Tensor) -> int:
        """Prompt rows + voice bos + reply(g0); returns the first code."""
        ids = self.inputs["input_ids"]
        length = ids.shape[1] + 2
        text_ids = torch.cat([ids, torch.tensor([[self.voice_bos, first_token]], device=self.device)], dim=1)
        positions, deltas = self.talker.get_rope_index(
            text_ids, self.inputs.get("image_grid_thw"), self.inputs.get("video_grid_thw"),
            torch.ones((1, length), dtype=torch.long, device=self.device), self.use_audio_in_video,
            audio_lengths(self.inputs), self.inputs.get("video_second_per_grid"),
        )
        self._delta = deltas.to(self.device)
        self.positions = positions.to(self.device)
        if self.start and not torch.equal(self._cache_positions, self.positions[:, :, :self.start]):
            self.cache = DynamicCache(config=self.talker.config)  # numbered differently: run all rows
            self.start = 0
        # Prompt rows already in the cache (an earlier turn) are not run again.
        rows = torch.cat([prompt_rows[:, self.start:], self.text_embedding(self.voice_bos), first_vector], dim=1)
        codec = self.talker.get_input_embeddings()
        # The mask path adds the codec pad/bos embeddings to the last two prefill rows.
        rows[:, -2] += codec(torch.tensor([self.talker.codec_pad_token], device=self.device))[0]
        rows[:, -1] += codec(torch.tensor([self.talker.codec_bos_token], device=self.device))[0]
        self._ids[:, :ids.shape[1]] = self.talker.codec_mask_token
        self._ids[0, ids.shape[1]] = self.talker.codec_pad_token
        self._ids[0, ids.shape[1] + 1] = self.talker.codec_bos_token
        self._length = length
        out = self.talker(inputs_embeds=rows, position_ids=self.positions[:, :, self.start:],
                          past_key_values=self.cache, use_cache=True)
        return self.take(out.logits[:, -1, :])

    def step(self, reply_vector: torch.Tensor) -> int:
        """Previous code + the next reply vector (or text eos/pad) in; next code out."""
        talker_steps(self.talker, [self], [reply_vector], quantum=1)
        return self.codes[-1]

    def next_position(self) -> torch.Tensor:
        """The ``(3, 1, 1)`` position of the next step: the cache's length plus the prompt's rope delta."""
        past = self.cache.get_seq_length()
        return (torch.tensor([[past]], device=self.device) + self._delta).view(1, 1, 1).expand(3, 1, 1)

    def take(self, logits: torch.Tensor) -> int:
        """Pick the next code from ``(1, vocab)`` logits (the repetition penalty sees every earlier id)."""
        return sample([self], logits)[0]

    def took(self, code: int) -> None:
        """Record the code picked for this step."""
        self._ids[0, self._length] = code
        self._length += 1
        self.codes.append(code)


def talker_steps(talker, steppers: list[TalkerStepper], reply_vectors: list[torch.Tensor], quantum: int) -> None:
    """One code for each stepper, all in one batched step; ``reply_vectors[i]`` is stepper i's Thinker input."""
    rows = padded(len(steppers), quantum)
    device = steppers[0].device
    ids = pad_to(torch.tensor([[s.codes[-1]] for s in steppers], device=device), rows)
    reply = pad_to(torch.cat([v[:, :1] for v in reply_vectors], dim=0), rows)
    # As the Talker's forward: codec embedding plus the Thinker's part, projected to the Talker's width.
    embeds = talker.thinker_to_talker_proj(talker.get_input_embeddings()(ids) + reply)
    positions = pad_to(torch.cat([s.next_position() for s in steppers], dim=1), rows, dim=1)
    hidden = decode(talker.model, embeds, positions, [s.cache for s in steppers])
    logits = talker.codec_head(hidden)[:, -1, :].float()
    for sampling in (True, False):  # sampled and greedy replies take different processors
        rows = [row for row, s in enumerate(steppers) if s.sampling == sampling]
        if rows:
            sample([steppers[row] for row in rows], logits[rows])
