"""Frame-exact, sample-exact media I/O through PyAV (FFmpeg inside the wheel, no system ffmpeg).

Frame rates are kept as exact `Fraction`s end to end (24000/1001 never becomes 23.976). `probe`
decodes a file through once and describes what it really holds: frames counted as they decode,
timed by their presentation timestamps, every audio stream with its start and decoded length, the
picture's display geometry and colour tags, and every reason dubflow cannot deliver it. Audio is
decoded to float32 without any change of sample rate or channel layout unless the caller asks.

Two ways PyAV 18 crashes on 7.1 sound ("double free or corruption", SIGABRT or SIGSEGV), found with
ffmpeg-made files: `AudioFrame.planes` reads one pointer past `AVFrame.data` for planar audio of
exactly eight channels, so `to_ndarray` follows a garbage pointer; and a frame whose channels come
in a custom order (what FFmpeg reads from a 7.1 PCM MOV: "8 channels (FL+FR+…)") has its channel
map freed twice: `AudioLayout` copies the C struct without its map and frees the map when it goes,
and so does its owner (a stream's codec context, a frame). Audio is therefore only converted to
packed samples before it becomes an array; the probe reads each stream's layout once, keeps it to
the end and leaves without tearing down, and never decodes a stream in a custom order (validate
refuses it); and `probe` runs in a child process, so whatever else a file can make FFmpeg do ends
that child, not the batch.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Literal

import av
import numpy as np

DELIVERY_SAMPLE_RATE = 48_000
PCM24_MAX = 2**23
PROBE_TIMEOUT_S = 600.0  # a child decoding one shot through; far beyond any shot dubflow takes

# Layouts the separator takes (dialogue from L/R, or from the centre FC of a 5.1), by channel count:
# the layout a file with no channel order of its own (MXF, AVI, discrete tracks) is read as.
SUPPORTED_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
_NAMED_LAYOUTS = {"mono", "stereo", "5.1", "5.1(side)"}
# Orders read as FFmpeg's default for their channel count: none given, a stereo downmix (DL DR), or
# 5.1 with back surrounds (the same positions: FL FR FC LFE, then the two surrounds).
_DEFAULT_ORDER_LAYOUTS = {"1 channels", "2 channels", "6 channels", "downmix", "5.1(back)"}
# A frame may sit this far from its slot on the constant-rate grid and still be that slot's frame
# (container time bases round timestamps: Matroska keeps milliseconds).
_GRID_TOLERANCE = Fraction(1, 4)
_UNSPECIFIED_COLOUR = 2  # AVCOL_PRI/TRC/SPC_UNSPECIFIED
_RGB_MATRIX = 0  # AVCOL_SPC_RGB: the picture is stored as RGB (PNG, DPX, ...)
_LIMITED, _FULL = 1, 2  # AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG


class MediaError(Exception):
    """A media file cannot be read or does not hold what dubflow needs."""


@dataclass(frozen=True)
class AudioStreamInfo:
    index: int  # among the file's audio streams
    codec: str
    sample_rate: int
    channels: int
    layout: str  # FFmpeg's name; "N channels" when the file gives no channel order
    start: Fraction  # presentation time of the first decoded sample (after priming is skipped), seconds
    samples: int  # decoded samples per channel
    title: str = ""  # the stream's title or handler name, to name it in reports
    # Encoder priming the container declares (an MP4 edit list's AAC priming, Opus pre-skip), in samples
    # at the stream's rate: the decoder discards them, so they are in neither `start` nor `samples`.
    priming: int = 0

    @property
    def duration(self) -> Fraction:
        return Fraction(self.samples, self.sample_rate)

    def describe(self) -> str:
        title = f" {self.title!r}" if self.title else ""
        return f"audio stream #{self.index}{title} ({self.codec}, {self.layout}, {self.sample_rate} Hz)"


@dataclass(frozen=True)
class Colour:
    """FFmpeg's colour enums (AVColorPrimaries, AVColorTransferCharacteristic, AVColorSpace,
    AVColorRange) as the picture stream declares them; 2 (0 for range) is unspecified."""

    primaries: int = _UNSPECIFIED_COLOUR
    transfer: int = _UNSPECIFIED_COLOUR
    matrix: int = _UNSPECIFIED_COLOUR
    range: int = 0

    def for_codec(self, codec: str) -> Colour:
        """The tags a deliverable in `codec` carries: these, but ProRes is limited range only."""
        return replace(self, range=_LIMITED) if codec == "prores" and self.range == _FULL else self

    def matches(self, other: Colour) -> bool:
        """The same tags, an unspecified range read as limited (what players assume, and what an
        encoder leaves unsaid)."""
        return replace(self, range=_range(self.range)) == replace(other, range=_range(other.range))


@dataclass(frozen=True)
class PictureFormat:
    """What an encoder needs besides the frames to deliver a picture as its source shows it."""

    fps: Fraction
    sar: Fraction = Fraction(1)
    colour: Colour = field(default_factory=Colour)


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    frame_count: int  # frames that decode and display (hidden edit-list frames are not counted)
    fps: Fraction
    width: int  # as stored; see display_size for how it shows
    height: int
    pix_fmt: str
    video_codec: str
    audio: tuple[AudioStreamInfo, ...]
    start: Fraction = Fraction(0)  # presentation time of the first displayed frame, seconds
    rotation: int = 0  # degrees counter-clockwise the display matrix turns the stored picture
    sar: Fraction = Fraction(1)
    colour: Colour = field(default_factory=Colour)
    alpha: bool = False
    soundtrack: tuple[int, ...] = ()  # audio streams that make the production mix (one, or discrete monos)
    problems: tuple[str, ...] = ()  # why dubflow cannot deliver this picture (validate reports them)

    @property
    def duration(self) -> Fraction:
        """Picture duration in seconds, exact: frame_count / fps."""
        return self.frame_count / self.fps

    @property
    def picture_format(self) -> PictureFormat:
        """How the deliverables are tagged: as the source, upright (a picture turned a quarter turn
        has its pixel aspect turned too), except that an RGB source's YUV deliverables carry no matrix
        or range of its own (they are encoded BT.601, limited range)."""
        sar = 1 / self.sar if self.rotation % 180 else self.sar
        if self.colour.matrix == _RGB_MATRIX:
            return PictureFormat(self.fps, sar, replace(self.colour, matrix=_UNSPECIFIED_COLOUR, range=0))
        return PictureFormat(self.fps, sar, self.colour)

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) in stored pixels once the rotation is applied."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)

    @property
    def soundtrack_channels(self) -> int:
        return sum(self.audio[i].channels for i in self.soundtrack)

    @property
    def soundtrack_layout(self) -> str:
        """The production mix's layout, as dubflow delivers it (a file without channel order, or
        discrete mono tracks, read in FFmpeg's default order for the channel count)."""
        if len(self.soundtrack) == 1 and self.audio[self.soundtrack[0]].layout not in _DEFAULT_ORDER_LAYOUTS:
            return self.audio[self.soundtrack[0]].layout
        return SUPPORTED_LAYOUTS.get(self.soundtrack_channels, f"{self.soundtrack_channels} channels")

    def notes(self) -> tuple[str, ...]:
        """What delivery changes about this picture or its sound, and why (for the QC report)."""
        notes = []
        if self.rotation:
            width, height = self.display_size
            notes.append(f"the picture is stored turned ({self.rotation}° display rotation): it is rendered "
                         f"upright ({width}×{height}) for the model and every deliverable, with no rotation tag")
        if self.colour.matrix == _RGB_MATRIX:
            notes.append(f"the picture is stored as RGB ({self.pix_fmt}): the deliverables are YUV, converted with "
                         "BT.601 in limited range and tagged with no matrix or range")
        if self.colour.range == _FULL:
            notes.append("full-range picture: the review MP4 keeps full range; the ProRes mezzanine is limited range "
                         "(ProRes has no full range)")
        if self.alpha:
            notes.append(f"the picture's alpha channel ({self.pix_fmt}) is dropped: deliverables are opaque")
        if self.width % 2 or self.height % 2:
            notes.append(f"odd picture size {self.width}×{self.height}: the review MP4 is H.264 High 4:4:4 "
                         "(4:2:0 cannot hold an odd size); some browsers do not play it")
        if len(self.soundtrack) > 1:
            notes.append(f"{len(self.soundtrack)} discrete mono audio streams assembled into one "
                         f"{self.soundtrack_layout} soundtrack, in stream order")
        for stream in self.audio:
            if stream.index not in self.soundtrack:
                notes.append(f"{stream.describe()} is not used: dubflow takes the first audio stream as the "
                             "production mix (or all streams when each is one mono channel)")
        return tuple(notes)


