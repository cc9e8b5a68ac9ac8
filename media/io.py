"""Frame-exact, sample-exact media I/O through PyAV (FFmpeg inside the wheel, no system ffmpeg).

Frame rates are kept as exact `Fraction`s end to end (24000/1001 never becomes 23.976), frame
counts are counted from the container, and audio is decoded to float32 without any change of
sample rate or channel layout unless the caller asks for one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

DELIVERY_SAMPLE_RATE = 48_000
PCM24_MAX = 2**23


class MediaError(Exception):
    """A media file cannot be read or does not hold what dubflow needs."""


@dataclass(frozen=True)
class AudioStreamInfo:
    index: int
    codec: str
    sample_rate: int
    channels: int
    layout: str
    samples: int | None  # counted by decoding when probed with count_samples=True


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    frame_count: int
    fps: Fraction
    width: int
    height: int
    pix_fmt: str
    video_codec: str
    audio: tuple[AudioStreamInfo, ...]

    @property
    def duration(self) -> Fraction:
        """Picture duration in seconds, exact: frame_count / fps."""
        return self.frame_count / self.fps


@dataclass(frozen=True)
class AudioTrack:
    """Audio to mux or write: (channels, samples) float32 in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    layout: str


def probe(path: Path, count_samples: bool = False) -> MediaInfo:
    """Describe a picture file. The frame count is counted packet by packet, never estimated."""
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot be opened as media ({exc})") from exc
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        video = container.streams.video[0]
        fps = video.base_rate or video.average_rate
        if not fps:
            raise MediaError(f"{path}: video stream declares no frame rate")
        frame_count = 0
        try:
            for packet in container.demux(video):
                if packet.size > 0:
                    frame_count += 1
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: video stream is corrupt ({exc})") from exc
        info = MediaInfo(
            path=path,
            frame_count=frame_count,
            fps=Fraction(fps),
            width=video.codec_context.width,
            height=video.codec_context.height,
            pix_fmt=video.codec_context.pix_fmt or "unknown",
            video_codec=video.codec_context.name,
            audio=tuple(
                AudioStreamInfo(
                    index=i,
                    codec=stream.codec_context.name,
                    sample_rate=stream.rate,
                    channels=stream.channels,
                    layout=stream.layout.name,
                    samples=None,
                )
                for i, stream in enumerate(container.streams.audio)
            ),
        )
    if frame_count == 0:
        raise MediaError(f"{path}: video stream holds no frames")
    if count_samples:
        counted = []
        for stream_info in info.audio:
            samples, _ = read_audio(path, stream_info.index)
            counted.append(AudioStreamInfo(**{**stream_info.__dict__, "samples": samples.shape[1]}))
        info = MediaInfo(**{**info.__dict__, "audio": tuple(counted)})
    return info


def iter_frames(path: Path) -> Iterator[np.ndarray]:
    """Yield each picture frame as (height, width, 3) uint8 RGB, in presentation order."""
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            yield frame.to_ndarray(format="rgb24")


def read_frames(path: Path) -> np.ndarray:
    """All frames as one (frames, height, width, 3) uint8 array."""
    return np.stack(list(iter_frames(path)))


def read_audio(path: Path, stream_index: int = 0) -> tuple[np.ndarray, int]:
    """Decode one audio stream to (channels, samples) float32 at its own rate and layout."""
    with av.open(str(path)) as container:
        if stream_index >= len(container.streams.audio):
            raise MediaError(f"{path}: has no audio stream #{stream_index}")
        stream = container.streams.audio[stream_index]
        # Same rate and layout: this converts the sample format only, which is exact for PCM.
        converter = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
        chunks = []
        for frame in container.decode(stream):
            for converted in converter.resample(frame):
                chunks.append(converted.to_ndarray())
        for converted in converter.resample(None):
            chunks.append(converted.to_ndarray())
        if not chunks:
            return np.zeros((stream.channels, 0), np.float32), stream.rate
        return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), stream.rate


