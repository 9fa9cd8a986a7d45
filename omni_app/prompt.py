"""A conversation as the model's inputs, prepared one media item at a time.

The chat template is applied to the whole conversation, then the text between media
placeholders is tokenized and each audio, image or video goes through the processor on
its own (:mod:`omni_app.media_items`). The result equals the processor run on everything
at once (same ids, same pixels, same audio features under their masks), but a
:class:`~omni_app.media_items.PromptMemo` kept for a conversation remembers each item's
token layout, so a new turn only processes its own media. Pixel and audio tensors are
made only when asked for, and only for the items asked for: a model that has the older
turns in its cache never needs theirs again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .conversation import AudioPart, Conversation, ImagePart, TextPart, VideoPart, video_audio
from .errors import RequestError
from .media_items import VIDEO_KWARGS, MediaLayout, PromptMemo, process_item


@dataclass(frozen=True)
class MediaSpan:
    """A media item of the prompt: what it is, its content fingerprint and its token span."""

    kind: str
    fingerprint: str
    start: int
    end: int
    layout: MediaLayout
    part: object = field(repr=False, compare=False)


class PreparedInputs:
    """The prompt's token ids and media layout; tensors for the media made on demand."""

    def __init__(self, processor, prompt: str, use_audio_in_video: bool, input_ids, media: tuple[MediaSpan, ...],
                 fresh: dict, processor_kwargs: dict) -> None:
        self.processor = processor
        #: The chat-template text before media placeholders were expanded.
        self.prompt = prompt
        self.use_audio_in_video = use_audio_in_video
        #: ``(1, P)`` token ids of the whole prompt.
        self.input_ids = input_ids
        self.media = media
        #: The processor arguments for the whole conversation at once (the media themselves).
        self.processor_kwargs = processor_kwargs
        self._fresh = fresh  # fingerprint -> tensors, for items processed while preparing
        self._tensors: dict | None = None

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def counts(self) -> dict:
        audio = sum(1 for m in self.media if m.layout.audio_frames is not None)
        return {"audio": audio, "images": sum(m.kind == "image" for m in self.media),
                "videos": sum(m.kind == "video" for m in self.media)}

    def rope_inputs(self) -> dict:
        """What ``get_rope_index`` needs for the whole prompt: ids and media sizes, no pixels."""
        import torch

        inputs = {"input_ids": self.input_ids}
        for kind, key in (("image", "image_grid_thw"), ("video", "video_grid_thw")):
            grids = [m.layout.grid for m in self.media if m.kind == kind]
            if grids:
                inputs[key] = torch.tensor(grids, dtype=torch.long)
        seconds = [m.layout.second_per_grid for m in self.media if m.kind == "video"]
        if seconds:
            inputs["video_second_per_grid"] = torch.tensor(seconds, dtype=torch.float32)
        frames = [m.layout.audio_frames for m in self.media if m.layout.audio_frames is not None]
        if frames:
            inputs["audio_lengths"] = torch.tensor(frames, dtype=torch.long)
        return inputs

    def media_tensors(self, first: int = 0) -> dict:
        """Encoder inputs of ``media[first:]`` (pixels, audio features with their masks, grids)."""
        import torch

        pieces = [self._item_tensors(span) for span in self.media[first:]]
        out: dict = {}
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                    "video_second_per_grid"):
            parts = [p[key] for p in pieces if key in p]
            if parts:
                out[key] = torch.cat(parts)
        features = [p["features"] for p in pieces if "features" in p]
        if features:
            longest = max(f.shape[-1] for f in features)
            out["input_features"] = torch.zeros((len(features), features[0].shape[0], longest), dtype=features[0].dtype)
            out["feature_attention_mask"] = torch.zeros((len(features), longest), dtype=torch.int32)
            for row, feature in enumerate(features):
                out["input_features"][row, :, : feature.shape[-1]] = feature
                out["feature_attention_mask"][row, : feature.shape[-1]] = 1
        return out

    @property
    def tensors(self) -> dict:
        """Everything the model's forward takes for the whole prompt (as the processor returns it)."""
        import torch

        if self._tensors is None:
            self._tensors = {"input_ids": self.input_ids, "attention_mask": torch.ones_like(self.input_ids),
                             **self.media_tensors(0)}
        return self._tensors

    def _item_tensors(self, span: MediaSpan) -> dict:
        found = self._fresh.get(span.fingerprint)
        if found is None:
            _, found = process_item(self.processor, span.part, self.use_audio_in_video)
        return found


