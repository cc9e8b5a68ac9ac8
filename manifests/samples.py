"""Synthetic locked shots with known stems, for the demo, the tests and separation scoring.

Each shot is a MOV (H.264 picture + 24-bit PCM audio) of a face-like shape drifting across the
frame whose mouth opens with the dialogue envelope; one is an MP4 with AAC sound (encoder priming
and padding to conform) that lasts no whole number of milliseconds, as real deliveries do. Its
soundtrack is a synthetic voice (glottal pulses through vowel formants), chords and an ambient bed;
the stems are written beside the shot (`stems/<shot>_dialogue.wav`, `stems/<shot>_bed.wav`, with
mix = dialogue + bed) so a separator can be scored against the truth. None of this is real footage:
it exists to exercise the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import signal

from dubflow.media.files import sha256_file
from dubflow.media.io import AudioTrack, write_video, write_wav

SAMPLE_RATE = 48_000
VOWEL_FORMANTS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (570, 840))  # a i u e o


@dataclass(frozen=True)
class SampleShot:
    shot_id: str
    width: int
    height: int
    fps: Fraction
    frame_count: int
    layout: str  # "stereo" or "5.1" (dialogue in the centre channel)
    speaker: str
    lines: dict[str, str]  # language -> translated line
    container: str = ".mov"  # ".mov": H.264 + 24-bit PCM; ".mp4": H.264 + AAC

    @property
    def file_name(self) -> str:
        return f"{self.shot_id}{self.container}"


SAMPLE_SHOTS = (
    SampleShot(
        "sc01_sh010", 854, 480, Fraction(24000, 1001), 72, "stereo", "A woman in a red scarf",
        {"fr": "Nous partons à l'aube, avant que la ville ne se réveille.",
         "de": "Wir brechen im Morgengrauen auf, bevor die Stadt erwacht.",
         "pt-BR": "Partimos ao amanhecer, antes que a cidade acorde."},
    ),
    SampleShot(
        "sc01_sh020", 1280, 720, Fraction(25), 50, "stereo", "A man in a grey coat",
        {"fr": "Tu as gardé la clé ?", "de": "Hast du den Schlüssel behalten?"},
    ),
    SampleShot(
        "sc02_sh010", 854, 480, Fraction(30000, 1001), 120, "5.1", "An old man by the window",
        {"fr": "Il pleuvait ce soir-là, comme aujourd'hui, et personne n'est venu.",
         "de": "Es regnete an jenem Abend, wie heute, und niemand kam."},
    ),
    SampleShot(
        "sc02_sh020", 854, 480, Fraction(24), 144, "stereo", "A young woman on the phone",
        {"fr": "Je te rappelle dès que j'arrive à la gare, promis.",
         "de": "Ich rufe dich an, sobald ich am Bahnhof bin, versprochen.",
         "pt-BR": "Te ligo assim que chegar na estação, prometo."},
    ),
    SampleShot(  # 61 frames at 24000/1001: 2.544208… s, AAC in MP4
        "sc03_sh010", 640, 360, Fraction(24000, 1001), 61, "stereo", "A boy waiting at a bus stop",
        {"fr": "Le dernier bus est déjà passé ?"}, container=".mp4",
    ),
)


def generate_samples(out_dir: Path, shots: tuple[SampleShot, ...] = SAMPLE_SHOTS) -> Path:
    """Write the shots, their stems and `manifest.csv` + `manifest.parquet`; return the CSV path."""
    out_dir = Path(out_dir)
    (out_dir / "shots").mkdir(parents=True, exist_ok=True)
    (out_dir / "stems").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, shot in enumerate(shots):
        source = out_dir / "shots" / shot.file_name
        write_sample_shot(source, out_dir / "stems", shot, seed=index)
        digest = sha256_file(source)
        for language, line in shot.lines.items():
            rows.append(
                {
                    "shot_id": shot.shot_id,
                    "source": f"shots/{source.name}",
                    "lock_sha256": digest,
                    "language": language,
                    "script": line,
                    "speaker": shot.speaker,
                }
            )
    table = pd.DataFrame(rows)
    table.to_parquet(out_dir / "manifest.parquet", index=False)
    table.to_csv(out_dir / "manifest.csv", index=False)
    return out_dir / "manifest.csv"


def write_sample_shot(source: Path, stems_dir: Path, shot: SampleShot, seed: int) -> None:
    rng = np.random.default_rng(seed)
    samples = int(shot.frame_count * SAMPLE_RATE / shot.fps)  # exact picture duration, floored to a sample
    dialogue_mono, envelope = synth_dialogue(samples, rng)
    music = synth_chords(samples, rng)
    ambience = synth_ambience(samples, rng)
    dialogue, bed = place_in_layout(shot.layout, dialogue_mono, music, ambience)
    mix = dialogue + bed
    write_wav(stems_dir / f"{shot.shot_id}_dialogue.wav", AudioTrack(dialogue, SAMPLE_RATE, shot.layout))
    write_wav(stems_dir / f"{shot.shot_id}_bed.wav", AudioTrack(bed, SAMPLE_RATE, shot.layout))
    frames = (
        draw_face_frame(shot, index, mouth_open(envelope, index, shot.fps))
        for index in range(shot.frame_count)
    )
    write_video(source, frames, shot.fps, [AudioTrack(mix, SAMPLE_RATE, shot.layout)])


def synth_dialogue(samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A voiced babble: syllables of glottal pulses through two vowel formants. Returns (voice, envelope)."""
    t = np.arange(samples) / SAMPLE_RATE
    f0 = 125 + 20 * np.sin(2 * np.pi * 0.7 * t) + 8 * rng.standard_normal() * np.sin(2 * np.pi * 3.1 * t)
    phase = np.cumsum(f0 / SAMPLE_RATE)
    pulses = (np.diff(np.floor(phase), prepend=0) > 0).astype(np.float64)
    glottal = signal.lfilter([1.0], [1.0, -0.97], pulses)  # a decaying pulse per period, like a glottis

    envelope = np.zeros(samples)
    voice = np.zeros(samples)
    start = int(0.25 * SAMPLE_RATE)
    end = samples - int(0.25 * SAMPLE_RATE)
    position = start
    while position < end:
        length = int(rng.uniform(0.12, 0.26) * SAMPLE_RATE)
        length = min(length, end - position)
        if length < int(0.05 * SAMPLE_RATE):
            break
        segment = slice(position, position + length)
        shape = np.sin(np.linspace(0, np.pi, length)) ** 1.5
        f1, f2 = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))]
        voiced = sum(_resonator(glottal[segment], freq, 90.0) for freq in (f1, f2))
        voice[segment] += voiced * shape
        envelope[segment] = shape
        position += length + int(rng.uniform(0.03, 0.12) * SAMPLE_RATE)
    voice *= 0.35 / max(np.abs(voice).max(), 1e-9)
    return voice.astype(np.float32), envelope


