"""The localization flow end to end on the smoke profile, under a Prefect test server."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import srt
import webvtt
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from dubflow.flows.cli import main
from dubflow.flows.localize import PairsFailedError, localize
from dubflow.media.files import sha256_file
from dubflow.media.io import probe, read_audio, write_video
from media_corpus import ebur128, probe_picture, probe_sounds

SILENT_SHOT = "sc09_silent"


@pytest.fixture(scope="module")
def run_manifest(small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sample shots (stereo at 24000/1001 with three languages, 5.1 at 30000/1001 with one)
    plus a shot with no audio track, which must fail alone. The small sample shots: every check here
    compares with the source's own size, rate, count and layout, and the smoke model generates at
    128 lines either way; full-size pictures only made every take, mux, mezzanine and QC decode ~5×
    slower."""
    directory = tmp_path_factory.mktemp("flow")
    table = pd.read_csv(small_samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[(table.shot_id == "sc01_sh010") | ((table.shot_id == "sc02_sh010") & (table.language == "fr"))]
    table["source"] = [str(small_samples_dir / s) for s in table.source]
    silent = directory / f"{SILENT_SHOT}.mov"
    write_video(silent, [np.full((96, 160, 3), 90, np.uint8)] * 12, Fraction(24))
    table.loc[len(table)] = [SILENT_SHOT, str(silent), "", "de", "Niemand spricht.", ""]
    path = directory / "manifest.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def flow_run(prefect_server, run_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """The run, and every source soundtrack decode the conform made in it (its real reader, counted)."""
    import dubflow.media.conform as conform_module

    out = tmp_path_factory.mktemp("out")
    decoded: list[Path] = []
    read_audio = conform_module.read_audio

    def counted(path: Path, stream_index: int = 0):
        decoded.append(Path(path))
        return read_audio(path, stream_index)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conform_module, "read_audio", counted)
        # force: earlier tests ran these shots into the session's stage cache, and the stage timing test
        # needs takes that run the model, not cache hits that end in milliseconds.
        state = localize(run_manifest, out, run_id="run1", prores=True, force=True, return_state=True)
    return state, out / "run1", decoded


def _delivered(run_dir: Path) -> list[tuple[str, str]]:
    delivery = json.loads((run_dir / "delivery.json").read_text())
    return [(p["shot_id"], p["language"]) for p in delivery["pairs"] if p["status"] == "delivered"]


def test_run_fails_naming_only_the_silent_shot(flow_run) -> None:
    state, _, _ = flow_run
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, PairsFailedError)
    (failed,) = error.summary.failed
    assert (failed.shot_id, failed.language) == (SILENT_SHOT, "de")
    assert "no audio track" in failed.reason and "voice reference" in failed.reason
    assert len(error.summary.outcomes) == 5


def test_every_other_pair_is_delivered_frame_exact(flow_run, run_manifest: Path) -> None:
    _, run_dir, _ = flow_run
    delivery = json.loads((run_dir / "delivery.json").read_text())
    assert delivery["profile"]["random_weights"] is True and "noise" in delivery["profile"]["notice"]
    delivered = _delivered(run_dir)
    assert sorted(delivered) == [("sc01_sh010", "de"), ("sc01_sh010", "fr"), ("sc01_sh010", "pt-BR"), ("sc02_sh010", "fr")]
    sources = pd.read_csv(run_manifest).drop_duplicates("shot_id").set_index("shot_id").source
    # by ffprobe, the sources and what was delivered alike (decoded frame counts, exact rates)
    shots = {shot_id for shot_id, _ in delivered}
    pictures = {shot_id: probe_picture(Path(sources[shot_id])) for shot_id in shots}
    channels = {shot_id: probe_sounds(Path(sources[shot_id]))[0].channels for shot_id in shots}
    for shot_id, language in delivered:
        pair_dir = run_dir / shot_id / language
        source = pictures[shot_id]
        for picture in (f"{shot_id}_{language}.mp4", f"{shot_id}_{language}.mov"):
            review = probe_picture(pair_dir / picture)
            assert (review.frames, review.rate) == (source.frames, source.rate)
            assert (review.width, review.height) == (source.width, source.height)
        for stem in ("mix", "dx"):
            (wav,) = probe_sounds(pair_dir / f"{shot_id}_{language}_{stem}.wav")
            assert (wav.sample_rate, wav.codec, wav.channels) == (48_000, "pcm_s24le", channels[shot_id])
        qc = json.loads((pair_dir / f"{shot_id}_{language}_qc.json").read_text())
        assert qc["passed"], qc
        assert {"mezzanine picture codec", "mezzanine A/V offset"} <= {check["name"] for check in qc["checks"]}
        assert (pair_dir / f"{shot_id}_{language}_qc.txt").read_text().startswith(f"QC {shot_id} {language}: PASSED")
    assert not (run_dir / SILENT_SHOT).exists()


def test_every_delivered_mix_meets_the_profile_by_an_independent_measurement(flow_run) -> None:
    """By ffmpeg's own EBU R128 meter (`ebur128=peak=true`), not the pyloudnorm / resample_poly method
    dubflow measures with; its true peak may read a meter's tolerance (+0.2 dB) over dubflow's."""
    _, run_dir, _ = flow_run
    for shot_id, language in _delivered(run_dir):
        lufs, true_peak = ebur128(run_dir / shot_id / language / f"{shot_id}_{language}_mix.wav")
        assert abs(lufs - (-23.0)) <= 0.5, (shot_id, language, lufs)
        assert true_peak <= -1.0 + 0.2, (shot_id, language, true_peak)


def test_the_surround_shot_delivers_centre_dialogue_over_a_six_channel_bed(flow_run) -> None:
    _, run_dir, _ = flow_run
    dx, _ = read_audio(run_dir / "sc02_sh010" / "fr" / "sc02_sh010_fr_dx.wav")
    bed, _ = read_audio(run_dir / "sc02_sh010" / "sc02_sh010_me.wav")
    assert dx.shape[0] == bed.shape[0] == 6
    assert not dx[[0, 1, 3, 4, 5]].any() and np.abs(dx[2]).max() > 0
    qc = json.loads((run_dir / "sc02_sh010" / "fr" / "sc02_sh010_fr_qc.json").read_text())
    (separation,) = [c for c in qc["checks"] if c["name"] == "dialogue + bed reproduce the original mix"]
    assert separation["passed"] and separation["measured"] == "largest difference 0.00 LSB"


def test_subtitles_parse_and_lie_inside_the_shot(flow_run, run_manifest: Path) -> None:
    _, run_dir, _ = flow_run
    scripts = pd.read_csv(run_manifest).set_index(["shot_id", "language"]).script
    for shot_id, language in _delivered(run_dir):
        pair_dir = run_dir / shot_id / language
        picture = probe_picture(pair_dir / f"{shot_id}_{language}.mp4")  # by ffprobe
        shot_ms = float(picture.frames / picture.rate) * 1000
        cues = list(srt.parse((pair_dir / f"{shot_id}_{language}.srt").read_text(encoding="utf-8")))
        assert cues and all(0 <= c.start.total_seconds() * 1000 < c.end.total_seconds() * 1000 <= shot_ms for c in cues)
        assert " ".join(c.content.replace("\n", " ") for c in cues).split() == scripts[(shot_id, language)].split()
        captions = webvtt.read(str(pair_dir / f"{shot_id}_{language}.vtt"))
        assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in captions] == [
            (c.start // timedelta(milliseconds=1), c.end // timedelta(milliseconds=1)) for c in cues]


def test_delivery_manifest_hashes_match_the_files(flow_run) -> None:
    _, run_dir, _ = flow_run
    delivery = json.loads((run_dir / "delivery.json").read_text())
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert on_disk == {e["path"] for e in delivery["files"]} | {"delivery.json", "delivery.parquet"}
    for entry in delivery["files"]:
        path = run_dir / entry["path"]
        assert path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]
    assert pd.read_parquet(run_dir / "delivery.parquet").sha256.tolist() == [e["sha256"] for e in delivery["files"]]
    assert {e["path"] for e in delivery["files"] if e["role"] == "me"} == {
        "sc01_sh010/sc01_sh010_me.wav", "sc02_sh010/sc02_sh010_me.wav"}
    roles = {e["role"] for e in delivery["files"] if e["language"] == "fr" and e["shot_id"] == "sc02_sh010"}
    assert roles == {"review_mp4", "mezzanine_mov", "mix", "dx", "srt", "vtt", "qc", "qc_summary", "review"}
    assert delivery["loudness"]["name"] == "ebu-r128" and delivery["models"]["separator_shifts"] == 0


def test_separation_runs_once_per_shot(flow_run) -> None:
    state, _, _ = flow_run
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    conforms = sorted(run.name for run in runs if run.name.startswith("conform"))
    assert conforms == ["conform sc01_sh010", "conform sc02_sh010", f"conform {SILENT_SHOT}"]
    # the silent shot's separation waits on its failed conform and never starts (nor gets its name)
    names = [run.name for run in runs if run.name.startswith("separate")]
    assert len(names) == 3 and {"separate sc01_sh010", "separate sc02_sh010"} <= set(names)
    lipdub = [run.name for run in runs if run.name.startswith("lipdub")]
    assert len(lipdub) == 5


def test_each_shots_soundtrack_is_decoded_and_conformed_once_for_all_its_languages(flow_run, run_manifest) -> None:
    """Separation, every language's LipDub voice reference and QC read the one conformed file: the
    stereo shot has three languages, the 5.1 shot one, and each soundtrack is decoded once."""
    _, _, decoded = flow_run
    table = pd.read_csv(run_manifest, dtype=str, keep_default_na=False)
    assert (table.shot_id == "sc01_sh010").sum() == 3
    once = [Path(source) for source in table.source.unique() for _ in probe(Path(source)).soundtrack]
    assert len(once) == 2 and sorted(decoded) == sorted(once)  # each stream of each soundtrack, once


def test_the_next_take_is_waiting_for_the_device_before_a_take_ends(flow_run) -> None:
    """A thread-runner task holds its thread while it waits for its upstream: were a pair's remix and
    mux submitted before the next pair's take, they would hold the threads and the device would idle
    between takes."""
    state, _, _ = flow_run
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    takes = {run.name: run for run in runs if run.name.startswith("lipdub")}
    first, second = takes["lipdub sc01_sh010 fr"], takes["lipdub sc01_sh010 de"]
    assert second.start_time < first.end_time


def test_summary_artifact_lists_every_pair(flow_run) -> None:
    state, _, _ = flow_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    (artifact,) = [a for a in artifacts if a.flow_run_id == state.state_details.flow_run_id and a.key == "localization-summary"]
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {(row["shot"], row["language"], row["status"]) for row in table} >= {(SILENT_SHOT, "de", "failed")}
    assert len(table) == 5


def test_progress_reaches_every_pair_and_the_qc_digest_reports_each(flow_run) -> None:
    state, run_dir, _ = flow_run
    run_artifacts = {}
    with get_client(sync_client=True) as client:
        for artifact in client.read_artifacts():
            if artifact.flow_run_id == state.state_details.flow_run_id:
                run_artifacts[artifact.key] = artifact
    progress = run_artifacts["localization-progress"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "5 of 5 pairs finished" in progress.description
    digest = run_artifacts["qc-digest"].data
    delivered = [o for o in state.result(raise_on_failure=False).summary.outcomes if o.status == "delivered"]
    for outcome in delivered:  # its checks counted and its measured loudness, as in its QC report
        report = json.loads((run_dir / outcome.shot_id / outcome.language /
                             f"{outcome.shot_id}_{outcome.language}_qc.json").read_text())
        loudness = next(c["measured"] for c in report["checks"] if c["name"].startswith("loudness"))
        passed = sum(c["passed"] for c in report["checks"])
        assert f"| {outcome.shot_id} | {outcome.language} | delivered | {passed}/{len(report['checks'])} | {loudness} |" \
            in digest
    assert f"| {SILENT_SHOT} | de | failed |" in digest and "has no audio track" in digest
    assert digest.rstrip().splitlines()[-1].startswith("dubflow: 4 of 5 pairs delivered, 1 failed;")


def test_invalid_manifest_exits_2_and_runs_nothing(prefect_server, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("shot_id,source,language,script\n../x,nowhere.mov,fr,\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "problem(s)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_run_with_delivery_options(prefect_server, run_manifest: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """--loudness with a target the true-peak ceiling makes impossible fails QC for real;
    --allow-qc-warnings delivers the pair anyway and records the failed check. The command validates
    in its input checks and the flow again: the picture is decoded through once (counted)."""
    import dubflow.tasks.validate as validate_module

    table = pd.read_csv(run_manifest, dtype=str, keep_default_na=False)
    table = table[(table.shot_id == "sc01_sh010") & (table.language == "fr")].copy()
    # a copy that has settled (a file changed in the last seconds is never memoized)
    source = Path(shutil.copy(table.source.iloc[0], tmp_path / "sc01_sh010.mov"))
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(source, ns=(long_ago, long_ago))
    table["source"] = str(source)
    one_pair = tmp_path / "one.csv"
    table.to_csv(one_pair, index=False)
    probed: list[Path] = []
    probe_many = validate_module.probe_many
    monkeypatch.setattr(validate_module, "probe_many", lambda paths: probed.extend(paths) or probe_many(paths))
    exit_code = main(["run", str(one_pair), "--out", str(tmp_path / "out"), "--run-id", "r2",
                      "--loudness", "custom:-5:0.5:-20", "--allow-qc-warnings", "--separator-shifts", "0"])
    assert exit_code == 0
    assert probed == [source]
    delivery = json.loads((tmp_path / "out" / "r2" / "delivery.json").read_text())
    (pair,) = delivery["pairs"]
    assert pair["status"] == "delivered"
    assert pair["reason"].startswith("delivered with QC warnings allowed: loudness (custom:-5:0.5:-20) = ")
    assert delivery["loudness"]["target_lufs"] == -5.0
    qc = json.loads((tmp_path / "out" / "r2" / "sc01_sh010" / "fr" / "sc01_sh010_fr_qc.json").read_text())
    assert qc["status"] == "failed, delivered with QC warnings allowed"
    assert not any(e["path"].endswith(".mov") for e in delivery["files"])  # no --prores, no mezzanine


def test_a_bad_loudness_profile_is_refused_before_anything_runs(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "manifest.csv", "--out", str(tmp_path / "out"), "--loudness", "custom:-20:1"])
    assert exit_info.value.code == 2
    assert "custom:TARGET_LUFS:TOLERANCE_LU:MAX_TRUE_PEAK_DBTP" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
