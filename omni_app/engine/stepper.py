"""Thinker and Talker, one step at a time, with all per-request state kept here.

Each stepper owns its KV cache and its positions; nothing is written on the shared
modules (transformers keeps ``rope_deltas`` on them, which lets two interleaved requests
disturb each other), so requests are independent.

Which Thinker forward feeds which Talker step (verified against ``generate()``):
forward #0 is the prefill and yields token g0; forward #k takes g(k-1) and yields gk. The
reply vector of gj is its embedding plus the final hidden state where gj is the *input*,
so it comes out of forward #(j+1). Talker code t needs reply(gt): t + 2 Thinker tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from .common import TALKER_STOP_CODES

#: What the Thinker's forward takes besides ids and positions: the encoders' inputs.
ENCODER_INPUTS = ("input_features", "feature_attention_mask", "pixel_values", "image_grid_thw",
                  "pixel_values_videos", "video_grid_thw", "video_second_per_grid")


def audio_lengths(inputs: dict) -> torch.Tensor | None:
    """Audio feature frames per clip: given as ``audio_lengths`` or counted from the feature mask."""
    if inputs.get("audio_lengths") is not None:
        return inputs["audio_lengths"]
    mask = inputs.get("feature_attention_mask")
    return mask.sum(-1) if mask is not None else None


def thinker_rope_index(thinker, inputs: dict, use_audio_in_video: bool) -> torch.Tensor:
    """TMRoPE position ids ``(3, 1, P)`` of a prompt, from the model's own ``get_rope_index``."""
    ids = inputs["input_ids"]
    rope, _ = thinker.get_rope_index(
        ids, inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), torch.ones_like(ids), use_audio_in_video,
        audio_lengths(inputs), inputs.get("video_second_per_grid"),
    )
    return rope


def prompt_positions(thinker, rope_inputs: dict, use_audio_in_video: bool) -> torch.Tensor:
    """The Thinker's ``(4, 1, P)`` prefill positions: a plain 1-D row (for the causal mask) over TMRoPE."""
    ids = rope_inputs["input_ids"]
    rope = thinker_rope_index(thinker, rope_inputs, use_audio_in_video).to(ids.device)
    return torch.cat([torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1), rope], dim=0)


class ThinkerStepper:
    """Greedy (or teacher-forced) Thinker decoding with its KV cache, one token per call.

    ``inputs`` holds the prompt's ``input_ids`` and the encoder inputs of its media.
    Given a ``cache`` that already holds the prompt's first tokens (an earlier turn of the
    same conversation) and their Talker ``rows``, only the rest of the prompt is run, and
    ``inputs`` needs the encoder inputs of the media in that rest only; ``positions``
    (:func:`prompt_positions` of the whole prompt) then number it.
    """

    def __init__(self, thinker, inputs: dict, use_audio_in_video: bool, forced: list[int] | None = None,
                 positions: torch.Tensor | None = None, cache=None, rows: torch.Tensor | None = None) -> None:
        self.thinker = thinker
        self.inputs = inputs
        self.use_audio_in_video = use_audio_in_video
        #: Teacher forcing: these tokens are the reply, whatever the logits say.
        self.forced = forced
        self.cache = cache if cache is not None else DynamicCache(config=thinker.config.get_text_config())
        #: Prompt tokens already in the cache (their rows come with them).
        self.start = self.cache.get_seq_length()
        self._prefix_rows = rows
        self.tokens: list[int] = []
        #: Talker input rows: the prompt's after the prefill, then one per token fed back.
        self.prompt_rows: torch.Tensor | None = None
        self.vectors: list[torch.Tensor] = []
        #: Positions of the prompt, then of every token fed back: ``(4, 1, n)``.
        self.positions = positions if positions is not None else prompt_positions(thinker, inputs, use_audio_in_video)

    def prefill(self) -> int:
        """Run the prompt (the part not in the cache, with its media's encoders); returns the first token."""
        new = self.inputs["input_ids"][:, self.start:]
        encoders = {k: v for k, v in self.inputs.items() if k in ENCODER_INPUTS and v is not None}
        hidden = self.thinker.model(input_ids=new, **encoders, position_ids=self.positions[:, :, self.start:],
                                    past_key_values=self.cache, use_cache=True,
                                    use_audio_in_video=self.use_audio_in_video).last_hidden_state
        # The Talker's prompt rows: embeddings (zeros at audio/image/video placeholders, as
        # generate() gives it) plus the last hidden state.
        cfg = self.thinker.config
        embeds = self.thinker.get_input_embeddings()(new)
        media = torch.isin(new, torch.tensor([cfg.audio_token_index, cfg.image_token_index, cfg.video_token_index],
                                             device=new.device))
        rows = embeds.masked_fill(media.unsqueeze(-1), 0) + hidden
        self.prompt_rows = rows if self._prefix_rows is None else torch.cat([self._prefix_rows, rows], dim=1)
        self._prefix_rows = None
        return self._take(self.thinker.lm_head(hidden[:, -1:]))

    def step(self) -> tuple[int, torch.Tensor]:
        """Feed the last token; returns the next token and the reply vector of the fed one."""
        last = torch.tensor([[self.tokens[-1]]], device=self.inputs["input_ids"].device)
        position = self.positions[:, :, -1:] + 1
        self.positions = torch.cat([self.positions, position], dim=2)
        hidden = self.thinker.model(input_ids=last, position_ids=position, past_key_values=self.cache,
                                    use_cache=True).last_hidden_state
        vector = self.thinker.get_input_embeddings()(last) + hidden
        self.vectors.append(vector)
        return self._take(self.thinker.lm_head(hidden)), vector

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


