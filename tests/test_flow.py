"""The localization flow end to end on the smoke profile, under a Prefect test server."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.testing.utilities import prefect_test_harness

from dubflow.flows.cli import main
from dubflow.flows.localize import PairsFailedError, localize
from dubflow.manifests.schema import ManifestError
from dubflow.tasks.files import sha256_file
from dubflow.tasks.media import probe, write_video

SILENT_SHOT = "sc09_silent"


@pytest.fixture(scope="session")
def prefect_server():
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def run_manifest(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sample shots (stereo at 24000/1001 with three languages, 5.1 at 30000/1001 with one)
    plus a shot with no audio track, which must fail alone."""
    directory = tmp_path_factory.mktemp("flow")
    table = pd.read_csv(samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[(table.shot_id == "sc01_sh010") | ((table.shot_id == "sc02_sh010") & (table.language == "fr"))]
    table["source"] = [str(samples_dir / s) for s in table.source]
    silent = directory / f"{SILENT_SHOT}.mov"
    write_video(silent, [np.full((96, 160, 3), 90, np.uint8)] * 12, Fraction(24))
    table.loc[len(table)] = [SILENT_SHOT, str(silent), "", "de", "Niemand spricht.", ""]
    path = directory / "manifest.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def flow_run(prefect_server, run_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out")
    state = localize(run_manifest, out, run_id="run1", return_state=True)
    return state, out / "run1"


def test_run_fails_naming_only_the_silent_shot(flow_run) -> None:
    state, _ = flow_run
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, PairsFailedError)
    (failed,) = error.summary.failed
    assert (failed.shot_id, failed.language) == (SILENT_SHOT, "de")
    assert "no audio track" in failed.reason and "voice reference" in failed.reason
    assert len(error.summary.outcomes) == 5


def test_every_other_pair_is_delivered_frame_exact(flow_run, run_manifest: Path) -> None:
    _, run_dir = flow_run
    delivery = json.loads((run_dir / "delivery.json").read_text())
    assert delivery["profile"]["random_weights"] is True and "noise" in delivery["profile"]["notice"]
    delivered = [(p["shot_id"], p["language"]) for p in delivery["pairs"] if p["status"] == "delivered"]
    assert sorted(delivered) == [("sc01_sh010", "de"), ("sc01_sh010", "fr"), ("sc01_sh010", "pt-BR"), ("sc02_sh010", "fr")]
    sources = pd.read_csv(run_manifest).drop_duplicates("shot_id").set_index("shot_id").source
    for shot_id, language in delivered:
        pair_dir = run_dir / shot_id / language
        source = probe(Path(sources[shot_id]))
        review = probe(pair_dir / f"{shot_id}_{language}.mp4")
        assert (review.frame_count, review.fps) == (source.frame_count, source.fps)
        assert (review.width, review.height) == (source.width, source.height)
        for stem in ("mix", "dx"):
            with av.open(str(pair_dir / f"{shot_id}_{language}_{stem}.wav")) as wav:
                stream = wav.streams.audio[0]
                assert (stream.rate, stream.codec_context.name) == (48_000, "pcm_s24le")
                assert stream.channels == source.audio[0].channels
        qc = json.loads((pair_dir / f"{shot_id}_{language}_qc.json").read_text())
        assert qc["passed"], qc
    assert not (run_dir / SILENT_SHOT).exists()


def test_delivery_manifest_hashes_match_the_files(flow_run) -> None:
    _, run_dir = flow_run
    delivery = json.loads((run_dir / "delivery.json").read_text())
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert on_disk == {e["path"] for e in delivery["files"]} | {"delivery.json", "delivery.parquet"}
    for entry in delivery["files"]:
        path = run_dir / entry["path"]
        assert path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]
    assert pd.read_parquet(run_dir / "delivery.parquet").sha256.tolist() == [e["sha256"] for e in delivery["files"]]
    assert {e["path"] for e in delivery["files"] if e["role"] == "me"} == {
        "sc01_sh010/sc01_sh010_me.wav", "sc02_sh010/sc02_sh010_me.wav"}


def test_separation_runs_once_per_shot(flow_run) -> None:
    state, _ = flow_run
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    names = sorted(run.name for run in runs if run.name.startswith("separate"))
    assert names == ["separate sc01_sh010", "separate sc02_sh010", f"separate {SILENT_SHOT}"]
    lipdub = [run.name for run in runs if run.name.startswith("lipdub")]
    assert len(lipdub) == 5


def test_summary_artifact_lists_every_pair(flow_run) -> None:
    state, _ = flow_run
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    (artifact,) = [a for a in artifacts if a.flow_run_id == state.state_details.flow_run_id and a.key == "localization-summary"]
    table = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {(row["shot"], row["language"], row["status"]) for row in table} >= {(SILENT_SHOT, "de", "failed")}
    assert len(table) == 5


def test_invalid_manifest_exits_2_and_runs_nothing(prefect_server, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("shot_id,source,language,script\n../x,nowhere.mov,fr,\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "problem(s)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
