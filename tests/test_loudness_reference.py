"""Loudness and true peak against references independent of dubflow's own method: hand-computed
signals whose answer is known (EBU Tech 3341's minimum-requirement test signals for integrated
loudness, band-limited sines for true peak) and ffmpeg's own EBU R128 meter (`ebur128=peak=true`),
never pyloudnorm or `resample_poly`, which dubflow itself uses.
"""

from __future__ import annotations

import numpy as np
import pytest

from dubflow.media.audio import integrated_loudness, mix_to_profile, true_peak_dbtp
from dubflow.media.loudness_profiles import ATSC_A85, EBU_R128, STREAMING, LoudnessProfile, parse_loudness_profile
from media_corpus import RATE, db, ebur128

# EBU Tech 3341 (2016) tolerances: integrated loudness ±0.1 LU on its test signals, true peak +0.2/−0.4 dB
LOUDNESS_TOLERANCE_LU = 0.1
TRUE_PEAK_OVER_DB, TRUE_PEAK_UNDER_DB = 0.2, 0.4


def sine(dbfs: float, seconds: float, frequency: float = 1000.0, phase_deg: float = 0.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return 10 ** (dbfs / 20) * np.sin(2 * np.pi * frequency * t + np.deg2rad(phase_deg))


def stereo(*parts: tuple[float, float]) -> np.ndarray:
    """Tech 3341's stereo 1 kHz sequences: (level dBFS, seconds) one after another, in both channels."""
    tone = np.concatenate([sine(level, seconds) for level, seconds in parts])
    return np.stack([tone, tone]).astype(np.float32)


def surround() -> np.ndarray:
    """1 kHz, L R C at −28 dBFS, Ls Rs at −24.5 dBFS, LFE at 0 dBFS, 20 s (FFmpeg's 5.1 order)."""
    front, rear = sine(-28.0, 20), sine(-24.5, 20)
    return np.stack([front, front, front, sine(0.0, 20, 50.0), rear, rear]).astype(np.float32)


def by_hand(levels_and_weights: list[tuple[float, float]]) -> float:
    """BS.1770-4 for steady 1 kHz sines, from its calibration (a 0 dBFS 1 kHz sine in one front
    channel reads −3.01 LKFS) and its channel weights (1.0 front, 1.41 surround, LFE left out)."""
    return -3.01 + 10 * np.log10(sum(weight * 10 ** (level / 10) for level, weight in levels_and_weights))


TECH_3341 = {  # case: (signal, integrated loudness: as the document gives it, or by hand)
    "1 stereo -23 dBFS 20 s": (lambda: stereo((-23, 20)), -23.0),
    "2 stereo -33 dBFS 20 s": (lambda: stereo((-33, 20)), -33.0),
    "3 -36/-23/-36 dBFS, relative gate": (lambda: stereo((-36, 10), (-23, 60), (-36, 10)), -23.0),
    "4 -72/-36/-23/-36/-72 dBFS, both gates": (lambda: stereo((-72, 10), (-36, 10), (-23, 60), (-36, 10), (-72, 10)),
                                               -23.0),
    "5 -26/-20/-26 dBFS": (lambda: stereo((-26, 20), (-20, 20.1), (-26, 20)), -23.0),
    "5.1: surrounds weighted 1.41, LFE left out": (surround, by_hand([(-28.0, 1.0)] * 3 + [(-24.5, 1.41)] * 2)),
}


@pytest.mark.parametrize("case", sorted(TECH_3341))
def test_integrated_loudness_of_the_tech_3341_signals(case: str) -> None:
    make, expected = TECH_3341[case]
    audio = make()
    assert integrated_loudness(audio, RATE) == pytest.approx(expected, abs=LOUDNESS_TOLERANCE_LU)
    assert ebur128(audio)[0] == pytest.approx(expected, abs=LOUDNESS_TOLERANCE_LU)  # the reference agrees


def band_limited_sine(divisor: int, phase_deg: float, amplitude_dbfs: float = -6.02) -> np.ndarray:
    """A sine at fs/divisor whose samples miss its crests (the phase), faded in and out over 100 ms so
    the signal is band-limited at its ends too: its true peak is exactly its amplitude."""
    tone = sine(amplitude_dbfs, 2.0, RATE / divisor, phase_deg)
    fade = np.sin(np.linspace(0, np.pi / 2, RATE // 10)) ** 2
    tone[: fade.size] *= fade
    tone[-fade.size:] *= fade[::-1]
    return np.stack([tone, tone]).astype(np.float32)


@pytest.mark.parametrize(("divisor", "phase_deg"), [(4, 45.0), (6, 60.0), (8, 67.5)])
def test_true_peak_finds_the_crest_between_samples(divisor: int, phase_deg: float) -> None:
    """Tech 3341 cases 15-18 in spirit: sample peaks of −9.0, −7.3 and −6.7 dBFS on a −6.02 dBTP sine."""
    audio = band_limited_sine(divisor, phase_deg)
    assert db(float(np.abs(audio).max())) < -6.5  # the samples themselves miss the crest
    for measured in (true_peak_dbtp(audio), ebur128(audio)[1]):
        assert -6.02 - TRUE_PEAK_UNDER_DB <= measured <= -6.02 + TRUE_PEAK_OVER_DB, measured


@pytest.mark.parametrize("profile", [EBU_R128, ATSC_A85, STREAMING, parse_loudness_profile("custom:-20:1:-1")],
                         ids=lambda p: p.name)
def test_mixing_to_a_profile_lands_on_it_by_ffmpegs_meter(profile: LoudnessProfile) -> None:
    """Noise with sharp clicks: the limiter has work to do at every target. Measured by ffmpeg, the
    true peak may read up to a meter's tolerance (+0.2 dB) over the ceiling dubflow's meter held."""
    rng = np.random.default_rng(7)
    mix = (0.05 * rng.standard_normal((2, 6 * RATE))).astype(np.float32)
    mix[:, rng.integers(0, 6 * RATE, 60)] = 0.9
    limited, _ = mix_to_profile(mix, RATE, profile)
    integrated, true_peak = ebur128(limited)
    assert abs(integrated - profile.target_lufs) <= profile.tolerance_lu
    assert true_peak <= profile.max_true_peak_dbtp + TRUE_PEAK_OVER_DB
