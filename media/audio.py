"""Audio DSP the stages share: resampling, length fitting, loudness (BS.1770) and true peak."""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import julius
import numpy as np
import pyloudnorm
import torch
from scipy import ndimage, signal

from dubflow.media.io import DELIVERY_SAMPLE_RATE
from dubflow.media.loudness_profiles import LoudnessProfile

MIN_GATED_SECONDS = 0.4  # BS.1770 needs one 400 ms block before integrated loudness means anything


def delivery_length(num_samples: int, sample_rate: int) -> int:
    """Sample count at 48 kHz of `num_samples` at `sample_rate`: round(n * 48000 / rate), exact."""
    return round(Fraction(num_samples * DELIVERY_SAMPLE_RATE, sample_rate))


@lru_cache(maxsize=16)
def _resampler(old_sr: int, new_sr: int) -> julius.ResampleFrac:
    return julius.ResampleFrac(old_sr, new_sr)  # reduces the rates by their gcd itself


def resample(x: torch.Tensor, old_sr: int, new_sr: int, output_length: int | None = None,
             full: bool = False) -> torch.Tensor:
    """Windowed-sinc resampling (julius, the resampler Demucs itself uses) along the last axis."""
    if old_sr == new_sr:
        return x if output_length is None else x[..., :output_length]
    return _resampler(old_sr, new_sr)(x, output_length=output_length, full=full)


def resample_to_delivery(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(channels, samples) float audio -> float32 at 48 kHz with exactly `delivery_length` samples.

    This is the mix the separator's stems add up to. Resamples one channel at a time to keep the
    temporaries small. Returns the input itself when it is already float32 at 48 kHz.
    """
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
    if sample_rate == DELIVERY_SAMPLE_RATE:
        return np.asarray(audio, dtype=np.float32)
    length = delivery_length(audio.shape[1], sample_rate)
    out = np.empty((audio.shape[0], length), dtype=np.float32)
    if length == 0:
        return out
    with torch.inference_mode():
        for channel in range(audio.shape[0]):
            x = torch.from_numpy(np.ascontiguousarray(audio[channel], dtype=np.float32))
            out[channel] = resample(x, sample_rate, DELIVERY_SAMPLE_RATE, output_length=length).numpy()
    return out


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


# Dialogue activity: 20 ms frames, active within 35 dB of the loudest frame and above -70 dBFS (the
# BS.1770 absolute gate: what it calls silence is silence here too);
# gaps under 300 ms (between words) are bridged and blips under 100 ms dropped.
_ACTIVITY_FRAME_S = 0.02
_ACTIVITY_RANGE_DB = 35.0
SILENCE_FLOOR_DBFS = -70.0
_ACTIVITY_BRIDGE_S = 0.3
MIN_DIALOGUE_S = 0.1


def dialogue_regions(dialogue: np.ndarray, sample_rate: int) -> list[tuple[int, int]]:
    """Sample ranges [start, end) where a DX stem carries speech, found from its short-term energy."""
    frame = max(1, int(round(_ACTIVITY_FRAME_S * sample_rate)))
    frames = dialogue.shape[-1] // frame + (dialogue.shape[-1] % frame > 0)
    if frames == 0:
        return []
    padded = fit_length(np.asarray(dialogue, dtype=np.float64), frames * frame)
    power = (padded**2).reshape(padded.shape[0], frames, frame).mean(axis=(0, 2))
    level = 10 * np.log10(np.maximum(power, 1e-20))
    threshold = max(SILENCE_FLOOR_DBFS, float(level.max()) - _ACTIVITY_RANGE_DB)
    runs = _runs(level > threshold)
    merged: list[list[int]] = []
    for start, end in runs:
        if merged and (start - merged[-1][1]) * _ACTIVITY_FRAME_S < _ACTIVITY_BRIDGE_S:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [
        (start * frame, min(end * frame, dialogue.shape[-1]))
        for start, end in merged
        if (end - start) * _ACTIVITY_FRAME_S >= MIN_DIALOGUE_S
    ]


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def program_loudness(
    mix: np.ndarray, sample_rate: int, profile: LoudnessProfile, regions: list[tuple[int, int]] | None = None
) -> float | None:
    """Integrated loudness as `profile` measures it, or None when unmeasurable.

    A dialogue-gated profile measures BS.1770-4 over the mix's dialogue `regions` only (from
    `dialogue_regions` of the DX stem), joined end to end; the others measure the whole mix.
    """
    if not profile.dialogue_gated:
        return integrated_loudness(mix, sample_rate)
    if regions is None:
        raise ValueError(f"loudness profile {profile.name} is dialogue-gated: pass the dialogue regions of the DX stem")
    if not regions:
        return None
    return integrated_loudness(np.concatenate([mix[:, start:end] for start, end in regions], axis=1), sample_rate)


def mix_to_profile(
    mix: np.ndarray, sample_rate: int, profile: LoudnessProfile, regions: list[tuple[int, int]] | None = None
) -> tuple[np.ndarray, float]:
    """Gain `mix` to the profile's target and limit its true peak to the profile's ceiling.

    The limiter takes a little loudness off the peaks it touches, so the gain is corrected from the
    limited result and the limiter run again, until the loudness is within a tenth of the tolerance.
    An unmeasurable mix (too short, silent) gets no gain and is only limited. Returns (mix, gain dB).
    """
    measured = program_loudness(mix, sample_rate, profile, regions)
    gain_db = 0.0 if measured is None else profile.target_lufs - measured
    for _ in range(10):  # converges geometrically: each pass limits only what the extra gain pushed over
        limited = limit_true_peak(mix * np.float32(db_to_gain(gain_db)), sample_rate, profile.max_true_peak_dbtp)
        reached = program_loudness(limited, sample_rate, profile, regions)
        if reached is None or abs(profile.target_lufs - reached) <= profile.tolerance_lu / 10:
            break
        gain_db += profile.target_lufs - reached
    return limited, gain_db


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
