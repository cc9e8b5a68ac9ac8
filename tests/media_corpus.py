"""A conformance corpus made by an independent encoder, and independent ways to measure it.

Every file is written by the ffmpeg command-line tool (the Debian package, never dubflow's own
PyAV writer) from lavfi sources: a test pattern and a soundtrack holding a quiet tone and one short
swept-tone burst, the sync marker, at a known picture time. Files are tiny (64x64, 1–2 s) so the
whole corpus is made once per test session in seconds.

Everything measured here is measured with ffprobe and ffmpeg (subprocess, argument lists, JSON):
frame counts by decoding (`-count_frames`), exact rates, display geometry (rotation, SAR), colour
tags, channel counts, where the first frame and the first audio sample sit, and where the marker
lands on the picture timeline. None of it goes through dubflow's reader.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

RATE = 48_000
MARKER_S = 0.02  # length of the burst
MARKER_F0, MARKER_F1 = 500.0, 6_000.0  # its sweep: a chirp has one sharp correlation peak, a tone has many
MARKER_AMPLITUDE = 0.5
TONE = "0.05*sin(2*PI*220*t)"  # the rest of the soundtrack: quiet, never silent
NTSC_FILM = Fraction(24000, 1001)


# -- running the tools ------------------------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args], check=True,
                   capture_output=True)


def ffprobe_json(path: Path, *args: str) -> dict:
    result = subprocess.run(["ffprobe", "-v", "error", "-of", "json", *args, str(path)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout)


# -- the soundtrack ---------------------------------------------------------------------------------


def marker_expression(at: Fraction | float) -> str:
    """aevalsrc expression of the burst starting at `at` seconds of the audio's own timeline:
    a Hann-windowed linear sweep MARKER_F0 -> MARKER_F1 over MARKER_S."""
    a = f"(t-{float(at):.9f})"
    sweep = (MARKER_F1 - MARKER_F0) / (2 * MARKER_S)
    return (f"{MARKER_AMPLITUDE}*sin(2*PI*({MARKER_F0}*{a}+{sweep}*{a}*{a}))"
            f"*(0.5-0.5*cos(2*PI*{a}/{MARKER_S}))*between({a},0,{MARKER_S})")


def marker_template(rate: int = RATE) -> np.ndarray:
    """The burst itself, computed here in numpy from the same formula, to look for it."""
    t = np.arange(int(MARKER_S * rate)) / rate
    sweep = (MARKER_F1 - MARKER_F0) / (2 * MARKER_S)
    return (np.sin(2 * np.pi * (MARKER_F0 * t + sweep * t * t)) * (0.5 - 0.5 * np.cos(2 * np.pi * t / MARKER_S)))


def soundtrack_source(seconds: Fraction, marker_at: Fraction | None, channels: int, rate: int = RATE) -> str:
    """lavfi source of `seconds` of sound, every channel the same, exactly round(seconds * rate) samples."""
    expression = TONE if marker_at is None else f"{TONE}+{marker_expression(marker_at)}"
    samples = round(seconds * rate)
    return (f"aevalsrc=exprs='{'|'.join([expression] * channels)}':s={rate}:d={float(seconds) + 0.1:.6f},"
            f"atrim=end_sample={samples}")


# -- the cases --------------------------------------------------------------------------------------

LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "5.1": 6, "7.1": 8}


@dataclass(frozen=True)
class Case:
    """One source file: how ffmpeg makes it, and what dubflow must do with it.

    `refused`: a regular expression the refusal at validate must match (None: it must deliver).
    `either_way`: delivering and refusing (with that message) are both acceptable (7.1: the issue
    lets dubflow support it like 5.1 or refuse it at validate).
    """

    name: str
    suffix: str
    video: tuple[str, ...] = ("-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "12")
    audio: tuple[str, ...] = ("-c:a", "aac", "-b:a", "192k")
    fps: Fraction = NTSC_FILM
    frames: int = 36
    size: tuple[int, int] = (64, 64)
    video_filter: str = ""
    layout: str = "stereo"
    audio_rate: int = RATE
    audio_delay: Fraction = Fraction(0)  # the sound's first sample, in seconds after the first frame
    audio_extra: Fraction = Fraction(0)  # sound longer (+) or shorter (-) than picture + delay
    marker_at: Fraction = Fraction(1, 2)  # picture time of the burst
    tracks: str = "one"  # "one", "mono-per-channel" (a 5.1 as six mono tracks), "mix+me", "none"
    mux: tuple[str, ...] = ()  # muxer options
    after: Callable[[Path, Path], None] | None = None  # rewrites the file ffmpeg wrote (from, to)
    refused: str | None = None
    either_way: bool = False

    @property
    def path_name(self) -> str:
        return f"{self.name}{self.suffix}"

    @property
    def picture_seconds(self) -> Fraction:
        return self.frames / self.fps


def write_case(case: Case, directory: Path) -> Path:
    """Make the case's file in `directory` with the ffmpeg CLI; return its path."""
    out = directory / case.path_name
    target = out.with_name(f"raw_{out.name}") if case.after else out
    channels = LAYOUT_CHANNELS[case.layout]
    width, height = case.size
    # trim, not -frames:v: ffmpeg closes every stream of a file when one reaches its frame limit
    video_source = (f"testsrc2=size={width}x{height}:rate={case.fps.numerator}/{case.fps.denominator},"
                    f"trim=end_frame={case.frames}")
    inputs = ["-f", "lavfi", "-i", video_source]
    maps = ["-map", "0:v"]
    audio_args: list[str] = []
    if case.tracks != "none":
        seconds = case.picture_seconds - case.audio_delay + case.audio_extra
        marker = case.marker_at - case.audio_delay
        delay = ["-itsoffset", f"{float(case.audio_delay):.9f}"] if case.audio_delay else []
        inputs += [*delay, "-f", "lavfi", "-i", soundtrack_source(seconds, marker, channels, case.audio_rate)]
        audio_args = list(case.audio)
        if case.tracks == "one":
            maps += ["-map", "1:a"]
            audio_args += ["-channel_layout", case.layout] if case.layout != "mono" else []
        elif case.tracks == "mono-per-channel":
            labels = "".join(f"[c{i}]" for i in range(channels))
            inputs += ["-filter_complex", f"[1:a]channelsplit=channel_layout={case.layout}{labels}"]
            for i in range(channels):
                maps += ["-map", f"[c{i}]"]
        elif case.tracks == "mix+me":
            # a second stereo track, the M&E the studio sent beside the mix: the tone without the marker
            inputs += ["-f", "lavfi", "-i", soundtrack_source(seconds, None, channels, case.audio_rate)]
            maps += ["-map", "1:a", "-map", "2:a"]
            audio_args += ["-metadata:s:a:0", "title=Main mix", "-metadata:s:a:1", "title=M&E"]
        else:
            raise ValueError(case.tracks)
    vf = ["-vf", case.video_filter] if case.video_filter else []
    ffmpeg(*inputs, *maps, *vf, *case.video, *audio_args, *case.mux, str(target))
    if case.after:
        case.after(target, out)
        target.unlink()
    return out


