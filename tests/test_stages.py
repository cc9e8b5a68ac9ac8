"""Stage logic through the plain functions: remix arithmetic, publishing, QC."""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dubflow.media.audio import integrated_loudness, limit_true_peak, picture_samples, true_peak_dbtp
from dubflow.media.files import sha256_file
from dubflow.tasks.publish import DeliveryFile, PairOutcome, publish_local
from dubflow.tasks.remix import overlay, place_dialogue


@pytest.mark.parametrize("samples", [4800, 7 * 2002, 2000])  # 100 ms; 7 frames at 24000/1001; 1 frame at 24
def test_overlay_is_exact_and_does_not_clip(samples: int) -> None:
    """Both signals already on the 24-bit grid (whole steps of 2^-23), so the exact sum is known by
    plain integer addition, at lengths that are no whole number of milliseconds too."""
    rng = np.random.default_rng(0)
    steps_a = rng.integers(-7 * 2**20, 7 * 2**20, (2, samples))
    steps_b = rng.integers(-7 * 2**20, 7 * 2**20, (2, samples))
    mixed = overlay((steps_a / 2**23).astype(np.float32), (steps_b / 2**23).astype(np.float32))
    np.testing.assert_array_equal(mixed, ((steps_a + steps_b) / 2**23).astype(np.float32))
    assert mixed.shape == (2, samples)
    assert np.abs(mixed).max() > 1.0  # headroom kept for the loudness stage, nothing clipped here


def test_new_dialogue_goes_where_the_old_one_was() -> None:
    speech = np.ones((2, 10), np.float32) * 0.5
    surround = place_dialogue(speech, 6, (2,))
    assert np.count_nonzero(surround.any(axis=1)) == 1 and surround[2, 0] == pytest.approx(0.5 * np.sqrt(2))
    np.testing.assert_array_equal(place_dialogue(speech, 2, (0, 1)), speech)


def test_picture_duration_in_samples_is_exact() -> None:
    assert picture_samples(72, Fraction(24000, 1001), 48_000) == 144_144


def test_loudness_is_none_for_short_or_silent_audio() -> None:
    assert integrated_loudness(np.ones((2, 1000), np.float32) * 0.1, 48_000) is None
    assert integrated_loudness(np.zeros((2, 48_000), np.float32), 48_000) is None
    tone = 0.1 * np.sin(2 * np.pi * 1000 * np.arange(48_000) / 48_000)
    assert integrated_loudness(np.stack([tone, tone]), 48_000) == pytest.approx(-20.0, abs=0.2)  # BS.1770 calibration


def _delivery_files(tmp_path: Path, payload: bytes) -> list[DeliveryFile]:
    source = tmp_path / "work" / "a.wav"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(payload)
    return [DeliveryFile(source, "sh1/fr/sh1_fr_mix.wav", "mix", "sh1", "fr")]


def test_publish_replaces_a_run_whole_and_leaves_no_staging(tmp_path: Path) -> None:
    outcome = [PairOutcome("sh1", "fr", "delivered", None, 1.0)]
    run = publish_local(tmp_path / "out", "r1", _delivery_files(tmp_path, b"first"), outcome, {})
    publish_local(tmp_path / "out", "r1", _delivery_files(tmp_path, b"second"), outcome, {})
    manifest = json.loads((run / "delivery.json").read_text())
    assert (run / "sh1/fr/sh1_fr_mix.wav").read_bytes() == b"second"
    assert manifest["files"][0]["sha256"] == sha256_file(run / "sh1/fr/sh1_fr_mix.wav")
    assert os.listdir(tmp_path / "out") == ["r1"]


def test_failed_publish_keeps_the_previous_delivery(tmp_path: Path) -> None:
    outcome = [PairOutcome("sh1", "fr", "delivered", None, 1.0)]
    run = publish_local(tmp_path / "out", "r1", _delivery_files(tmp_path, b"good"), outcome, {})
    broken = [DeliveryFile(tmp_path / "missing.wav", "sh1/fr/x.wav", "mix", "sh1", "fr")]
    with pytest.raises(FileNotFoundError):
        publish_local(tmp_path / "out", "r1", broken, outcome, {})
    assert (run / "sh1/fr/sh1_fr_mix.wav").read_bytes() == b"good" and (run / "delivery.json").is_file()
    assert os.listdir(tmp_path / "out") == ["r1"]


def test_true_peak_limiter_holds_the_ceiling_and_leaves_quiet_audio_alone() -> None:
    rng = np.random.default_rng(3)
    loud = (rng.standard_normal((2, 48_000)) * 0.4).astype(np.float32)
    assert true_peak_dbtp(loud) > 0
    assert true_peak_dbtp(limit_true_peak(loud, 48_000, -1.0)) <= -1.0
    quiet = loud * np.float32(0.05)
    np.testing.assert_array_equal(limit_true_peak(quiet, 48_000, -1.0), quiet)
