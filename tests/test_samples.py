from __future__ import annotations

from pathlib import Path

import numpy as np

from dubflow.flows.cli import main
from dubflow.manifests.samples import SAMPLE_SHOTS
from dubflow.media.io import read_audio


def test_stems_add_up_to_the_shot_soundtrack(samples_dir: Path) -> None:
    for shot in SAMPLE_SHOTS:
        mix, rate = read_audio(samples_dir / "shots" / f"{shot.shot_id}.mov")
        dialogue, _ = read_audio(samples_dir / "stems" / f"{shot.shot_id}_dialogue.wav")
        bed, _ = read_audio(samples_dir / "stems" / f"{shot.shot_id}_bed.wav")
        assert rate == 48_000 and mix.shape == dialogue.shape == bed.shape
        np.testing.assert_allclose(dialogue + bed, mix, atol=2 / 2**23)
        assert np.abs(dialogue).max() > 0.1 and np.abs(bed).max() > 0.01


def test_surround_shot_carries_dialogue_in_centre_only(samples_dir: Path) -> None:
    (shot,) = [s for s in SAMPLE_SHOTS if s.layout == "5.1"]
    dialogue, _ = read_audio(samples_dir / "stems" / f"{shot.shot_id}_dialogue.wav")
    energy = (dialogue**2).sum(axis=1)
    assert energy[2] > 0 and np.count_nonzero(energy) == 1


def test_sample_command_writes_valid_manifests(tmp_path: Path) -> None:
    assert main(["sample", str(tmp_path)]) == 0
    assert main(["validate", str(tmp_path / "manifest.csv")]) == 0
    assert main(["validate", str(tmp_path / "manifest.parquet")]) == 0
