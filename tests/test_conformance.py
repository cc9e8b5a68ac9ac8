"""Conformance: files as a studio sends them, made by the ffmpeg CLI (tests/media_corpus.py), through
dubflow, and every delivered file measured again with ffprobe / ffmpeg, never with dubflow's reader.

- every deliverable case runs through the localization flow on the smoke profile, and each delivered
  review MP4, mezzanine MOV, mix, DX and M&E must have the source's frame count, exact rate, display
  geometry, channel count and colour tags by ffprobe, be exactly frames / rate long to the sample,
  and carry the source's sync marker (a swept-tone burst) at the same picture time within 1 ms
- what cannot be delivered is refused at validate, in a child process (a crash there would be a
  signal, not a traceback), with a message that names what was found
- the remix at every frame count from 1 to 120 at 24000/1001 (115 of which last no whole number
  of milliseconds) is sample-exact and keeps the marker in place
- every QC failure the report claims to catch is planted with ffmpeg in a good delivery and seen to fail
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import srt

from media_corpus import (
    CORPUS,
    DELIVERED,
    NTSC_FILM,
    REFUSED,
    RATE,
    Case,
    Picture,
    Sound,
    declared_priming,
    ebur128,
    ffmpeg,
    ffprobe_json,
    generate_corpus,
    marker_in_wav,
    marker_on_picture_timeline,
    probe_picture,
    probe_sounds,
    remix_counts_source,
)

SYNC_TOLERANCE_S = 0.001
LANGUAGE = "fr"
SCRIPT = "Nous partons à l'aube."


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case of the corpus, written once per session by the ffmpeg CLI."""
    return generate_corpus(tmp_path_factory.mktemp("corpus"))


@dataclass(frozen=True)
class Source:
    """A source file as ffprobe and ffmpeg measure it."""

    picture: Picture
    sounds: list[Sound]
    channels: int  # of the soundtrack dubflow must deliver
    marker_s: float  # picture time of the sync marker


@pytest.fixture(scope="session")
def sources(corpus) -> Callable[[Case], Source]:
    """A case's source as ffprobe and ffmpeg measure it, measured on first use and kept for the
    session (the corpus is read-only): the corpus guard and the delivery checks compare with the
    same figures, and a case that cannot be measured fails only the tests of that case."""
    return functools.cache(lambda case: measure_source(case, corpus[case.name]))


def measure_source(case: Case, path: Path) -> Source:
    sounds = probe_sounds(path)
    # discrete mono tracks make one soundtrack; otherwise the first track is the production mix
    channels = sum(s.channels for s in sounds) if case.tracks == "mono-per-channel" else sounds[0].channels
    return Source(probe_picture(path), sounds, channels, marker_on_picture_timeline(path))


def write_manifest(path: Path, sources: dict[str, Path]) -> Path:
    rows = [{"shot_id": name, "source": str(source), "language": LANGUAGE, "script": SCRIPT} for name, source in
            sources.items()]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def dubflow_cli(*args: str) -> subprocess.CompletedProcess:
    """The dubflow command in a child process: what a crash inside FFmpeg would kill is that child."""
    return subprocess.run([sys.executable, "-m", "dubflow.flows.cli", *args], capture_output=True, text=True,
                          timeout=600)


def picture_samples_48k(frames: int, fps: Fraction) -> int:
    return round(Fraction(frames) * RATE / fps)


# -- the corpus itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in DELIVERED if c.after is None], ids=lambda c: c.name)
def test_the_corpus_is_what_it_was_made_to_be(corpus, sources, case: Case) -> None:
    """A guard on the generator: ffmpeg wrote the frames, rate and marker the case asks for (the
    marker within 10 ms: lossy codecs' priming moves it a little; where ffmpeg plays it is the truth
    every later check compares with)."""
    source = sources(case)
    assert (source.picture.frames, source.picture.rate) == (case.frames, case.fps)
    assert abs(source.marker_s - float(case.marker_at)) < 0.010, source.marker_s
    if case.audio_delay:
        start = ffprobe_json(corpus[case.name], "-show_streams")["streams"]
        assert len({s["start_time"] for s in start}) == 2  # the sound really starts apart from the picture


def test_the_edit_list_case_hides_frames_the_file_holds(corpus) -> None:
    path = corpus["mp4_edit_list_trim"]
    packets = ffprobe_json(path, "-count_packets", "-select_streams", "v:0", "-show_streams")["streams"][0]
    assert int(packets["nb_read_packets"]) > probe_picture(path).frames  # packets outnumber what plays


