"""Failure policy in a real flow run: a transient failure is retried, a GPU out-of-memory error is
retried once with lighter settings, a hung LipDub call is bounded and fails only its own pair.

The faults are planted around the real stage functions (the model and the stages still run)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from dubflow.flows.localize import PairsFailedError, localize
from dubflow.models.lipdub import LipDubModel
from dubflow.tasks import lipdub as lipdub_stage
from dubflow.tasks import remix as remix_stage


@pytest.fixture(scope="module")
def three_language_manifest(small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    table = pd.read_csv(small_samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[table.shot_id == "sc01_sh010"].copy()  # fr, de, pt-BR
    table["source"] = [str(small_samples_dir / s) for s in table.source]
    path = tmp_path_factory.mktemp("failures") / "manifest.csv"
    table.to_csv(path, index=False)
    return path


def test_retries_oom_fallback_and_a_bounded_hang(
    prefect_server, three_language_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUBFLOW_LIPDUB_TIMEOUT_S", "5")
    monkeypatch.setattr(remix_stage.remix_pair_task, "retry_delay_seconds", [0.0, 0.0])
    calls = {"remix fr": 0, "dub pt": 0}
    windows_asked: list[int | None] = []

    real_dub, real_prepare, real_remix = LipDubModel.dub, LipDubModel.prepare_shot, remix_stage.remix_pair

    def dub(self, prepared, prompt, seed, *args, **kwargs):
        if "German" in prompt:  # hangs in Python, as a stuck sampling loop would
            while True:
                time.sleep(0.05)
        if "Portuguese" in prompt:
            calls["dub pt"] += 1
            if calls["dub pt"] == 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (planted)")
        return real_dub(self, prepared, prompt, seed, *args, **kwargs)

    def prepare_shot(self, shot, key=None, max_height=None, window_frames=None):
        windows_asked.append(window_frames)
        return real_prepare(self, shot, key, max_height, window_frames)

    def remix_pair(take, *args, **kwargs):
        if take.language == "fr":
            calls["remix fr"] += 1
            if calls["remix fr"] == 1:
                raise ConnectionResetError(104, "Connection reset by peer (planted)")
        return real_remix(take, *args, **kwargs)

    monkeypatch.setattr(LipDubModel, "dub", dub)
    monkeypatch.setattr(LipDubModel, "prepare_shot", prepare_shot)
    monkeypatch.setattr(remix_stage, "remix_pair", remix_pair)

    started = time.monotonic()
    state = localize(three_language_manifest, tmp_path, run_id="faults", force=True, return_state=True)
    assert time.monotonic() - started < 240  # the hang did not hold the run

    error = state.result(raise_on_failure=False)
    assert isinstance(error, PairsFailedError)
    outcomes = {o.language: o for o in error.summary.outcomes}
    assert outcomes["de"].status == "failed"
    assert outcomes["de"].reason.startswith("lipdub: the take did not finish within 5 s on cpu")
    assert outcomes["fr"].status == "delivered" and calls["remix fr"] == 2  # retried once, then delivered
    assert outcomes["pt-BR"].status == "delivered" and calls["dub pt"] == 2
    assert "low-memory mode" in outcomes["pt-BR"].reason
    assert lipdub_stage.LOW_MEMORY_WINDOW_FRAMES in windows_asked  # the retry asked for shorter windows

    delivery = json.loads((tmp_path / "faults" / "delivery.json").read_text())
    statuses = {pair["language"]: pair["status"] for pair in delivery["pairs"]}
    assert statuses == {"fr": "delivered", "de": "failed", "pt-BR": "delivered"}
    assert not list((tmp_path / "faults").glob("sc01_sh010/de/*"))  # nothing of the failed pair published
