from __future__ import annotations

import os
import shutil
import time
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


def test_a_second_validation_reads_no_unchanged_picture_and_every_rewritten_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dubflow run` validates twice (its input checks, then the flow): the second probes and hashes no
    picture that is unchanged, and one rewritten in place in between (same size, same inode, another
    mtime) is probed and hashed again. Counted on the real probe and hash functions."""
    import dubflow.tasks.validate as validate_module
    from dubflow.media.files import sha256_file
    from media_corpus import ffmpeg

    def picture(path: Path, tone: int) -> Path:  # raw video + PCM: the same size whatever the tone
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=16x16:rate=24", "-f", "lavfi", "-i", f"sine=f={tone}:r=48000",
               "-t", "0.5", "-c:v", "rawvideo", "-pix_fmt", "rgb24", "-c:a", "pcm_s16le", str(path))
        return path

    source, other = picture(tmp_path / "a.mov", 220), picture(tmp_path / "b.mov", 440)
    assert source.stat().st_size == other.stat().st_size and sha256_file(source) != sha256_file(other)
    long_ago = time.time_ns() - 60 * 10**9  # settled: a file changed just now is never memoized
    os.utime(source, ns=(long_ago, long_ago))
    probed: list[Path] = []
    hashed: list[Path] = []
    probe_many, sha256 = validate_module.probe_many, validate_module.sha256_file
    monkeypatch.setattr(validate_module, "probe_many", lambda paths: probed.extend(paths) or probe_many(paths))
    monkeypatch.setattr(validate_module, "sha256_file", lambda path: hashed.append(path) or sha256(path))
    manifest = write_csv(tmp_path / "m.csv", [good_row(source="a.mov")])

    first, second = validate_manifest(manifest), validate_manifest(manifest)
    assert [p.resolve() for p in probed] == [p.resolve() for p in hashed] == [source.resolve()]  # once, not twice
    assert second.shots["sh010"] == first.shots["sh010"]

    inode = source.stat().st_ino
    with open(source, "r+b") as handle:  # in place: the same file, the same size, new content
        handle.write(other.read_bytes())
    os.utime(source, ns=(long_ago + 10**9, long_ago + 10**9))
    third = validate_manifest(manifest)
    assert source.stat().st_ino == inode
    assert [p.resolve() for p in probed] == [p.resolve() for p in hashed] == [source.resolve()] * 2
    assert third.shots["sh010"].sha256 == sha256_file(other) != first.shots["sh010"].sha256
