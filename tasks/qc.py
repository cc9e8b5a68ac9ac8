"""Stage 5, per (shot, language): measure the deliverables against the delivery spec.

Every check of delivery-spec.md, each with the value measured on the files as written, so a failure
says what was found, not only that it failed:

- picture (review MP4, mezzanine MOV): frame count and exact frame rate of the source, its display
  size (upright), SAR and colour tags; audio as long as the picture (±1 ms); A/V offset 0 ± 1 ms,
  measured by cross-correlating the file's audio, placed on the picture's timeline, with the mix
  WAV; the mezzanine is ProRes 422 HQ + 24-bit PCM
- sync: the delivered M&E and mix cross-correlated with the shot's conformed soundtrack (the source
  placed on the picture's timeline by its timestamps): where the sound lands, ± 1 ms
- mix, new DX and M&E WAVs: 48 kHz, 24-bit, the source's channel count, picture duration ±1 ms,
  no digital clipping
- loudness within the profile's tolerance (as the profile measures it) and true peak (4×
  oversampled) at or under its ceiling
- the new DX is not silent (the script has a line)
- the original DX + M&E give back the source soundtrack (separation lost nothing)
- SRT and WebVTT cues lie inside the shot

The report also carries notes: what the conform trimmed, padded or resampled and why, audio streams
left unused, and what delivery changed about the picture (rendered upright, alpha dropped).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy import signal

from dubflow.media.audio import (
    MIN_DIALOGUE_S,
    SILENCE_FLOOR_DBFS,
    resample_to_delivery,
    dialogue_regions,
    program_loudness,
    true_peak_dbtp,
)
from dubflow.media.loudness_profiles import EBU_R128, LoudnessProfile
from dubflow.media.files import atomic_write_bytes
from dubflow.media.io import DELIVERY_SAMPLE_RATE, PCM24_MAX, Colour, MediaInfo, probe_all, read_audio
from dubflow.tasks.conform import ConformedShot
from dubflow.tasks.remix import RemixedPair
from dubflow.tasks.separate import SeparatedShot
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.subtitles import SubtitleFiles, read_cue_times
from dubflow.tasks.validate import Shot

DURATION_TOLERANCE_MS = 1.0
AV_OFFSET_TOLERANCE_MS = 1.0
_AV_SEARCH_MS = 250.0  # beyond ITU-R BT.1359's +45/−125 ms detectability either way
_AV_WINDOW_S = 10.0  # the opening seconds are enough to find an offset
_FULL_SCALE = 1.0 - 2.0**-23  # the largest positive 24-bit sample
# Supplied dialogue against the generated speech the lips follow: ITU-R BT.1359's detectability threshold
# for sound ahead of picture (45 ms), applied both ways (stricter than the 125 ms it allows sound behind).
SUPPLIED_DIALOGUE_OFFSET_TOLERANCE_MS = 45.0
_OFFSET_SEARCH_MS = 500  # a line shifted further than this is not the same take
CUT_OFF_TAIL_S = 0.1  # speech in the shot's last 100 ms runs into the cut
_ENVELOPE_SMOOTH_MS = 10  # syllable-scale envelope: fine structure differs between two voices
QC_VERSION = 2  # bump when the checks or the report change for the same inputs


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    measured: str
    expected: str


@dataclass(frozen=True)
class PairDeliverables:
    """The files of one (shot, language) that QC measures."""

    review_copy: Path
    mix: Path
    dialogue: Path  # the new DX
    bed: Path  # the shot's shared M&E
    original_dialogue: Path  # the source's DX: with `bed` it must give back the source soundtrack
    subtitles: SubtitleFiles
    source_soundtrack: ConformedShot  # where the sound must land, and what the conform changed (the notes)
    mezzanine: Path | None = None
    generated_dialogue: Path | None = None  # LipDub's own speech when `dialogue` is a supplied recording


@dataclass(frozen=True)
class QCReport:
    shot_id: str
    language: str
    profile: LoudnessProfile
    checks: tuple[Check, ...]
    allow_warnings: bool = False
    levels: Mapping[str, float | None] = field(default_factory=dict)  # gains applied on the way (dB, LUFS)
    notice: str | None = None  # the model profile's, e.g. random weights: checks pass on noise too
    notes: tuple[str, ...] = ()  # what the conform and delivery changed about the source, and why

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def status(self) -> str:
        if self.passed:
            return "passed"
        return "failed, delivered with QC warnings allowed" if self.allow_warnings else "failed"

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def to_json(self) -> str:
        return json.dumps(
            {
                "shot_id": self.shot_id,
                "language": self.language,
                "passed": self.passed,
                "status": self.status,
                "allow_warnings": self.allow_warnings,
                "notice": self.notice,
                "loudness_profile": {**asdict(self.profile), "measured_on": self.profile.measured_on},
                "levels": dict(self.levels),
                "notes": list(self.notes),
                "checks": [asdict(check) for check in self.checks],
            },
            indent=2,
            ensure_ascii=False,
        )

    def summary(self) -> str:
        failed = len(self.failures())
        verdict = "PASSED" if self.passed else f"FAILED ({failed} of {len(self.checks)} checks)"
        if not self.passed and self.allow_warnings:
            verdict += ", delivered anyway: QC warnings allowed"
        width = max(len(check.name) for check in self.checks)
        lines = [
            f"QC {self.shot_id} {self.language}: {verdict}",
            *([self.notice] if self.notice else []),
            f"loudness profile {self.profile.describe()}",
            *(f"{name}: {value:+.2f}" if value is not None else f"{name}: unmeasurable"
              for name, value in self.levels.items()),
            *(f"note: {note}" for note in self.notes),
            "",
        ]
        for check in sorted(self.checks, key=lambda c: c.passed):  # failures first, otherwise in order
            lines.append(f"{'PASS' if check.passed else 'FAIL'}  {check.name:<{width}}  {check.measured}"
                         f"  (expected {check.expected})")
        return "\n".join(lines) + "\n"


def check_wav(name: str, path: Path, channels: int, duration: Fraction) -> list[Check]:
    """Format, channel count, duration and clipping of one delivered WAV."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        codec, rate, found_channels = stream.codec_context.name, stream.rate, stream.channels
    samples, _ = read_audio(path)
    seconds = samples.shape[1] / rate
    drift_ms = abs(seconds - float(duration)) * 1000
    full_scale = int(np.count_nonzero(np.abs(samples) >= _FULL_SCALE))
    return [
        Check(f"{name} sample rate", rate == DELIVERY_SAMPLE_RATE, f"{rate} Hz", f"{DELIVERY_SAMPLE_RATE} Hz"),
        Check(f"{name} bit depth", codec == "pcm_s24le", codec, "pcm_s24le (24-bit)"),
        Check(f"{name} channels", found_channels == channels, str(found_channels), str(channels)),
        Check(f"{name} duration", drift_ms <= DURATION_TOLERANCE_MS, f"{seconds:.6f} s ({drift_ms:.3f} ms off)",
              f"{float(duration):.6f} s ± {DURATION_TOLERANCE_MS:g} ms"),
        Check(f"{name} clipping", full_scale == 0, f"{full_scale} samples at full scale", "0"),
    ]