def synth_chords(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Stereo chords, one per second, with a little spread between left and right."""
    t = np.arange(samples) / SAMPLE_RATE
    roots = rng.choice([110.0, 130.81, 146.83, 164.81, 196.0], size=int(np.ceil(samples / SAMPLE_RATE)) + 1)
    root = roots[(t // 1.0).astype(int)]
    tones = sum(np.sin(2 * np.pi * root * ratio * t) / (k + 1) for k, ratio in enumerate((1.0, 1.26, 1.5, 2.0)))
    swell = 0.6 + 0.4 * np.cos(2 * np.pi * t) ** 2
    left = tones * swell
    right = np.roll(left, 240) * 0.9
    music = np.stack([left, right])
    return (0.06 * music / np.abs(music).max()).astype(np.float32)


def synth_ambience(samples: int, rng: np.random.Generator) -> np.ndarray:
    """Low-passed noise, decorrelated per channel: room tone / distant traffic."""
    b, a = signal.butter(2, 800, fs=SAMPLE_RATE)
    noise = signal.lfilter(b, a, rng.standard_normal((2, samples)), axis=1)
    return (0.02 * noise / np.abs(noise).max()).astype(np.float32)


def place_in_layout(
    layout: str, dialogue: np.ndarray, music: np.ndarray, ambience: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Place the mono voice and stereo beds into the shot layout; return (dialogue, bed) stems."""
    if layout == "stereo":
        return np.stack([dialogue, dialogue]) * 0.7071, music + ambience
    if layout == "5.1":  # FFmpeg order: FL FR FC LFE BL BR; dialogue lives in the centre
        silent = np.zeros_like(dialogue)
        dx = np.stack([silent, silent, dialogue, silent, silent, silent])
        b, a = signal.butter(4, 120, fs=SAMPLE_RATE)
        lfe = signal.lfilter(b, a, music.mean(axis=0)).astype(np.float32)
        bed = np.stack([music[0] + ambience[0], music[1] + ambience[1], silent, lfe, ambience[0] * 0.8, ambience[1] * 0.8])
        return dx, bed
    raise ValueError(f"sample shots are stereo or 5.1, not {layout!r}")


def mouth_open(envelope: np.ndarray, frame_index: int, fps: Fraction) -> float:
    start = int(frame_index * SAMPLE_RATE / fps)
    stop = int((frame_index + 1) * SAMPLE_RATE / fps)
    window = envelope[start:stop]
    return float(window.mean()) if window.size else 0.0


def draw_face_frame(shot: SampleShot, frame_index: int, mouth: float) -> np.ndarray:
    h, w = shot.height, shot.width
    t = float(frame_index / shot.fps)
    frame = _background(h, w).copy()
    cx = w * (0.5 + 0.15 * np.sin(2 * np.pi * 0.2 * t))
    cy = h * 0.5
    rx, ry = 0.14 * h, 0.19 * h
    mouth_h = 0.03 * ry + 0.25 * ry * mouth
    # The face, its eyes and its mouth lie inside this box: the shapes are evaluated on its pixels
    # only (one pixel of margin), with the same float32 arithmetic as on a whole-frame grid.
    left, right = int(cx - rx) - 1, int(cx + rx) + 2
    top, bottom = int(cy - ry) - 1, int(max(cy + ry, cy + 0.45 * ry + mouth_h)) + 2
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
    x = np.arange(left, right, dtype=np.float32)[np.newaxis, :]
    y = np.arange(top, bottom, dtype=np.float32)[:, np.newaxis]
    box = frame[top:bottom, left:right]
    face = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    box[face] = (224, 180, 150)
    for side in (-1, 1):
        eye = ((x - cx - side * 0.4 * rx) / (0.14 * rx)) ** 2 + ((y - cy + 0.3 * ry) / (0.08 * ry)) ** 2 <= 1
        box[eye] = (30, 30, 40)
    lips = ((x - cx) / (0.4 * rx)) ** 2 + ((y - cy - 0.45 * ry) / mouth_h) ** 2 <= 1
    box[lips] = (120, 20, 30)
    return frame


@lru_cache(maxsize=8)
def _background(h: int, w: int) -> np.ndarray:
    """The gradient behind the face, the same in every frame of a shot (read-only: copy it to draw)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frame = np.empty((h, w, 3), np.float32)
    frame[..., 0] = 40 + 60 * y / h
    frame[..., 1] = 50 + 40 * x / w
    frame[..., 2] = 90
    background = frame.astype(np.uint8)
    background.flags.writeable = False
    return background


def _resonator(x: np.ndarray, freq: float, bandwidth: float) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * freq / SAMPLE_RATE
    return signal.lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], x)
