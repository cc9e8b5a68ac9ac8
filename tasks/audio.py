"""Audio DSP the stages share: resampling, length fitting, loudness (BS.1770) and true peak."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pyloudnorm
from scipy import ndimage, signal

MIN_GATED_SECONDS = 0.4  # BS.1770 needs one 400 ms block before integrated loudness means anything


def fit_length(audio: np.ndarray, samples: int) -> np.ndarray:
    """Trim or pad with silence to exactly `samples` samples."""
    if audio.shape[-1] >= samples:
        return audio[..., :samples]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, samples - audio.shape[-1])])


def picture_samples(frame_count: int, fps: Fraction, sample_rate: int) -> int:
    """The number of audio samples that lasts exactly as long as the picture (to the nearest sample)."""
    return round(frame_count * sample_rate / Fraction(fps))


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """BS.1770-4 gated integrated loudness in LUFS, or None when unmeasurable (too short or silent)."""
    if audio.shape[-1] < MIN_GATED_SECONDS * sample_rate:
        return None
    audio = np.asarray(audio, dtype=np.float64)
    if audio.shape[0] == 6:
        # BS.1770 leaves the LFE out; pyloudnorm then weights L R C Ls Rs as the standard asks.
        audio = audio[[0, 1, 2, 4, 5]]
    elif audio.shape[0] > 6:
        raise ValueError(f"loudness of {audio.shape[0]} channels is not defined here; use mono, stereo or 5.1")
    value = pyloudnorm.Meter(sample_rate).integrated_loudness(audio.T)
    return None if not math.isfinite(value) else float(value)


@dataclass(frozen=True)
class LoudnessProfile:
    name: str
    target_lufs: float
    tolerance_lu: float
    max_true_peak_dbtp: float


EBU_R128 = LoudnessProfile("ebu-r128", -23.0, 0.5, -1.0)


def true_peak_per_sample(audio: np.ndarray, oversample: int = 4) -> np.ndarray:
    """For each sample, the largest |value| of the 4×-oversampled signal around it, over all channels."""
    audio = np.asarray(audio, dtype=np.float64)
    upsampled = signal.resample_poly(audio, oversample, 1, axis=-1)[..., : audio.shape[-1] * oversample]
    per_sample = np.abs(upsampled).reshape(audio.shape[0], -1, oversample).max(axis=(0, 2))
    return np.maximum(per_sample, np.abs(audio).max(axis=0))


def true_peak_dbtp(audio: np.ndarray, oversample: int = 4) -> float:
    """Peak of the 4×-oversampled signal in dBTP (BS.1770-4 annex 2)."""
    if audio.shape[-1] == 0:
        return -math.inf
    peak = float(true_peak_per_sample(audio, oversample).max())
    return 20 * math.log10(peak) if peak > 0 else -math.inf


def limit_true_peak(audio: np.ndarray, sample_rate: int, ceiling_dbtp: float, release_ms: float = 20.0) -> np.ndarray:
    """Bring every 4×-oversampled peak to the ceiling or under it, leaving the rest untouched.

    The gain needed at each sample is held for ±release around it (a minimum filter) and then
    smoothed with a moving average shorter than the hold, so the smoothed gain is never above what
    any peak needs and it ramps in and out over `release_ms` instead of clicking.
    """
    hold = max(1, int(release_ms * sample_rate / 1000))
    ceiling = db_to_gain(ceiling_dbtp)
    limited = np.asarray(audio, dtype=np.float32)
    for _ in range(4):  # the oversampled peak of the gained signal can still graze the ceiling
        needed = np.minimum(1.0, ceiling / np.maximum(true_peak_per_sample(limited), 1e-12))
        if needed.min() >= 1.0:
            break
        gain = ndimage.minimum_filter1d(needed, size=2 * hold + 1, mode="nearest")
        gain = ndimage.uniform_filter1d(gain, size=hold, mode="nearest")
        limited = (limited * gain.astype(np.float32)).astype(np.float32)
        ceiling *= db_to_gain(-0.05)
    return limited


def db_to_gain(db: float) -> float:
    return 10 ** (db / 20)