@dataclass(frozen=True)
class AudioTrack:
    """Audio to mux or write: (channels, samples) float32 in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    layout: str


def probe(path: Path) -> MediaInfo:
    """Describe a picture file by decoding it through in a child process (see the module doc).

    Raises MediaError when the file cannot be read at all; what can be read but not delivered is
    listed in `MediaInfo.problems`.
    """
    (found,) = probe_all([Path(path)])
    return found


def probe_all(paths: Sequence[Path]) -> list[MediaInfo]:
    """`probe` for a few files in one child process (one start-up for all): raises the first file's
    MediaError."""
    found = probe_many(paths, processes=1)
    for answer in found:
        if isinstance(answer, MediaError):
            raise answer
    return found


def probe_many(paths: Sequence[Path], processes: int | None = None) -> list[MediaInfo | MediaError]:
    """`probe` for many files, in that order: each a MediaInfo, or the MediaError that says why not.

    The files are shared out over `processes` child processes (default: one per CPU), each probing
    its files one after the other; a child that crashes or hangs on a file (no answer within
    PROBE_TIMEOUT_S) costs only that file, and a new child takes the rest of its share.
    """
    paths = [Path(path) for path in paths]
    workers = max(1, min(len(paths), processes or os.cpu_count() or 1))
    shares = [paths[start::workers] for start in range(workers)]
    with ThreadPoolExecutor(workers) as pool:  # each thread only waits on its child
        answers = list(pool.map(_probe_share, shares))
    found: list[MediaInfo | MediaError] = [MediaError("not probed")] * len(paths)
    for start, share_answers in enumerate(answers):
        found[start::workers] = share_answers
    return found


def _probe_share(paths: list[Path]) -> list[MediaInfo | MediaError]:
    found: list[MediaInfo | MediaError] = []
    while len(found) < len(paths):
        found += _probe_in_child(paths[len(found):])
    return found


def _probe_in_child(paths: list[Path]) -> list[MediaInfo | MediaError]:
    """Probe `paths` in one child until it has answered for all of them, or up to and including the
    file it crashed or hung on."""
    child = subprocess.Popen([sys.executable, "-m", "dubflow.media.io"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True).start()
    child.stdin.write(json.dumps([str(path) for path in paths]).encode())
    child.stdin.close()
    found: list[MediaInfo | MediaError] = []
    for path in paths:
        try:
            line = lines.get(timeout=PROBE_TIMEOUT_S)
        except queue.Empty:
            child.kill()
            child.wait()
            found.append(MediaError(f"{path}: reading it through took over {PROBE_TIMEOUT_S:g} s; the file may be "
                                    "damaged"))
            break
        if not line:  # the child ended without answering for this file
            status = child.wait()
            cause = signal.Signals(-status).name if status < 0 else f"exit status {status}"
            found.append(MediaError(f"{path}: FFmpeg crashed reading this file ({cause}); re-export it (e.g. with "
                                    "ffmpeg into MOV/ProRes + PCM) and check it plays"))
            break
        answer = json.loads(line)
        found.append(_media_from_json(answer["media"]) if "media" in answer else MediaError(answer["error"]))
    else:
        child.wait()
    return found


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(b"")  # end of output: the child is gone


def _probe_in_process(path: Path) -> MediaInfo:
    """`probe`'s work, in the child process `probe` starts (see the module doc: it ends with os._exit)."""
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot be opened as media ({exc})") from exc
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: has no video stream")
        video = container.streams.video[0]
        # The rates the container offers, most trusted first: r_frame_rate, then the average.
        rates = [Fraction(rate) for rate in (video.base_rate, video.average_rate, video.guessed_rate) if rate]
        if not rates:
            raise MediaError(f"{path}: video stream declares no frame rate")
        declared_end = _declared_end(video)
        context = video.codec_context
        width, height, pix_fmt = context.width, context.height, context.pix_fmt or "unknown"
        colour = Colour(int(video.color_primaries), int(video.color_trc), int(video.colorspace),
                        int(video.color_range))
        sar = Fraction(video.sample_aspect_ratio or 1)
        codec = context.name
        times, last_duration, rotation, corrupt = _decode_picture(container, video)
    if not times:
        raise MediaError(f"{path}: video stream holds no frames" + (f" ({corrupt})" if corrupt else ""))
    # The first rate whose grid every frame sits on (see _grid_error); none: the first, refused as VFR.
    fps = next((rate for rate in rates if _grid_error(times, rate) <= _GRID_TOLERANCE), rates[0])
    audio = tuple(_probe_audio(path, index) for index in range(_audio_stream_count(path)))
    info = MediaInfo(
        path=path, frame_count=len(times), fps=fps, width=width, height=height, pix_fmt=pix_fmt,
        video_codec=codec, audio=audio, start=times[0], rotation=rotation, sar=sar, colour=colour,
        alpha=_has_alpha(pix_fmt), soundtrack=_soundtrack_streams(audio),
    )
    problems = _timing_problems(times, last_duration or 1 / fps, fps, declared_end, corrupt) + _soundtrack_problems(info)
    return replace(info, problems=tuple(problems))


