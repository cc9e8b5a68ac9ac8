"""Loudness profiles, dialogue activity and mixing to a profile, measured by ffmpeg's own EBU R128
meter (`ebur128=peak=true`): not pyloudnorm and `resample_poly`, the library and method dubflow
itself measures with. Two meters may differ by their tolerances (EBU Tech 3341: ±0.1 LU on steady
signals, true peak +0.2/−0.4 dB), which the assertions allow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dubflow.media.audio import dialogue_regions, mix_to_profile, program_loudness
from dubflow.media.loudness_profiles import (
    ATSC_A85,
    EBU_R128,
    LOUDNESS_PROFILES,
    NETFLIX,
    STREAMING,
    LoudnessProfile,
    LoudnessProfileError,
    parse_loudness_profile,
)
from dubflow.media.io import read_audio
from media_corpus import ebur128

RATE = 48_000
METER_LU = 0.1  # two BS.1770 meters agree within this on the same signal
METER_PEAK_DB = 0.2  # a true-peak meter may read this much over another


def bs1770_lufs(audio: np.ndarray) -> float:
    """Integrated loudness by ffmpeg's EBU R128 meter (LFE left out of a 5.1 by the meter itself)."""
    return ebur128(audio)[0]


def true_peak(audio: np.ndarray) -> float:
    """True peak in dBTP by ffmpeg's EBU R128 meter."""
    return ebur128(audio)[1]


def test_profiles_are_those_of_the_delivery_spec() -> None:
    table = {name: (p.target_lufs, p.tolerance_lu, p.max_true_peak_dbtp, p.dialogue_gated)
             for name, p in LOUDNESS_PROFILES.items()}
    assert table == {
        "ebu-r128": (-23.0, 0.5, -1.0, False),
        "netflix": (-27.0, 2.0, -2.0, True),
        "atsc-a85": (-24.0, 2.0, -2.0, False),
        "streaming": (-16.0, 1.0, -1.0, False),
    }
    assert "approximation of Dolby dialogue gating" in NETFLIX.measured_on
    assert EBU_R128.measured_on == "full mix, BS.1770-4 gated"


def test_custom_targets_parse_and_bad_ones_say_how_to_fix() -> None:
    assert parse_loudness_profile("netflix") is NETFLIX
    assert parse_loudness_profile("custom:-20:1:-1") == LoudnessProfile("custom:-20:1:-1", -20.0, 1.0, -1.0)
    gated = parse_loudness_profile("custom:-24.5:2:-2:dialogue")
    assert (gated.target_lufs, gated.tolerance_lu, gated.max_true_peak_dbtp, gated.dialogue_gated) == (-24.5, 2.0, -2.0, True)
    for text, message in [
        ("r128", "unknown loudness profile 'r128': use one of ebu-r128, netflix, atsc-a85, streaming or custom:"),
        ("custom:-20:1", "is not custom:TARGET_LUFS:TOLERANCE_LU:MAX_TRUE_PEAK_DBTP"),
        ("custom:-20:1:-1:music", "is not custom:TARGET_LUFS"),
        ("custom:loud:1:-1", "must be numbers"),
        ("custom:-20:0:-1", "tolerance 0 LU must be above 0"),
        ("custom:6:1:-1", "target 6 LUFS must lie between -70 and 0"),
        ("custom:-20:1:3", "true-peak ceiling 3 dBTP must lie between -20 and 0"),
    ]:
        with pytest.raises(LoudnessProfileError) as info:
            parse_loudness_profile(text)
        assert message in str(info.value)


