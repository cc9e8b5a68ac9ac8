"""Content-addressed stage results: re-runs reuse finished work, a script edit redoes only its pair,
a killed run is completed by the next one, --force recomputes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings

from dubflow.flows.cli import main
from dubflow.flows.localize import localize
from dubflow.models.profiles import ProfileError, resolve_profile
from dubflow.media.files import sha256_file
from dubflow.tasks.lipdub import lipdub_identity
from dubflow.tasks.separate import separator_identity, separator_spec
from dubflow.tasks.stage_cache import CacheCounts, StageCache, stage_key

SHOT = "sc01_sh020"  # the sample shot with two languages (fr, de)
ALL_STAGES = {"conform": 1, "separate": 1, "lipdub": 2, "remix": 2, "mux": 2, "subtitles": 2, "qc": 2}
CRASH_WAIT_S = 240  # for the killed run to store its first LipDub result
_COUNTS_LINE = re.compile(r"^computed: (?P<computed>.*); reused: (?P<reused>.*)$", re.MULTILINE)


def _manifest(samples_dir: Path, directory: Path, edit: dict[str, str] | None = None) -> Path:
    """The shot's two rows with absolute sources; `edit` replaces scripts by language."""
    table = pd.read_csv(samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[table.shot_id == SHOT].copy()
    table["source"] = [str(samples_dir / s) for s in table.source]
    for language, script in (edit or {}).items():
        table.loc[table.language == language, "script"] = script
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "manifest.csv"
    table.to_csv(path, index=False)
    return path


def _deliverables(run_dir: Path) -> dict[str, str]:
    """path → sha256 of every delivered file, checked against the delivery manifest."""
    delivery = json.loads((run_dir / "delivery.json").read_text())
    assert all(p["status"] == "delivered" for p in delivery["pairs"]), delivery["pairs"]
    on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert on_disk == {e["path"] for e in delivery["files"]} | {"delivery.json", "delivery.parquet"}
    for entry in delivery["files"]:
        assert sha256_file(run_dir / entry["path"]) == entry["sha256"], entry["path"]
    # The review page names its run (the review file it exports is keyed by run): not compared.
    return {e["path"]: e["sha256"] for e in delivery["files"] if e["role"] != "review"}


def _parse_counts(output: str) -> tuple[dict[str, int], dict[str, int]]:
    """The run's counts line; the same line may reach the output through several log handlers."""
    (line,) = {match.group(0) for match in _COUNTS_LINE.finditer(output)}
    match = _COUNTS_LINE.match(line)

    def counts(listing: str) -> dict[str, int]:
        if listing == "nothing":
            return {}
        return {stage: int(n) for stage, n in (item.rsplit(" ", 1) for item in listing.split(", "))}

    return counts(match["computed"]), counts(match["reused"])


@dataclass(frozen=True)
class _Result:
    text: Path
    sizes: tuple[int, ...]
    note: str | None


def _write(out_dir: Path, text: str) -> _Result:
    path = out_dir / "nested" / "text.txt"
    path.parent.mkdir()
    path.write_text(text)
    return _Result(path, (len(text),), None)


def test_a_stored_result_is_reused_rebuilt_and_recomputed_when_its_files_changed(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)
    key = stage_key("unit", 1, text="hello")
    first = cache.result("unit", key, _Result, lambda out_dir: _write(out_dir, "hello"))
    assert first == _Result(tmp_path / "unit" / key / "nested" / "text.txt", (5,), None)
    assert cache.result("unit", key, _Result, lambda out_dir: pytest.fail("reused, not computed")) == first
    first.text.write_text("truncat")  # another size: the stored result no longer holds
    again = cache.result("unit", key, _Result, lambda out_dir: _write(out_dir, "hello"))
    assert again.text.read_text() == "hello"
    assert cache.counts([("unit", key)]).computed == {"unit": 1}  # this run's token is in it
    assert StageCache(tmp_path).counts([("unit", key), ("unit", key)]).reused == {"unit": 1}  # another run's view
    assert [p.name for p in (tmp_path / "unit").iterdir()] == [key]  # no temporary or retired folder left


def test_a_failing_stage_stores_nothing_and_a_result_must_stay_in_its_folder(tmp_path: Path) -> None:
    cache = StageCache(tmp_path)

    def fails(out_dir: Path) -> _Result:
        _write(out_dir, "half")
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError, match="model crashed"):
        cache.result("unit", "k1", _Result, fails)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    with pytest.raises(ValueError, match="not a file in its own folder"):
        cache.result("unit", "k2", _Result, lambda out_dir: _Result(outside, (), None))
    assert list((tmp_path / "unit").iterdir()) == []
    assert cache.counts([("unit", "k1"), ("unit", "k2")]) == CacheCounts({}, {})


def test_keys_are_canonical_content_and_refuse_paths() -> None:
    assert stage_key("s", 1, a=1, b={"y": 2, "x": 1}) == stage_key("s", 1, b={"x": 1, "y": 2}, a=1)
    assert stage_key("s", 1, a=1) != stage_key("s", 2, a=1) != stage_key("t", 1, a=1)
    with pytest.raises(TypeError):
        stage_key("s", 1, source=Path("/a/b"))


