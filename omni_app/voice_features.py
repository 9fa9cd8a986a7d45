"""Speech-decoder conditioning features computed from audio (numpy + librosa, no torch).

The released voices carry a ``ref_mel`` of shape (1, 400, 80): 4 s at 100 frames per
second. The recipe below is the one Qwen's own code uses for the same decoder design
(16 kHz input, n_fft 1024, hop 160, window 640, 80 Slaney mel bins over 0-8000 Hz, Hann
window, reflect padding of (n_fft - hop) / 2 on each side without centring, magnitude,
natural log clamped at 1e-5). It is *not* the vocoder's 24 kHz mel.
"""

from __future__ import annotations

import numpy as np

from .config import INPUT_SAMPLE_RATE

REF_SAMPLE_RATE = INPUT_SAMPLE_RATE
REF_N_FFT = 1024
REF_HOP = 160
REF_WIN = 640
REF_MELS = 80


def reference_mel(audio_16k: np.ndarray) -> np.ndarray:
    """Log-mel frames ``(frames, 80)`` float32 of 16 kHz mono audio, 100 frames per second."""
    import librosa

    audio = np.asarray(audio_16k, dtype=np.float32)
    pad = (REF_N_FFT - REF_HOP) // 2
    padded = np.pad(audio, (pad, pad), mode="reflect")
    spec = librosa.stft(
        padded, n_fft=REF_N_FFT, hop_length=REF_HOP, win_length=REF_WIN, window="hann", center=False
    )
    basis = librosa.filters.mel(
        sr=REF_SAMPLE_RATE, n_fft=REF_N_FFT, n_mels=REF_MELS, fmin=0.0, fmax=8000.0,
        htk=False, norm="slaney",
    )
    mel = basis @ np.abs(spec)
    return np.ascontiguousarray(np.log(np.clip(mel, 1e-5, None)).T, dtype=np.float32)


def synthetic_vowel(pitch_hz: float, seconds: float, sample_rate: int = REF_SAMPLE_RATE) -> np.ndarray:
    """A deterministic voiced sound (harmonics shaped by /a/ formants) for test voices."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    vibrato = 1.0 + 0.01 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * pitch_hz * np.cumsum(vibrato) / sample_rate
    formants = [(730.0, 90.0), (1090.0, 110.0), (2440.0, 170.0)]
    out = np.zeros_like(t)
    for k in range(1, int(7000 // pitch_hz)):
        f = k * pitch_hz
        gain = sum(1.0 / (1.0 + ((f - fc) / bw) ** 2) for fc, bw in formants) / k
        out += gain * np.sin(k * phase)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)
