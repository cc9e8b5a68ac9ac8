"""Stage 4, per (shot, language): the new picture and the new mix in one review MP4 (H.264 + AAC),
and on request a mezzanine MOV (ProRes 422 HQ + 24-bit PCM).

Both are encoded from the LipDub stage's lossless picture master, frame for frame at the exact
source rate, so each deliverable is one generation from the model's frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.tasks.lipdub import DubbedTake
from dubflow.media.io import PictureFormat, iter_frames, read_track, write_video
from dubflow.tasks.remix import RemixedPair
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.validate import Shot

MUX_VERSION = 3  # bump when the stage's output changes for the same inputs (3: x264 without mbtree, reproducible)
MUX_STAGES = {"h264": "mux", "prores": "mezzanine"}  # cache stage (and task) name per codec


def encode_deliverable(picture: Path, mix: Path, out: Path, codec: Literal["h264", "prores"],
                       source: PictureFormat) -> Path:
    """The master's frames with the mix: H.264 + AAC in an MP4, or ProRes 422 HQ + 24-bit PCM in a MOV,
    at the source's rate with its SAR and colour tags (an RGB master cannot hold a YUV matrix or range)."""
    return write_video(out, iter_frames(picture), source, [read_track(mix)], codec=codec)


def mux_key(codec: Literal["h264", "prores"], lipdub_key: str, remix_key: str) -> str:
    """The source picture (its rate and tags) comes in through the LipDub key."""
    return stage_key(MUX_STAGES[codec], MUX_VERSION, lipdub=lipdub_key, remix=remix_key)


def mux_pair(take: DubbedTake, remixed: RemixedPair, shot: Shot, out_dir: Path,
             codec: Literal["h264", "prores"] = "h264") -> Path:
    """`<shot>_<lang>.mp4` (review copy) or, for ProRes, `<shot>_<lang>.mov` (mezzanine) in `out_dir`."""
    suffix = ".mp4" if codec == "h264" else ".mov"
    out = Path(out_dir) / f"{take.shot_id}_{take.language}{suffix}"
    return encode_deliverable(take.picture, remixed.mix, out, codec, shot.media.picture_format)


def _cached_mux(take: DubbedTake, remixed: RemixedPair, shot: Shot, codec: Literal["h264", "prores"],
                cache: StageCache, key: str) -> Path:
    return cache.result(MUX_STAGES[codec], key, Path, lambda out_dir: mux_pair(take, remixed, shot, out_dir, codec))


@task(name="mux", cache_policy=NO_CACHE, task_run_name="mux {take.shot_id} {take.language}",
      **STAGE_RETRIES)
def mux_pair_task(take: DubbedTake, remixed: RemixedPair, shot: Shot, cache: StageCache, key: str) -> Path:
    return _cached_mux(take, remixed, shot, "h264", cache, key)


@task(name="mezzanine", cache_policy=NO_CACHE, task_run_name="mezzanine {take.shot_id} {take.language}",
      **STAGE_RETRIES)
def mezzanine_pair_task(take: DubbedTake, remixed: RemixedPair, shot: Shot, cache: StageCache, key: str) -> Path:
    return _cached_mux(take, remixed, shot, "prores", cache, key)