def check_picture(name: str, path: Path, picture: MediaInfo, source: MediaInfo, mix: Path, codec: str) -> list[Check]:
    """Frame count, rate and display geometry of `picture` (the probe of `path`) against the source,
    audio length against the picture, and A/V offset."""
    picture_s = picture.frame_count / picture.fps
    audio_s, offset_ms = _audio_on_picture_timeline(path, mix)
    drift_ms = float(abs(audio_s - picture_s) * 1000)
    size, source_size = "×".join(map(str, picture.display_size)), "×".join(map(str, source.display_size))
    expected_colour = source.picture_format.colour.for_codec(codec)
    checks = [
        Check(f"{name} frame count", picture.frame_count == source.frame_count, str(picture.frame_count),
              str(source.frame_count)),
        Check(f"{name} frame rate", picture.fps == source.fps, str(picture.fps), f"{source.fps} exactly"),
        Check(f"{name} display size", size == source_size and picture.sar == source.picture_format.sar,
              f"{size}, SAR {picture.sar}", f"{source_size}, SAR {source.picture_format.sar} (the source, upright)"),
        Check(f"{name} colour tags", picture.colour.matches(expected_colour), _colour_text(picture.colour),
              f"{_colour_text(expected_colour)} (the source's; unspecified range = limited)"),
        Check(f"{name} audio duration", drift_ms <= DURATION_TOLERANCE_MS,
              f"audio {float(audio_s):.6f} s, picture {float(picture_s):.6f} s ({drift_ms:.3f} ms apart)",
              f"audio as long as the picture ± {DURATION_TOLERANCE_MS:g} ms"),
    ]
    checks.append(_offset_check(f"{name} A/V offset", offset_ms, "the mix is silent"))
    return checks


