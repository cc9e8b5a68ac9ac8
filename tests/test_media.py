"""PyAV media I/O, every file it writes read back by ffprobe and the ffmpeg CLI."""

from __future__ import annotations

import os
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from dubflow.manifests.samples import SAMPLE_SHOTS
from dubflow.media.io import AudioTrack, MediaError, probe, quantize_pcm24, write_video, write_wav
from media_corpus import decode_audio, probe_picture, probe_sounds


@pytest.mark.parametrize("shot", SAMPLE_SHOTS, ids=lambda s: s.shot_id)
def test_probe_agrees_with_ffprobe_on_every_sample_shot(samples_dir: Path, shot) -> None:
    path = samples_dir / "shots" / shot.file_name
    info = probe(path)
    picture, (sound,) = probe_picture(path), probe_sounds(path)
    assert (info.frame_count, info.fps) == (picture.frames, picture.rate) == (shot.frame_count, shot.fps)
    assert isinstance(info.fps, Fraction)
    assert (info.width, info.height) == (picture.width, picture.height) == (shot.width, shot.height)
    (audio,) = info.audio
    assert (audio.sample_rate, audio.channels, audio.layout) == (sound.sample_rate, sound.channels, sound.layout)
    assert audio.layout == shot.layout


def decoded_frames(path: Path) -> np.ndarray:
    """Every frame as RGB, decoded by the ffmpeg CLI: (frames, height, width, 3) uint8."""
    picture = probe_picture(path)
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v:0", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, picture.height, picture.width, 3)


@pytest.mark.parametrize("fps", [Fraction(24000, 1001), Fraction(30000, 1001), Fraction(24), Fraction(25)])
@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "h264"), (".mov", "h264"), (".mov", "prores"), (".mov", "png")])
def test_frame_exact_round_trip(tmp_path: Path, fps: Fraction, suffix: str, codec: str) -> None:
    frames = [np.full((64, 96, 3), 4 * i, np.uint8) for i in range(37)]
    path = write_video(tmp_path / f"clip{suffix}", frames, fps, codec=codec)
    picture = probe_picture(path)
    assert (picture.frames, picture.rate) == (37, fps)
    decoded = decoded_frames(path)
    # lossy codecs: the order of frames survives (each frame is a distinct flat grey)
    assert np.all(np.diff(decoded[:, 32, 48, 0].astype(int)) > 0)


@pytest.mark.parametrize("fps", [Fraction(24000, 1001), Fraction(25)])
def test_png_master_is_lossless(tmp_path: Path, fps: Fraction) -> None:
    frames = np.random.default_rng(3).integers(0, 256, (9, 48, 70, 3), dtype=np.uint8)
    path = write_video(tmp_path / "master.mov", frames, fps, codec="png")
    picture = probe_picture(path)
    assert (picture.frames, picture.rate) == (9, fps)
    np.testing.assert_array_equal(decoded_frames(path), frames)


@pytest.mark.parametrize(("layout", "channels"), [("mono", 1), ("stereo", 2), ("5.1", 6)])
@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_wav_round_trip_is_sample_exact(tmp_path: Path, layout: str, channels: int, rate: int) -> None:
    audio = np.random.default_rng(0).uniform(-1, 1, (channels, 12_345)).astype(np.float32)
    path = write_wav(tmp_path / "a.wav", AudioTrack(audio, rate, layout))
    (sound,) = probe_sounds(path)
    assert (sound.codec, sound.sample_rate, sound.channels, sound.layout, sound.samples) == (
        "pcm_s24le", rate, channels, layout, 12_345)
    np.testing.assert_array_equal(decode_audio(path, rate=rate), quantize_pcm24(audio) / 2**23)


def test_mov_keeps_51_pcm_sample_exact_beside_picture(tmp_path: Path) -> None:
    fps = Fraction(24000, 1001)
    samples = int(25 * 48_000 / fps)
    audio = np.random.default_rng(1).uniform(-0.5, 0.5, (6, samples)).astype(np.float32)
    path = write_video(
        tmp_path / "c.mov", [np.zeros((48, 64, 3), np.uint8)] * 25, fps, [AudioTrack(audio, 48_000, "5.1")]
    )
    (sound,) = probe_sounds(path)
    assert (sound.codec, sound.channels, sound.layout) == ("pcm_s24le", 6, "5.1")
    np.testing.assert_array_equal(decode_audio(path), quantize_pcm24(audio) / 2**23)


def test_several_audio_tracks_are_muxed(tmp_path: Path) -> None:
    tracks = [AudioTrack(np.zeros((c, 4800), np.float32), 48_000, l) for c, l in ((2, "stereo"), (1, "mono"))]
    path = write_video(tmp_path / "m.mp4", [np.zeros((32, 32, 3), np.uint8)] * 3, Fraction(25), tracks)
    assert [sound.layout for sound in probe_sounds(path)] == ["stereo", "mono"]


def test_probe_rejects_non_media(tmp_path: Path) -> None:
    junk = tmp_path / "junk.mov"
    junk.write_bytes(b"\x00" * 1000)
    with pytest.raises(MediaError, match="junk.mov"):
        probe(junk)


def test_channel_mismatch_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="3 channels"):
        write_wav(tmp_path / "x.wav", AudioTrack(np.zeros((3, 10), np.float32), 48_000, "stereo"))


def test_a_file_memo_keeps_nothing_of_a_file_changed_just_before_it_was_stamped(tmp_path: Path) -> None:
    """A rewrite within the filesystem clock's tick can leave size, mtime and inode as they were: a
    value is memoized only for a file that had settled before it was read."""
    from dubflow.media.files import FileMemo

    path = tmp_path / "f"
    path.write_bytes(b"one")
    memo: FileMemo[bytes] = FileMemo()
    reads: list[bytes] = []

    def read(p: Path) -> bytes:
        reads.append(p.read_bytes())
        return reads[-1]

    assert memo.get(path, read) == b"one"
    path.write_bytes(b"two")  # same size, possibly the same mtime
    assert memo.get(path, read) == b"two"
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(long_ago, long_ago))
    assert memo.get(path, read) == memo.get(path, read) == b"two"
    assert reads == [b"one", b"two", b"two"]  # the settled file read once for two asks


def _heap_refilled_with_noise(rng: np.random.Generator) -> None:
    """Allocate and free buffers of noise, so memory a library takes next without initialising it holds
    other bytes than it did for the call before."""
    buffers = [bytearray(rng.bytes(size)) for size in rng.integers(1 << 10, 1 << 20, 48)]
    del buffers


def test_an_h264_encode_is_a_function_of_its_frames(tmp_path: Path) -> None:
    """The same frames give the same bytes every time in one process, whatever the heap held before
    (x264's mbtree made them differ: a recomputed take's review copy no longer matched the stored one)."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25,noise=alls=40:allf=t",
                          "-frames:v", "50", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(50, 180, 320, 3)
    rng = np.random.default_rng(11)
    encodes = set()
    for attempt in range(6):
        _heap_refilled_with_noise(rng)
        path = write_video(tmp_path / f"take{attempt}.mp4", frames, Fraction(25))
        encodes.add(path.read_bytes())
    assert len(encodes) == 1
