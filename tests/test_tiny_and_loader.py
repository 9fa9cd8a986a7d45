"""The tiny checkpoint: deterministic, complete, and loaded through the real loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omni_app.engine.loader import load_model
from omni_app.engine.tiny import build_tiny_checkpoint, checkpoint_digest, ensure_tiny_checkpoint
from omni_app.errors import ModelLoadError

ROOT = Path(__file__).resolve().parents[1]


def test_two_builds_are_byte_identical(tmp_path):
    first = build_tiny_checkpoint(tmp_path / "a")
    second = build_tiny_checkpoint(tmp_path / "b")
    files = sorted(p.name for p in first.iterdir())
    for needed in ("config.json", "model.safetensors", "spk_dict.pt", "tokenizer.json",
                   "tokenizer_config.json", "processor_config.json", "chat_template.jinja"):
        assert needed in files
    assert checkpoint_digest(first) == checkpoint_digest(second)


def test_checkpoint_is_cached(tmp_path):
    path = ensure_tiny_checkpoint(tmp_path / "tiny")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoint(tmp_path / "tiny") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_config_ids_agree_with_tokenizer(tmp_path):
    path = ensure_tiny_checkpoint(tmp_path / "tiny")
    config = json.loads((path / "config.json").read_text())
    vocab = json.loads((path / "tokenizer.json").read_text())["added_tokens"]
    ids = {t["content"]: t["id"] for t in vocab}
    for section in ("thinker_config", "talker_config"):
        c = config[section]
        assert c["audio_token_index"] == ids["<|AUDIO|>"]
        assert c["image_token_index"] == ids["<|IMAGE|>"]
        assert c["video_token_index"] == ids["<|VIDEO|>"]
        assert c["audio_start_token_id"] == ids["<|audio_bos|>"]
        assert c["vision_start_token_id"] == ids["<|vision_bos|>"]
    assert config["talker_config"]["tts_codec_pad_token_id"] == 8292


def test_loads_offline_in_a_fresh_process(tmp_path):
    path = ensure_tiny_checkpoint(tmp_path / "tiny")
    script = (
        "import sys; from omni_app.engine.loader import load_model\n"
        "m = load_model(sys.argv[1])\n"
        "assert m.voice_names == ['Chelsie', 'Ethan'], m.voice_names\n"
        "v = m.voices['Chelsie']\n"
        "assert tuple(v['cond'].shape) == (1, 192) and tuple(v['ref_mel'].shape) == (1, 400, 80)\n"
        "assert m.model.token2wav.dtype.is_floating_point and str(m.model.token2wav.dtype) == 'torch.float32'\n"
        "assert m.attention == 'sdpa' and str(m.device) == 'cpu'\n"
        "print(type(m.model).__name__, m.processor.tokenizer.audio_token)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Qwen2_5OmniForConditionalGeneration <|AUDIO|>" in out.stdout


def test_unreachable_model_names_the_remedies(tmp_path):
    script = (
        "from omni_app.engine.loader import load_model\n"
        "from omni_app.errors import ModelLoadError\n"
        "try:\n    load_model('Qwen/Qwen2.5-Omni-7B')\n"
        "except ModelLoadError as e:\n    print(e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert "Could not load model 'Qwen/Qwen2.5-Omni-7B'" in out.stdout, out.stderr[-2000:]
    for remedy in ("local folder", "HF_HUB_OFFLINE", "--model tiny"):
        assert remedy in out.stdout


def test_incomplete_folder_is_rejected(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "tiny")
    (path / "spk_dict.pt").unlink()
    with pytest.raises(ModelLoadError, match="spk_dict.pt"):
        load_model(str(path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))
