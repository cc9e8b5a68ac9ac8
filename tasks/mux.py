"""Stage 4, per (shot, language): the new picture and the new mix in one review MP4 (H.264 + AAC),
and on request a mezzanine MOV (ProRes 422 HQ + 24-bit PCM).

The review copy's H.264 packets are copied, not re-encoded, so the frame count and timing the
LipDub stage wrote are exactly what ships. The mezzanine is encoded from the decoded frames of
that same picture, one ProRes frame per frame, at the exact source rate.
"""

from __future__ import annotations

from pathlib import Path

import av
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.tasks.lipdub import DubbedTake
from dubflow.tasks.media import encode_audio, iter_frames, probe, read_track, write_video
from dubflow.tasks.remix import RemixedPair


def mux_review_copy(picture: Path, mix: Path, out: Path) -> Path:
    track = read_track(mix)
    out = Path(out)
    with av.open(str(picture)) as source, av.open(str(out), "w", format="mp4") as target:
        video_in = source.streams.video[0]
        video_out = target.add_stream_from_template(video_in)
        audio_out = target.add_stream("aac", rate=track.sample_rate, layout=track.layout)
        for packet in source.demux(video_in):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = video_out
            target.mux(packet)
        encode_audio(target, audio_out, track)
    return out


def write_mezzanine(picture: Path, mix: Path, out: Path) -> Path:
    """ProRes 422 HQ picture with the mix as 24-bit PCM in a MOV, frame for frame of `picture`."""
    return write_video(out, iter_frames(picture), probe(picture).fps, [read_track(mix)], codec="prores")


def mux_pair(take: DubbedTake, remixed: RemixedPair) -> Path:
    out = take.picture.with_name(f"{take.shot_id}_{take.language}.mp4")
    return mux_review_copy(take.picture, remixed.mix, out)


@task(name="mux", cache_policy=NO_CACHE, task_run_name="mux {take.shot_id} {take.language}")
def mux_pair_task(take: DubbedTake, remixed: RemixedPair) -> Path:
    return mux_pair(take, remixed)


def mezzanine_pair(take: DubbedTake, remixed: RemixedPair) -> Path:
    return write_mezzanine(take.picture, remixed.mix, take.picture.with_name(f"{take.shot_id}_{take.language}.mov"))


@task(name="mezzanine", cache_policy=NO_CACHE, task_run_name="mezzanine {take.shot_id} {take.language}")
def mezzanine_pair_task(take: DubbedTake, remixed: RemixedPair) -> Path:
    return mezzanine_pair(take, remixed)
