"""Separation, remix and QC on the sample shots (`small_samples_dir`: their sound, frame counts and
rates, at a quarter of the picture size, which no check here depends on) through the real stage
functions (smoke separator),
with the LipDub take stood in by the source picture and a generated-audio file made of the known
dialogue stem plus regenerated ambience, as LipDub writes it (16 kHz stereo). Then faults are
planted in copies of a good delivery and QC must report each with the value it measured."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
from scipy import signal

from dubflow.manifests.schema import ManifestRow
from dubflow.models.separator import SeparatorSpec, build_smoke_separator
from dubflow.media.audio import fit_length, picture_samples
from dubflow.media.loudness_profiles import EBU_R128
from dubflow.tasks.conform import conform_shot
from dubflow.tasks.lipdub import DubbedTake
from dubflow.media.io import AudioTrack, Colour, PictureFormat, quantize_pcm24, read_audio, read_frames, read_track, write_video, write_wav
from dubflow.tasks.mux import mux_pair
from dubflow.tasks.qc import PairDeliverables, QCFailedError, qc_deliverables, qc_pair
from dubflow.tasks.remix import place_dialogue, remix_pair
from dubflow.tasks.separate import separate_shot
from dubflow.tasks.subtitles import subtitle_pair
from dubflow.tasks.validate import validate_manifest
from media_corpus import decode_audio, probe_sounds

GENERATED_RATE = 16_000


@pytest.fixture(scope="module")
def separator(tmp_path_factory: pytest.TempPathFactory) -> SeparatorSpec:
    name, repo = build_smoke_separator(tmp_path_factory.mktemp("demucs"))
    return SeparatorSpec(name, repo)


@pytest.fixture(scope="module")
def manifest(small_samples_dir: Path):
    return validate_manifest(small_samples_dir / "manifest.csv")


def _row(manifest, shot_id: str, language: str) -> ManifestRow:
    return next(r for r in manifest.rows if (r.shot_id, r.language) == (shot_id, language))


def _stand_in_take(samples_dir: Path, shot, language: str, work: Path) -> DubbedTake:
    """The source picture re-encoded as LipDub writes it, and 'generated' speech with ambience."""
    pair_dir = work / shot.shot_id / language
    pair_dir.mkdir(parents=True)
    picture = write_video(pair_dir / "picture.mov", read_frames(shot.source), shot.media.fps, codec="png")
    known, rate = read_audio(samples_dir / "stems" / f"{shot.shot_id}_dialogue.wav")
    voice = known.sum(axis=0) / np.sqrt(np.count_nonzero(known.any(axis=1)))
    voice = signal.resample_poly(voice, GENERATED_RATE, rate)
    ambience = 0.01 * np.random.default_rng(1).standard_normal((2, voice.size))
    audio = write_wav(pair_dir / "generated.wav",
                      AudioTrack((np.stack([voice, voice]) + ambience).astype(np.float32), GENERATED_RATE, "stereo"))
    return DubbedTake(shot.shot_id, language, "prompt", 0, picture, audio)


def _deliver(samples_dir, manifest, separator, shot_id, language, work: Path) -> dict:
    shot = manifest.shots[shot_id]
    conformed = conform_shot(shot, work / "conform")
    separated = separate_shot(shot, conformed, separator, work)
    take = _stand_in_take(samples_dir, shot, language, work)
    remixed = remix_pair(take, separated, shot, work, separator, EBU_R128)
    files = PairDeliverables(
        review_copy=mux_pair(take, remixed, shot, work),
        mix=remixed.mix,
        dialogue=remixed.dialogue,
        bed=separated.bed,
        original_dialogue=separated.dialogue,
        subtitles=subtitle_pair(_row(manifest, shot_id, language), remixed, shot, work),
        source_soundtrack=conformed,
    )
    return {"shot": shot, "conformed": conformed, "separated": separated, "take": take, "remixed": remixed,
            "files": files}


@pytest.fixture(scope="module")
def stereo_pair(small_samples_dir, manifest, separator, tmp_path_factory) -> dict:
    return _deliver(small_samples_dir, manifest, separator, "sc01_sh010", "fr", tmp_path_factory.mktemp("stereo"))


@pytest.fixture(scope="module")
def surround_pair(small_samples_dir, manifest, separator, tmp_path_factory) -> dict:
    return _deliver(small_samples_dir, manifest, separator, "sc02_sh010", "de", tmp_path_factory.mktemp("surround"))


# -- separation and remix -------------------------------------------------------------------------------


def test_dialogue_plus_bed_is_the_source_mix_on_every_sample_shot(manifest, separator, tmp_path) -> None:
    """Against the soundtrack as the ffmpeg CLI decodes it (the sample shots' sound starts with the
    picture): to the 24-bit step for PCM, to float rounding between two AAC decoders for the MP4
    (whose decoded padding past the picture the conform trims)."""
    for shot in manifest.shots.values():
        separated = separate_shot(shot, conform_shot(shot, tmp_path / "conform"), separator, tmp_path / shot.shot_id)
        samples = picture_samples(shot.media.frame_count, shot.media.fps, 48_000)
        source = decode_audio(shot.source)
        dialogue, bed = decode_audio(separated.dialogue), decode_audio(separated.bed)
        assert dialogue.shape == bed.shape == (source.shape[0], samples) and source.shape[1] >= samples
        pcm = probe_sounds(shot.source)[0].codec.startswith("pcm")
        np.testing.assert_allclose(dialogue + bed, source[:, :samples], atol=2**-23 if pcm else 1e-5)


def test_the_surround_shot_keeps_six_channels_and_its_dialogue_in_the_centre(surround_pair) -> None:
    original_dx, _ = read_audio(surround_pair["separated"].dialogue)
    new_dx, _ = read_audio(surround_pair["remixed"].dialogue)
    for dx in (original_dx, new_dx):
        assert dx.shape[0] == 6 and not dx[[0, 1, 3, 4, 5]].any()
        assert pyloudnorm.Meter(48_000).integrated_loudness(dx[2].astype(np.float64)) > -70  # not silent
    bed = read_track(surround_pair["separated"].bed)
    mix = read_track(surround_pair["remixed"].mix)
    assert (bed.layout, bed.samples.shape[0], mix.layout) == ("5.1", 6, "5.1")


def test_new_dialogue_is_isolated_and_matched_to_the_original(stereo_pair, separator) -> None:
    shot, remixed = stereo_pair["shot"], stereo_pair["remixed"]
    samples = picture_samples(shot.media.frame_count, shot.media.fps, 48_000)
    original, _ = read_audio(stereo_pair["separated"].dialogue)
    new, _ = read_audio(remixed.dialogue)
    meter = pyloudnorm.Meter(48_000)
    assert meter.integrated_loudness(new.T.astype(np.float64)) == pytest.approx(
        meter.integrated_loudness(fit_length(original, samples).T.astype(np.float64)), abs=0.05)
    # the DX is the separator's dialogue of the generated audio (its regenerated ambience left out)
    generated, rate = read_audio(stereo_pair["take"].audio)
    isolated = separator.resident().separate(generated, rate, "stereo").dialogue
    expected = place_dialogue(fit_length(isolated, samples), 2, (0, 1)) * 10 ** (remixed.dialogue_gain_db / 20)
    np.testing.assert_array_equal(new, quantize_pcm24(expected) / 2**23)
    mix, _ = read_audio(remixed.mix)
    assert mix.shape[1] == new.shape[1] == samples == 144_144  # exactly the picture: 72 frames at 24000/1001


# -- QC -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pair", ["stereo_pair", "surround_pair"])
def test_good_deliveries_pass_every_check(request, pair: str) -> None:
    delivered = request.getfixturevalue(pair)
    report = qc_pair(delivered["shot"], delivered["take"].language, delivered["files"])
    assert report.passed, report.summary()
    names = {check.name for check in report.checks}
    assert {"review copy frame count", "review copy A/V offset", "mix true peak", "loudness (ebu-r128)",
            "dialogue present", "dialogue + bed reproduce the original mix", "SRT subtitles inside the shot",
            "WebVTT subtitles inside the shot", "M&E channels", "dialogue bit depth"} <= names


def _planted(pair: dict, tmp_path: Path, **changes: Path) -> PairDeliverables:
    """A copy of the pair's files with some of them replaced."""
    files = pair["files"]
    copies = {}
    for field in ("review_copy", "mix", "dialogue"):
        copies[field] = Path(shutil.copy(getattr(files, field), tmp_path / Path(getattr(files, field)).name))
    return replace(files, **{**copies, **changes})