# -- rewriting what ffmpeg wrote: trims, damage ----------------------------------------------------


def trim_with_edit_list(source: Path, out: Path) -> None:
    """Cut the first 0.3 s by stream copy: the MP4 keeps the frames from the keyframe before the cut
    and an edit list that hides them, so packets outnumber the frames that play."""
    ffmpeg("-ss", "0.3", "-i", str(source), "-c", "copy", str(out))


def rotate_90(source: Path, out: Path) -> None:
    """Phone footage: the picture stored landscape with a display matrix that turns it 90 degrees
    (ffmpeg 5.1 writes the `rotate` tag as a display matrix only on a stream copy)."""
    ffmpeg("-i", str(source), "-map", "0", "-c", "copy", "-metadata:s:v:0", "rotate=90", str(out))


def truncate(source: Path, out: Path) -> None:
    """The first 60 % of a file whose index comes first (faststart): the index promises frames the
    file no longer holds."""
    data = source.read_bytes()
    out.write_bytes(data[: len(data) * 6 // 10])


def corrupt_index(source: Path, out: Path) -> None:
    """Overwrite the movie header: the file is an MP4 by its name and first bytes, and nothing reads."""
    data = bytearray(source.read_bytes())
    start = data.find(b"moov")
    data[start - 4 : start + 400] = bytes(404)
    out.write_bytes(bytes(data))


# -- the corpus -------------------------------------------------------------------------------------

H264_AAC = Case("_", ".mp4")  # defaults: H.264 4:2:0 + AAC stereo in MP4, 36 frames at 24000/1001
PRORES_PCM = dict(suffix=".mov", video=("-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le"),
                  audio=("-c:a", "pcm_s24le"))
PCM_MOV = dict(suffix=".mov", audio=("-c:a", "pcm_s24le"))


def _case(name: str, **changes) -> Case:
    return Case(**{**H264_AAC.__dict__, "name": name, **changes})


VP9_OPUS = dict(suffix=".webm", video=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"),
                audio=("-c:a", "libopus", "-b:a", "96k"))
HEVC = ("-c:v", "libx265", "-tag:v", "hvc1", "-x265-params", "log-level=error")

# Each case that delivers is one shot of the end-to-end run: several awkward things share a shot
# where they are independent (a container at a frame rate, a layout at a sample rate), to keep the
# run short. Durations are chosen so that no shot lasts a whole number of milliseconds.
CORPUS: tuple[Case, ...] = (
    # containers and codecs, each at its own frame rate
    _case("mp4_h264_aac_stereo"),
    _case("mp4_hevc_aac_2997", fps=Fraction(30000, 1001), frames=47, video=(*HEVC, "-pix_fmt", "yuv420p")),
    _case("mov_prores_pcm24_5994", **PRORES_PCM, fps=Fraction(60000, 1001), frames=77),
    _case("mxf_mpeg2_pcm_25", suffix=".mxf", fps=Fraction(25), frames=26,
          video=("-c:v", "mpeg2video", "-pix_fmt", "yuv422p", "-g", "12"), audio=("-c:a", "pcm_s24le")),
    _case("mxf_dnxhr_pcm_25", suffix=".mxf", fps=Fraction(25), frames=27, size=(256, 120),
          video=("-c:v", "dnxhd", "-profile:v", "dnxhr_lb", "-pix_fmt", "yuv422p"), audio=("-c:a", "pcm_s24le")),
    _case("avi_mpeg4_pcm_12", suffix=".avi", fps=Fraction(12), frames=13, marker_at=Fraction(1, 4),
          video=("-c:v", "mpeg4", "-q:v", "4"), audio=("-c:a", "pcm_s16le")),
    _case("mkv_h264_flac_24", suffix=".mkv", fps=Fraction(24), frames=29, audio=("-c:a", "flac")),
    # sound that starts after the picture: stream start times (WebM + Opus pre-skip, TS), MP4 and MOV edit lists
    _case("webm_vp9_opus_50_delayed", **VP9_OPUS, fps=Fraction(50), frames=37, audio_delay=Fraction(1, 5)),
    _case("ts_h264_aac_delayed", suffix=".ts", frames=61, audio_delay=Fraction(1, 5)),
    _case("mp4_aac_mono_delayed", layout="mono", audio_delay=Fraction(1, 5)),
    _case("mov_pcm_delayed_edit_list", **PCM_MOV, audio_delay=Fraction(1, 5)),
    # sound longer and shorter than the picture; picture trimmed by an edit list
    _case("mov_mix_and_me_tracks_audio_longer", **PCM_MOV, tracks="mix+me", audio_extra=Fraction(3, 10)),
    _case("mov_h264_10bit_422_audio_shorter", suffix=".mov", video=("-c:v", "libx264", "-pix_fmt", "yuv422p10le"),
          audio=("-c:a", "pcm_s24le"), audio_extra=Fraction(-3, 10)),
    _case("mp4_edit_list_trim", frames=48, marker_at=Fraction(1), after=trim_with_edit_list),
    # layouts
    _case("mp4_aac_51_44k1", layout="5.1", audio_rate=44_100),
    _case("mov_51_mono_tracks_2997_df", **PCM_MOV, layout="5.1", tracks="mono-per-channel",
          fps=Fraction(30000, 1001), frames=47, mux=("-timecode", "00:00:00;00")),
    # picture formats, colour and geometry
    _case("mp4_hevc_hdr_pq", video=(*HEVC, "-pix_fmt", "yuv420p10le", "-color_primaries", "bt2020",
                                    "-color_trc", "smpte2084", "-colorspace", "bt2020nc")),
    _case("mp4_h264_full_range_anamorphic", video_filter="scale=out_range=full,setsar=4/3",
          video=("-c:v", "libx264", "-pix_fmt", "yuvj420p", "-color_range", "pc")),
    _case("mov_prores4444_alpha", suffix=".mov", video_filter="format=yuva444p10le",
          video=("-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le"), audio=("-c:a", "pcm_s24le")),
    _case("mp4_rotated_90", size=(96, 64), after=rotate_90),
    _case("mov_png_odd_size", suffix=".mov", video_filter="scale=85:49,setsar=1", video=("-c:v", "png"),
          audio=("-c:a", "pcm_s24le")),
    # the shortest shot there is
    _case("mov_1_frame", **PCM_MOV, frames=1, marker_at=Fraction(1, 200)),
    # dubflow may take 7.1 like 5.1 or refuse it at validate; never crash on it
    _case("mov_71", **PCM_MOV, layout="7.1", refused=r"7\.1|8 channels|eight channels", either_way=True),
    # what must be refused at validate, naming what was found
    # 12 frames at 24000/1001, then 24 at 60 fps: no constant rate shows every frame at its time
    _case("mp4_vfr", video_filter="settb=1/120000,setpts='if(lt(N,12),N*5005,60060+(N-12)*2000)'",
          video=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-fps_mode", "vfr", "-enc_time_base", "1/120000",
                 "-video_track_timescale", "120000"),
          refused=r"(?i)variable frame rate.*23\.976.*60"),
    _case("mp4_truncated", mux=("-movflags", "+faststart"), after=truncate,
          refused=r"(?i)truncat|incomplete|cut short"),
    _case("mp4_corrupt_index", after=corrupt_index, refused=r"(?i)cannot be opened|corrupt|unreadable"),
)
DELIVERED = tuple(case for case in CORPUS if case.refused is None)
REFUSED = tuple(case for case in CORPUS if case.refused is not None)


def generate_corpus(directory: Path, cases: Sequence[Case] = CORPUS) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {case.name: write_case(case, directory) for case in cases}


def remix_counts_source(directory: Path, counts: Sequence[int], fps: Fraction = NTSC_FILM) -> dict[int, tuple[Path, Path]]:
    """One MOV (H.264 + 24-bit PCM, 32x32) per frame count, its marker at a fifth of the shot, and its
    soundtrack alone as a 24-bit WAV beside it, all written by one ffmpeg process: {count: (mov, wav)}."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    args: list[str] = []
    for count in counts:
        seconds = count / fps
        args += ["-f", "lavfi", "-i", f"testsrc2=size=32x32:rate={fps.numerator}/{fps.denominator},trim=end_frame={count}",
                 "-f", "lavfi", "-i", soundtrack_source(seconds, seconds / 5, 2)]
    for index, count in enumerate(counts):
        paths[count] = (directory / f"frames_{count:03d}.mov", directory / f"frames_{count:03d}.wav")
        args += ["-map", f"{2 * index}:v", "-map", f"{2 * index + 1}:a", "-c:v", "libx264", "-preset", "ultrafast",
                 "-pix_fmt", "yuv420p", "-c:a", "pcm_s24le", str(paths[count][0]),
                 "-map", f"{2 * index + 1}:a", "-c:a", "pcm_s24le", str(paths[count][1])]
    ffmpeg(*args)
    return paths


# -- measuring with ffprobe / ffmpeg ----------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    """A file's picture as ffprobe sees it."""

    frames: int  # decoded (`-count_frames`): what plays, after edit lists
    rate: Fraction  # r_frame_rate
    width: int
    height: int
    sar: Fraction
    rotation: int  # degrees, from the display matrix (0, 90, 180, 270)
    codec: str
    profile: str
    pix_fmt: str
    colour: dict[str, str] = field(default_factory=dict)  # range, primaries, transfer, matrix

    @property
    def display_aspect(self) -> Fraction:
        """Width / height as a viewer sees it: SAR applied, then rotation."""
        aspect = Fraction(self.width, self.height) * self.sar
        return 1 / aspect if self.rotation % 180 == 90 else aspect


def probe_picture(path: Path) -> Picture:
    info = ffprobe_json(path, "-count_frames", "-select_streams", "v:0", "-show_streams")
    (stream,) = info["streams"]
    sar_text = stream.get("sample_aspect_ratio", "1:1")
    sar = Fraction(*map(int, sar_text.split(":"))) if sar_text not in ("0:1", "N/A") else Fraction(1)
    rotation = 0
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            rotation = int(side["rotation"]) % 360
    colour = {key: stream.get(key, "unknown") for key in ("color_range", "color_primaries", "color_transfer",
                                                           "color_space")}
    return Picture(
        frames=int(stream["nb_read_frames"]),
        rate=Fraction(stream["r_frame_rate"]),
        width=int(stream["width"]),
        height=int(stream["height"]),
        sar=sar,
        rotation=rotation,
        codec=stream["codec_name"],
        profile=stream.get("profile", ""),
        pix_fmt=stream.get("pix_fmt", ""),
        colour=colour,
    )


@dataclass(frozen=True)
class Sound:
    """One audio stream as ffprobe sees it."""

    index: int  # among the file's audio streams
    codec: str
    sample_rate: int
    channels: int
    layout: str
    samples: int | None  # from the stream's duration in its time base, when it says (WAV does)


def probe_sounds(path: Path) -> list[Sound]:
    info = ffprobe_json(path, "-select_streams", "a", "-show_streams")
    sounds = []
    for index, stream in enumerate(info["streams"]):
        rate = int(stream["sample_rate"])
        samples = None
        if stream.get("duration_ts") is not None and stream.get("time_base") == f"1/{rate}":
            samples = int(stream["duration_ts"])
        sounds.append(Sound(index, stream["codec_name"], rate, int(stream["channels"]),
                            stream.get("channel_layout", ""), samples))
    return sounds


def declared_priming(path: Path) -> list[int]:
    """Encoder priming each audio stream declares, in samples, as ffprobe shows it: an Opus stream's
    pre-skip from its header (RFC 7845: bytes 10-11 of OpusHead, little-endian, in ffprobe's hexdump
    of the extradata), else the "Skip Samples" side data on the stream's first packet (what an MP4
    edit list says of AAC priming); 0 where neither says any."""
    streams = ffprobe_json(path, "-select_streams", "a", "-show_streams", "-show_data")["streams"]
    priming = []
    for index, stream in enumerate(streams):
        if stream["codec_name"] == "opus":
            # Each hexdump line: "00000010: 0000 00 ..." — offset, then 16 bytes in 40 columns, then text.
            head = b"".join(bytes.fromhex(line[10:50].replace(" ", ""))
                            for line in stream["extradata"].splitlines() if line.strip())
            priming.append(int.from_bytes(head[10:12], "little"))
            continue
        (first,) = ffprobe_json(path, "-select_streams", f"a:{index}", "-show_packets", "-read_intervals",
                                "%+#1")["packets"]
        skips = [data["skip_samples"] for data in first.get("side_data_list", [])
                 if data.get("side_data_type") == "Skip Samples"]
        priming.append(int(skips[0]) if skips else 0)
    return priming


def first_frame_times(path: Path) -> dict[str, Fraction]:
    """Presentation time of the first decoded frame of every stream that decodes, exact, by stream
    specifier ("v:0", "a:0", "a:1", ...): one ffprobe decodes all the streams once (each stream's
    frames are what decoding it alone gives)."""
    info = ffprobe_json(path, "-show_entries", "frame=stream_index,best_effort_timestamp:stream=index,codec_type,time_base",
                        "-show_frames", "-show_streams")
    specifiers, time_bases, counts = {}, {}, Counter()
    for stream in info["streams"]:
        kind = stream["codec_type"][0]  # v(ideo), a(udio), d(ata), s(ubtitle): ffprobe's specifier letters
        specifiers[stream["index"]] = f"{kind}:{counts[kind]}"
        counts[kind] += 1
        time_bases[stream["index"]] = Fraction(stream["time_base"])
    times: dict[str, Fraction] = {}
    for frame in info["frames"]:
        index = frame["stream_index"]
        times.setdefault(specifiers[index], int(frame["best_effort_timestamp"]) * time_bases[index])
    return times


def decode_audio(path: Path, stream: int = 0, rate: int = RATE) -> np.ndarray:
    """(channels, samples) float32 of one audio stream decoded by ffmpeg at `rate` (resampled by
    ffmpeg if the stream is at another rate), from the stream's first sample.

    ffmpeg writes a float WAV to the pipe: its header carries the channel count, so one ffmpeg
    process does what a probe and a decode did (the samples are the same)."""
    result = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", str(path), "-map", f"0:a:{stream}",
         "-ar", str(rate), "-f", "wav", "-c:a", "pcm_f32le", "-"],
        check=True, capture_output=True)
    channels, data = wav_channels_and_samples(result.stdout)
    return np.frombuffer(data, dtype="<f4").reshape(-1, channels).T