def build_inputs(conversation: Conversation, processor, memo: PromptMemo | None = None) -> PreparedInputs:
    """Apply the chat template and prepare each media item (the ones ``memo`` knows are not processed).

    ``use_audio_in_video`` is decided once for the whole conversation (the model requires
    the same value for every video): when any video has sound, videos without a track get
    a silent one of their own length so that all of them interleave the same way.
    """
    import torch

    if not conversation.turns or conversation.turns[-1].role != "user":
        raise RequestError("The conversation must end with a user turn.")
    memo = memo if memo is not None else PromptMemo()
    parts = _media_parts(conversation)
    use_audio_in_video = any(isinstance(p, VideoPart) and p.clip.audio is not None for p in parts)
    prompt = processor.apply_chat_template(_messages(conversation), add_generation_prompt=True, tokenize=False)
    placeholders = {processor.audio_token: AudioPart, processor.image_token: ImagePart,
                    processor.video_token: VideoPart}
    pieces = re.split("(" + "|".join(re.escape(t) for t in placeholders) + ")", prompt)
    found = [placeholders[p] for p in pieces[1::2]]
    if found != [type(p) for p in parts]:
        raise RequestError("The message contains one of the model's reserved markers (such as <|IMAGE|>); "
                           "remove it and try again.")
    ids: list[np.ndarray] = []
    media: list[MediaSpan] = []
    fresh: dict = {}
    length = 0
    for index, text in enumerate(pieces):
        if index % 2 == 0:
            run = np.asarray(processor.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        else:
            part = parts[index // 2]
            key = (memo.fingerprint(part, use_audio_in_video), use_audio_in_video)
            layout = memo.layout(key)
            if layout is None:
                layout, fresh[key[0]] = process_item(processor, part, use_audio_in_video)
                memo.remember(key, layout)
            run = layout.ids
            media.append(MediaSpan(layout.kind, key[0], length, length + len(run), layout, part))
        ids.append(run)
        length += len(run)
    input_ids = torch.from_numpy(np.concatenate(ids).astype(np.int64)).view(1, -1)
    return PreparedInputs(processor, prompt, use_audio_in_video, input_ids, tuple(media), fresh,
                          _whole_kwargs(parts, use_audio_in_video))


def _media_parts(conversation: Conversation) -> list:
    return [p for t in conversation.turns if t.role == "user" for p in t.parts if not isinstance(p, TextPart)]


def _messages(conversation: Conversation) -> list[dict]:
    kinds = {AudioPart: "audio", ImagePart: "image", VideoPart: "video"}
    messages = [{"role": "system", "content": [{"type": "text", "text": conversation.system_prompt}]}]
    for turn in conversation.turns:
        content = []
        for part in turn.parts:
            if isinstance(part, TextPart):
                content.append({"type": "text", "text": part.text})
            elif turn.role == "user":  # earlier replies go back as text only
                content.append({"type": kinds[type(part)]})
        messages.append({"role": turn.role, "content": content})
    return messages


def _whole_kwargs(parts: list, use_audio_in_video: bool) -> dict:
    """The processor arguments that prepare the whole conversation in one call."""
    kwargs: dict = {"return_tensors": "pt", "padding": True}
    audio, sources, images, frames = [], [], [], []
    for part in parts:
        if isinstance(part, AudioPart):
            audio.append(part.samples)
            sources.append(None)
        elif isinstance(part, ImagePart):
            images.append(part.image)
        else:
            if use_audio_in_video:
                audio.append(video_audio(part.clip))
                sources.append(len(frames))
            frames.append(part.clip.frames)
    if audio:
        kwargs["audio"] = audio
    if images:
        kwargs["images"] = images
    if frames:
        kwargs.update(videos=frames, **VIDEO_KWARGS)
    if use_audio_in_video:
        kwargs.update(load_audio_from_video=True, audio_from_video_indices=sources)
    return kwargs