# -- validate ------------------------------------------------------------------------------------


def test_validate_counts_frames_rates_and_priming_as_ffprobe_does(corpus, tmp_path: Path) -> None:
    from dubflow.tasks.validate import validate_manifest

    manifest = validate_manifest(write_manifest(tmp_path / "m.csv", {c.name: corpus[c.name] for c in DELIVERED}))
    found = {name: (shot.media.frame_count, shot.media.fps, [stream.priming for stream in shot.media.audio])
             for name, shot in manifest.shots.items()}
    expected = {}
    for case in DELIVERED:
        picture = probe_picture(corpus[case.name])
        expected[case.name] = (picture.frames, picture.rate, declared_priming(corpus[case.name]))
    assert found == expected
    # the corpus holds priming of both kinds (AAC in MP4, Opus in WebM) and streams without any
    primed = {name for name, (_, _, priming) in expected.items() if any(priming)}
    assert {"mp4_h264_aac_stereo", "webm_vp9_opus_50_delayed"} <= primed < set(expected)


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.name)
def test_what_cannot_be_delivered_is_refused_at_validate(corpus, case: Case, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.csv", {case.name: corpus[case.name]})
    result = dubflow_cli("validate", str(manifest))
    assert result.returncode >= 0, f"validate crashed (signal {-result.returncode}): {result.stderr[-2000:]}"
    if case.either_way and result.returncode == 0:
        _delivers_in_a_child_process(case, corpus[case.name], manifest, tmp_path)
        return
    assert result.returncode == 1, result.stdout + result.stderr
    assert "row 2, source" in result.stderr
    assert re.search(case.refused, result.stderr), f"the refusal does not say what was found: {result.stderr}"


def _delivers_in_a_child_process(case: Case, path: Path, manifest: Path, tmp_path: Path) -> None:
    """A layout dubflow takes (7.1 like 5.1): the whole run, in a child, delivers it like any other."""
    result = dubflow_cli("run", str(manifest), "--out", str(tmp_path / "out"), "--run-id", "r")
    assert result.returncode == 0, result.stderr[-3000:]
    source = measure_source(case, path)
    pair = tmp_path / "out" / "r" / case.name / LANGUAGE
    check_pictures_match(source, [pair / f"{case.name}_{LANGUAGE}.mp4"])
    for wav in (pair / f"{case.name}_{LANGUAGE}_mix.wav", tmp_path / "out" / "r" / case.name / f"{case.name}_me.wav"):
        check_wav_matches(source, wav)


def test_one_validation_of_the_whole_corpus_names_exactly_the_refused_shots(corpus, tmp_path: Path) -> None:
    """Every problem at once, each on its own row, and no process taken down by any file."""
    names = [case.name for case in CORPUS]
    result = dubflow_cli("validate", str(write_manifest(tmp_path / "all.csv", {n: corpus[n] for n in names})))
    assert result.returncode == 1, f"exit {result.returncode}: {result.stderr[-2000:]}"
    named = {names[int(row) - 2] for row in re.findall(r"^  - row (\d+), ", result.stderr, re.MULTILINE)}
    must = {case.name for case in REFUSED if not case.either_way}
    may = {case.name for case in REFUSED if case.either_way}
    assert must <= named <= must | may, result.stderr


# -- delivered end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def delivery(prefect_server, corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Every deliverable case as one batch through the flow (smoke profile, with the mezzanine)."""
    from dubflow.flows.localize import localize

    directory = tmp_path_factory.mktemp("conformance")
    manifest = write_manifest(directory / "corpus.csv", {case.name: corpus[case.name] for case in DELIVERED})
    localize(manifest, directory / "out", run_id="corpus", prores=True, force=True, return_state=True)
    run_dir = directory / "out" / "corpus"
    pairs = {p["shot_id"]: p for p in json.loads((run_dir / "delivery.json").read_text())["pairs"]}
    return run_dir, pairs


def check_pictures_match(source: Source, pictures: list[Path], qc_summary: str = "") -> None:
    """Frame count, exact rate, display geometry, channel count, known colour tags and the marker of
    each delivered picture file against the source, all by ffprobe / ffmpeg. The range may change
    only where the QC report says so (ProRes has no full range)."""
    for path in pictures:
        delivered = probe_picture(path)
        assert (delivered.frames, delivered.rate) == (source.picture.frames, source.picture.rate), path.name
        assert display_size(delivered) == pytest.approx(display_size(source.picture), abs=_sar_rounding(source.picture)), \
            (path.name, delivered, source.picture)
        assert "a" not in delivered.pix_fmt.replace("yuv", "").replace("gray", ""), delivered.pix_fmt  # no alpha
        delivered_colour, source_colour = known_colour(delivered), known_colour(source.picture)
        if delivered_colour["color_range"] != source_colour["color_range"]:
            assert re.search(r"(?i)note: .*range", qc_summary), (path.name, "range changed without a QC note")
            delivered_colour["color_range"] = source_colour["color_range"]
        assert delivered_colour == source_colour, path.name
        (sound,) = probe_sounds(path)
        assert sound.channels == source.channels, path.name
        assert marker_on_picture_timeline(path) == pytest.approx(source.marker_s, abs=SYNC_TOLERANCE_S), path.name


def known_colour(picture: Picture) -> dict[str, str]:
    """The colour tags a source states, which its deliveries must state too. An untagged range is
    limited range by convention (every player reads it so), so "unknown" and "tv" are one range."""
    colour = {**picture.colour, "color_range": picture.colour["color_range"].replace("unknown", "tv")}
    return {key: value for key, value in colour.items() if value != "unknown"}


def display_size(picture: Picture) -> tuple[float, float]:
    """Width and height a viewer sees: SAR applied, then rotation."""
    width, height = picture.width * picture.sar, Fraction(picture.height)
    size = (float(width), float(height))
    return size[::-1] if picture.rotation % 180 == 90 else size


def _sar_rounding(picture: Picture) -> float:
    """A picture rendered square may round its SAR-corrected width to a whole pixel."""
    return 0.0 if (picture.width * picture.sar).denominator == 1 else 1.0


def check_wav_matches(source: Source, path: Path, carries_marker: bool = True) -> None:
    """48 kHz 24-bit, the source's channels, exactly as long as the picture, the marker in place
    (the M&E and the mix carry the source's sound; the new DX does not)."""
    (sound,) = probe_sounds(path)
    samples = picture_samples_48k(source.picture.frames, source.picture.rate)
    assert (sound.codec, sound.sample_rate, sound.channels, sound.samples) == (
        "pcm_s24le", RATE, source.channels, samples), path.name
    if carries_marker:
        assert marker_in_wav(path) == pytest.approx(source.marker_s, abs=SYNC_TOLERANCE_S), path.name


@pytest.mark.parametrize("case", DELIVERED, ids=lambda c: c.name)
def test_every_case_is_delivered_exactly(delivery, sources, case: Case) -> None:
    run_dir, pairs = delivery
    pair = pairs.get(case.name)
    assert pair is not None and pair["status"] == "delivered", pair
    source = sources(case)
    pair_dir = run_dir / case.name / LANGUAGE
    prefix = f"{case.name}_{LANGUAGE}"
    summary = (pair_dir / f"{prefix}_qc.txt").read_text(encoding="utf-8")
    check_pictures_match(source, [pair_dir / f"{prefix}.mp4", pair_dir / f"{prefix}.mov"], summary)
    check_wav_matches(source, run_dir / case.name / f"{case.name}_me.wav")
    check_wav_matches(source, pair_dir / f"{prefix}_mix.wav")
    check_wav_matches(source, pair_dir / f"{prefix}_dx.wav", carries_marker=False)
    if source.picture.frames / source.picture.rate >= 0.4:  # a BS.1770 gating block; shorter is unmeasurable
        integrated, true_peak = ebur128(pair_dir / f"{prefix}_mix.wav")  # ffmpeg's own EBU R128 meter
        # EBU R128 at ±0.5 LU; a second true-peak meter may read up to +0.2 dB over dubflow's (Tech 3341)
        assert abs(integrated - (-23.0)) <= 0.5 and true_peak <= -1.0 + 0.2, (integrated, true_peak)


REPORTED = {  # what the QC report must say about a case: what was conformed, dropped or left out, and why
    "mp4_h264_aac_stereo": [r"AAC priming 1024 samples discarded by the decoder"],
    "mov_mix_and_me_tracks_audio_longer": [r"(?i)not used|ignored", r"(?i)trim"],
    "mov_h264_10bit_422_audio_shorter": [r"(?i)silence|pad"],
    "mov_pcm_delayed_edit_list": [r"(?i)after the first frame|delay|late"],
    "ts_h264_aac_delayed": [r"(?i)after the first frame|delay|late"],
    "webm_vp9_opus_50_delayed": [r"(?i)after the first frame|delay|late", r"Opus priming 312 samples discarded"],
    "mp4_aac_mono_delayed": [r"(?i)after the first frame|delay|late"],
    "mp4_aac_51_44k1": [r"44100|44\.1"],
    "mov_prores4444_alpha": [r"(?i)alpha"],
    "mov_51_mono_tracks_2997_df": [r"(?i)mono"],
}


@pytest.mark.parametrize("name", sorted(REPORTED))
def test_the_qc_report_says_what_was_conformed_and_why(delivery, name: str) -> None:
    run_dir, pairs = delivery
    assert pairs[name]["status"] == "delivered", pairs[name]
    summary = (run_dir / name / LANGUAGE / f"{name}_{LANGUAGE}_qc.txt").read_text(encoding="utf-8")
    for pattern in REPORTED[name]:
        assert re.search(pattern, summary), f"{pattern!r} not in the QC summary:\n{summary}"


# -- the remix at every frame count --------------------------------------------------------------

COUNTS = range(1, 121)


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory):
    """One shot per frame count at 24000/1001 (H.264 + PCM by ffmpeg), validated by dubflow; its M&E
    is the shot's own soundtrack and its original dialogue silence, both written by ffmpeg; the
    take's generated speech is a tone at LipDub's 16 kHz, also by ffmpeg."""
    from dubflow.models.separator import SeparatorSpec, build_smoke_separator
    from dubflow.tasks.validate import validate_manifest

    directory = tmp_path_factory.mktemp("counts")
    sources = remix_counts_source(directory, COUNTS)
    manifest = validate_manifest(write_manifest(directory / "m.csv", {f"n{n:03d}": mov for n, (mov, _) in sources.items()}))
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "6", "-c:a", "pcm_s24le",
           str(directory / "silence.wav"))
    ffmpeg("-f", "lavfi", "-i", "sine=f=300:r=16000:d=2", "-ac", "2", "-c:a", "pcm_s24le",
           str(directory / "generated.wav"))
    name, repo = build_smoke_separator(directory / "demucs")
    return directory, sources, manifest, SeparatorSpec(name, repo)


