"""Frozen configuration, built once at the entry point and validated there."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RequestError

ENGINES = ("streaming", "reference")
#: The web app's tabs, in the order they are shown: voice chat, video chat, image Q&A,
#: voice-cloning TTS and "inside the model".
TABS = ("voice", "video", "image", "tts", "inside")

#: The model's speech out (Token2wav's vocoder) and sound in (its audio encoder's mel features).
SPEECH_SAMPLE_RATE = 24000
#: Speech codec codes the Talker makes per second of speech.
CODES_PER_SECOND = 50
INPUT_SAMPLE_RATE = 16000
#: The model's own voices; a reply speaks in the first unless another is chosen.
STOCK_VOICES = ("Chelsie", "Ethan")
DEFAULT_VOICE = STOCK_VOICES[0]
#: Requests the web app lets wait for the model (more are turned away until the queue shortens).
QUEUE_SIZE = 20
#: Requests a model server holds at once (generating or waiting for the model) unless told otherwise.
MAX_ACTIVE = 32
#: The most replies one model may make at once (``--max-batch``).
MAX_BATCH = 64


def check_tabs(tabs, field: str = "tabs") -> tuple[str, ...]:
    """``tabs`` (ids from :data:`TABS`) as a tuple; raises an error that names ``field`` otherwise."""
    tabs = tuple(str(t).strip() for t in tabs if str(t).strip())
    unknown = [t for t in tabs if t not in TABS]
    if unknown or not tabs:
        found = f"unknown tab(s) {', '.join(map(repr, unknown))}" if unknown else "no tab given"
        raise RequestError(f"{field}: {found}; choose among {', '.join(TABS)}.")
    if len(set(tabs)) != len(tabs):
        raise RequestError(f"{field}: a tab is listed twice ({', '.join(tabs)}).")
    return tabs


@dataclass(frozen=True)
class MediaLimits:
    """What media the app accepts. Defaults follow the model and qwen-omni-utils."""

    #: Longest audio input; the feature extractor handles at most 300 s.
    max_audio_seconds: float = 300.0
    #: Shorter clips carry too little to answer (and are usually accidental clicks).
    min_audio_seconds: float = 0.1
    #: A peak below this (about -74 dBFS) is treated as a silent recording.
    silence_peak: float = 2e-4
    max_video_seconds: float = 120.0
    #: Largest image accepted before resizing (the processor then fits it to its budget).
    max_image_pixels: int = 40_000_000
    #: Per-frame pixel budget of videos (qwen-omni-utils VIDEO_MIN/MAX_PIXELS).
    video_min_pixels: int = 128 * 28 * 28
    video_max_pixels: int = 768 * 28 * 28
    #: Pixel budget shared by all frames of one video (qwen-omni-utils VIDEO_TOTAL_PIXELS).
    video_total_pixels: int = int(128000 * 28 * 28 * 0.9)

    def __post_init__(self) -> None:
        if not 0 < self.min_audio_seconds < self.max_audio_seconds:
            raise RequestError("min_audio_seconds must be positive and below max_audio_seconds")
        if self.max_audio_seconds > 300:
            raise RequestError("max_audio_seconds can't exceed 300 s (the audio feature extractor's window)")
        if not 0 < self.video_min_pixels <= self.video_max_pixels:
            raise RequestError("video_min_pixels must be positive and at most video_max_pixels")
        if self.max_video_seconds <= 0 or self.max_image_pixels <= 0:
            raise RequestError("max_video_seconds and max_image_pixels must be positive")


@dataclass(frozen=True)
class GenerationLimits:
    """How long a reply may get."""

    #: Text tokens of the reply (the Thinker).
    max_new_tokens: int = 512
    #: Seconds of speech (the Talker emits 50 codec codes per second).
    max_speech_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RequestError("max_new_tokens must be at least 1")
        if not 0 < self.max_speech_seconds <= 600:
            raise RequestError("max_speech_seconds must be between 0 and 600")

    @property
    def max_codec_codes(self) -> int:
        """The Talker's token limit for ``max_speech_seconds``."""
        return max(1, int(round(self.max_speech_seconds * 50)))


@dataclass(frozen=True)
class ServiceConfig:
    """What the model service is built from."""

    #: ``Qwen/Qwen2.5-Omni-7B``, ``Qwen/Qwen2.5-Omni-3B``, a local folder, or ``tiny``.
    model: str = "tiny"
    #: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
    device: str = "auto"
    #: ``auto`` (bf16 on GPU, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``.
    dtype: str = "auto"
    #: ``streaming`` speaks while the reply is generated; ``reference`` wraps
    #: transformers' generate() (whole reply, then all of the speech).
    engine: str = "streaming"
    #: Streaming code2wav chunk sizes in blocks of 0.24 s of speech; the last one repeats.
    #: A small first chunk starts the audio early; larger ones cut the context overhead.
    chunk_blocks: tuple[int, ...] = (3, 3, 6, 12)
    media: MediaLimits = MediaLimits()
    #: Memory for the conversations' caches (streaming engine): each keeps the model's KV
    #: cache of its last prompt and reply, so the next turn runs only what is new. The least
    #: recently used are dropped beyond this; 0 turns the reuse off.
    session_cache_mb: int = 4096
    #: Tokens a prompt plus its reply may take; ``None``: the Thinker's ``max_position_embeddings``.
    context_tokens: int | None = None
    #: Replies made at once (the streaming engine batches them); more wait in line and are told
    #: their place. On a GPU, fewer when the memory left after loading can't hold them.
    max_batch: int = 8
    #: Prompt tokens run in one piece; longer prompts run in pieces between the batch's steps.
    prefill_chunk: int = 512
    #: A reply whose reader has not read for this long (a stalled client, a frozen tab) is cancelled.
    stall_seconds: float = 30.0
    #: ``torch.compile`` the speech decoder's DiT (GPU: CUDA graphs). Off by default: on a CPU
    #: it compiled for about a minute and ran slower (README, "Batching").
    compile: bool = False

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise RequestError(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if not self.chunk_blocks or min(self.chunk_blocks) < 1:
            raise RequestError("chunk_blocks must be a non-empty list of positive block counts")
        if not self.model:
            raise RequestError("model must name a checkpoint, a folder or 'tiny'")
        if self.session_cache_mb < 0:
            raise RequestError("session_cache_mb can't be negative")
        if self.context_tokens is not None and self.context_tokens < 64:
            raise RequestError("context_tokens must be at least 64")
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise RequestError(f"max_batch must be between 1 and {MAX_BATCH}")
        if self.prefill_chunk < 16:
            raise RequestError("prefill_chunk must be at least 16 tokens")
        if self.stall_seconds <= 0:
            raise RequestError("stall_seconds must be positive")