def wav_channels_and_samples(wav: bytes) -> tuple[int, bytes]:
    """The channel count (`fmt ` chunk) and the sample bytes of a WAV ffmpeg wrote to a pipe. On a
    pipe ffmpeg cannot go back to fill in the data chunk's size: the samples run to the end."""
    if wav[:4] != b"RIFF" or wav[8:12] != b"WAVE":
        raise ValueError("not a WAV from ffmpeg")
    position, channels = 12, 0
    while position + 8 <= len(wav):
        chunk, size = wav[position:position + 4], int.from_bytes(wav[position + 4:position + 8], "little")
        body = position + 8
        if chunk == b"fmt ":
            channels = int.from_bytes(wav[body + 2:body + 4], "little")
        elif chunk == b"data":
            return channels, wav[body:]
        position = body + size + size % 2  # chunks are padded to an even length
    raise ValueError("ffmpeg's WAV has no data chunk")


def find_marker(audio: np.ndarray, rate: int = RATE) -> float:
    """Where the burst starts in `audio` (seconds from its first sample), from the summed channels'
    cross-correlation with the burst."""
    mono = np.asarray(audio, dtype=np.float64).sum(axis=0)
    template = marker_template(rate)
    if mono.size < template.size:
        mono = np.pad(mono, (0, template.size - mono.size))
    correlation = np.correlate(mono, template, mode="valid")
    return float(np.argmax(correlation)) / rate


