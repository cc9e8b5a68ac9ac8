"""Stage 3, per (shot, language): new dialogue, level-matched to the original, over the shared bed.

LipDub's generated audio may carry regenerated ambience besides the new line, so its dialogue is
isolated with the run's separator first: the bed comes from the source, never from the generator.
The new dialogue then gets the loudness of the shot's original dialogue stem, so the original
dialogue/bed balance survives, and the sum goes to the delivery loudness profile through a
true-peak limiter, exactly as long as the picture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.manifests.schema import ManifestRow, resolve_source
from dubflow.models.separator import SeparatorSpec, resample_to_delivery
from dubflow.media.files import sha256_file
from dubflow.media.audio import (
    db_to_gain,
    dialogue_regions,
    fit_length,
    integrated_loudness,
    mix_to_profile,
    picture_samples,
    program_loudness,
)
from dubflow.media.loudness_profiles import EBU_R128, LoudnessProfile
from dubflow.tasks.lipdub import DubbedTake
from dubflow.media.io import (
    DELIVERY_SAMPLE_RATE,
    PCM24_MAX,
    AudioTrack,
    audio_layout_name,
    quantize_pcm24,
    read_audio,
    write_wav,
)
from dubflow.tasks.separate import SeparatedShot
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.validate import Shot

REMIX_VERSION = 2  # bump when the stage's output changes for the same inputs


@dataclass(frozen=True)
class RemixedPair:
    shot_id: str
    language: str
    mix: Path
    dialogue: Path  # the new dialogue as it sits in the mix before the mix gain: mix = (DX + M&E) × gain, limited
    loudness: LoudnessProfile
    original_dialogue_lufs: float | None  # what the new dialogue was matched to (None: unmeasurable, no gain)
    dialogue_gain_db: float  # applied to the isolated new dialogue to match the original dialogue's loudness
    mix_gain_db: float  # applied to dialogue + bed to reach the loudness target
    mix_lufs: float | None  # as the profile measures it, after the limiter
    # With supplied dialogue (the manifest's `dialogue` column) `dialogue` is that recording and this is
    # LipDub's own speech, level-matched the same way: what the lips follow, kept for the reviewer and QC.
    generated_dialogue: Path | None = None


@dataclass(frozen=True)
class SuppliedDialogue:
    """A row's own dialogue file, mixed instead of the generated speech."""

    path: Path
    sha256: str


def supplied_dialogue(manifest_path: Path, row: ManifestRow) -> SuppliedDialogue | None:
    """The row's `dialogue` file (validated by `check_supplied_dialogue`), or None when it has none."""
    if not row.dialogue:
        return None
    path = resolve_source(manifest_path, row.dialogue)
    return SuppliedDialogue(path, sha256_file(path))


def place_dialogue(new_dialogue: np.ndarray, channels: int, dialogue_channels: tuple[int, ...]) -> np.ndarray:
    """Put the generated (stereo) speech where the original dialogue lived: centre of a 5.1, L/R of stereo."""
    target = np.zeros((channels, new_dialogue.shape[-1]), np.float32)
    if len(dialogue_channels) == new_dialogue.shape[0]:
        target[list(dialogue_channels)] = new_dialogue
    else:
        # Folding stereo into one channel (mono, or a 5.1 centre) sums at −3 dB to keep the level.
        target[list(dialogue_channels)] = new_dialogue.mean(axis=0) * np.sqrt(2) / np.sqrt(len(dialogue_channels))
    return target


def overlay(dialogue: np.ndarray, bed: np.ndarray) -> np.ndarray:
    """dialogue + bed, sample for sample, on the 24-bit grid the delivered files hold.

    Both are quantized to 24-bit steps and summed as 32-bit integers (48 dB of headroom above full
    scale, so nothing clips here: the limiter comes after). The arrays must be the same shape: the
    picture's exact sample count, never a grid of milliseconds.
    """
    if dialogue.shape != bed.shape:
        raise ValueError(f"dialogue {dialogue.shape} and bed {bed.shape} must be the same shape to overlay")
    return ((quantize_pcm24(dialogue) + quantize_pcm24(bed)) / PCM24_MAX).astype(np.float32)


