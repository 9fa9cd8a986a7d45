"""The Spacefile: a small YAML manifest of the Hugging Face Space the app is deployed as.

No Hugging Face tool reads a file of this name: ``python -m omni_app space build`` turns it
into a Space folder (README front matter, pinned requirements, the app), and the Space's
``app.py`` reads the copy inside that folder at start. Every field is checked here, and an
error names the field (``limits.video_seconds: ...``). See the README for each field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..config import QUEUE_SIZE, TABS, GenerationLimits, MediaLimits, check_tabs
from ..errors import RequestError

#: Model names a Spacefile may use, and the checkpoint each one means.
MODELS = {"7B": "Qwen/Qwen2.5-Omni-7B", "3B": "Qwen/Qwen2.5-Omni-3B", "tiny": "tiny"}

#: ZeroGPU's GPU memory per size: half an RTX Pro 6000 (large) or a whole one (xlarge).
ZERO_GPU_MEMORY = {"large": 48.0, "xlarge": 96.0}

#: Single-GPU Space hardware and its GPU memory in GB (0: no GPU). ``cpu`` means cpu-basic.
HARDWARE = {
    "zero-gpu": None, "cpu": 0.0, "cpu-basic": 0.0, "cpu-upgrade": 0.0,
    "t4-small": 16.0, "t4-medium": 16.0, "l4x1": 24.0, "a10g-small": 24.0, "a10g-large": 24.0,
    "l40sx1": 48.0, "a100-large": 80.0, "rtx-pro-6000": 96.0,
}
#: Flavours with several GPUs: the app runs its one model on one GPU.
MULTI_GPU = ("l4x4", "l40sx4", "l40sx8", "a10g-largex2", "a10g-largex4", "a100x4", "a100x8",
             "rtx-pro-6000x2", "rtx-pro-6000x4", "rtx-pro-6000x8")

#: GPU memory (GB, bf16) for 15 / 30 / 60 s of video, from Qwen's model card.
VIDEO_MEMORY = {"3B": (18.4, 22.4, 28.2), "7B": (31.1, 41.9, 60.2)}
#: The model card says real use runs about 1.2x higher than those figures.
MEMORY_MARGIN = 1.2

#: ZeroGPU refuses calls that ask for more than a few minutes.
MAX_GPU_SECONDS = 300


class SpacefileError(RequestError):
    """A Spacefile that can't make a working Space; the message names the field."""


def gpu_memory_needed(model: str, video_seconds: float) -> float:
    """GB of GPU memory ``model`` (``3B``/``7B``) needs for a video of ``video_seconds``, with margin."""
    at_15, at_30, at_60 = VIDEO_MEMORY[model]
    if video_seconds <= 15:
        base = at_15
    elif video_seconds <= 30:
        base = at_15 + (at_30 - at_15) * (video_seconds - 15) / 15
    else:  # beyond 60 s the 30-60 s slope goes on
        base = at_30 + (at_60 - at_30) * (video_seconds - 30) / 30
    return base * MEMORY_MARGIN


def longest_video_that_fits(model: str, memory: float) -> float:
    """The longest video (whole seconds, 0 if none) for which ``model`` fits in ``memory`` GB."""
    seconds = 0
    while seconds < 600 and gpu_memory_needed(model, seconds + 1) <= memory:
        seconds += 1
    return float(seconds)


