"""Loading Qwen2.5-Omni: one function for a Hugging Face id, a local folder or ``tiny``.

The tiny test model goes through exactly the same ``from_pretrained`` calls as a real
checkpoint; the only difference is where its folder comes from.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import zerogpu
from ..config import DEFAULT_VOICE, SPEECH_SAMPLE_RATE
from ..errors import ModelLoadError

log = logging.getLogger(__name__)

TINY = "tiny"
#: Sample rate of the speech the model produces (BigVGAN output).
OUTPUT_SAMPLE_RATE = SPEECH_SAMPLE_RATE


@dataclass
class LoadedModel:
    """A loaded model with everything needed to run it."""

    name: str
    path: str
    model: Any
    processor: Any
    voices: dict[str, dict]
    device: Any
    dtype: Any
    attention: str
    is_tiny: bool
    load_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def voice_names(self) -> list[str]:
        """Names of the voices the model can speak with, default voice first."""
        names = sorted(self.voices)
        if DEFAULT_VOICE in names:
            names.remove(DEFAULT_VOICE)
            names.insert(0, DEFAULT_VOICE)
        return names


def pick_device(requested: str | None = None):
    """``cuda`` when a GPU is present (or the requested device), else ``cpu``."""
    import torch

    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"Device {requested!r} was requested but no CUDA GPU is available.")
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device, requested: str | None = None):
    """bf16 on a GPU, fp32 on the CPU (bf16 matmuls are slow on most CPUs)."""
    import torch

    names = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
             "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
    if requested and requested != "auto":
        if requested not in names:
            raise ModelLoadError(f"Unknown dtype {requested!r}; use one of bf16, fp16, fp32.")
        return names[requested]
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def pick_attention(device) -> str:
    """FlashAttention-2 only when it is installed and the model runs on CUDA; else SDPA."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def auto_model() -> str:
    """The model ``auto`` means: 7B on a GPU with room for it, 3B on a smaller GPU, else tiny."""
    import torch

    if not torch.cuda.is_available():
        return TINY
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    # bf16 weights + activations for short media: ~32 GB for 7B, ~20 GB for 3B (README).
    return "Qwen/Qwen2.5-Omni-7B" if memory >= 40 else "Qwen/Qwen2.5-Omni-3B"


def resolve_model_path(name: str) -> tuple[str, bool]:
    """Map ``tiny`` to the (built on demand) tiny checkpoint; pass ids and folders through."""
    if name == TINY:
        from .tiny import ensure_tiny_checkpoint

        return str(ensure_tiny_checkpoint()), True
    return name, False


def load_model(name: str = TINY, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load model, processor and voices from a Hugging Face id, a local folder or ``tiny``.

    Raises :class:`ModelLoadError` with the remedies when the weights can't be reached.
    """
    from transformers import Qwen2_5OmniForConditionalGeneration, Qwen2_5OmniProcessor

    started = time.perf_counter()
    if name == "auto":
        name = auto_model()
    path, is_tiny = resolve_model_path(name)
    _check_local_folder(path)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dev, dtype)
    attention = pick_attention(dev)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "attn_implementation": attention}
    # On ZeroGPU the weights are loaded into RAM and moved to "cuda" below, in this thread:
    # ZeroGPU's CUDA emulation only intercepts that move (device_map loads in worker threads
    # and reaches the real, absent CUDA).
    on_zerogpu = zerogpu.active()
    if dev.type == "cuda" and not on_zerogpu:
        # Load straight onto the GPU instead of materialising the weights in RAM first.
        kwargs["device_map"] = str(dev)
    try:
        model = Qwen2_5OmniForConditionalGeneration.from_pretrained(path, **kwargs)
        processor = Qwen2_5OmniProcessor.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_load_failure_message(name, exc)) from exc
    if dev.type != "cuda" or on_zerogpu:
        model = model.to(dev)
    # The speech decoder is numerically fragile: keep it in fp32 whatever the rest uses.
    if getattr(model, "has_talker", False):
        model.token2wav.float()
    model.eval()
    if not model.speaker_map:
        raise ModelLoadError(f"{name}: spk_dict.pt holds no voices; the checkpoint is incomplete.")
    seconds = time.perf_counter() - started
    log.info("loaded %s on %s (%s, %s) in %.1f s", name, dev, torch_dtype, attention, seconds)
    return LoadedModel(
        name=name, path=path, model=model, processor=processor, voices=dict(model.speaker_map),
        device=dev, dtype=torch_dtype, attention=attention, is_tiny=is_tiny, load_seconds=seconds,
    )


def _check_local_folder(path: str) -> None:
    folder = Path(path)
    looks_local = folder.exists() or path.startswith((".", "/", "~")) or os.sep + os.sep in path
    if not looks_local:
        return
    if not folder.is_dir():
        raise ModelLoadError(f"Model folder {path!r} does not exist. {_REMEDIES}")
    missing = [f for f in ("config.json", "spk_dict.pt") if not (folder / f).is_file()]
    if missing:
        raise ModelLoadError(
            f"Model folder {path!r} is missing {', '.join(missing)}: it is not a complete "
            f"Qwen2.5-Omni checkpoint (voices come from spk_dict.pt beside the weights). {_REMEDIES}"
        )


_REMEDIES = (
    "Remedies: pass a local folder that holds a downloaded checkpoint (--model /path/to/Qwen2.5-Omni-7B), "
    "download it first where there is internet (huggingface-cli download Qwen/Qwen2.5-Omni-7B) and set "
    "HF_HUB_OFFLINE=1 to use the cached copy, or use --model tiny to try the app with a tiny random model."
)


def _load_failure_message(name: str, exc: Exception) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "spk_dict" in str(exc):
        reason = "the checkpoint has no spk_dict.pt (the voices file beside the weights)"
    return f"Could not load model {name!r}: {reason.rstrip('.')}. {_REMEDIES}"