def test_model_identities_name_content_not_places(tmp_path: Path) -> None:
    """The same weights in another folder give the same key input, other LoRA content another; no paths."""
    profile = resolve_profile("smoke")
    identity = lipdub_identity(profile)
    moved = Path(shutil.copytree(profile.lipdub_weights, tmp_path / "elsewhere"))
    lora = moved / profile.lipdub_lora.name
    assert lipdub_identity(replace(profile, lipdub_weights=moved, lipdub_lora=lora)) == identity
    with open(lora, "ab") as handle:
        handle.write(b"\0")
    assert lipdub_identity(replace(profile, lipdub_weights=moved, lipdub_lora=lora)) != identity
    assert str(profile.separator_repo) not in json.dumps(separator_identity(separator_spec(profile)))


def test_a_missing_separator_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="does not exist or is not a directory"):
        separator_spec(resolve_profile("smoke"), repo=tmp_path / "missing")


@pytest.fixture(scope="module")
def first_run(prefect_server, small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("resume")
    manifest = _manifest(small_samples_dir, directory / "manifest")
    localize(manifest, directory / "out", run_id="first")
    return manifest, directory / "out"


def test_a_second_run_reuses_everything_and_force_recomputes(
    first_run, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    manifest, out = first_run
    state = localize(manifest, out, run_id="again", return_state=True)
    again = state.result()
    assert (again.cache.computed, again.cache.reused) == ({}, ALL_STAGES)
    counts_line = "computed: nothing; reused: conform 1, separate 1, lipdub 2, remix 2, mux 2, subtitles 2, qc 2"
    assert again.report().splitlines()[-2] == counts_line
    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_artifacts()
                       if a.flow_run_id == state.state_details.flow_run_id and a.key == "localization-summary"]
    assert counts_line in artifact.description
    assert _deliverables(out / "again") == _deliverables(out / "first")

    capsys.readouterr()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert main(["run", str(manifest), "--out", str(out), "--run-id", "forced", "--force"]) == 0
    printed = capsys.readouterr()
    assert _parse_counts(printed.out + printed.err + caplog.text) == (ALL_STAGES, {})
    assert set(_deliverables(out / "forced")) == set(_deliverables(out / "first"))


def test_a_script_edit_recomputes_only_its_pair(first_run, small_samples_dir: Path, tmp_path: Path) -> None:
    _, out = first_run
    edited = _manifest(small_samples_dir, tmp_path, edit={"de": "Wo ist der Schlüssel geblieben?"})
    summary = localize(edited, out, run_id="edited")
    per_pair = {"lipdub": 1, "remix": 1, "mux": 1, "subtitles": 1, "qc": 1}
    assert summary.cache.computed == per_pair
    assert summary.cache.reused == {"conform": 1, "separate": 1, **per_pair}

    before, after = _deliverables(out / "first"), _deliverables(out / "edited")
    assert set(before) == set(after)
    unchanged = {path for path in before if "/fr/" in path or path.endswith("_me.wav")}
    assert unchanged and all(before[path] == after[path] for path in unchanged)
    assert before[f"{SHOT}/de/{SHOT}_de.srt"] != after[f"{SHOT}/de/{SHOT}_de.srt"]
    assert "Schlüssel geblieben" in (out / "edited" / SHOT / "de" / f"{SHOT}_de.srt").read_text(encoding="utf-8")


def test_a_killed_run_is_completed_by_the_next_without_redoing_finished_pairs(
    prefect_server, small_samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """`dubflow run` in its own process, killed with SIGKILL as soon as it has stored its first LipDub
    result, then the same command again, here (this process has torch, diffusers and Prefect imported
    already). Both use the session's Prefect server: what the next run must find is the stage cache
    the killed one left on disk (test_cli kills runs with their own temporary server)."""
    manifest = _manifest(small_samples_dir, tmp_path / "manifest")
    cache, out = tmp_path / "cache", tmp_path / "out"
    monkeypatch.setenv("DUBFLOW_CACHE", str(cache))
    arguments = ["run", str(manifest), "--out", str(out), "--run-id", "r"]
    lipdub_results = cache / "work" / "lipdub"

    def stored_takes() -> list[Path]:
        return [p for p in lipdub_results.glob("*/result.json") if not p.parent.name.startswith(".")]

    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=get_current_settings().api.url)
    killed = subprocess.Popen([sys.executable, "-m", "dubflow.flows.cli", *arguments], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + CRASH_WAIT_S
        while not stored_takes() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is gone when the run ended by itself
            os.killpg(killed.pid, signal.SIGKILL)
        output = killed.communicate()[0].decode(errors="replace")
    assert killed.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{output}"
    finished = len(stored_takes())
    assert finished >= 1, f"no LipDub result within {CRASH_WAIT_S} s:\n{output}"
    assert not (out / "r").exists()  # nothing was published by the killed run

    capsys.readouterr()
    caplog.set_level(logging.INFO)
    code = main(arguments)
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    computed, reused = _parse_counts(printed.out + printed.err + caplog.text)
    assert reused.get("lipdub", 0) == finished and computed.get("lipdub", 0) == 2 - finished
    assert len(_deliverables(out / "r")) == 2 * 7 + 1  # per pair: mp4, mix, dx, srt, vtt, qc json + txt; one M&E
