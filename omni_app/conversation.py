"""Typed conversations and how they become the processor's inputs.

A :class:`Conversation` is immutable: adding a turn returns a new one, so a UI can keep
the history of each session and nothing is shared by accident. Earlier assistant turns go
back to the model as text (their speech is not re-encoded).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Union

import numpy as np

from .errors import RequestError
from .media import MODEL_SAMPLE_RATE, VIDEO_FPS, VideoClip

#: The system prompt Qwen2.5-Omni needs to produce speech (the processor warns otherwise).
SPEECH_SYSTEM_PROMPT = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True, eq=False)
class AudioPart:
    """16 kHz mono float32 samples."""

    samples: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.samples) / MODEL_SAMPLE_RATE


@dataclass(frozen=True, eq=False)
class ImagePart:
    """An RGB ``PIL.Image``."""

    image: object


@dataclass(frozen=True, eq=False)
class VideoPart:
    """Frames sampled at 2 fps with an optional audio track (see :mod:`omni_app.media`)."""

    clip: VideoClip


Part = Union[TextPart, AudioPart, ImagePart, VideoPart]


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        """The text parts of the turn, joined."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))


@dataclass(frozen=True)
class Conversation:
    """A system prompt and the turns so far, oldest first."""

    turns: tuple[Turn, ...] = ()
    system_prompt: str = SPEECH_SYSTEM_PROMPT

    def add_user(self, *parts: Part | str) -> "Conversation":
        """A new conversation with one more user turn (strings become text parts)."""
        typed = tuple(TextPart(p) if isinstance(p, str) else p for p in parts)
        typed = tuple(p for p in typed if not (isinstance(p, TextPart) and not p.text.strip()))
        if not typed:
            raise RequestError("The message is empty: type something or add audio, an image or a video.")
        return replace(self, turns=self.turns + (Turn("user", typed),))

    def add_assistant(self, text: str) -> "Conversation":
        """A new conversation with the assistant's reply appended as text."""
        return replace(self, turns=self.turns + (Turn("assistant", (TextPart(text),)),))

    def speech_prompt_warning(self) -> str | None:
        """A warning when speech is wanted but the system prompt is not the one speech needs."""
        if self.system_prompt.strip() == SPEECH_SYSTEM_PROMPT:
            return None
        return (
            "The system prompt was changed: Qwen2.5-Omni may not speak, or speak poorly, without its "
            "default system prompt. Put personas and instructions in your message instead."
        )


@dataclass
class PreparedInputs:
    """What the model's generate() takes for one conversation, plus what was counted."""

    tensors: dict
    #: The chat-template text before media placeholders were expanded.
    prompt: str
    use_audio_in_video: bool
    prompt_tokens: int
    counts: dict = field(default_factory=dict)
    #: The processor arguments besides the text (media, fps...), to re-run it if needed.
    processor_kwargs: dict = field(default_factory=dict)


def build_inputs(conversation: Conversation, processor) -> PreparedInputs:
    """Apply the chat template and run the processor on the conversation's media.

    ``use_audio_in_video`` is decided once for the whole conversation (the model requires
    the same value for every video): when any video has sound, videos without a track get
    a silent one of their own length so that all of them interleave the same way.
    """
    if not conversation.turns or conversation.turns[-1].role != "user":
        raise RequestError("The conversation must end with a user turn.")
    videos = [p.clip for t in conversation.turns for p in t.parts if isinstance(p, VideoPart)]
    use_audio_in_video = any(v.audio is not None for v in videos)

    messages: list[dict] = [{"role": "system", "content": [{"type": "text", "text": conversation.system_prompt}]}]
    audio_slots: list[np.ndarray] = []
    audio_sources: list[int | None] = []
    images, frames = [], []
    for turn in conversation.turns:
        content = []
        for part in turn.parts:
            if turn.role == "assistant" and not isinstance(part, TextPart):
                continue
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif isinstance(part, AudioPart):
                content.append({"type": "audio"})
                audio_slots.append(part.samples)
                audio_sources.append(None)
            elif isinstance(part, ImagePart):
                content.append({"type": "image"})
                images.append(part.image)
            elif isinstance(part, VideoPart):
                content.append({"type": "video"})
                if use_audio_in_video:
                    audio_slots.append(_video_audio(part.clip))
                    audio_sources.append(len(frames))
                frames.append(part.clip.frames)
        messages.append({"role": turn.role, "content": content})

    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    kwargs: dict = {"return_tensors": "pt", "padding": True}
    if audio_slots:
        kwargs["audio"] = audio_slots
    if images:
        kwargs["images"] = images
    if frames:
        kwargs["videos"] = frames
        # The frames are already sampled at 2 fps: TMRoPE's time ids are derived from this.
        kwargs["fps"] = VIDEO_FPS
        kwargs["do_sample_frames"] = False
        # Frames are already within the per-frame budget; this keeps the processor from
        # re-deriving a different one (and matches qwen-vl-utils).
        kwargs["cap_pixels_per_frame"] = True
    if use_audio_in_video:
        kwargs["load_audio_from_video"] = True
        kwargs["audio_from_video_indices"] = audio_sources
    try:
        tensors = processor(text=[prompt], **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise RequestError(f"The input could not be prepared for the model: {exc}") from exc
    return PreparedInputs(
        tensors=dict(tensors),
        prompt=prompt,
        use_audio_in_video=use_audio_in_video,
        prompt_tokens=int(tensors["input_ids"].shape[1]),
        counts={"audio": len(audio_slots), "images": len(images), "videos": len(frames)},
        processor_kwargs=kwargs,
    )


def _video_audio(clip: VideoClip) -> np.ndarray:
    """The clip's audio track, or silence as long as the frames (see :func:`build_inputs`)."""
    if clip.audio is not None:
        return clip.audio
    return np.zeros(int(clip.seconds * MODEL_SAMPLE_RATE), dtype=np.float32)