def _colour_text(colour: Colour) -> str:
    return f"primaries {colour.primaries}, transfer {colour.transfer}, matrix {colour.matrix}, range {colour.range}"


def _offset_check(name: str, offset_ms: float | None, silent: str) -> Check:
    if offset_ms is None:
        return Check(name, False, f"unmeasurable: {silent}", f"0 ± {AV_OFFSET_TOLERANCE_MS:g} ms")
    return Check(name, abs(offset_ms) <= AV_OFFSET_TOLERANCE_MS,
                 f"{offset_ms:+.2f} ms (audio {'late' if offset_ms > 0 else 'early'})" if offset_ms else "0.00 ms",
                 f"0 ± {AV_OFFSET_TOLERANCE_MS:g} ms")


def check_sync(name: str, path: Path, soundtrack: np.ndarray) -> Check:
    """Where a delivered WAV's sound lands against the source soundtrack on the picture timeline
    (`soundtrack`: the conformed source, 48 kHz): their cross-correlation peaks at the offset."""
    audio, rate = read_audio(path)
    offset_ms = _lag_ms(resample_to_delivery(audio, rate), soundtrack)
    return _offset_check(f"{name} sync with the source sound", offset_ms, "the source soundtrack is silent")


def _audio_on_picture_timeline(path: Path, mix: Path) -> tuple[Fraction, float | None]:
    """(duration of the file's audio, its offset in ms against the mix placed at frame 0).

    The offset adds the audio stream's start against the picture's to the lag at which the decoded
    audio best matches the mix WAV; positive means the audio plays late. None when the mix is silent.
    """
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        start_gap = (Fraction(audio.start_time or 0) * audio.time_base
                     - Fraction(video.start_time or 0) * video.time_base)
        declared = Fraction(audio.duration) * audio.time_base if audio.duration else None
    decoded, rate = read_audio(path)
    duration = declared if declared is not None else Fraction(decoded.shape[1], rate)
    reference, reference_rate = read_audio(mix)
    lag_ms = _lag_ms(resample_to_delivery(decoded[:, :int(_AV_WINDOW_S * rate) + 1], rate),
                     resample_to_delivery(reference[:, :int(_AV_WINDOW_S * reference_rate) + 1], reference_rate))
    return duration, None if lag_ms is None else float(start_gap * 1000) + lag_ms


def _lag_ms(audio: np.ndarray, reference: np.ndarray) -> float | None:
    """The lag (ms, positive: `audio` late) at which the opening seconds of two 48 kHz signals
    match best, within ±250 ms; None when the reference is silent."""
    window = int(_AV_WINDOW_S * DELIVERY_SAMPLE_RATE)
    audio, reference = audio[:, :window], reference[:, :window]
    channels = min(audio.shape[0], reference.shape[0])
    if not np.any(reference[:channels]):
        return None
    search = int(_AV_SEARCH_MS / 1000 * DELIVERY_SAMPLE_RATE)
    correlation = sum(
        signal.correlate(audio[c].astype(np.float64), reference[c].astype(np.float64), mode="full", method="fft")
        for c in range(channels)
    )
    zero = reference.shape[1] - 1  # index of lag 0 in the full correlation
    lags = np.arange(-search, search + 1)
    valid = (zero + lags >= 0) & (zero + lags < correlation.shape[0])
    lags = lags[valid]
    return int(lags[np.argmax(correlation[zero + lags])]) * 1000 / DELIVERY_SAMPLE_RATE


def check_mezzanine_format(path: Path) -> list[Check]:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        video_codec = f"{video.codec_context.name} {video.codec_context.profile or ''}".strip()
        audio_codec = audio.codec_context.name
    return [
        Check("mezzanine picture codec", video_codec == "prores HQ", video_codec, "prores HQ (ProRes 422 HQ)"),
        Check("mezzanine audio codec", audio_codec == "pcm_s24le", audio_codec, "pcm_s24le (24-bit PCM)"),
    ]