def _failed(report) -> dict[str, str]:
    return {check.name: check.measured for check in report.failures()}


def test_qc_reports_a_clipped_mix(stereo_pair, tmp_path) -> None:
    mix = read_track(stereo_pair["files"].mix)
    clipped = write_wav(tmp_path / "clipped.wav", replace(mix, samples=mix.samples * np.float32(8)))
    report = qc_pair(stereo_pair["shot"], "fr", _planted(stereo_pair, tmp_path, mix=clipped))
    failed = _failed(report)
    full_scale = int(np.count_nonzero(np.abs(read_audio(clipped)[0]) >= 1 - 2**-23))
    assert failed["mix clipping"] == f"{full_scale} samples at full scale" and full_scale > 100
    assert failed["mix true peak"].endswith(" dBTP") and float(failed["mix true peak"].split()[0]) > -1.0
    assert "loudness (ebu-r128)" in failed


def test_qc_reports_a_mix_at_44_1_khz(stereo_pair, tmp_path) -> None:
    mix = read_track(stereo_pair["files"].mix)
    resampled = signal.resample_poly(mix.samples, 147, 160, axis=1).astype(np.float32)
    wrong_rate = write_wav(tmp_path / "mix441.wav", AudioTrack(resampled, 44_100, mix.layout))
    failed = _failed(qc_pair(stereo_pair["shot"], "fr", _planted(stereo_pair, tmp_path, mix=wrong_rate)))
    assert failed == {"mix sample rate": "44100 Hz"}


