"""What transformers' generate() produces on the Talker's mask path.

The request is row 0 of a left-padded batch of two (a much shorter text-only row makes
the padding), which keeps the attention mask and so the Talker's mask branch.
"""

from __future__ import annotations

import torch

from omni_app.conversation import Conversation
from omni_app.prompt import build_inputs


class _Capture:
    def __init__(self):
        self.ids = None

    def __call__(self, input_ids, scores, **kwargs):
        self.ids = input_ids.clone()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def batched_generate(loaded, conversation: Conversation, max_new_tokens: int, max_codes: int,
                     voice: str = "Chelsie") -> tuple[list[int], list[int]]:
    """(reply token ids, codec codes) of ``conversation`` as row 0 of a padded batch, greedy."""
    processor = loaded.processor
    prepared = build_inputs(conversation, processor)
    short = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                          add_generation_prompt=True, tokenize=False)
    kwargs = dict(prepared.processor_kwargs)
    if "audio_from_video_indices" in kwargs:
        kwargs["audio_from_video_indices"] = list(kwargs["audio_from_video_indices"])
    batch = processor(text=[prepared.prompt, short], padding_side="left", **kwargs)
    assert batch["attention_mask"][0].all() and not batch["attention_mask"][1].all()
    thinker, talker = _Capture(), _Capture()
    with torch.no_grad():
        loaded.model.generate(
            **batch, speaker=voice, use_audio_in_video=prepared.use_audio_in_video,
            thinker_max_new_tokens=max_new_tokens, thinker_do_sample=False,
            talker_max_new_tokens=max_codes, talker_do_sample=False,
            thinker_stopping_criteria=[thinker], talker_stopping_criteria=[talker],
            talker_pixel_values=None, talker_pixel_values_videos=None,
        )
    prompt_len = batch["input_ids"].shape[1]
    codes = talker.ids[0, prompt_len + 2:].tolist()
    stops = [i for i, c in enumerate(codes) if c in (8292, 8294)]
    reply = thinker.ids[0, prompt_len:].tolist()
    return reply, (codes[: stops[0]] if stops else codes)