def _bursts(spans: list[tuple[float, float]], seconds: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    tone = level * np.sin(2 * np.pi * 220 * t)
    gate = np.zeros_like(t)
    for start, end in spans:
        gate[(t >= start) & (t < end)] = 1
    return np.stack([tone * gate, tone * gate]).astype(np.float32)


def test_dialogue_regions_bridge_word_gaps_and_split_at_pauses() -> None:
    speech = _bursts([(0.5, 1.5), (1.6, 2.1), (3.1, 3.4)], 4.0)  # 100 ms between words, 1 s pause
    regions = [(start / RATE, end / RATE) for start, end in dialogue_regions(speech, RATE)]
    assert len(regions) == 2
    np.testing.assert_allclose(regions, [(0.5, 2.1), (3.1, 3.4)], atol=0.02)
    assert dialogue_regions(np.zeros((2, RATE), np.float32), RATE) == []
    assert dialogue_regions(speech * np.float32(10 ** (-80 / 20)), RATE) == []  # under the -70 dBFS floor
    assert dialogue_regions(_bursts([(0.5, 0.56)], 1.0), RATE) == []  # a 60 ms click is not speech
    assert dialogue_regions(np.zeros((1, 0), np.float32), RATE) == []


def test_dialogue_gated_loudness_ignores_the_bed_between_lines() -> None:
    speech = _bursts([(0.5, 2.0)], 6.0, level=0.1)
    bed = (0.3 * np.random.default_rng(0).standard_normal((2, 6 * RATE))).astype(np.float32)
    bed[:, int(0.4 * RATE):int(2.1 * RATE)] *= 0.01  # the loud bed plays only after the line
    mix = speech + bed
    regions = dialogue_regions(speech, RATE)
    start, end = regions[0]
    assert program_loudness(mix, RATE, NETFLIX, regions) == pytest.approx(bs1770_lufs(mix[:, start:end]), abs=METER_LU)
    assert program_loudness(mix, RATE, EBU_R128) == pytest.approx(bs1770_lufs(mix), abs=METER_LU)
    assert program_loudness(mix, RATE, EBU_R128) > program_loudness(mix, RATE, NETFLIX, regions) + 6
    assert program_loudness(mix, RATE, NETFLIX, []) is None
    with pytest.raises(ValueError, match="dialogue-gated"):
        program_loudness(mix, RATE, NETFLIX)


@pytest.mark.parametrize("profile", [EBU_R128, NETFLIX, ATSC_A85, STREAMING, parse_loudness_profile("custom:-20:1:-1")],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("shot_id", ["sc01_sh010", "sc02_sh010"])
def test_sample_mixes_reach_every_profile_under_its_true_peak(samples_dir: Path, shot_id: str,
                                                               profile: LoudnessProfile) -> None:
    dialogue, rate = read_audio(samples_dir / "stems" / f"{shot_id}_dialogue.wav")
    bed, _ = read_audio(samples_dir / "stems" / f"{shot_id}_bed.wav")
    regions = dialogue_regions(dialogue, rate) if profile.dialogue_gated else None
    mixed, _ = mix_to_profile(dialogue + bed, rate, profile, regions)
    measured, peak = ebur128(mixed)  # one run of the meter gives both
    if profile.dialogue_gated:
        # independent gating: where the known dialogue stem is not silent, first sample to last
        speaking = np.flatnonzero(np.abs(dialogue).max(axis=0) > 0)
        measured = bs1770_lufs(mixed[:, speaking[0]:speaking[-1] + 1])
    assert abs(measured - profile.target_lufs) <= profile.tolerance_lu
    assert peak <= profile.max_true_peak_dbtp + METER_PEAK_DB


def test_limiting_keeps_the_target_on_a_peaky_mix() -> None:
    """Streaming's -16 LUFS under -1 dBTP makes the limiter work hard on sharp transients; the gain
    is corrected after limiting so the mix still lands on target."""
    rng = np.random.default_rng(4)
    clicks = np.zeros((2, 5 * RATE), np.float32)
    clicks[:, rng.integers(0, 5 * RATE, 200)] = 0.9
    mix = (0.02 * rng.standard_normal((2, 5 * RATE))).astype(np.float32) + clicks
    limited, _ = mix_to_profile(mix, RATE, STREAMING)
    loudness, peak = ebur128(limited)
    assert peak <= -1.0 + METER_PEAK_DB
    assert abs(loudness - STREAMING.target_lufs) <= STREAMING.tolerance_lu / 10 + METER_LU


def test_short_mixes_are_left_unmeasured_and_only_limited() -> None:
    short = (0.5 * np.ones((2, RATE // 4))).astype(np.float32)  # 250 ms: under one 400 ms gating block
    limited, gain_db = mix_to_profile(short, RATE, EBU_R128)
    assert gain_db == 0.0 and program_loudness(short, RATE, EBU_R128) is None
    assert true_peak(limited) <= -1.0 + METER_PEAK_DB
