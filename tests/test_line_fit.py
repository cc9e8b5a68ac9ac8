"""Does the line fit the shot? Syllable estimates by writing system against counts made by hand,
and the validate warning (or, with --strict-fit, error) against the shot's length from ffprobe."""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest

from dubflow.flows.cli import main
from dubflow.manifests.schema import ManifestError
from dubflow.manifests.speech_rate import MAX_NATURAL_RATE, line_length
from dubflow.tasks.validate import validate_manifest

SHOT = "shots/sc01_sh020.mov"  # 50 frames at 25 fps
FRENCH = "Nous partons à l'aube, avant que la ville ne se réveille."  # nou par-tons a lob a-vant que la vil ne se ré-veille
FRENCH_SYLLABLES = 14


@pytest.mark.parametrize(
    ("script", "language", "said_in", "unit"),
    [
        (FRENCH, "fr", FRENCH_SYLLABLES, "syllables"),
        ("Make sure you agree.", "en", 5, "syllables"),  # make sure you a-gree
        ("Hast du den Schlüssel behalten?", "de", 8, "syllables"),
        ("¿Dónde está la estación?", "es", 8, "syllables"),  # dón-de es-tá la es-ta-ción
        ("w domu", "pl", 2, "syllables"),  # a preposition without a vowel joins the next word
        ("Μιλάς ελληνικά;", "el", 6, "syllables"),  # mi-lás e-li-ni-ká
        ("мы уходим на рассвете", "ru", 8, "syllables"),  # my u-kho-dim na ras-sve-te
        ("नमस्ते भारत कमल धन्यवाद", "hi", 10, "syllables"),  # na-mas-te bhā-rat ka-mal dhan-ya-vād
        ("שלום עולם", "he", 4, "syllables"),  # sha-lom o-lam
        ("我们明天早上出发。", "zh", 8, "characters"),  # one syllable a character
        ("안녕하세요", "ko", 5, "characters"),  # one syllable a block
        ("Call 1999", "en", 5, "syllables"),  # a digit counts one
    ],
)
def test_estimates_match_syllables_counted_by_hand(script: str, language: str, said_in: int, unit: str) -> None:
    length = line_length(script, language)
    assert length is not None and length.unit == unit and length.count == said_in


@pytest.mark.parametrize(
    ("script", "language", "said_in"),
    [
        ("مرحبا بكم", "ar", 5),  # mar-ḥa-ban bi-kum: 8 letters
        ("كيف حالك", "ar", 4),  # kay-fa ḥā-luk: 7 letters
        ("אני אוהב אותך", "he", 6),  # a-ni o-hev ot-kha: 11 letters
        ("私たちは夜明けに出発します。", "ja", 13),  # 13 characters (the full stop is not one)
    ],
)
def test_letter_based_estimates_are_within_one_of_the_count(script: str, language: str, said_in: int) -> None:
    length = line_length(script, language)
    assert length is not None and abs(length.count - said_in) <= 1


def test_scripts_without_an_estimate_are_not_checked() -> None:
    assert line_length("ภาษาไทย", "th") is None and line_length("… !", "fr") is None


@pytest.fixture
def workdir(samples_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(samples_dir / "shots", tmp_path / "shots")
    return tmp_path


def shot_seconds(path: Path) -> Fraction:
    """The picture's length as ffprobe counts it: decoded frames / frame rate."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames",
         "-show_entries", "stream=nb_read_frames,r_frame_rate", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    stream = json.loads(out)["streams"][0]
    return int(stream["nb_read_frames"]) / Fraction(stream["r_frame_rate"])


def manifest_of(folder: Path, lines: list[tuple[str, str]]) -> Path:
    rows = [{"shot_id": "sh1", "source": SHOT, "language": language, "script": script} for language, script in lines]
    pd.DataFrame(rows).to_csv(folder / "m.csv", index=False)
    return folder / "m.csv"


def test_a_line_too_long_for_its_shot_is_a_warning_with_row_and_rate(workdir: Path, capsys) -> None:
    seconds = shot_seconds(workdir / SHOT)
    twice = f"{FRENCH} {FRENCH}"
    manifest = validate_manifest(manifest_of(workdir, [("de", "Hallo."), ("fr", twice)]))
    (warning,) = manifest.warnings
    rate = 2 * FRENCH_SYLLABLES / float(seconds)
    assert rate > MAX_NATURAL_RATE and (warning.row, warning.column) == (3, "script")
    assert f"needs {rate:.1f} syllables/s" in warning.message and f"{float(seconds):.3f} s" in warning.message
    assert "whole picture" in warning.message and f"about {int(MAX_NATURAL_RATE * seconds)} syllables" in warning.hint

    assert main(["validate", str(workdir / "m.csv")]) == 0
    assert f"warning: row 3, script: the line needs {rate:.1f} syllables/s" in capsys.readouterr().err
    assert not validate_manifest(workdir / "m.csv", languages=["de"]).warnings  # only the languages asked for


def test_strict_fit_makes_it_an_error(workdir: Path, capsys) -> None:
    path = manifest_of(workdir, [("fr", f"{FRENCH} {FRENCH}"), ("ja", "私たちは夜明けに出発します。街が目を覚ます前に。")])
    with pytest.raises(ManifestError) as caught:
        validate_manifest(path, strict_fit=True)
    assert [(p.row, p.column) for p in caught.value.problems] == [(2, "script"), (3, "script")]
    assert "characters/s" in caught.value.problems[1].message
    assert main(["validate", str(path), "--strict-fit"]) == 1
    assert "2 problem(s)" in capsys.readouterr().err


def test_lines_that_fit_raise_nothing(samples_dir: Path, workdir: Path) -> None:
    assert validate_manifest(samples_dir / "manifest.csv", strict_fit=True).warnings == ()
    assert validate_manifest(manifest_of(workdir, [("fr", FRENCH)]), strict_fit=True).warnings == ()


def test_run_with_strict_fit_refuses_the_manifest(prefect_server, workdir: Path, capsys) -> None:
    path = manifest_of(workdir, [("fr", f"{FRENCH} {FRENCH}")])
    assert main(["run", str(path), "--out", str(workdir / "out"), "--strict-fit"]) == 2
    assert "row 2, script: the line needs" in capsys.readouterr().err
    assert not any((workdir / "out").glob("*/*"))