@pytest.mark.parametrize("frames", COUNTS)
def test_the_remix_is_sample_exact_at_every_frame_count(counts, frames: int) -> None:
    from dubflow.tasks.lipdub import DubbedTake
    from dubflow.tasks.remix import remix_pair
    from dubflow.tasks.separate import SeparatedShot

    directory, sources, manifest, separator = counts
    shot = manifest.shots[f"n{frames:03d}"]
    picture, bed = sources[frames]
    separated = SeparatedShot(shot.shot_id, bed, directory / "silence.wav", bed, "stereo", (0, 1))
    take = DubbedTake(shot.shot_id, LANGUAGE, "prompt", 0, picture, directory / "generated.wav")
    remixed = remix_pair(take, separated, shot, directory / f"remix_{frames:03d}", separator)
    expected = frames * 2002  # 48000 × 1001 / 24000 samples a frame, exactly
    for wav in (remixed.mix, remixed.dialogue):
        (sound,) = probe_sounds(wav)
        assert (sound.sample_rate, sound.channels, sound.samples) == (RATE, 2, expected), wav.name
    marker = float(Fraction(frames) / NTSC_FILM / 5)
    assert marker_in_wav(remixed.mix) == pytest.approx(marker, abs=SYNC_TOLERANCE_S)


# -- QC catches what it claims to catch ----------------------------------------------------------