def remix_key(lipdub_key: str, separate_key: str, separator_params: dict, loudness: LoudnessProfile,
              supplied: SuppliedDialogue | None = None) -> str:
    """`separator_params`: the run's `separator_identity(...)` (remix separates the generated audio).
    The shot's picture length and sound come in through the upstream keys, supplied dialogue by content."""
    inputs = {"supplied_dialogue": supplied.sha256} if supplied else {}  # absent: keys of earlier runs hold
    return stage_key("remix", REMIX_VERSION, lipdub=lipdub_key, separate=separate_key, separator=separator_params,
                     loudness=asdict(loudness), **inputs)


def remix_pair(
    take: DubbedTake,
    separated: SeparatedShot,
    shot: Shot,
    out_dir: Path,
    separator: SeparatorSpec,
    loudness: LoudnessProfile = EBU_R128,
    supplied: SuppliedDialogue | None = None,
) -> RemixedPair:
    """With `supplied`, that recording (conformed to 48 kHz and the picture's length) is the new
    dialogue and LipDub's own speech is written beside it as `_dx_generated.wav`."""
    samples = picture_samples(shot.media.frame_count, shot.media.fps, DELIVERY_SAMPLE_RATE)
    generated, rate = read_audio(take.audio)
    with separator.leased() as model:
        speech = model.separate(generated, rate, audio_layout_name(generated.shape[0])).dialogue
    bed, _ = read_audio(separated.bed)
    bed = fit_length(bed, samples)
    original_dialogue, _ = read_audio(separated.dialogue)
    original_lufs = integrated_loudness(fit_length(original_dialogue, samples), DELIVERY_SAMPLE_RATE)

    def matched(audio: np.ndarray) -> tuple[np.ndarray, float]:
        """`audio` where the original dialogue lived, at the original dialogue's loudness, and the gain."""
        placed = place_dialogue(fit_length(audio, samples), bed.shape[0], separated.dialogue_channels)
        gain_db = _gain_to_match(placed, original_lufs)
        return placed * np.float32(db_to_gain(gain_db)), gain_db

    generated_speech, generated_gain_db = matched(speech)
    if supplied is None:
        dialogue, dialogue_gain_db = generated_speech, generated_gain_db
    else:
        own, own_rate = read_audio(supplied.path)
        dialogue, dialogue_gain_db = matched(resample_to_delivery(own, own_rate))
    regions = dialogue_regions(dialogue, DELIVERY_SAMPLE_RATE) if loudness.dialogue_gated else None
    mix, mix_gain_db = mix_to_profile(overlay(dialogue, bed), DELIVERY_SAMPLE_RATE, loudness, regions)

    pair_dir = Path(out_dir)
    pair_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"{take.shot_id}_{take.language}"
    return RemixedPair(
        shot_id=take.shot_id,
        language=take.language,
        mix=write_wav(pair_dir / f"{prefix}_mix.wav", AudioTrack(mix, DELIVERY_SAMPLE_RATE, separated.layout)),
        dialogue=write_wav(pair_dir / f"{prefix}_dx.wav", AudioTrack(dialogue, DELIVERY_SAMPLE_RATE, separated.layout)),
        loudness=loudness,
        original_dialogue_lufs=original_lufs,
        dialogue_gain_db=dialogue_gain_db,
        mix_gain_db=mix_gain_db,
        mix_lufs=program_loudness(mix, DELIVERY_SAMPLE_RATE, loudness, regions),
        generated_dialogue=None if supplied is None else write_wav(
            pair_dir / f"{prefix}_dx_generated.wav", AudioTrack(generated_speech, DELIVERY_SAMPLE_RATE, separated.layout)),
    )


def _gain_to_match(audio: np.ndarray, target_lufs: float | None) -> float:
    """Gain in dB that brings `audio` to `target_lufs`; 0 when either side is unmeasurable."""
    current = integrated_loudness(audio, DELIVERY_SAMPLE_RATE)
    if current is None or target_lufs is None:
        return 0.0
    return target_lufs - current


@task(name="remix", cache_policy=NO_CACHE, task_run_name="remix {take.shot_id} {take.language}",
      **STAGE_RETRIES)
def remix_pair_task(
    take: DubbedTake, separated: SeparatedShot, shot: Shot, separator: SeparatorSpec, loudness: LoudnessProfile,
    cache: StageCache, key: str, supplied: SuppliedDialogue | None = None,
) -> RemixedPair:
    return cache.result("remix", key, RemixedPair,
                        lambda out_dir: remix_pair(take, separated, shot, out_dir, separator, loudness, supplied))