def check_loudness(mix: np.ndarray, rate: int, dialogue: np.ndarray, dialogue_rate: int,
                   profile: LoudnessProfile) -> list[Check]:
    regions = None
    if profile.dialogue_gated:
        # Found on the DX; scaled in case the mix is (wrongly) at another rate, so it is still measured.
        regions = [(start * rate // dialogue_rate, end * rate // dialogue_rate)
                   for start, end in dialogue_regions(dialogue, dialogue_rate)]
    loudness = program_loudness(mix, rate, profile, regions)
    name = f"loudness ({profile.name}{', dialogue-gated approximation' if profile.dialogue_gated else ''})"
    if loudness is None:
        checks = [Check(name, True, "unmeasurable (under 400 ms of gated audio)", "reported, not judged")]
    else:
        checks = [Check(name, abs(loudness - profile.target_lufs) <= profile.tolerance_lu, f"{loudness:.2f} LUFS",
                        f"{profile.target_lufs:g} ± {profile.tolerance_lu:g} LU")]
    peak = true_peak_dbtp(mix)
    checks.append(Check("mix true peak", peak <= profile.max_true_peak_dbtp,
                        f"{peak:.2f} dBTP" if math.isfinite(peak) else "silent",
                        f"≤ {profile.max_true_peak_dbtp:g} dBTP (4× oversampled)"))
    return checks


def check_dialogue_present(dialogue: np.ndarray, rate: int) -> Check:
    """Speech regions in the new DX; a shot shorter than the shortest region (a few frames) holds
    none, so there the DX only has to sound (above the BS.1770 silence gate)."""
    peak = float(np.abs(dialogue).max(initial=0.0))
    speech_s = sum(end - start for start, end in dialogue_regions(dialogue, rate)) / rate
    peak_dbfs = 20 * math.log10(peak) if peak > 0 else -math.inf
    peak_text = f"peak {peak_dbfs:.1f} dBFS" if peak > 0 else "silent (peak -inf dBFS)"
    if dialogue.shape[-1] < MIN_DIALOGUE_S * rate:
        return Check("dialogue present", peak_dbfs > SILENCE_FLOOR_DBFS,
                     f"{dialogue.shape[-1] / rate * 1000:.1f} ms shot, {peak_text}",
                     f"a DX above {SILENCE_FLOOR_DBFS:g} dBFS (the shot is shorter than a {MIN_DIALOGUE_S * 1000:g} ms "
                     "dialogue region)")
    return Check("dialogue present", speech_s > 0, f"{speech_s:.2f} s of dialogue, {peak_text}",
                 "dialogue in the DX stem: the script has a line")


def check_separation(soundtrack: np.ndarray, original_dialogue: Path, bed: Path) -> Check:
    """The shot's original DX + M&E against its conformed soundtrack (48 kHz), in 24-bit steps (LSB)."""
    dialogue, _ = read_audio(original_dialogue)
    me, _ = read_audio(bed)
    name, expected = "dialogue + bed reproduce the original mix", "≤ 1 LSB (24-bit)"
    if not dialogue.shape == me.shape == soundtrack.shape:
        return Check(name, False, f"shapes differ: DX {dialogue.shape}, M&E {me.shape}, source {soundtrack.shape}",
                     expected)
    error = float(np.abs(dialogue.astype(np.float64) + me - soundtrack).max(initial=0.0)) * PCM24_MAX
    return Check(name, error <= 1.0, f"largest difference {error:.2f} LSB", expected)


def check_subtitles(subtitles: SubtitleFiles, duration: Fraction) -> list[Check]:
    shot_ms = math.floor(duration * 1000)
    checks = []
    for kind, path in (("SRT", subtitles.srt), ("WebVTT", subtitles.vtt)):
        times = read_cue_times(path)
        inside = bool(times) and all(0 <= start < end <= shot_ms for start, end in times)
        measured = (f"{len(times)} cue(s), {min(s for s, _ in times)}–{max(e for _, e in times)} ms"
                    if times else "no cues")
        checks.append(Check(f"{kind} subtitles inside the shot", inside, measured, f"cues within 0–{shot_ms} ms"))
    return checks


def dialogue_envelope(audio: np.ndarray, rate: int) -> np.ndarray:
    """Level of the channel sum in 1 ms steps (RMS), smoothed over `_ENVELOPE_SMOOTH_MS`, mean removed."""
    hop = rate // 1000
    mono = audio.astype(np.float64).sum(axis=0)
    blocks = mono[: mono.shape[0] // hop * hop].reshape(-1, hop)
    envelope = np.sqrt(np.mean(np.square(blocks), axis=1))
    envelope = np.convolve(envelope, np.ones(_ENVELOPE_SMOOTH_MS) / _ENVELOPE_SMOOTH_MS, mode="same")
    return envelope - envelope.mean()


def envelope_offset_ms(supplied: np.ndarray, generated: np.ndarray, rate: int) -> float | None:
    """How late (ms, to 1 ms) the supplied dialogue runs against the generated speech the lips follow:
    the lag of the best match of their envelopes within ±`_OFFSET_SEARCH_MS`. None when either is silent."""
    a, b = dialogue_envelope(supplied, rate), dialogue_envelope(generated, rate)
    if not np.any(a) or not np.any(b):
        return None
    correlation = signal.correlate(a, b, mode="full", method="fft")
    lags = signal.correlation_lags(a.shape[0], b.shape[0], mode="full")
    window = np.abs(lags) <= _OFFSET_SEARCH_MS
    return float(lags[window][np.argmax(correlation[window])])


def check_supplied_dialogue_offset(supplied: Path, generated: Path) -> Check:
    """The supplied dialogue against LipDub's own speech: the lips were drawn for the latter."""
    audio, rate = read_audio(supplied)
    reference, _ = read_audio(generated)  # both written by the remix at 48 kHz
    offset = envelope_offset_ms(audio, reference, rate)
    name, expected = "supplied dialogue offset against the generated speech", \
        f"0 ± {SUPPLIED_DIALOGUE_OFFSET_TOLERANCE_MS:g} ms (envelope cross-correlation)"
    if offset is None:
        return Check(name, False, "unmeasurable: one of them is silent", expected)
    return Check(name, abs(offset) <= SUPPLIED_DIALOGUE_OFFSET_TOLERANCE_MS,
                 f"{offset:+.0f} ms ({'late' if offset > 0 else 'early' if offset < 0 else 'aligned'})", expected)


def check_dialogue_ending(generated: np.ndarray, original: np.ndarray, rate: int) -> Check:
    """Generated speech still going in the shot's last `CUT_OFF_TAIL_S` is a line the cut chops off,
    unless the original line runs into the cut too (then the shot was cut mid-line on purpose)."""
    def last_end(audio: np.ndarray) -> int | None:
        regions = dialogue_regions(audio, rate)
        return regions[-1][1] if regions else None

    tail = round(CUT_OFF_TAIL_S * rate)
    new_end, original_end = last_end(generated), last_end(original)
    new_runs_on = new_end is not None and new_end > generated.shape[1] - tail
    original_runs_on = original_end is not None and original_end > original.shape[1] - tail

    def describe(end: int | None) -> str:
        return "no speech" if end is None else f"speech until {end / rate:.3f} s"

    return Check("generated dialogue ends inside the shot", not new_runs_on or original_runs_on,
                 f"generated: {describe(new_end)}; original: {describe(original_end)}; shot {generated.shape[1] / rate:.3f} s",
                 f"speech ends before the last {CUT_OFF_TAIL_S * 1000:g} ms, unless the original line runs into the cut")


def qc_pair(
    shot: Shot,
    language: str,
    files: PairDeliverables,
    profile: LoudnessProfile = EBU_R128,
    allow_warnings: bool = False,
    levels: Mapping[str, float | None] | None = None,
    notice: str | None = None,
) -> QCReport:
    media = shot.media
    duration = media.duration
    channels = media.soundtrack_channels
    pictures = {"review copy": (files.review_copy, "h264")}
    if files.mezzanine is not None:
        pictures["mezzanine"] = (files.mezzanine, "prores")
    checks = []
    probed = probe_all([path for path, _ in pictures.values()])  # one child start-up for the pair
    for (name, (path, codec)), picture in zip(pictures.items(), probed):
        checks += check_picture(name, path, picture, media, files.mix, codec)
    if files.mezzanine is not None:
        checks += check_mezzanine_format(files.mezzanine)
    for name, path in (("mix", files.mix), ("dialogue", files.dialogue), ("M&E", files.bed)):
        checks += check_wav(name, path, channels, duration)
    soundtrack = files.source_soundtrack.read().samples
    checks += [check_sync("M&E", files.bed, soundtrack), check_sync("mix", files.mix, soundtrack)]
    mix, mix_rate = read_audio(files.mix)
    dialogue, dialogue_rate = read_audio(files.dialogue)
    checks += check_loudness(mix, mix_rate, dialogue, dialogue_rate, profile)
    checks.append(check_dialogue_present(dialogue, dialogue_rate))
    checks.append(check_separation(soundtrack, files.original_dialogue, files.bed))
    checks += check_subtitles(files.subtitles, duration)
    generated = dialogue
    if files.generated_dialogue is not None:
        checks.append(check_supplied_dialogue_offset(files.dialogue, files.generated_dialogue))
        generated, _ = read_audio(files.generated_dialogue)
    original_dialogue, _ = read_audio(files.original_dialogue)
    checks.append(check_dialogue_ending(generated, original_dialogue, dialogue_rate))
    return QCReport(shot.shot_id, language, profile, tuple(checks), allow_warnings, dict(levels or {}), notice=notice,
                    notes=media.notes() + files.source_soundtrack.notes)


@dataclass(frozen=True)
class QCResult:
    report: Path  # <shot>_<lang>_qc.json
    summary: Path  # <shot>_<lang>_qc.txt
    failures: tuple[str, ...]  # failed checks, recorded when warnings are allowed


def write_qc_report(report: QCReport, directory: Path) -> QCResult:
    prefix = Path(directory) / f"{report.shot_id}_{report.language}_qc"
    return QCResult(
        report=atomic_write_bytes(prefix.with_suffix(".json"), report.to_json().encode("utf-8")),
        summary=atomic_write_bytes(prefix.with_suffix(".txt"), report.summary().encode("utf-8")),
        failures=tuple(_describe(check) for check in report.failures()),
    )


def _describe(check: Check) -> str:
    return f"{check.name} = {check.measured} (expected {check.expected})"


class QCFailedError(Exception):
    """The deliverables of a pair fail the delivery spec; the message lists each failed check."""


def qc_key(separate_key: str, remix_key: str, mux_key: str, subtitles_key: str, mezzanine_key: str | None,
           allow_warnings: bool, notice: str | None = None) -> str:
    """The source picture, its conformed soundtrack and the loudness profile come in through the separate
    and remix keys."""
    return stage_key("qc", QC_VERSION, separate=separate_key, remix=remix_key, mux=mux_key, subtitles=subtitles_key,
                     mezzanine=mezzanine_key, allow_warnings=allow_warnings, notice=notice)


def qc_deliverables(
    shot: Shot,
    conformed: ConformedShot,
    separated: SeparatedShot,
    remixed: RemixedPair,
    review_copy: Path,
    subtitles: SubtitleFiles,
    mezzanine: Path | None,
    allow_warnings: bool,
    out_dir: Path,
    notice: str | None = None,
) -> QCResult:
    """Write the QC report and summary into `out_dir`; fail the pair when a check fails, unless
    warnings are allowed (then the failures are recorded and the pair is delivered)."""
    files = PairDeliverables(review_copy, remixed.mix, remixed.dialogue, separated.bed, separated.dialogue,
                             subtitles, conformed, mezzanine, remixed.generated_dialogue)
    levels = {
        "original dialogue loudness (LUFS)": remixed.original_dialogue_lufs,
        "new dialogue gain (dB)": remixed.dialogue_gain_db,
        "mix gain (dB)": remixed.mix_gain_db,
    }
    report = qc_pair(shot, remixed.language, files, remixed.loudness, allow_warnings, levels, notice)
    result = write_qc_report(report, out_dir)
    if not report.passed and not allow_warnings:
        raise QCFailedError(f"QC failed ({result.summary.name}): " + "; ".join(result.failures))
    return result


@task(name="qc", cache_policy=NO_CACHE, task_run_name="qc {remixed.shot_id} {remixed.language}",
      **STAGE_RETRIES)
def qc_pair_task(
    shot: Shot,
    conformed: ConformedShot,
    separated: SeparatedShot,
    remixed: RemixedPair,
    review_copy: Path,
    subtitles: SubtitleFiles,
    mezzanine: Path | None,
    allow_warnings: bool,
    cache: StageCache,
    key: str,
    notice: str | None = None,
) -> QCResult:
    """A failed QC raises before anything is stored: the pair is checked again on the next run.
    `notice`: the model profile's (random weights), written into the report."""
    return cache.result("qc", key, QCResult, lambda out_dir: qc_deliverables(
        shot, conformed, separated, remixed, review_copy, subtitles, mezzanine, allow_warnings, out_dir, notice))
