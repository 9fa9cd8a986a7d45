"""A tiny, randomly initialised Qwen2.5-Omni checkpoint that the project builds itself.

It is a real checkpoint folder (config, safetensors, tokenizer, processor, ``spk_dict.pt``)
and is loaded through the same ``from_pretrained`` path as ``Qwen/Qwen2.5-Omni-7B``. Its
replies are random, but every code path of the real model runs. Building is deterministic:
two builds are byte-identical, so the folder is cached and rebuilt only when missing.

The constraints that make such a small model consistent (shared hidden sizes, token ids
that agree between tokenizer, thinker and talker, real codec ids) are noted where they apply.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..conversation import SPEECH_SYSTEM_PROMPT as SYSTEM_PROMPT

#: Bump when the recipe changes, so that cached folders are rebuilt.
RECIPE_VERSION = "2"

# The special tokens of the real tokenizer, in the real order (ids 151643...); the tiny
# tokenizer gives them small ids right after its byte-level vocabulary.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>",
    "<|audio_eos|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>",
    "<|vision_eos|>", "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>",
]
NAMED_TOKENS = {
    "image_token": "<|IMAGE|>",
    "audio_token": "<|AUDIO|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
}

# The official Qwen2.5-Omni chat template (chat_template.json of the released checkpoints).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text the byte-level BPE is trained on: enough for merges of common English and a little
# of other scripts, so the tokenizer behaves like a real one (multi-byte characters split
# across tokens included).
_CORPUS = [
    SYSTEM_PROMPT,
    "You are a helpful assistant.",
    "Hello! How are you today? What can you see in this picture?",
    "Describe the image. What is the person saying? Please answer briefly.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Bonjour, comment ça va ? Grüße aus München. ¿Qué tal?",
    "你好，今天天气怎么样？我是通义千问。",
    "こんにちは、元気ですか。",
]

TEXT_HIDDEN = 32
THINKER_VOCAB = 1024
# Rows of the thinker embedding beyond the tokenizer (the real model keeps them at 151859+).
TTS_TEXT_PAD, TTS_TEXT_START, TTS_TEXT_END = 1000, 1001, 1002
VOICE_BOS = {"Chelsie": 1010, "Ethan": 1011}
VOICE_PITCH_HZ = {"Chelsie": 220.0, "Ethan": 120.0}


def default_cache_dir() -> Path:
    """Where the tiny checkpoint is cached (``$OMNI_APP_CACHE`` or ``~/.cache/omni_app``)."""
    root = os.environ.get("OMNI_APP_CACHE") or Path.home() / ".cache" / "omni_app"
    return Path(root) / f"tiny-qwen2.5-omni-v{RECIPE_VERSION}"


def ensure_tiny_checkpoint(path: str | Path | None = None) -> Path:
    """Return the tiny checkpoint folder, building it first if it is missing.

    The folder is written to a temporary sibling and renamed into place, so a crash
    mid-build never leaves a half-written checkpoint that later loads fail on.
    """
    target = Path(path) if path is not None else default_cache_dir()
    if (target / "spk_dict.pt").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-build-", dir=target.parent))
    try:
        build_tiny_checkpoint(staging)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first: keep its copy (the bytes are identical).
            if not (target / "spk_dict.pt").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_checkpoint(out_dir: str | Path) -> Path:
    """Write a complete tiny Qwen2.5-Omni checkpoint into ``out_dir`` (deterministic)."""
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor = _build_processor()
    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(tokstr) for name, tokstr in NAMED_TOKENS.items()}
    if max(tok.get_vocab().values()) >= TTS_TEXT_PAD:
        raise AssertionError("tiny tokenizer overlaps the reserved thinker rows")
    config = _build_config(
        ids, user_token_id=tok.convert_tokens_to_ids("user"),
        eos_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )

    torch.manual_seed(0)
    model = Qwen2_5OmniForConditionalGeneration(config).eval()
    _make_vocoder_audible(model)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    torch.save(_build_voices(), out / "spk_dict.pt")
    return out


def checkpoint_digest(path: str | Path) -> str:
    """A SHA-256 over every file of a checkpoint folder (names and bytes)."""
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainer)
    # Word pieces the chat template needs as single tokens, as in the real vocabulary.
    bpe.add_tokens(["system", "user", "assistant"])
    return Qwen2Tokenizer(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS,
        extra_special_tokens=dict(NAMED_TOKENS),
        model_max_length=32768,
        errors="replace",
    )


def _build_processor():
    from transformers import (
        Qwen2_5OmniProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        WhisperFeatureExtractor,
    )

    # Same pixel budgets as the released preprocessor_config.json.
    image_processor = Qwen2VLImageProcessor(
        min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=128 * 28 * 28, max_pixels=768 * 28 * 28, patch_size=14, merge_size=2,
        temporal_patch_size=2,
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, chunk_length=300,
        return_attention_mask=True,
    )
    return Qwen2_5OmniProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=_build_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def _build_config(ids: dict[str, int], user_token_id: int, eos_id: int, pad_id: int):
    from transformers import Qwen2_5OmniConfig

    shared_ids = dict(
        audio_token_index=ids["audio_token"],
        image_token_index=ids["image_token"],
        video_token_index=ids["video_token"],
        audio_start_token_id=ids["audio_bos_token"],
        audio_end_token_id=ids["audio_eos_token"],
        # Read by get_rope_index although the thinker config does not declare them.
        vision_start_token_id=ids["vision_bos_token"],
        vision_end_token_id=ids["vision_eos_token"],
    )
    thinker = dict(
        audio_config=dict(
            num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
            d_model=32, output_dim=TEXT_HIDDEN, n_window=100, max_source_positions=1500,
        ),
        vision_config=dict(
            depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=TEXT_HIDDEN,
            fullatt_block_indexes=[1], patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            window_size=112,
        ),
        text_config=dict(
            vocab_size=THINKER_VOCAB, hidden_size=TEXT_HIDDEN, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            # head_dim 8: the three M-RoPE sections must sum to head_dim / 2.
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]},
            max_position_embeddings=32768, tie_word_embeddings=False,
            bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id,
        ),
        position_id_per_seconds=25, seconds_per_chunk=2, user_token_id=user_token_id,
        **shared_ids,
    )
    talker = dict(
        vocab_size=8448, embedding_size=TEXT_HIDDEN, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        max_position_embeddings=32768,
        tts_text_start_token_id=TTS_TEXT_START, tts_text_end_token_id=TTS_TEXT_END,
        tts_text_pad_token_id=TTS_TEXT_PAD,
        # The real codec ids: generate() hard-codes the stop codes 8292/8294.
        tts_codec_start_token_id=8293, tts_codec_end_token_id=8294,
        tts_codec_pad_token_id=8292, tts_codec_mask_token_id=8296,
        position_id_per_seconds=25, seconds_per_chunk=2, spatial_merge_size=2,
        **shared_ids,
    )
    token2wav = dict(
        dit_config=dict(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, head_dim=16, ff_mult=2,
            emb_dim=32, block_size=24,
            # The real 22-layer layout scaled to 4 layers: one look-ahead layer in the middle,
            # look-back layers first and last -> receptive field 2 blocks back, 1 ahead.
            look_ahead_layers=[2], look_backward_layers=[0, 3],
            repeats=2, num_embeds=8448, mel_dim=80, dropout=0.0,
            enc_emb_dim=192, enc_dim=32, enc_channels=[32, 32, 32, 32, 96],
            enc_kernel_sizes=[5, 3, 3, 3, 1], enc_dilations=[1, 2, 3, 4, 1],
            enc_attention_channels=16, enc_se_channels=16, enc_res2net_scale=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        bigvgan_config=dict(
            mel_dim=80, upsample_initial_channel=64,
            resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
            upsample_rates=[5, 3, 2, 2, 2, 2], upsample_kernel_sizes=[11, 7, 4, 4, 4, 4],
        ),
    )
    return Qwen2_5OmniConfig(
        thinker_config=thinker, talker_config=talker, token2wav_config=token2wav,
        enable_audio_output=True,
    )


def _make_vocoder_audible(model) -> None:
    """Re-initialise BigVGAN so that its output is audible but not clipped.

    The default init leaves it silent (~1e-8 peak). Its gain grows steeply with the weight
    scale, so the convolutions get a modest scale and the last one is calibrated on the
    DiT's own output for fixed codes to a speech-like RMS of 0.1.
    """
    import torch

    vocoder = model.token2wav.code2wav_bigvgan_model
    dit = model.token2wav.code2wav_dit_model
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in vocoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.5 / fan_in**0.5)
                if module.bias is not None:
                    module.bias.zero_()
        codes = torch.randint(0, 8192, (1, 100), generator=generator)
        torch.manual_seed(3)
        mel = dit.sample(torch.zeros(1, 192), torch.zeros(1, 400, 80), codes, num_steps=4)
        rms = vocoder(mel).pow(2).mean().sqrt()
        vocoder.conv_post.weight.mul_(0.1 / rms)


def _build_voices() -> dict:
    """Two voices shaped like the released ``spk_dict.pt`` entries."""
    import torch

    from ..voice_features import reference_mel, synthetic_vowel

    generator = torch.Generator().manual_seed(2)
    voices = {}
    for name, bos in VOICE_BOS.items():
        mel = reference_mel(synthetic_vowel(VOICE_PITCH_HZ[name], seconds=4.0))[:400]
        cond = torch.randn(1, 192, generator=generator)
        voices[name] = {
            "bos_token": bos,
            "cond": cond / cond.norm(),
            "ref_mel": torch.from_numpy(mel).unsqueeze(0).float(),
        }
    return voices