def test_qc_reports_a_picture_one_frame_short(stereo_pair, tmp_path) -> None:
    shot = stereo_pair["shot"]
    frames = read_frames(stereo_pair["take"].picture)[:-1]
    short = write_video(tmp_path / "short.mp4", frames, shot.media.fps, [read_track(stereo_pair["files"].mix)])
    failed = _failed(qc_pair(shot, "fr", _planted(stereo_pair, tmp_path, review_copy=short)))
    assert failed["review copy frame count"] == "71"
    picture_s = 71 * 1001 / 24000
    assert failed["review copy audio duration"] == (
        f"audio 3.003000 s, picture {picture_s:.6f} s ({(3.003 - picture_s) * 1000:.3f} ms apart)")
    assert set(failed) == {"review copy frame count", "review copy audio duration"}


def test_qc_reports_a_silent_dialogue_stem(stereo_pair, tmp_path) -> None:
    dx = read_track(stereo_pair["files"].dialogue)
    silent = write_wav(tmp_path / "silent_dx.wav", replace(dx, samples=np.zeros_like(dx.samples)))
    failed = _failed(qc_pair(stereo_pair["shot"], "fr", _planted(stereo_pair, tmp_path, dialogue=silent)))
    assert failed == {"dialogue present": "0.00 s of dialogue, silent (peak -inf dBFS)"}


def test_a_failed_pair_is_delivered_only_when_warnings_are_allowed(stereo_pair, tmp_path) -> None:
    """Through the function the QC task runs: an impossible loudness target fails QC genuinely."""
    impossible = replace(stereo_pair["remixed"], loudness=replace(EBU_R128, name="custom:-5:0.5:-1", target_lufs=-5.0))
    review = Path(shutil.copy(stereo_pair["files"].review_copy, tmp_path / "sc01_sh010_fr.mp4"))
    arguments = (stereo_pair["shot"], stereo_pair["conformed"], stereo_pair["separated"], impossible, review, stereo_pair["files"].subtitles, None)
    with pytest.raises(QCFailedError, match=r"loudness \(custom:-5:0.5:-1\) = -2\d\.\d\d LUFS \(expected -5 ± 0.5 LU\)"):
        qc_deliverables(*arguments, False, tmp_path)
    result = qc_deliverables(*arguments, True, tmp_path)
    assert len(result.failures) == 1 and result.failures[0].startswith("loudness (custom:-5:0.5:-1) = ")
    report = json.loads(result.report.read_text())
    assert report["status"] == "failed, delivered with QC warnings allowed" and report["allow_warnings"]
    summary = result.summary.read_text()
    assert result.summary.name == "sc01_sh010_fr_qc.txt"
    assert summary.startswith("QC sc01_sh010 fr: FAILED (1 of ")
    assert "delivered anyway: QC warnings allowed" in summary
    assert "FAIL  loudness (custom:-5:0.5:-1)" in summary.splitlines()[6]  # failures listed first
    assert f"{len(report['checks'])} checks" in summary.splitlines()[0]


def test_qc_reports_a_review_copy_that_loses_the_source_geometry_and_colour(stereo_pair, tmp_path) -> None:
    shot = stereo_pair["shot"]
    frames = read_frames(stereo_pair["take"].picture)
    squeezed = PictureFormat(shot.media.fps, Fraction(4, 3), Colour(primaries=9, transfer=16, matrix=9, range=1))
    wrong = write_video(tmp_path / "wrong.mp4", frames, squeezed, [read_track(stereo_pair["files"].mix)])
    failed = _failed(qc_pair(shot, "fr", _planted(stereo_pair, tmp_path, review_copy=wrong)))
    height, width = frames.shape[1:3]
    assert failed == {"review copy display size": f"{width}×{height}, SAR 4/3",
                      "review copy colour tags": "primaries 9, transfer 16, matrix 9, range 1"}
