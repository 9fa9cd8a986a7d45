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

from .common import TALKER_STOP_CODES


def thinker_rope_index(thinker, inputs: dict, use_audio_in_video: bool) -> torch.Tensor:
    """TMRoPE position ids ``(3, 1, P)`` of a prompt, from the model's own ``get_rope_index``."""
    ids = inputs["input_ids"]
    feature_mask = inputs.get("feature_attention_mask")
    rope, _ = thinker.get_rope_index(
        ids, inputs.get("image_grid_thw"), inputs.get("video_grid_thw"), torch.ones_like(ids), use_audio_in_video,
        feature_mask.sum(-1) if feature_mask is not None else None, inputs.get("video_second_per_grid"),
    )
    return rope


class ThinkerStepper:
    """Greedy (or teacher-forced) Thinker decoding with its KV cache, one token per call."""

    def __init__(self, thinker, inputs: dict, use_audio_in_video: bool, want_vectors: bool,
                 forced: list[int] | None = None) -> None:
        from transformers import DynamicCache

        self.thinker = thinker
        self.inputs = inputs
        self.use_audio_in_video = use_audio_in_video
        self.want_vectors = want_vectors
        #: Teacher forcing: these tokens are the reply, whatever the logits say.
        self.forced = forced
        self.cache = DynamicCache(config=thinker.config.get_text_config())
        self.tokens: list[int] = []
        self.prompt_rows: torch.Tensor | None = None  # talker prefill rows for the prompt
        self._positions: torch.Tensor | None = None

    def prefill(self) -> int:
        """Run the prompt (with its audio/image/video encoders); returns the first token."""
        ids = self.inputs["input_ids"]
        rope = thinker_rope_index(self.thinker, self.inputs, self.use_audio_in_video)
        # Row 0 holds plain text positions (used for the causal mask), rows 1-3 TMRoPE.
        text_row = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1)
        self._positions = torch.cat([text_row, rope.to(ids.device)], dim=0)
        kwargs = {k: v for k, v in self.inputs.items() if k != "attention_mask"}
        out = self.thinker(**kwargs, position_ids=self._positions, past_key_values=self.cache, use_cache=True,
                           use_audio_in_video=self.use_audio_in_video, output_hidden_states=self.want_vectors)
        if self.want_vectors:
            embeds = out.hidden_states[0].clone()
            # Media rows carry encoder features; the Talker gets zeros there (as in generate()).
            cfg = self.thinker.config
            media = torch.isin(ids, torch.tensor([cfg.audio_token_index, cfg.image_token_index,
                                                  cfg.video_token_index], device=ids.device))
            embeds[media] = 0
            self.prompt_rows = embeds + out.hidden_states[-1]
        return self._take(out.logits)

    def step(self) -> tuple[int, torch.Tensor | None]:
        """Feed the last token; returns the next token and the reply vector of the fed one."""
        last = torch.tensor([[self.tokens[-1]]], device=self.inputs["input_ids"].device)
        self._positions = self._positions[:, :, -1:] + 1
        out = self.thinker(input_ids=last, position_ids=self._positions, past_key_values=self.cache,
                           use_cache=True, output_hidden_states=self.want_vectors)
        vector = out.hidden_states[0] + out.hidden_states[-1] if self.want_vectors else None
        return self._take(out.logits), vector

    def _take(self, logits: torch.Tensor) -> int:
        if self.forced is not None:
            token = self.forced[len(self.tokens)]
        else:
            token = int(logits[0, -1].argmax())
        self.tokens.append(token)
        return token


class TalkerStepper:
    """The Talker's mask path (codec pad/bos rows, 3-D positions), one codec code per call."""

    def __init__(self, talker, embed_tokens, inputs: dict, use_audio_in_video: bool, voice_bos: int,
                 sampling: bool, generator: torch.Generator | None, decodable_codes: int) -> None:
        from transformers import (
            DynamicCache,
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
        self.cache = DynamicCache(config=talker.config)
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
        feature_mask = self.inputs.get("feature_attention_mask")
        positions, deltas = self.talker.get_rope_index(
            text_ids, self.inputs.get("image_grid_thw"), self.inputs.get("video_grid_thw"),
            torch.ones((1, length), dtype=torch.long, device=self.device), self.use_audio_in_video,
            feature_mask.sum(-1) if feature_mask is not None else None, self.inputs.get("video_second_per_grid"),
        )
        self._delta = deltas.to(self.device)
        rows = torch.cat([prompt_rows, self.text_embedding(self.voice_bos), first_vector], dim=1)
        codec = self.talker.get_input_embeddings()
        # The mask path adds the codec pad/bos embeddings to the last two prefill rows.
        rows[:, -2] += codec(torch.tensor([self.talker.codec_pad_token], device=self.device))[0]
        rows[:, -1] += codec(torch.tensor([self.talker.codec_bos_token], device=self.device))[0]
        self.ids = torch.cat([torch.full_like(ids, self.talker.codec_mask_token),
                              torch.tensor([[self.talker.codec_pad_token, self.talker.codec_bos_token]],
                                           device=self.device)], dim=1)
        out = self.talker(inputs_embeds=rows, position_ids=positions.to(self.device), past_key_values=self.cache,
                          use_cache=True)
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
