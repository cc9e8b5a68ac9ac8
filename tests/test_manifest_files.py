"""Manifests as people save them: the bytes a spreadsheet writes (encodings, byte-order marks,
delimiters, line endings), Parquet from pyarrow, empty and misaligned files, rows numbered as a
spreadsheet shows them, and the script-length limit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dubflow.flows.cli import main
from dubflow.manifests.schema import MAX_SCRIPT_CHARS, ManifestError, parse_manifest, read_table
from dubflow.tasks.validate import validate_manifest

HEADER = ["shot_id", "source", "language", "script", "speaker"]
CELLS = [
    ["sh010", "shots/sc01_sh010.mov", "fr", "Ça va, café crème ?", "Une femme à l'écharpe rouge"],
    ["sh020", "shots/sc01_sh020.mov", "de", "Grüß dich; schön, dass du da bist.", "Ein Mann"],
]


def spreadsheet_text(delimiter: str, newline: str = "\r\n", rows: list[list[str]] = CELLS) -> str:
    """What a spreadsheet writes: every cell that holds the delimiter or a quote is quoted."""

    def cell(text: str) -> str:
        return f'"{text.replace(chr(34), chr(34) * 2)}"' if delimiter in text or '"' in text else text

    return "".join(delimiter.join(cell(c) for c in line) + newline for line in [HEADER, *rows])


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# (suffix, delimiter, newline, how the text becomes bytes): the exports people send.
SAVED_AS = {
    "utf8 comma": (".csv", ",", "\n", lambda t: t.encode("utf-8")),
    "Excel CSV UTF-8 (BOM, comma)": (".csv", ",", "\r\n", lambda t: b"\xef\xbb\xbf" + t.encode("utf-8")),
    "Excel semicolon CSV with BOM": (".csv", ";", "\r\n", lambda t: b"\xef\xbb\xbf" + t.encode("utf-8")),
    "Excel Unicode Text (UTF-16 LE BOM, tab)": (".txt", "\t", "\r\n", lambda t: b"\xff\xfe" + t.encode("utf-16-le")),
    "UTF-16 BE BOM, comma": (".csv", ",", "\n", lambda t: b"\xfe\xff" + t.encode("utf-16-be")),
    "tab-separated .tsv": (".tsv", "\t", "\n", lambda t: t.encode("utf-8")),
    "pipe-separated": (".csv", "|", "\n", lambda t: t.encode("utf-8")),
}


@pytest.mark.parametrize("saved_as", SAVED_AS)
def test_every_export_reads_as_the_same_rows(tmp_path: Path, saved_as: str) -> None:
    suffix, delimiter, newline, encode = SAVED_AS[saved_as]
    path = write(tmp_path / f"m{suffix}", encode(spreadsheet_text(delimiter, newline)))
    rows, problems = parse_manifest(path)
    assert not problems
    assert [(r.row, r.shot_id, r.source, r.language, r.script, r.speaker) for r in rows] == [
        (number, *cells) for number, cells in enumerate(CELLS, start=2)]
    assert not read_table(path).warnings


def test_cp1252_semicolon_export_reads_with_a_warning_naming_the_first_accented_cell(tmp_path: Path) -> None:
    data = spreadsheet_text(";").encode("cp1252")
    assert b"caf\xe9 cr\xe8me" in data  # really cp1252: one byte a letter, not UTF-8
    path = write(tmp_path / "m.csv", data)
    rows, problems = parse_manifest(path)
    assert not problems and [r.script for r in rows] == [c[3] for c in CELLS]
    (warning,) = read_table(path).warnings
    assert (warning.row, warning.column) == (2, "script")
    assert "Windows-1252" in warning.message and "'Ça va, café crème ?'" in warning.message
    assert "CSV UTF-8" in warning.hint


def test_cp1252_warning_is_printed_by_validate(samples_dir: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(samples_dir / "shots", tmp_path / "shots")
    text = spreadsheet_text(";", rows=[["sc01_sh020", "shots/sc01_sh020.mov", "fr", "Tu as gardé la clé ?", ""]])
    path = write(tmp_path / "m.csv", text.encode("cp1252"))
    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert "warning: row 2, script: the file is not UTF-8; read as Windows-1252" in captured.err
    assert "'Tu as gardé la clé ?'" in captured.err and "rows            1" in captured.out


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "the file is empty (0 bytes)"),
        (b"\xef\xbb\xbf", "no header row"),
        (b"\r\n\r\n  \r\n", "no header row"),
        ("shot_id,source,language,script\r\n".encode(), "has a header but no data rows"),
        (b"\xef\xbb\xbfshot_id;source;language;script\r\n", "has a header but no data rows"),
        ("shot_id,script\nsh1,caf\u00e9\n".encode("utf-16-le"), "UTF-16 without a byte-order mark"),
        (b"shot_id,script\nsh1,\x81\xe9\n", "neither UTF-8 nor Windows-1252"),
        (b"\xff\xfe" + b"\x00\xd8", "UTF-16 LE byte-order mark but is not UTF-16 LE"),
    ],
)
def test_files_that_hold_no_rows_say_what_they_hold(tmp_path: Path, data: bytes, fragment: str, capsys) -> None:
    path = write(tmp_path / "m.csv", data)
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_a_separator_dubflow_does_not_read_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", b"shot_id:source:language:script\nsh1:a.mov:fr:Bonjour\n")
    with pytest.raises(ManifestError) as caught:
        validate_manifest(path)
    (problem,) = caught.value.problems
    assert "separated by ':'" in problem.message and "shot_id, source, language, script" in problem.message
    assert "comma, semicolon, tab or pipe" in problem.hint


def test_rows_whose_cells_do_not_line_up_name_the_delimiter(tmp_path: Path) -> None:
    rows = "\r\n".join([
        "shot_id;source;language;script",
        "sh1;a.mov;fr;Bonjour",
        "sh2,a.mov,de,Hallo",  # written with the wrong delimiter
        "sh3;a.mov;es;Hola; amigo",  # a cell holding the delimiter, unquoted
    ])
    rows_read, problems = parse_manifest(write(tmp_path / "m.csv", rows.encode()))
    assert [r.shot_id for r in rows_read] == ["sh1"]
    assert [(p.row, p.column) for p in problems] == [(3, None), (4, None)]
    assert "1 cell(s) where the header has 4" in problems[0].message and "semicolon" in problems[0].hint
    assert "5 cell(s) where the header has 4" in problems[1].message and "double quotes" in problems[1].hint


def test_rows_are_numbered_as_a_spreadsheet_shows_them(tmp_path: Path) -> None:
    """A quoted cell over two lines is one row; a blank row keeps its number."""
    text = ('shot_id,source,language,script\r\n'
            'sh1,a.mov,fr,"Première ligne,\r\nseconde ligne"\r\n'
            '\r\n'
            'sh2,a.mov,french,Bonjour\r\n')
    rows, problems = parse_manifest(write(tmp_path / "m.csv", text.encode()))
    assert [(r.row, r.script) for r in rows] == [(2, "Première ligne,\r\nseconde ligne")]
    assert [(p.row, p.column) for p in problems] == [(4, "language")]
    with pytest.raises(ManifestError) as caught:
        validate_manifest(tmp_path / "m.csv")
    assert [(p.row, p.column) for p in caught.value.problems] == [(2, "source"), (4, "language")]
    assert "(rows as a spreadsheet numbers them: the header is row 1)" in str(caught.value)
    assert "\n  - row 4, language: 'french' is not a valid language tag" in str(caught.value)


def test_parquet_from_pyarrow_reads_like_the_csv(tmp_path: Path) -> None:
    table = pa.table({name: [cells[i] for cells in CELLS] for i, name in enumerate(HEADER)})
    pq.write_table(table, tmp_path / "m.parquet")
    write(tmp_path / "m.csv", spreadsheet_text(",").encode())
    from_parquet, parquet_problems = parse_manifest(tmp_path / "m.parquet")
    assert not parquet_problems and [r.row for r in from_parquet] == [2, 3]
    assert from_parquet == parse_manifest(tmp_path / "m.csv")[0]


def test_parquet_without_rows_or_unreadable_is_refused_clearly(tmp_path: Path) -> None:
    pq.write_table(pa.table({name: pa.array([], pa.string()) for name in HEADER}), tmp_path / "empty.parquet")
    _, problems = parse_manifest(tmp_path / "empty.parquet")
    assert [p.message for p in problems] == ["the manifest has a header but no data rows"]
    write(tmp_path / "broken.parquet", b"PAR1 this is not parquet")
    with pytest.raises(ManifestError, match="cannot be read as Parquet"):
        parse_manifest(tmp_path / "broken.parquet")


def test_a_5000_character_script_is_refused_at_validate_with_row_and_length(tmp_path: Path, capsys) -> None:
    long_line = ("Es regnete an jenem Abend, und niemand kam. " * 120)[:5000]
    at_limit = "Ja. " * 249 + "Ende"
    assert len(long_line) == 5000 and len(at_limit) == MAX_SCRIPT_CHARS
    rows = [["sh1", "a.mov", "de", at_limit, ""], ["sh2", "a.mov", "de", long_line, ""]]
    path = write(tmp_path / "m.csv", spreadsheet_text(",", rows=rows).encode())
    _, problems = parse_manifest(path)
    assert [(p.row, p.column) for p in problems] == [(3, "script")]
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert "row 3, script: script is 5,000 characters long, over the limit of 1,000" in err


def test_empty_trailing_columns_are_ignored_and_a_repeated_column_is_refused(tmp_path: Path) -> None:
    trailing = "shot_id;source;language;script;;\r\nsh1;a.mov;fr;Bonjour;;\r\n"
    rows, problems = parse_manifest(write(tmp_path / "trailing.csv", trailing.encode()))
    assert not problems and [r.script for r in rows] == ["Bonjour"]
    repeated = "shot_id,source,language,script,script\r\nsh1,a.mov,fr,Bonjour,Salut\r\n"
    _, problems = parse_manifest(write(tmp_path / "repeated.csv", repeated.encode()))
    assert [(p.row, p.column, p.message) for p in problems] == [(None, "script", "column appears more than once")]
