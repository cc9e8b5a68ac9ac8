"""Stage 2, per (shot, language): re-lip the picture and generate the new line in the speaker's voice."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.manifests.schema import ManifestRow, language_name
from dubflow.models.lipdub import build_prompt
from dubflow.models.profiles import ModelProfile, load_lipdub
from dubflow.tasks.media import AudioTrack, audio_layout_name, read_frames, write_video, write_wav
from dubflow.tasks.validate import Shot


@dataclass(frozen=True)
class DubbedTake:
    shot_id: str
    language: str
    prompt: str
    seed: int
    picture: Path  # picture only, H.264: the source's frame count, rate and size
    audio: Path  # the model's generated audio at the model's rate


def pair_seed(shot: Shot, language: str) -> int:
    """Stable per (picture content, language): a re-run regenerates the same take."""
    return int.from_bytes(hashlib.sha256(f"{shot.sha256}/{language}".encode()).digest()[:4], "big")


def lipdub_pair(shot: Shot, row: ManifestRow, profile: ModelProfile, work_dir: Path) -> DubbedTake:
    prompt = build_prompt(row.speaker, language_name(row.language), row.script)
    seed = pair_seed(shot, row.language)
    model = load_lipdub(profile)
    frames = read_frames(shot.source)
    output = model.generate(
        frames,
        shot.media.fps,
        prompt,
        seed,
        max_height=profile.max_height,
        num_inference_steps=profile.num_inference_steps,
    )
    pair_dir = Path(work_dir) / shot.shot_id / row.language
    pair_dir.mkdir(parents=True, exist_ok=True)
    picture = write_video(pair_dir / "picture.mp4", output.frames, shot.media.fps)
    audio = write_wav(
        pair_dir / "generated.wav",
        AudioTrack(output.audio, output.sample_rate, audio_layout_name(output.audio.shape[0])),
    )
    return DubbedTake(shot.shot_id, row.language, prompt, seed, picture, audio)


@task(name="lipdub", cache_policy=NO_CACHE, task_run_name="lipdub {row.shot_id} {row.language}")
def lipdub_pair_task(shot: Shot, row: ManifestRow, profile: ModelProfile, work_dir: Path) -> DubbedTake:
    return lipdub_pair(shot, row, profile, work_dir)