def read_track(path: Path, stream_index: int = 0) -> AudioTrack:
    """One audio stream as an `AudioTrack`: its samples, rate and channel layout."""
    samples, rate = read_audio(path, stream_index)
    with av.open(str(path)) as container:
        layout = container.streams.audio[stream_index].layout.name
    return AudioTrack(samples, rate, layout)


def audio_layout_name(channels: int) -> str:
    """FFmpeg's default layout for a channel count (mono, stereo, 5.1 …)."""
    names = {1: "mono", 2: "stereo", 6: "5.1", 8: "7.1"}
    if channels not in names:
        raise MediaError(f"no default channel layout for {channels} channels; pass one explicitly")
    return names[channels]


def quantize_pcm24(samples: np.ndarray) -> np.ndarray:
    """float32 → 24-bit integer values in int32, clipped to the 24-bit range."""
    scaled = np.rint(np.asarray(samples, dtype=np.float64) * PCM24_MAX)
    return np.clip(scaled, -PCM24_MAX, PCM24_MAX - 1).astype(np.int32)


def write_wav(path: Path, track: AudioTrack) -> Path:
    """Write a 24-bit PCM WAV at the track's rate and layout (delivery files are 48 kHz)."""
    path = Path(path)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_s24le", rate=track.sample_rate, layout=track.layout)
        encode_audio(container, stream, track)
    return path


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    fps: Fraction,
    audio_tracks: Sequence[AudioTrack] = (),
    codec: Literal["h264", "prores", "png"] = "h264",
    crf: int = 18,
) -> Path:
    """Encode RGB frames at an exact rate and mux audio tracks beside them.

    The container follows the suffix: `.mp4` carries AAC (review copies), `.mov` carries 24-bit
    PCM (locked picture, ProRes 422 HQ mezzanine, PNG lossless masters). Every frame given is
    written with pts = its index, so the file probes back with exactly as many frames as were
    given, at exactly `fps`. `png` keeps every RGB value: the master later encodes derive from.
    """
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise MediaError(f"{path}: no frames to encode")
    height, width = first.shape[:2]
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".mov") or (codec != "h264" and suffix != ".mov"):
        raise MediaError(f"{path}: write .mp4 (H.264) or .mov (H.264, ProRes or PNG)")
    audio_codec = "aac" if suffix == ".mp4" else "pcm_s24le"
    with av.open(str(path), "w", format=suffix[1:]) as container:
        if codec == "h264":
            video = container.add_stream("libx264", rate=fps)
            video.pix_fmt = "yuv420p"
            video.options = {"crf": str(crf), "preset": "fast"}
        elif codec == "prores":
            video = container.add_stream("prores_ks", rate=fps)
            video.pix_fmt = "yuv422p10le"
            video.options = {"profile": "3"}  # 422 HQ
        else:
            video = container.add_stream("png", rate=fps)
            video.pix_fmt = "rgb24"
        video.width, video.height = width, height
        audio_streams = [
            container.add_stream(audio_codec, rate=track.sample_rate, layout=track.layout)
            for track in audio_tracks
        ]
        for index, rgb in enumerate(_chain(first, frames)):
            if rgb.shape != first.shape:
                raise MediaError(f"{path}: frame {index} is {rgb.shape}, expected {first.shape}")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for stream, track in zip(audio_streams, audio_tracks):
            encode_audio(container, stream, track)
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


def encode_audio(container: av.container.OutputContainer, stream: av.AudioStream, track: AudioTrack) -> None:
    samples = np.asarray(track.samples)
    if samples.ndim != 2:
        raise MediaError(f"audio must be (channels, samples), got shape {samples.shape}")
    if samples.shape[0] != stream.channels:
        raise MediaError(
            f"audio has {samples.shape[0]} channels but layout {track.layout!r} has {stream.channels}"
        )
    if stream.codec_context.name == "pcm_s24le":
        # FFmpeg carries 24-bit PCM in the top bits of s32; quantizing here makes the round trip exact.
        data = np.ascontiguousarray((quantize_pcm24(samples) << 8).T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(data, format="s32", layout=track.layout)
    else:
        data = np.ascontiguousarray(samples.astype(np.float32))
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=track.layout)
    frame.sample_rate = track.sample_rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
