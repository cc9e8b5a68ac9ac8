"""The sample shots, read back by ffmpeg and ffprobe (not dubflow's own reader)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from dubflow.flows.cli import main
from dubflow.manifests.samples import SAMPLE_SHOTS
from media_corpus import decode_audio, probe_picture, probe_sounds


def test_stems_add_up_to_the_shot_soundtrack(samples_dir: Path) -> None:
    """Exactly in the PCM MOVs; in the AAC MP4 to within what AAC loses (and over its whole length:
    its encoder priming is hidden by the edit list, so the sound starts with the picture)."""
    for shot in SAMPLE_SHOTS:
        mix = decode_audio(samples_dir / "shots" / shot.file_name)
        dialogue = decode_audio(samples_dir / "stems" / f"{shot.shot_id}_dialogue.wav")
        bed = decode_audio(samples_dir / "stems" / f"{shot.shot_id}_bed.wav")
        samples = int(shot.frame_count * 48_000 / shot.fps)
        assert dialogue.shape == bed.shape == (mix.shape[0], samples)
        assert probe_sounds(samples_dir / "shots" / shot.file_name)[0].sample_rate == 48_000
        if shot.container == ".mov":
            np.testing.assert_allclose(dialogue + bed, mix, atol=2 / 2**23)
        else:
            error = mix[:, :samples] - (dialogue + bed)
            assert 10 * np.log10(np.sum((dialogue + bed) ** 2) / np.sum(error**2)) > 20  # SNR in dB
        assert np.abs(dialogue).max() > 0.1 and np.abs(bed).max() > 0.01


def test_the_samples_include_an_aac_mp4_lasting_no_whole_millisecond(samples_dir: Path) -> None:
    awkward = [shot for shot in SAMPLE_SHOTS if shot.container == ".mp4"]
    assert awkward
    for shot in awkward:
        path = samples_dir / "shots" / shot.file_name
        picture = probe_picture(path)
        assert probe_sounds(path)[0].codec == "aac"
        assert (picture.frames, picture.rate) == (shot.frame_count, shot.fps)
        assert (Fraction(picture.frames) / picture.rate * 1000).denominator != 1


def test_surround_shot_carries_dialogue_in_centre_only(samples_dir: Path) -> None:
    (shot,) = [s for s in SAMPLE_SHOTS if s.layout == "5.1"]
    dialogue = decode_audio(samples_dir / "stems" / f"{shot.shot_id}_dialogue.wav")
    energy = (dialogue**2).sum(axis=1)
    assert energy[2] > 0 and np.count_nonzero(energy) == 1


def test_sample_command_writes_valid_manifests(tmp_path: Path) -> None:
    assert main(["sample", str(tmp_path)]) == 0
    assert main(["validate", str(tmp_path / "manifest.csv")]) == 0
    assert main(["validate", str(tmp_path / "manifest.parquet")]) == 0
