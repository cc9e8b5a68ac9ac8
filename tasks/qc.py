"""Stage 5, per (shot, language): measure the deliverables against the delivery spec.

Every check carries the measured value, so a failure says what was found, not only that it failed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.tasks.audio import EBU_R128, LoudnessProfile, integrated_loudness, true_peak_dbtp
from dubflow.tasks.files import atomic_write_bytes
from dubflow.tasks.media import DELIVERY_SAMPLE_RATE, probe, read_audio
from dubflow.tasks.remix import RemixedPair
from dubflow.tasks.validate import Shot


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: str
    expected: str


@dataclass(frozen=True)
class QCReport:
    shot_id: str
    language: str
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def to_json(self) -> str:
        return json.dumps({"shot_id": self.shot_id, "language": self.language, "passed": self.passed,
                           "checks": [asdict(check) for check in self.checks]}, indent=2, ensure_ascii=False)


def check_wav(name: str, path: Path, channels: int, duration: Fraction) -> list[Check]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        codec, rate, found_channels = stream.codec_context.name, stream.rate, stream.channels
    samples, _ = read_audio(path)
    seconds = samples.shape[1] / rate
    drift_ms = abs(seconds - float(duration)) * 1000
    full_scale = int(np.count_nonzero(np.abs(samples) >= 1.0 - 2.0**-23))
    return [
        Check(f"{name} sample rate", rate == DELIVERY_SAMPLE_RATE, f"{rate} Hz", f"{DELIVERY_SAMPLE_RATE} Hz"),
        Check(f"{name} bit depth", codec == "pcm_s24le", codec, "pcm_s24le (24-bit)"),
        Check(f"{name} channels", found_channels == channels, str(found_channels), str(channels)),
        Check(f"{name} duration", drift_ms <= 1.0, f"{seconds:.6f} s ({drift_ms:.3f} ms off)", f"{float(duration):.6f} s ± 1 ms"),
        Check(f"{name} clipping", full_scale == 0, f"{full_scale} samples at full scale", "0"),
    ]


def qc_pair(
    shot_id: str,
    language: str,
    source_frames: int,
    source_fps: Fraction,
    source_channels: int,
    review_copy: Path,
    mix: Path,
    dialogue: Path,
    profile: LoudnessProfile = EBU_R128,
) -> QCReport:
    picture = probe(review_copy)
    duration = Fraction(source_frames) / source_fps
    checks = [
        Check("picture frame count", picture.frame_count == source_frames, str(picture.frame_count), str(source_frames)),
        Check("picture frame rate", picture.fps == source_fps, str(picture.fps), str(source_fps)),
    ]
    checks += check_wav("mix", mix, source_channels, duration)
    checks += check_wav("dialogue", dialogue, source_channels, duration)

    mix_audio, rate = read_audio(mix)
    loudness = integrated_loudness(mix_audio, rate)
    if loudness is None:
        checks.append(Check(f"loudness ({profile.name})", True, "unmeasurable (under 400 ms gated)", "reported, not judged"))
    else:
        checks.append(
            Check(
                f"loudness ({profile.name})",
                abs(loudness - profile.target_lufs) <= profile.tolerance_lu,
                f"{loudness:.2f} LUFS",
                f"{profile.target_lufs} ± {profile.tolerance_lu} LU",
            )
        )
    peak = true_peak_dbtp(mix_audio)
    checks.append(
        Check("true peak", peak <= profile.max_true_peak_dbtp, f"{peak:.2f} dBTP" if math.isfinite(peak) else "silent",
              f"≤ {profile.max_true_peak_dbtp} dBTP")
    )
    dialogue_audio, _ = read_audio(dialogue)
    checks.append(
        Check("dialogue present", bool(np.abs(dialogue_audio).max(initial=0.0) > 0), 
              f"peak {np.abs(dialogue_audio).max(initial=0.0):.4f}", "not silent: the script has a line")
    )
    return QCReport(shot_id, language, tuple(checks))


def write_qc_report(report: QCReport, directory: Path) -> Path:
    return atomic_write_bytes(Path(directory) / f"{report.shot_id}_{report.language}_qc.json", report.to_json().encode())


class QCFailedError(Exception):
    """The deliverables of a pair fail the delivery spec; the message lists each failed check."""


@task(name="qc", cache_policy=NO_CACHE, task_run_name="qc {remixed.shot_id} {remixed.language}")
def qc_pair_task(shot: Shot, remixed: RemixedPair, review_copy: Path) -> Path:
    """Write the QC report beside the pair's files; fail the pair when any check fails."""
    channels = shot.media.audio[0].channels
    report = qc_pair(shot.shot_id, remixed.language, shot.media.frame_count, shot.media.fps, channels,
                     review_copy, remixed.mix, remixed.dialogue)
    path = write_qc_report(report, Path(review_copy).parent)
    if not report.passed:
        raise QCFailedError(
            "QC failed: " + "; ".join(f"{c.name} = {c.measured} (expected {c.expected})" for c in report.failures())
        )
    return path
