"""Stage 0, once per shot: the shot's soundtrack conformed to its picture (`media/conform.py`), written
once for every stage that needs it: separation, each language's LipDub voice reference and QC.

The file is 32-bit float WAV at 48 kHz, exactly the picture's length: the conform's float32 samples
kept exactly, so every stage reads what the conform computed (24-bit would round them, and clip a
resampled full-scale peak that overshoots 1.0); it lives in the stage cache, not in any delivery.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.media.conform import conform_notes, conform_soundtrack
from dubflow.media.io import AudioTrack, MediaError, read_audio, write_wav
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.validate import Shot

# Bump when the conformed soundtrack or its notes change for the same picture file: the conform, or
# what the probe finds that the conform uses. Every stage keyed on a shot's sound has this key in its own.
CONFORM_VERSION = 1


class NoAudioTrackError(MediaError):
    """LipDub clones the speaker's voice from the shot's own audio, so a silent shot cannot be dubbed."""


@dataclass(frozen=True)
class ConformedShot:
    soundtrack: Path  # the production mix on the picture's timeline: float32 WAV, 48 kHz, picture-length
    layout: str
    notes: tuple[str, ...]  # what the conform trimmed, padded, resampled and discarded, and why (for QC)

    def read(self) -> AudioTrack:
        samples, rate = read_audio(self.soundtrack)
        return AudioTrack(samples, rate, self.layout)


def conform_key(shot: Shot) -> str:
    """By the picture file's content alone (the conform reads nothing else): shots with the same
    picture share it."""
    return stage_key("conform", CONFORM_VERSION, picture=shot.sha256)


def conform_shot(shot: Shot, out_dir: Path) -> ConformedShot:
    if not shot.media.audio:
        raise NoAudioTrackError(
            f"shot {shot.shot_id}: {shot.source} has no audio track; LipDub needs the shot's own dialogue "
            "as the voice reference — re-export the locked picture with its production sound"
        )
    track = conform_soundtrack(shot.media)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return ConformedShot(write_wav(out_dir / "soundtrack.wav", track, "pcm_f32le"), track.layout,
                         conform_notes(shot.media))


@task(name="conform", cache_policy=NO_CACHE, task_run_name="conform {shot.shot_id}", **STAGE_RETRIES)
def conform_shot_task(shot: Shot, cache: StageCache, key: str) -> ConformedShot:
    return cache.result("conform", key, ConformedShot, lambda out_dir: conform_shot(shot, out_dir))