def marker_on_picture_timeline(path: Path, stream: int = 0) -> float:
    """Seconds from the first displayed frame to the marker in audio stream `stream` of a picture
    file, all measured by ffprobe/ffmpeg: the audio's first sample against the first frame, plus
    where the burst lies in the decoded audio."""
    first = first_frame_times(path)
    start = first[f"a:{stream}"] - first["v:0"]
    return float(start) + find_marker(decode_audio(path, stream))


def marker_in_wav(path: Path) -> float:
    """Seconds from the start of a delivered WAV (which starts with the picture) to the marker."""
    return find_marker(decode_audio(path))


def ebur128(source: Path | np.ndarray, rate: int = RATE, layout: str | None = None) -> tuple[float, float]:
    """(integrated loudness LUFS, true peak dBTP) by ffmpeg's own EBU R128 meter (`ebur128=peak=true`),
    of a file's first audio stream or of (channels, samples) float audio piped to ffmpeg raw.

    Read from the meter's per-frame metadata (three decimals; its summary rounds to one)."""
    if isinstance(source, np.ndarray):
        channels = source.shape[0]
        layout = layout or {1: "mono", 2: "stereo", 6: "5.1"}[channels]
        inputs = ["-f", "f32le", "-ar", str(rate), "-ac", str(channels), "-channel_layout", layout, "-i", "-"]
        data = np.ascontiguousarray(np.asarray(source, dtype="<f4").T).tobytes()
    else:
        inputs, data = ["-i", str(source)], None
    result = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-nostdin", "-loglevel", "error", *inputs, "-map", "0:a:0",
         "-af", "ebur128=peak=true:metadata=1,ametadata=print:file=-", "-f", "null", "-"],
        input=data, check=True, capture_output=True)
    text = result.stdout.decode()
    integrated = float(re.findall(r"lavfi\.r128\.I=(\S+)", text)[-1])
    peak = max(float(value) for value in re.findall(r"lavfi\.r128\.true_peak=(\S+)", text))
    return integrated, db(peak) if peak > 0 else -math.inf


def db(value: float) -> float:
    return 20 * math.log10(value)
