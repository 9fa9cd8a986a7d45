"""Voices: the shipped ones, and custom ones made from a reference recording.

What the released weights allow (the codec *encoder* was never released, so there is no
in-context cloning): the speech decoder is conditioned on a reference mel (through its
speaker encoder) and on a 192-d speaker vector; the Talker on the voice's bos token. A
custom voice therefore takes its reference mel from the user's clip, and keeps the bos
token of a shipped base voice. The speaker vector would come from a CAM++ x-vector model,
which is not at hand here, so the base voice's vector is kept. The result changes the
timbre the decoder renders; the speaking style stays the base voice's.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import MediaLimits
from .errors import MediaError, RequestError
from .media import MODEL_SAMPLE_RATE, check_audio
from .voice_features import reference_mel

log = logging.getLogger(__name__)

#: Frames of reference mel the shipped voices carry (4 s at 100 frames per second).
REF_FRAMES = 400
MIN_SECONDS, MAX_SECONDS = 3.0, 30.0
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,39}$")


@dataclass(frozen=True, eq=False)
class Voice:
    """Everything the model needs to speak in a voice."""

    name: str
    bos_token: int
    cond: np.ndarray  # (1, 192) float32
    ref_mel: np.ndarray  # (1, frames, 80) float32
    base: str | None = None  # the shipped voice a custom one is built on

    @property
    def custom(self) -> bool:
        return self.base is not None

    def as_speaker(self) -> dict:
        """The ``spk_dict.pt`` entry shape the model code expects."""
        import torch

        return {"bos_token": int(self.bos_token), "cond": torch.from_numpy(self.cond),
                "ref_mel": torch.from_numpy(self.ref_mel)}

    def fingerprint(self) -> str:
        """A short hash of what the voice sounds like (its conditioning and base)."""
        import hashlib

        digest = hashlib.sha1()
        for part in (self.name, str(self.bos_token), str(self.base)):
            digest.update(part.encode())
        digest.update(np.ascontiguousarray(self.cond, np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.ref_mel, np.float32).tobytes())
        return digest.hexdigest()[:12]

    @classmethod
    def from_speaker(cls, name: str, entry: dict) -> "Voice":
        return cls(name=name, bos_token=int(entry["bos_token"]),
                   cond=entry["cond"].detach().float().cpu().numpy(),
                   ref_mel=entry["ref_mel"].detach().float().cpu().numpy())


def prepare_reference(audio: np.ndarray, limits: MediaLimits = MediaLimits()) -> np.ndarray:
    """Trim silence, check and loudness-normalise a 16 kHz reference clip.

    Rejects clips that are silent, heavily clipped, shorter than 3 s of speech or longer
    than 30 s, with messages that say what to do.
    """
    import librosa

    audio = check_audio(np.asarray(audio, np.float32), "The reference recording", limits)
    clipped = float(np.mean(np.abs(audio) > 0.99))
    if clipped > 0.01:
        raise MediaError(f"The reference recording is heavily clipped ({clipped:.0%} of samples at full scale); "
                         "record it again a little further from the microphone.")
    if len(audio) / MODEL_SAMPLE_RATE > MAX_SECONDS + 30:
        raise MediaError(f"The reference recording is too long; use {MIN_SECONDS:g}-{MAX_SECONDS:g} s of speech.")
    trimmed, _ = librosa.effects.trim(audio, top_db=35, frame_length=1024, hop_length=256)
    seconds = len(trimmed) / MODEL_SAMPLE_RATE
    if seconds < MIN_SECONDS:
        raise MediaError(f"The reference has only {seconds:.1f} s of speech; record at least {MIN_SECONDS:g} s.")
    if seconds > MAX_SECONDS:
        raise MediaError(f"The reference has {seconds:.0f} s of speech; use at most {MAX_SECONDS:g} s.")
    # -6 dBFS peak, as the recipe the shipped voices most likely came from normalises.
    return (trimmed * (0.5 / max(float(np.abs(trimmed).max()), 1e-6))).astype(np.float32)


def reference_window(mel: np.ndarray, frames: int = REF_FRAMES) -> np.ndarray:
    """The loudest ``frames``-long stretch of a (T, 80) log-mel (all of it if shorter)."""
    if len(mel) <= frames:
        return mel
    energy = np.convolve(mel.mean(axis=1), np.ones(frames), mode="valid")
    start = int(np.argmax(energy))
    return mel[start:start + frames]


def voice_from_reference(name: str, audio_16k: np.ndarray, base: Voice,
                         limits: MediaLimits = MediaLimits()) -> Voice:
    """A custom voice: ``ref_mel`` from the clip, bos token and speaker vector from ``base``."""
    check_name(name)
    clip = prepare_reference(audio_16k, limits)
    mel = reference_window(reference_mel(clip))
    return Voice(name=name, bos_token=base.bos_token, cond=base.cond.copy(),
                 ref_mel=mel[None].astype(np.float32), base=base.name)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name or ""):
        raise RequestError("Give the voice a name: 1-40 letters, digits, spaces, '.', '_' or '-'.")
    return name


def save_voice(voice: Voice, folder: Path) -> Path:
    """Write ``<name>.voice.safetensors`` (tensors plus name/base/bos in its metadata)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{voice.name}.voice.safetensors"
    meta = {"omni_app_voice": json.dumps({"name": voice.name, "base": voice.base, "bos_token": voice.bos_token})}
    # safetensors writes the raw buffer: arrays must be C-contiguous.
    tensors = {"cond": np.ascontiguousarray(voice.cond), "ref_mel": np.ascontiguousarray(voice.ref_mel)}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_voice(path: Path) -> Voice:
    """Read a voice file; anything malformed raises :class:`MediaError` naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads((handle.metadata() or {})["omni_app_voice"])
            cond, ref_mel = handle.get_tensor("cond"), handle.get_tensor("ref_mel")
        name, bos = check_name(str(meta["name"])), int(meta["bos_token"])
    except (OSError, KeyError, ValueError, TypeError, RequestError, SafetensorError) as exc:
        raise MediaError(f"{path.name} is not a valid voice file ({exc}).") from exc
    if cond.shape != (1, 192) or ref_mel.ndim != 3 or ref_mel.shape[0] != 1 or ref_mel.shape[2] != 80:
        raise MediaError(f"{path.name} is not a valid voice file (unexpected tensor shapes).")
    if not (np.isfinite(cond).all() and np.isfinite(ref_mel).all()):
        raise MediaError(f"{path.name} is not a valid voice file (invalid numbers).")
    return Voice(name=name, bos_token=bos, cond=cond.astype(np.float32), ref_mel=ref_mel.astype(np.float32),
                 base=meta.get("base") or "custom")


def load_voice_folder(folder: Path) -> tuple[list[Voice], list[str]]:
    """All valid voices in a folder, and one message per file that was skipped."""
    voices, problems = [], []
    if not folder.is_dir():
        return voices, problems
    for path in sorted(folder.glob("*.voice.safetensors")):
        try:
            voices.append(load_voice(path))
        except MediaError as exc:
            problems.append(str(exc))
            log.warning("skipping voice: %s", exc)
    return voices, problems


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Split text at sentence ends (any script); very short sentences join the next one."""
    pieces = [p.strip() for p in re.split(r"(?<=[.!?。！？;；])\s*", text.strip()) if p.strip()]
    segments: list[str] = []
    carry = ""
    for piece in pieces:
        piece = _join(carry, piece) if carry else piece
        carry = ""
        while len(piece) > max_chars:  # a very long sentence: cut at a comma or a space
            cut = max(piece.rfind(",", 0, max_chars), piece.rfind(" ", 0, max_chars))
            cut = cut if cut > 0 else max_chars - 1
            segments.append(piece[:cut + 1].strip())
            piece = piece[cut + 1:].strip()
        if len(piece) < 20:
            carry = piece
        elif piece:
            segments.append(piece)
    if carry:
        if segments and len(segments[-1]) + len(carry) < max_chars:
            segments[-1] = _join(segments[-1], carry)
        else:
            segments.append(carry)
    return segments


def _join(first: str, second: str) -> str:
    # Scripts written without spaces (Chinese, Japanese) end sentences with full-width marks.
    gap = "" if first[-1:] in "。！？；" else " "
    return f"{first}{gap}{second}".strip()
