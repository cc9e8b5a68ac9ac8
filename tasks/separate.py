"""Stage 1, once per shot: split the shot's soundtrack into dialogue (DX) and bed (M&E)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.models.profiles import ModelProfile, ProfileError
from dubflow.models.separator import SeparatorSpec
from dubflow.media.io import DELIVERY_SAMPLE_RATE, PCM24_MAX, AudioTrack, quantize_pcm24, write_wav
from dubflow.tasks.conform import ConformedShot, conform_key
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.validate import Shot

SEPARATE_VERSION = 2  # bump when the stage's output changes for the same inputs

SHIFTS_ENV = "DUBFLOW_DEMUCS_SHIFTS"
DEVICE_ENV = "DUBFLOW_DEMUCS_DEVICE"


def separator_spec(
    profile: ModelProfile,
    model: str | None = None,
    repo: Path | None = None,
    device: str | None = None,
    shifts: int | None = None,
) -> SeparatorSpec:
    """The run's separator: the profile's Demucs model on the profile's device with shifts=0, each
    overridden by what the run asks; `$DUBFLOW_DEMUCS_SHIFTS` and `$DUBFLOW_DEMUCS_DEVICE` fill in
    what it leaves unset.

    A model named without a repo is looked up in the profile's model folder on a real-weights
    profile, and in Demucs' hub cache on the smoke profile (whose folder holds only the smoke model).
    """
    if repo is None and (model is None or not profile.random_weights):
        repo = profile.separator_repo
    if shifts is None:
        raw = os.environ.get(SHIFTS_ENV, "0")
        try:
            shifts = int(raw)
        except ValueError:
            raise ProfileError(f"{SHIFTS_ENV}={raw!r} is not a whole number; set it to 0 (default) or more") from None
    if shifts < 0:
        raise ProfileError(f"separator shifts must be 0 or more, got {shifts}")
    if repo is not None and not Path(repo).is_dir():
        # Found now, before any work: the separator is loaded for its identity (part of every cache key).
        raise ProfileError(f"Demucs model folder {repo} does not exist or is not a directory")
    return SeparatorSpec(
        model_name=model or profile.separator_name,
        repo=Path(repo) if repo is not None else None,
        device=device or os.environ.get(DEVICE_ENV) or profile.device,
        shifts=shifts,
    )


@dataclass(frozen=True)
class SeparatedShot:
    shot_id: str
    mix: Path  # dialogue + bed: the conformed soundtrack (`ConformedShot`) on the 24-bit grid
    dialogue: Path  # original dialogue stem, source layout
    bed: Path  # mix − dialogue, source layout: the shared M&E
    layout: str
    dialogue_channels: tuple[int, ...]  # channels the dialogue was found in (e.g. (2,) = centre of 5.1)


def separator_identity(separator: SeparatorSpec) -> dict:
    """The separator's output-changing parameters, its model by content (never its folder's path) and
    its device (numerics differ). Loads the model on the CPU: the flow's process may have no GPU
    (on a Dask cluster the GPUs are the workers'); on a CPU run the separating stages share it."""
    return {"device": separator.device, **separator.resident("cpu").params}


def separate_key(shot: Shot, separator_params: dict) -> str:
    """`separator_params`: the run's `separator_identity(...)`, computed once."""
    # The shot id too: it is in the result and its file names (a renamed shot is separated again).
    return stage_key("separate", SEPARATE_VERSION, shot_id=shot.shot_id, source=shot.sha256,
                     conform=conform_key(shot), separator=separator_params)


def separate_shot(shot: Shot, conformed: ConformedShot, separator: SeparatorSpec, out_dir: Path) -> SeparatedShot:
    soundtrack = conformed.read()
    layout = soundtrack.layout
    with separator.leased() as model:
        stems = model.separate(soundtrack.samples, soundtrack.sample_rate, layout)
    # Computed on the 24-bit grid the files hold, so that on disk dialogue + bed == mix exactly.
    mix = quantize_pcm24(stems.dialogue + stems.bed)
    dialogue = quantize_pcm24(stems.dialogue)
    bed = mix - dialogue
    shot_dir = Path(out_dir)
    shot_dir.mkdir(parents=True, exist_ok=True)
    return SeparatedShot(
        shot_id=shot.shot_id,
        mix=write_wav(shot_dir / "original_mix.wav", AudioTrack(mix / PCM24_MAX, DELIVERY_SAMPLE_RATE, layout)),
        dialogue=write_wav(shot_dir / "original_dx.wav", AudioTrack(dialogue / PCM24_MAX, DELIVERY_SAMPLE_RATE, layout)),
        bed=write_wav(shot_dir / f"{shot.shot_id}_me.wav", AudioTrack(bed / PCM24_MAX, DELIVERY_SAMPLE_RATE, layout)),
        layout=layout,
        dialogue_channels=stems.dialogue_channels,
    )


@task(name="separate", cache_policy=NO_CACHE, task_run_name="separate {shot.shot_id}",
      **STAGE_RETRIES)
def separate_shot_task(shot: Shot, conformed: ConformedShot, separator: SeparatorSpec, cache: StageCache,
                       key: str) -> SeparatedShot:
    return cache.result("separate", key, SeparatedShot,
                        lambda out_dir: separate_shot(shot, conformed, separator, out_dir))