@pytest.fixture(scope="module")
def good_pair(corpus, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The plain H.264/AAC case through the stage functions (smoke profile): a delivery that passes."""
    from dubflow.models.profiles import resolve_profile
    from dubflow.tasks.conform import conform_shot
    from dubflow.tasks.lipdub import lipdub_pair
    from dubflow.tasks.mux import mux_pair
    from dubflow.tasks.qc import PairDeliverables
    from dubflow.tasks.remix import remix_pair
    from dubflow.tasks.separate import separate_shot, separator_spec
    from dubflow.tasks.subtitles import subtitle_pair
    from dubflow.tasks.validate import validate_manifest

    work = tmp_path_factory.mktemp("qc_plants")
    name = "mp4_h264_aac_stereo"
    manifest = validate_manifest(write_manifest(work / "m.csv", {name: corpus[name]}))
    shot, row = manifest.shots[name], manifest.rows[0]
    profile = resolve_profile("smoke")
    separator = separator_spec(profile)
    conformed = conform_shot(shot, work / "conform")
    separated = separate_shot(shot, conformed, separator, work / "separate")
    take = lipdub_pair(shot, conformed, row, [row], profile, work / "lipdub")
    remixed = remix_pair(take, separated, shot, work / "remix", separator)
    (work / "mux").mkdir()
    files = PairDeliverables(
        review_copy=mux_pair(take, remixed, shot, work / "mux"),
        mix=remixed.mix,
        dialogue=remixed.dialogue,
        bed=separated.bed,
        original_dialogue=separated.dialogue,
        subtitles=subtitle_pair(row, remixed, shot, work / "subtitles"),
        source_soundtrack=conformed,
        mezzanine=mux_pair(take, remixed, shot, work / "mux", "prores"),
    )
    return {"shot": shot, "files": files}


def _qc_failures(good_pair: dict, **planted: Path) -> dict[str, str]:
    from dataclasses import replace

    from dubflow.tasks.qc import qc_pair

    report = qc_pair(good_pair["shot"], LANGUAGE, replace(good_pair["files"], **planted))
    return {check.name: check.measured for check in report.failures()}


def test_the_good_pair_passes_qc(good_pair) -> None:
    assert _qc_failures(good_pair) == {}


def test_qc_catches_a_review_copy_whose_sound_is_5_ms_late(good_pair, tmp_path: Path) -> None:
    review = good_pair["files"].review_copy
    late = tmp_path / "late.mp4"
    ffmpeg("-i", str(review), "-itsoffset", "0.005", "-i", str(review), "-map", "0:v", "-map", "1:a", "-c", "copy",
           str(late))
    failed = _qc_failures(good_pair, review_copy=late)
    assert "review copy A/V offset" in failed, failed
    assert float(failed["review copy A/V offset"].split()[0]) == pytest.approx(5.0, abs=0.5)


def test_qc_catches_an_me_2_ms_late_though_as_long_as_the_picture(good_pair, tmp_path: Path) -> None:
    bed = good_pair["files"].bed
    samples = probe_sounds(bed)[0].samples
    late = tmp_path / "me_late.wav"
    ffmpeg("-i", str(bed), "-af", f"adelay=96S:all=1,atrim=end_sample={samples}", "-c:a", "pcm_s24le", str(late))
    assert probe_sounds(late)[0].samples == samples
    failed = _qc_failures(good_pair, bed=late)
    (name,) = [n for n in failed if n.startswith("M&E") and "sync" in n]
    assert float(failed[name].split()[0]) == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize(("field", "label"), [("bed", "M&E"), ("dialogue", "dialogue")])
def test_qc_catches_a_stem_2_ms_longer_than_the_picture(good_pair, tmp_path: Path, field: str, label: str) -> None:
    longer = tmp_path / f"{field}_longer.wav"
    ffmpeg("-i", str(getattr(good_pair["files"], field)), "-af", "apad=pad_len=96", "-c:a", "pcm_s24le", str(longer))
    failed = _qc_failures(good_pair, **{field: longer})
    assert f"{label} duration" in failed, failed
    assert "(2.000 ms off)" in failed[f"{label} duration"]


def test_qc_catches_a_mezzanine_that_is_not_prores(good_pair, tmp_path: Path) -> None:
    h264 = tmp_path / "mezzanine.mov"
    ffmpeg("-i", str(good_pair["files"].mezzanine), "-map", "0", "-c:v", "libx264", "-c:a", "copy", str(h264))
    failed = _qc_failures(good_pair, mezzanine=h264)
    assert failed.get("mezzanine picture codec", "").startswith("h264"), failed


def test_qc_catches_a_subtitle_past_the_end_of_the_shot(good_pair, tmp_path: Path) -> None:
    from dataclasses import replace

    subtitles = good_pair["files"].subtitles
    cues = list(srt.parse(subtitles.srt.read_text(encoding="utf-8")))
    shot = good_pair["shot"]
    cues[-1] = replace_end(cues[-1], timedelta(seconds=float(shot.media.frame_count / shot.media.fps) + 0.5))
    late = tmp_path / "late.srt"
    late.write_text(srt.compose(cues), encoding="utf-8")
    failed = _qc_failures(good_pair, subtitles=replace(subtitles, srt=late))
    assert set(failed) == {"SRT subtitles inside the shot"}, failed


def replace_end(cue: srt.Subtitle, end: timedelta) -> srt.Subtitle:
    return srt.Subtitle(cue.index, cue.start, end, cue.content)
