"""Streamed text never splits a character."""

from __future__ import annotations

from omni_app.engine.text import IncrementalDecoder


def test_cjk_and_emoji_deltas_are_whole_characters(service):
    tokenizer = service.loaded.processor.tokenizer
    text = "你好，今天天气怎么样？こんにちは 🎉 ça va"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    decoder = IncrementalDecoder(tokenizer)
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    # Byte-level tokens really do split these characters, so holding back was needed.
    assert any(tokenizer.decode([i]).endswith("\ufffd") for i in ids)


def test_special_tokens_are_not_shown(service):
    tokenizer = service.loaded.processor.tokenizer
    decoder = IncrementalDecoder(tokenizer)
    ids = tokenizer("Hi", add_special_tokens=False).input_ids + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == "Hi"
