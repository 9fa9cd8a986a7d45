"""The reference engine runs the Talker's mask path, as Qwen's original code did.

transformers 5.x takes a shortcut for a single unpadded sample (no attention mask, so the
Talker skips adding the codec pad/bos embeddings and uses 1-D positions). The reference
engine must instead match what generate() does for the request as the longest row of a
padded batch, where the mask (and so the mask path) is kept.
"""

from __future__ import annotations

import pytest
from batched import batched_generate

from omni_app.api import Request
from omni_app.config import GenerationLimits
from omni_app.conversation import Conversation, ImagePart
from omni_app.engine.reference import ReferenceEngine
from omni_app.engine.service import ModelService
from omni_app.media import load_image

LIMITS = GenerationLimits(max_new_tokens=10, max_speech_seconds=0.8)


@pytest.mark.parametrize("kind", ["text", "image"])
def test_reference_speech_equals_padded_batch_row(service, media_dir, kind):
    reference = ModelService(service.loaded, ReferenceEngine())
    conversation = Conversation().add_user("Describe the weather at sea, please.")
    if kind == "image":
        conversation = Conversation().add_user(ImagePart(load_image(media_dir / "photo.jpg")), "What is this?")
    events = list(reference.stream(Request(conversation, voice="Chelsie", limits=LIMITS, seed=0,
                                           speech_sampling=False)))
    trace = events[-1].trace
    assert events[-1].stats.codec_codes == len(trace.codes) > 0
    reply, codes = batched_generate(service.loaded, conversation, LIMITS.max_new_tokens, LIMITS.max_codec_codes)
    assert list(trace.reply_ids) == reply
    assert list(trace.codes) == codes