def _whole(value, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpacefileError(f"{name}: must be a whole number from {low} to {high}, not {value!r}.")


def _number(value, name: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise SpacefileError(f"{name}: must be a number above {low:g} and at most {high:g}, not {value!r}.")


@dataclass(frozen=True)
class SpaceLimits:
    """How much one visitor may ask for, and how many are served at once."""

    #: Longest video, uploaded or a webcam turn, in seconds (it sets the GPU memory needed;
    #: shorter than the app's own limit, for a shared GPU).
    video_seconds: float = 30.0
    #: Longest reply in text tokens.
    reply_tokens: int = GenerationLimits.max_new_tokens
    #: Longest spoken reply in seconds.
    speech_seconds: float = GenerationLimits.max_speech_seconds
    #: Replies generated at the same time: on zero-gpu one GPU call each; on a GPU of the
    #: Space's own (or the CPU), made together by the one model, in one batch.
    concurrency: int = 1
    #: Visitors who may wait in the queue; more are turned away until it shortens.
    queue_size: int = QUEUE_SIZE

    def __post_init__(self) -> None:
        _number(self.video_seconds, "limits.video_seconds", 0, 600)
        _whole(self.reply_tokens, "limits.reply_tokens", 1, 8192)
        _number(self.speech_seconds, "limits.speech_seconds", 0, 600)
        _whole(self.concurrency, "limits.concurrency", 1, 64)
        _whole(self.queue_size, "limits.queue_size", 1, 10000)


@dataclass(frozen=True)
class ZeroGpuSettings:
    """ZeroGPU only: the GPU time a reply may ask for and the size of the GPU."""

    #: Most GPU seconds one reply asks for; each reply asks for what its size needs, up to this.
    gpu_seconds: int = 120
    #: ``large`` (48 GB, the default) or ``xlarge`` (96 GB, uses the quota twice as fast).
    size: str = "large"

    def __post_init__(self) -> None:
        _whole(self.gpu_seconds, "zero_gpu.gpu_seconds", 10, MAX_GPU_SECONDS)
        if self.size not in ZERO_GPU_MEMORY:
            raise SpacefileError(f"zero_gpu.size: must be one of {', '.join(ZERO_GPU_MEMORY)}, not {self.size!r}.")


@dataclass(frozen=True)
class Spacefile:
    """Everything a Space of this app is made from."""

    title: str
    #: One emoji, shown on the Space's card.
    emoji: str
    #: At most 60 characters, shown on the Space's card.
    short_description: str
    #: ``zero-gpu``, ``cpu`` or a single-GPU flavour (``l4x1``, ``a10g-large``, ``a100-large``, ...).
    hardware: str
    #: ``7B``, ``3B`` or ``tiny`` (a small random model: its replies are noise).
    model: str
    #: The tabs shown, among :data:`~omni_app.config.TABS`.
    tabs: tuple[str, ...] = TABS
    limits: SpaceLimits = field(default_factory=SpaceLimits)
    zero_gpu: ZeroGpuSettings = field(default_factory=ZeroGpuSettings)

    def __post_init__(self) -> None:
        for name in ("title", "emoji", "short_description"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise SpacefileError(f"{name}: must be a non-empty text.")
        if len(self.title) > 80:
            raise SpacefileError(f"title: at most 80 characters, not {len(self.title)}.")
        if len(self.short_description) > 60:
            raise SpacefileError(f"short_description: the Hub takes at most 60 characters; this one has "
                                 f"{len(self.short_description)}.")
        if any(c.isascii() for c in self.emoji) or len(self.emoji) > 8:
            raise SpacefileError(f"emoji: must be one emoji (like 🎙️), not {self.emoji!r}.")
        if self.hardware in MULTI_GPU:
            raise SpacefileError(f"hardware: {self.hardware} has several GPUs but the app runs its model on one; "
                                 "choose a single-GPU flavour such as l40sx1 or a100-large.")
        if self.hardware not in HARDWARE:
            raise SpacefileError(f"hardware: unknown {self.hardware!r}; choose zero-gpu, cpu or one of "
                                 f"{', '.join(h for h in HARDWARE if HARDWARE[h])}.")
        if self.model not in MODELS:
            raise SpacefileError(f"model: must be one of {', '.join(MODELS)}, not {self.model!r}.")
        object.__setattr__(self, "tabs", check_tabs(self.tabs, "tabs"))
        if not isinstance(self.limits, SpaceLimits) or not isinstance(self.zero_gpu, ZeroGpuSettings):
            raise SpacefileError("limits and zero_gpu must be sections of settings.")
        self._check_fits()

    def _check_fits(self) -> None:
        memory = self.gpu_memory
        if self.model == "tiny":
            return
        if memory == 0:
            raise SpacefileError(f"model: the {self.model} needs a GPU; on {self.hardware} only tiny runs (and its "
                                 "replies are noise). Choose zero-gpu, or a GPU such as l4x1 (3B) or a100-large (7B).")
        needed = gpu_memory_needed(self.model, self.limits.video_seconds)
        if needed <= memory:
            return
        where = f"zero-gpu ({self.zero_gpu.size}, {memory:g} GB)" if self.is_zero_gpu else \
            f"{self.hardware} ({memory:g} GB)"
        longest = longest_video_that_fits(self.model, memory)
        if longest >= 5:
            raise SpacefileError(
                f"limits.video_seconds: the {self.model} needs about {needed:.0f} GB of GPU memory for "
                f"{self.limits.video_seconds:g} s of video, more than {where} has; at most {longest:g} s fits"
                + (" (or set zero_gpu.size: xlarge)." if self.is_zero_gpu and self.zero_gpu.size == "large" else "."))
        raise SpacefileError(f"hardware: the {self.model} needs at least {gpu_memory_needed(self.model, 15):.0f} GB "
                             f"of GPU memory; {where} is too small. Choose a larger GPU or the 3B.")

    @property
    def is_zero_gpu(self) -> bool:
        return self.hardware == "zero-gpu"

    @property
    def gpu_memory(self) -> float:
        """GB of GPU memory the model gets (0 on the CPU)."""
        if self.is_zero_gpu:
            return ZERO_GPU_MEMORY[self.zero_gpu.size]
        return HARDWARE[self.hardware]

    @property
    def checkpoint(self) -> str:
        """What the app loads: a Hugging Face model id, or ``tiny``."""
        return MODELS[self.model]

    @property
    def suggested_hardware(self) -> str | None:
        """The front matter's ``suggested_hardware`` (none for ZeroGPU: it is chosen in the settings)."""
        if self.is_zero_gpu:
            return None
        return "cpu-basic" if self.hardware == "cpu" else self.hardware

    def generation_limits(self) -> GenerationLimits:
        return GenerationLimits(max_new_tokens=self.limits.reply_tokens, max_speech_seconds=self.limits.speech_seconds)

    def media_limits(self) -> MediaLimits:
        return MediaLimits(max_video_seconds=float(self.limits.video_seconds))

    def gpu_budget(self):
        """The ZeroGPU time each reply asks for (a :class:`~omni_app.zerogpu.GpuBudget`)."""
        from ..zerogpu import GpuBudget

        return GpuBudget(cap=self.zero_gpu.gpu_seconds, size=self.zero_gpu.size)


def parse_spacefile(data, source: str = "Spacefile") -> Spacefile:
    """A :class:`Spacefile` from parsed YAML; every error names ``source`` and the field."""
    try:
        if not isinstance(data, Mapping):
            raise SpacefileError("it must be a mapping of settings (key: value lines).")
        top = _known(data, Spacefile, "")
        for name in ("title", "emoji", "short_description", "hardware", "model"):
            if name not in top:
                raise SpacefileError(f"{name}: missing (it is required).")
        for name in ("title", "emoji", "short_description", "hardware", "model"):
            top[name] = str(top[name]).strip() if isinstance(top[name], (str, int, float)) else top[name]
        top["model"] = _model_name(top["model"])
        if "tabs" in top:
            tabs = top["tabs"]
            top["tabs"] = tuple(tabs.split(",")) if isinstance(tabs, str) else tabs
            if not isinstance(top["tabs"], (list, tuple)):
                raise SpacefileError(f"tabs: must be a list such as [{', '.join(TABS)}].")
        if "limits" in top:
            top["limits"] = SpaceLimits(**_known(top["limits"], SpaceLimits, "limits."))
        if "zero_gpu" in top:
            top["zero_gpu"] = ZeroGpuSettings(**_known(top["zero_gpu"], ZeroGpuSettings, "zero_gpu."))
        return Spacefile(**top)
    except RequestError as exc:  # SpacefileError, and the tab check's own error
        raise SpacefileError(f"{source}: {exc}") from None


def load_spacefile(path: str | Path) -> Spacefile:
    """Read and check the Spacefile at ``path``."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpacefileError(f"Could not read the Spacefile {path}: {exc.strerror or exc}.") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SpacefileError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}.") from None
    return parse_spacefile(data, str(path))


def _known(section, cls, prefix: str) -> dict:
    if not isinstance(section, Mapping):
        raise SpacefileError(f"{prefix.rstrip('.') or 'the file'}: must be a section of `key: value` lines.")
    names = [f.name for f in fields(cls)]
    for key in section:
        if key not in names:
            raise SpacefileError(f"{prefix}{key}: unknown field; the fields here are {', '.join(names)}.")
    return dict(section)


def _model_name(value) -> str:
    # "7B", "7b" and the full checkpoint id all name the same model.
    text = str(value).strip()
    for name, checkpoint in MODELS.items():
        if text.lower() in (name.lower(), checkpoint.lower()):
            return name
    return text
