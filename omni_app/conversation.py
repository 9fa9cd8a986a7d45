"""Typed conversations: turns of text, audio, images and video.

A :class:`Conversation` is immutable: adding a turn returns a new one, so a UI can keep
the history of each session and nothing is shared by accident. Earlier assistant turns go
back to the model as text (their speech is not re-encoded); :mod:`omni_app.prompt` turns
a conversation into the model's inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Union

import numpy as np

from .errors import RequestError
from .media import MODEL_SAMPLE_RATE, VideoClip

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


def video_audio(clip: VideoClip) -> np.ndarray:
    """The clip's audio track, or silence as long as the frames (every video gets a track when one has sound)."""
    if clip.audio is not None:
        return clip.audio
    return np.zeros(int(clip.seconds * MODEL_SAMPLE_RATE), dtype=np.float32)
