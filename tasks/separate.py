"""Stage 1, once per shot: split the shot's soundtrack into dialogue (DX) and bed (M&E)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.models.profiles import ModelProfile
from dubflow.models.separator import get_resident_separator
from dubflow.tasks.media import (
    DELIVERY_SAMPLE_RATE,
    PCM24_MAX,
    AudioTrack,
    MediaError,
    quantize_pcm24,
    read_audio,
    write_wav,
)
from dubflow.tasks.validate import Shot


class NoAudioTrackError(MediaError):
    """LipDub clones the speaker's voice from the shot's own audio, so a silent shot cannot be dubbed."""


@dataclass(frozen=True)
class SeparatedShot:
    shot_id: str
    mix: Path  # the original soundtrack at 48 kHz, 24-bit
    dialogue: Path  # original dialogue stem, source layout
    bed: Path  # mix − dialogue, source layout: the shared M&E
    layout: str
    dialogue_channels: tuple[int, ...]  # channels the dialogue was found in (e.g. (2,) = centre of 5.1)


def require_audio_track(shot: Shot) -> None:
    if not shot.media.audio:
        raise NoAudioTrackError(
            f"shot {shot.shot_id}: {shot.source} has no audio track; LipDub needs the shot's own dialogue "
            "as the voice reference — re-export the locked picture with its production sound"
        )


def separate_shot(shot: Shot, profile: ModelProfile, work_dir: Path) -> SeparatedShot:
    require_audio_track(shot)
    audio, rate = read_audio(shot.source)
    layout = shot.media.audio[0].layout
    separator = get_resident_separator(profile.separator_name, profile.separator_repo, profile.device)
    stems = separator.separate(audio, rate, layout)
    # Computed on the 24-bit grid the files hold, so that on disk dialogue + bed == mix exactly.
    mix = quantize_pcm24(stems.dialogue + stems.bed)
    dialogue = quantize_pcm24(stems.dialogue)
    bed = mix - dialogue
    shot_dir = Path(work_dir) / shot.shot_id
    shot_dir.mkdir(parents=True, exist_ok=True)
    return SeparatedShot(
        shot_id=shot.shot_id,
        mix=write_wav(shot_dir / "original_mix.wav", AudioTrack(mix / PCM24_MAX, DELIVERY_SAMPLE_RATE, layout)),
        dialogue=write_wav(shot_dir / "original_dx.wav", AudioTrack(dialogue / PCM24_MAX, DELIVERY_SAMPLE_RATE, layout)),
        bed=write_wav(shot_dir / f"{shot.shot_id}_me.wav", AudioTrack(bed / PCM24_MAX, DELIVERY_SAMPLE_RATE, layout)),
        layout=layout,
        dialogue_channels=stems.dialogue_channels,
    )


@task(name="separate", cache_policy=NO_CACHE, task_run_name="separate {shot.shot_id}")
def separate_shot_task(shot: Shot, profile: ModelProfile, work_dir: Path) -> SeparatedShot:
    return separate_shot(shot, profile, work_dir)
