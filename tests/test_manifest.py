from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from dubflow.flows.cli import main
from dubflow.manifests.schema import ManifestError, parse_manifest
from dubflow.tasks.validate import validate_manifest

COLUMNS = ["shot_id", "source", "lock_sha256", "language", "script", "speaker"]


def write_csv(path: Path, rows: list[dict], bom: bool = False) -> Path:
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False, encoding="utf-8-sig" if bom else "utf-8")
    return path


def good_row(**overrides: str) -> dict:
    row = {"shot_id": "sh010", "source": "shots/sc01_sh010.mov", "lock_sha256": "", "language": "fr",
           "script": "Bonjour.", "speaker": "A woman"}
    row.update(overrides)
    return row


@pytest.fixture
def workdir(samples_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(samples_dir / "shots", tmp_path / "shots")
    return tmp_path


def problems_of(path: Path) -> list:
    with pytest.raises(ManifestError) as caught:
        validate_manifest(path)
    return caught.value.problems


def test_sample_manifests_validate_and_csv_parquet_agree(samples_dir: Path) -> None:
    from_csv = validate_manifest(samples_dir / "manifest.csv")
    from_parquet = validate_manifest(samples_dir / "manifest.parquet")
    assert from_csv.rows == from_parquet.rows
    assert {k: v.sha256 for k, v in from_csv.shots.items()} == {k: v.sha256 for k, v in from_parquet.shots.items()}
    assert len(from_csv.shots) == 5 and set(from_csv.languages) == {"fr", "de", "pt-BR"}


def test_csv_with_bom_reads_like_without(workdir: Path) -> None:
    rows = [good_row()]
    plain = validate_manifest(write_csv(workdir / "plain.csv", rows))
    bom = validate_manifest(write_csv(workdir / "bom.csv", rows, bom=True))
    assert plain.rows == bom.rows


@pytest.mark.parametrize(
    ("override", "column", "fragment"),
    [
        ({"script": ""}, "script", "empty"),
        ({"script": "   \t "}, "script", "empty"),
        ({"language": "french"}, "language", "not a valid language tag"),
        ({"language": "pt_BR"}, "language", "hyphens"),
        ({"shot_id": "../etc"}, "shot_id", "not safe"),
        ({"shot_id": "a/b"}, "shot_id", "not safe"),
        ({"shot_id": "x" * 129}, "shot_id", "not safe"),
        ({"source": "shots/missing.mov"}, "source", "does not exist"),
        ({"lock_sha256": "abc"}, "lock_sha256", "not a sha256"),
        ({"lock_sha256": "0" * 64}, "lock_sha256", "does not match"),
    ],
)
def test_each_rule_reports_row_column_and_hint(workdir: Path, override: dict, column: str, fragment: str) -> None:
    path = write_csv(workdir / "m.csv", [good_row(shot_id="sh000"), good_row(**override)])
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].row == 3 and problems[0].column == column  # the header is row 1
    assert fragment in problems[0].message + problems[0].hint
    assert problems[0].hint


def test_missing_and_unknown_columns(workdir: Path) -> None:
    path = workdir / "m.csv"
    pd.DataFrame([{"shot_id": "a", "source": "x.mov", "script": "hi", "voice": "v"}]).to_csv(path, index=False)
    problems = problems_of(path)
    assert {(p.column, p.message) for p in problems} == {
        ("language", "required column is missing"),
        ("voice", "unknown column"),
    }


def test_duplicate_pair_and_conflicting_sources(workdir: Path) -> None:
    path = write_csv(
        workdir / "m.csv",
        [good_row(), good_row(), good_row(language="de", source="shots/sc01_sh020.mov")],
    )
    problems = problems_of(path)
    assert [(p.row, p.column) for p in problems] == [(3, "language"), (4, "source")]
    assert "already appears in row 2" in problems[0].message


def test_unreadable_media_is_reported(workdir: Path) -> None:
    (workdir / "shots" / "broken.mov").write_bytes(b"not a movie at all" * 100)
    problems = problems_of(write_csv(workdir / "m.csv", [good_row(source="shots/broken.mov")]))
    assert problems[0].column == "source" and "unreadable media" in problems[0].message


def test_ten_defects_reported_at_once_with_exit_1(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "shots" / "broken.mov").write_bytes(b"junk" * 64)
    rows = [
        good_row(),
        good_row(shot_id="sh020", script="  "),
        good_row(shot_id="sh030", language="klingonese"),
        good_row(),  # duplicate of row 1
        good_row(shot_id="../up"),
        good_row(shot_id="sh010", language="de", source="shots/sc01_sh020.mov"),
        good_row(shot_id="sh040", source="shots/nowhere.mov"),
        good_row(shot_id="sh050", source="shots/broken.mov"),
        good_row(shot_id="sh060", source="shots/sc02_sh010.mov", lock_sha256="f" * 64),
        good_row(shot_id="sh070", lock_sha256="nothex"),
        good_row(shot_id="sh080", language="en_US"),
    ]
    path = write_csv(workdir / "bad.csv", rows)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "10 problem(s)" in err
    for row in range(3, 13):  # rows as a spreadsheet shows them: data from row 2
        assert f"row {row}," in err


def test_languages_filter(samples_dir: Path) -> None:
    manifest = validate_manifest(samples_dir / "manifest.csv", languages=["de"])
    assert {row.language for row in manifest.rows} == {"de"}
    with pytest.raises(ManifestError, match="--languages asks for 'ja'"):
        validate_manifest(samples_dir / "manifest.csv", languages=["ja"])


def test_language_tags_are_canonicalised(workdir: Path) -> None:
    rows, problems = parse_manifest(write_csv(workdir / "m.csv", [good_row(language="PT-br")]))
    assert not problems and rows[0].language == "pt-BR"


def test_validate_cli_prints_summary(samples_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", str(samples_dir / "manifest.parquet")]) == 0
    out = capsys.readouterr().out
    assert "shots           5" in out and "rows            11" in out and "picture seconds 17.551" in out
