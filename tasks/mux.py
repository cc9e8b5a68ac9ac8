"""Stage 4, per (shot, language): the new picture and the new mix in one review MP4 (H.264 + AAC).

The picture's H.264 packets are copied, not re-encoded, so the frame count and timing the LipDub
stage wrote are exactly what ships.
"""

from __future__ import annotations

from pathlib import Path

import av
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.tasks.media import AudioTrack, encode_audio, read_audio
from dubflow.tasks.remix import RemixedPair
from dubflow.tasks.lipdub import DubbedTake


def mux_review_copy(picture: Path, mix: Path, out: Path) -> Path:
    samples, rate = read_audio(mix)
    with av.open(str(mix)) as wav:
        layout = wav.streams.audio[0].layout.name
    out = Path(out)
    with av.open(str(picture)) as source, av.open(str(out), "w", format="mp4") as target:
        video_in = source.streams.video[0]
        video_out = target.add_stream_from_template(video_in)
        audio_out = target.add_stream("aac", rate=rate, layout=layout)
        for packet in source.demux(video_in):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.stream = video_out
            target.mux(packet)
        encode_audio(target, audio_out, AudioTrack(samples, rate, layout))
    return out


def mux_pair(take: DubbedTake, remixed: RemixedPair) -> Path:
    out = take.picture.with_name(f"{take.shot_id}_{take.language}.mp4")
    return mux_review_copy(take.picture, remixed.mix, out)


@task(name="mux", cache_policy=NO_CACHE, task_run_name="mux {take.shot_id} {take.language}")
def mux_pair_task(take: DubbedTake, remixed: RemixedPair) -> Path:
    return mux_pair(take, remixed)