class TalkerStepper:
    """The Talker's mask path (codec pad/bos rows, 3-D positions), one codec code per call.

    ``inputs`` are the prompt's ids and media sizes (no pixels: the Talker sees none). A
    ``cache`` holding the Talker's first prompt rows (causal attention leaves them as they
    were in an earlier turn) is continued instead of running them again.
    """

    def __init__(self, talker, embed_tokens, inputs: dict, use_audio_in_video: bool, voice_bos: int,
                 sampling: bool, generator: torch.Generator | None, decodable_codes: int, cache=None,
                 cache_positions: torch.Tensor | None = None) -> None:
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

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
        # Same settings and order as generate() builds for the Talker. One addition: ids the
        # speech decoder has no embedding for (>= its num_embeds, except the stop codes)
        # are suppressed; generate() would crash in token2wav on them. With a trained
        # Talker they carry no probability, so this changes nothing in practice.
        vocab = talker.config.vocab_size
        suppressed = {talker.codec_bos_token} | {i for i in range(decodable_codes, vocab)
                                                 if i not in TALKER_STOP_CODES}
        processors = [RepetitionPenaltyLogitsProcessor(1.05),
                      SuppressTokensLogitsProcessor(sorted(suppressed), device=self.device)]
        if sampling:
            processors += [TemperatureLogitsWarper(0.9), TopKLogitsWarper(40), TopPLogitsWarper(0.8)]
        self.processors = LogitsProcessorList(processors)
        self.sampling = sampling
        self.ids: torch.Tensor | None = None  # the Talker's id sequence, for the repetition penalty
        self.codes: list[int] = []
        self._delta: torch.Tensor | None = None

    def text_embedding(self, token_id: int) -> torch.Tensor:
        """A Thinker embedding row (reply bos/eos/pad live in the Thinker's table)."""
        return self.embed_tokens(torch.tensor([[token_id]], device=self.device))

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
        self.ids = torch.cat([torch.full_like(ids, self.talker.codec_mask_token),
                              torch.tensor([[self.talker.codec_pad_token, self.talker.codec_bos_token]],
                                           device=self.device)], dim=1)
        out = self.talker(inputs_embeds=rows, position_ids=self.positions[:, :, self.start:],
                          past_key_values=self.cache, use_cache=True)
        return self._take(out.logits)

    def step(self, reply_vector: torch.Tensor) -> int:
        """Previous code + the next reply vector (or text eos/pad) in; next code out."""
        past = self.cache.get_seq_length()
        positions = (torch.tensor([[past]], device=self.device) + self._delta).view(1, 1, 1).expand(3, 1, 1)
        last = torch.tensor([[self.codes[-1]]], device=self.device)
        out = self.talker(input_ids=last, thinker_reply_part=reply_vector, position_ids=positions,
                          past_key_values=self.cache, use_cache=True)
        return self._take(out.logits)

    def _take(self, logits: torch.Tensor) -> int:
        scores = self.processors(self.ids, logits[:, -1, :].float())
        if self.sampling:
            probs = torch.softmax(scores, dim=-1)
            code = int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])
        else:
            code = int(scores[0].argmax())
        self.ids = torch.cat([self.ids, torch.tensor([[code]], device=self.device)], dim=1)
        self.codes.append(code)
        return code
