"""The reference engine runs the Talker's mask path, as Qwen's original code did.

transformers 5.x takes a shortcut for a single unpadded sample (no attention mask, so the
Talker skips adding the codec pad/bos embeddings and uses 1-D positions). The reference
engine must instead match what generate() does for the request as the longest row of a
padded batch, where the mask (and so the mask path) is kept.
"""

from __future__ import annotations

import pytest
import torch

from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation, ImagePart, build_inputs
from omni_app.engine.service import Request, Trace
from omni_app.media import load_image

LIMITS = GenerationLimits(max_new_tokens=10, max_speech_seconds=0.8)


class _Capture:
    def __init__(self):
        self.ids = None

    def __call__(self, input_ids, scores, **kwargs):
        self.ids = input_ids.clone()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def _batched_codes(service, conversation: Conversation) -> tuple[list[int], list[int]]:
    """Codes and reply of ``conversation`` as row 0 of a left-padded batch of two."""
    loaded = service.loaded
    processor = loaded.processor
    prompt = build_inputs(conversation, processor).prompt
    # A second, much shorter text-only row forces padding (and so the mask) into the batch.
    short = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
                                          add_generation_prompt=True, tokenize=False)
    images = [p.image for t in conversation.turns for p in t.parts if isinstance(p, ImagePart)]
    batch = processor(text=[prompt, short], images=images or None, return_tensors="pt", padding=True,
                      padding_side="left")
    assert batch["attention_mask"][0].all() and not batch["attention_mask"][1].all()
    capture_thinker, capture_talker = _Capture(), _Capture()
    with torch.no_grad():
        loaded.model.generate(
            **batch, speaker="Chelsie", thinker_max_new_tokens=LIMITS.max_new_tokens, thinker_do_sample=False,
            talker_max_new_tokens=LIMITS.max_codec_codes, talker_do_sample=False,
            thinker_stopping_criteria=[capture_thinker], talker_stopping_criteria=[capture_talker],
            talker_pixel_values=None, talker_pixel_values_videos=None,
        )
    prompt_len = batch["input_ids"].shape[1]
    codes = capture_talker.ids[0, prompt_len + 2:].tolist()
    stop = [i for i, c in enumerate(codes) if c in (8292, 8294)]
    reply = capture_thinker.ids[0, prompt_len:].tolist()
    return (codes[: stop[0]] if stop else codes), reply


@pytest.mark.parametrize("kind", ["text", "image"])
def test_reference_speech_equals_padded_batch_row(service, media_dir, kind):
    conversation = Conversation().add_user("Describe the weather at sea, please.")
    if kind == "image":
        conversation = Conversation().add_user(ImagePart(load_image(media_dir / "photo.jpg")), "What is this?")
    trace = Trace()
    events = list(service.stream(Request(conversation, voice="Chelsie", limits=LIMITS, seed=0,
                                         speech_sampling=False, trace=trace)))
    assert events[-1].stats.codec_codes == len(trace.codes) > 0
    codes, reply = _batched_codes(service, conversation)
    assert trace.reply_ids == reply
    assert trace.codes == codes
