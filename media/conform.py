"""The soundtrack conformed to the picture, once, at 48 kHz, exactly as long as the picture.

The picture's first displayed frame is time zero. Each stream of the production mix is resampled
to 48 kHz (if it is not already) and placed by its own presentation time: sound that starts after
the first frame gets silence before it, sound that starts before it (a stream start time, an edit
list) loses its head; then the end is trimmed or padded with silence to exactly
round(frames / rate × 48000) samples. Every later stage works on arrays of that length. Encoder
priming the container declares is discarded by the decoder before any of this (and said in the notes).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from dubflow.media.audio import delivery_length, fit_length, picture_samples, resample_to_delivery
from dubflow.media.io import DELIVERY_SAMPLE_RATE, AudioStreamInfo, AudioTrack, MediaError, MediaInfo, read_audio

_CODEC_NAMES = {"aac": "AAC", "opus": "Opus", "mp3": "MP3"}  # as people write them, for the notes


def conform_soundtrack(media: MediaInfo) -> AudioTrack:
    """The production mix on the picture timeline: (channels, picture samples) float32 at 48 kHz."""
    if not media.soundtrack:
        raise MediaError(f"{media.path}: has no audio stream to conform")
    length = picture_samples(media.frame_count, media.fps, DELIVERY_SAMPLE_RATE)
    placed = []
    for index in media.soundtrack:
        audio, rate = read_audio(media.path, index)
        head = _head_samples(media.audio[index], media.start)
        audio48 = resample_to_delivery(audio, rate)
        audio48 = np.pad(audio48, [(0, 0), (head, 0)]) if head >= 0 else audio48[:, -head:]
        placed.append(fit_length(audio48, length))
    return AudioTrack(np.concatenate(placed).astype(np.float32, copy=False), DELIVERY_SAMPLE_RATE,
                      media.soundtrack_layout)


def conform_notes(media: MediaInfo) -> tuple[str, ...]:
    """What `conform_soundtrack` trims, pads and converts for this picture, in samples at 48 kHz, and why."""
    length = picture_samples(media.frame_count, media.fps, DELIVERY_SAMPLE_RATE)
    notes = []
    for index in media.soundtrack:
        stream = media.audio[index]
        name = stream.describe()
        if stream.priming:
            codec = _CODEC_NAMES.get(stream.codec, stream.codec)
            notes.append(f"{name}: {codec} priming {stream.priming} samples discarded by the decoder, as the "
                         "container declares (the sound is placed from its first real sample)")
        if stream.sample_rate != DELIVERY_SAMPLE_RATE:
            notes.append(f"{name} resampled from {stream.sample_rate} Hz to {DELIVERY_SAMPLE_RATE} Hz")
        head = _head_samples(stream, media.start)
        lead_ms = float((stream.start - media.start) * 1000)
        if head > 0:
            notes.append(f"{name} starts {lead_ms:.3f} ms after the first frame: {head} samples of silence "
                         "put before it")
        elif head < 0:
            notes.append(f"{name} starts {-lead_ms:.3f} ms before the first frame: its first {-head} samples "
                         "trimmed")
        tail = length - (head + delivery_length(stream.samples, stream.sample_rate))
        if tail > 0:
            notes.append(f"{name} ends {_ms(tail)} before the picture: {tail} samples of silence added at the end")
        elif tail < 0:
            notes.append(f"{name} runs {_ms(-tail)} past the picture: its last {-tail} samples trimmed")
    if len(media.soundtrack) == 1 and media.audio[media.soundtrack[0]].layout != media.soundtrack_layout:
        notes.append(f"{media.audio[media.soundtrack[0]].describe()} read as {media.soundtrack_layout} "
                     "(FFmpeg's order for its channel count)")
    return tuple(notes)


def _head_samples(stream: AudioStreamInfo, picture_start: Fraction) -> int:
    """48 kHz samples of silence before the stream (negative: samples cut from its head)."""
    return round((stream.start - picture_start) * DELIVERY_SAMPLE_RATE)


def _ms(samples: int) -> str:
    return f"{samples * 1000 / DELIVERY_SAMPLE_RATE:.3f} ms"