def _declared_end(video: av.VideoStream) -> Fraction | None:
    """Where the container says the picture ends (seconds), to find a file cut short."""
    if video.duration and video.time_base:
        return Fraction(video.start_time or 0) * video.time_base + Fraction(video.duration) * video.time_base
    return None


def _decode_picture(container: av.container.InputContainer,
                    video: av.VideoStream) -> tuple[list[Fraction], Fraction, int, str | None]:
    """Presentation times of every frame that decodes, the last frame's duration (0: unknown), the
    display rotation, and a decode error."""
    video.thread_type = "AUTO"
    times: list[Fraction] = []
    last_duration, rotation = Fraction(0), 0
    try:
        for frame in container.decode(video):
            if not times:
                rotation = int(frame.rotation) % 360
            timestamp = frame.pts if frame.pts is not None else frame.dts
            if timestamp is None:
                raise MediaError(f"{container.name}: frame {len(times)} carries no timestamp")
            times.append(Fraction(timestamp) * frame.time_base)
            last_duration = Fraction(frame.duration or 0) * frame.time_base
    except av.error.FFmpegError as exc:
        return times, last_duration, rotation, f"decoding stopped after {len(times)} frames: {exc}"
    return times, last_duration, rotation, None


def _timing_problems(times: list[Fraction], last_duration: Fraction, fps: Fraction, declared_end: Fraction | None,
                     corrupt: str | None) -> list[str]:
    problems = [f"the picture is corrupt: {corrupt}; re-export it"] if corrupt else []
    decoded_end = times[-1] + last_duration
    # More than two frames missing: a container's own duration may round or pad its last frame.
    if declared_end is not None and declared_end - decoded_end > 2 * (decoded_end - times[0]) / len(times):
        problems.append(
            f"the file is truncated: it declares {float(declared_end):.3f} s of picture but only "
            f"{len(times)} frames ({float(decoded_end):.3f} s) decode; copy or export it again")
    if _grid_error(times, fps) > _GRID_TOLERANCE:
        intervals = [b - a for a, b in zip(times, times[1:]) if b > a]
        slowest, fastest = (1 / max(intervals), 1 / min(intervals)) if intervals else (fps, fps)
        problems.append(
            f"variable frame rate: frames are {float(slowest):.3f}–{float(fastest):.3f} fps apart, so no constant "
            "rate shows every frame at its time; conform the picture to one constant rate first (e.g. ffmpeg "
            "-vf fps=24000/1001 for 23.976) and re-export")
    return problems


def _grid_error(times: Sequence[Fraction], fps: Fraction) -> Fraction:
    """How far (in frames) the furthest frame lies from its slot on the constant-`fps` grid that
    starts at the first frame: under a quarter, the timestamps are that constant rate, rounded."""
    start = times[0]
    return max((abs((time - start) * fps - index) for index, time in enumerate(times)), default=Fraction(0))


def _audio_stream_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return len(container.streams.audio)


def _probe_audio(path: Path, index: int) -> AudioStreamInfo:
    """Decode one audio stream through: where its first sample plays and how many there are."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[index]
        layout = stream.layout
        _KEPT_LAYOUTS.append(layout)  # freed by no one before the child exits (see the module doc)
        start, samples, priming = None, 0, None
        try:
            for packet in () if _custom_order(layout.name) else container.demux(stream):
                if priming is None and packet.size:
                    priming = _skip_samples(packet)
                for frame in packet.decode():
                    if start is None and frame.pts is not None:
                        start = Fraction(frame.pts) * frame.time_base - Fraction(samples, frame.sample_rate)
                    samples += frame.samples
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: audio stream #{index} is corrupt after {samples} samples ({exc})") from exc
        metadata = stream.metadata
        return AudioStreamInfo(
            index=index, codec=stream.codec_context.name, sample_rate=stream.rate, channels=layout.nb_channels,
            layout=layout.name, start=start if start is not None else Fraction(0), samples=samples,
            title=metadata.get("title") or metadata.get("handler_name", ""), priming=priming or 0,
        )


def _skip_samples(packet: av.Packet) -> int:
    """The samples a packet tells the decoder to discard from its head: FFmpeg's skip-samples side data
    (AV_PKT_DATA_SKIP_SAMPLES, a little-endian uint32 first), which a demuxer puts on a stream's first
    packet from what the container declares (an MP4 edit list's media time, Matroska's codec delay, an
    Ogg Opus header's pre-skip)."""
    side = bytes(packet.get_sidedata("skip_samples"))
    return int.from_bytes(side[:4], "little") if len(side) >= 4 else 0


_KEPT_LAYOUTS: list[av.AudioLayout] = []


def _custom_order(layout: str) -> bool:
    """A layout FFmpeg names channel by channel, e.g. "8 channels (FL+FR+FC+LFE+SL+SR+BL+BR)"."""
    return "+" in layout


def _has_alpha(pix_fmt: str) -> bool:
    try:
        return any(component.is_alpha for component in av.VideoFormat(pix_fmt).components)
    except ValueError:
        return False


def _soundtrack_streams(audio: tuple[AudioStreamInfo, ...]) -> tuple[int, ...]:
    """The production mix: every stream when there are several and each is one mono channel
    (a layout delivered one channel per track), else the first audio stream."""
    if len(audio) > 1 and all(stream.channels == 1 for stream in audio):
        return tuple(stream.index for stream in audio)
    return (0,) if audio else ()


def _soundtrack_problems(info: MediaInfo) -> list[str]:
    if not info.soundtrack:
        return []  # a silent shot is refused by the stages that need its voice, with their own reason
    streams = [info.audio[i] for i in info.soundtrack]
    problems = []
    layout, channels = info.soundtrack_layout, info.soundtrack_channels
    if layout not in _NAMED_LAYOUTS:
        what = f"{len(streams)} mono tracks ({channels} channels)" if len(streams) > 1 else f"{layout} ({channels} channels)"
        problems.append(
            f"the soundtrack is {what}: dubflow separates dialogue from mono, stereo and 5.1 only (5.1 from its "
            "centre channel) and refuses 7.1; deliver the production mix as one of those in a standard channel "
            "order (e.g. fold a 7.1 down to 5.1: ffmpeg -ac 6)")
    if len({stream.sample_rate for stream in streams}) > 1:
        problems.append("the soundtrack's mono tracks have different sample rates; export them at one rate")
    if any(stream.samples == 0 and not _custom_order(stream.layout) for stream in streams):
        problems.append(f"{streams[0].describe()} decodes to no samples; re-export the production sound")
    return problems


def _media_from_json(document: dict) -> MediaInfo:
    values = dict(document)
    for name in ("fps", "start", "sar"):
        values[name] = Fraction(values[name])
    values["path"] = Path(values["path"])
    values["colour"] = Colour(**values["colour"])
    values["audio"] = tuple(
        AudioStreamInfo(**{**stream, "start": Fraction(stream["start"])}) for stream in values["audio"])
    values["soundtrack"] = tuple(values["soundtrack"])
    values["problems"] = tuple(values["problems"])
    return MediaInfo(**values)


def iter_frames(path: Path, rotation: int = 0) -> Iterator[np.ndarray]:
    """Yield each picture frame as (height, width, 3) uint8 RGB in presentation order, turned
    upright by `rotation` (the probed display rotation, degrees counter-clockwise).

    YUV is read with the stream's own matrix and range (BT.601 where it declares none), the
    matrix and range `write_video` encodes with, so a picture keeps its values through dubflow.
    """
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        for frame in container.decode(video):
            rgb = frame.to_ndarray(format="rgb24", src_colorspace=_matrix(frame.colorspace),
                                   src_color_range=_range(frame.color_range))
            yield np.ascontiguousarray(np.rot90(rgb, rotation // 90)) if rotation else rgb


def read_frames(path: Path, rotation: int = 0) -> np.ndarray:
    """All frames as one (frames, height, width, 3) uint8 array."""
    return np.stack(list(iter_frames(path, rotation)))


def _matrix(colorspace: int) -> int:
    """A YUV matrix swscale knows: the declared one, BT.601 (swscale's default) when unspecified."""
    return int(colorspace) if int(colorspace) not in (_UNSPECIFIED_COLOUR, _RGB_MATRIX) else 5  # AVCOL_SPC_BT470BG


def _range(color_range: int) -> int:
    return _FULL if int(color_range) == _FULL else _LIMITED


def read_audio(path: Path, stream_index: int = 0) -> tuple[np.ndarray, int]:
    """Decode one audio stream to (channels, samples) float32 at its own rate and layout."""
    with av.open(str(path)) as container:
        if stream_index >= len(container.streams.audio):
            raise MediaError(f"{path}: has no audio stream #{stream_index}")
        stream = container.streams.audio[stream_index]
        channels = stream.channels
        # Packed float at the same rate and layout: exact for PCM, and one plane (see the module doc).
        converter = av.AudioResampler(format="flt", layout=stream.layout, rate=stream.rate)
        chunks = []
        for frame in container.decode(stream):
            for converted in converter.resample(frame):
                chunks.append(converted.to_ndarray().reshape(-1, channels))
        for converted in converter.resample(None):
            chunks.append(converted.to_ndarray().reshape(-1, channels))
        if not chunks:
            return np.zeros((channels, 0), np.float32), stream.rate
        return np.ascontiguousarray(np.concatenate(chunks).T, dtype=np.float32), stream.rate


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


def write_wav(path: Path, track: AudioTrack, codec: Literal["pcm_s24le", "pcm_f32le"] = "pcm_s24le") -> Path:
    """Write a WAV at the track's rate and layout: 24-bit PCM (every delivery file, 48 kHz), or 32-bit
    float, which keeps float32 samples exactly (values past full scale included)."""
    path = Path(path)
    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream(codec, rate=track.sample_rate, layout=track.layout)
        encode_audio(container, stream, track)
    return path


# x264's macroblock-tree rate control (on in every preset but ultrafast) makes the same frames encode to other
# bytes from one call to the next in a process (other quantisers from frame 1 on, frame types unchanged): it
# depends on memory x264 leaves uninitialised, at one or two threads alike (BENCHMARKS.md, "H.264 encodes
# reproducible"). Off, an encode is a function of its frames: a recomputed stage reproduces its stored bytes.
X264_REPRODUCIBLE = "mbtree=0"


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    picture: PictureFormat | Fraction,
    audio_tracks: Sequence[AudioTrack] = (),
    codec: Literal["h264", "prores", "png"] = "h264",
    crf: int = 18,
    all_intra: bool = False,
) -> Path:
    """Encode RGB frames at an exact rate and mux audio tracks beside them.

    The container follows the suffix: `.mp4` carries AAC (review copies), `.mov` carries 24-bit
    PCM (locked picture, ProRes 422 HQ mezzanine, PNG lossless masters). Every frame given is
    written with pts = its index, so the file probes back with exactly as many frames as were
    given, at exactly the rate. `png` keeps every RGB value: the master later encodes derive from.
    `picture` is the rate, or the rate with the SAR and colour tags to carry (see `iter_frames`
    for the matrix and range the RGB is converted with). An odd-sized H.264 picture is encoded
    4:4:4, the only H.264 sampling that holds an odd size exactly. `all_intra` makes every H.264
    frame a keyframe, so a player seeks to any frame by decoding that frame alone (review proxies).
    """
    path = Path(path)
    picture = picture if isinstance(picture, PictureFormat) else PictureFormat(Fraction(picture))
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
            video = container.add_stream("libx264", rate=picture.fps)
            video.pix_fmt = "yuv444p" if width % 2 or height % 2 else "yuv420p"
            # All-intra at x264's veryfast preset: measured on the smoke take, no bigger than at fast
            # (intra-only coding gains little from fast's extra analysis) in half the time.
            video.options = {"crf": str(crf), **({"g": "1", "preset": "veryfast"} if all_intra else {"preset": "fast"}),
                             "x264-params": X264_REPRODUCIBLE}
        elif codec == "prores":
            video = container.add_stream("prores_ks", rate=picture.fps)
            video.pix_fmt = "yuv422p10le"
            video.options = {"profile": "3"}  # 422 HQ
        else:
            video = container.add_stream("png", rate=picture.fps)
            video.pix_fmt = "rgb24"
        video.width, video.height = width, height
        picture = replace(picture, colour=picture.colour.for_codec(codec))
        _tag_picture(video, picture)
        audio_streams = [
            container.add_stream(audio_codec, rate=track.sample_rate, layout=track.layout)
            for track in audio_tracks
        ]
        for index, rgb in enumerate(_chain(first, frames)):
            if rgb.shape != first.shape:
                raise MediaError(f"{path}: frame {index} is {rgb.shape}, expected {first.shape}")
            frame = _to_encoder(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"),
                                video.pix_fmt, picture.colour)
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
        for stream, track in zip(audio_streams, audio_tracks):
            encode_audio(container, stream, track)
    return path


def _tag_picture(video: av.VideoStream, picture: PictureFormat) -> None:
    """SAR and the source's colour tags, verbatim, on the stream (the container's pasp and colr
    atoms, the codec's VUI); an RGB master keeps them for the encodes made from it."""
    context = video.codec_context
    context.sample_aspect_ratio = picture.sar
    context.color_primaries = picture.colour.primaries
    context.color_trc = picture.colour.transfer
    context.colorspace = picture.colour.matrix
    context.color_range = picture.colour.range


def _to_encoder(frame: av.VideoFrame, pix_fmt: str, colour: Colour) -> av.VideoFrame:
    """An RGB frame in the encoder's pixel format, through the source's matrix and range, tagged."""
    if pix_fmt != "rgb24":
        frame = frame.reformat(format=pix_fmt, dst_colorspace=_matrix(colour.matrix),
                               dst_color_range=_range(colour.range))
    frame.color_primaries, frame.color_trc = colour.primaries, colour.transfer
    frame.colorspace, frame.color_range = colour.matrix, colour.range
    return frame


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
    # Packed frames only (see the module doc); the encoder converts to its own sample format.
    if stream.codec_context.name == "pcm_s24le":
        # FFmpeg carries 24-bit PCM in the top bits of s32; quantizing here makes the round trip exact.
        data = np.ascontiguousarray((quantize_pcm24(samples) << 8).T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(data, format="s32", layout=track.layout)
    else:
        data = np.ascontiguousarray(samples.astype(np.float32).T.reshape(1, -1))
        frame = av.AudioFrame.from_ndarray(data, format="flt", layout=track.layout)
    frame.sample_rate = track.sample_rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _probe_child() -> None:
    """The child `probe_many` runs: a JSON list of paths on stdin; for each, in order, one line of
    JSON on stdout as soon as it is probed: {"media": ...} or {"error": message}. It leaves by
    os._exit: no teardown frees a kept layout's channel map a second time (see the module doc)."""
    for path in json.loads(sys.stdin.read()):
        try:
            answer = {"media": asdict(_probe_in_process(Path(path)))}
        except MediaError as error:
            answer = {"error": str(error)}
        print(json.dumps(answer, default=str), flush=True)
    os._exit(0)


if __name__ == "__main__":
    _probe_child()
