"""The manifest: one row per (shot, language), read from CSV or Parquet into one typed model.

Table rules live here (columns, ids, language tags, scripts, duplicates). Rules that need the
files themselves (exists, readable media, lock hash) live in `dubflow.tasks.validate`, which
calls `read_table` and `parse_table` first and reports both kinds of problem together.

CSV files are read as people save them: UTF-8 with or without a byte-order mark, UTF-16 with one
(Excel's "Unicode Text"), or Windows-1252 (cp1252, older Excel "CSV" exports; read with a
warning); cells separated by comma, semicolon, tab or pipe, whichever splits the header into the
known column names. Rows are numbered as a spreadsheet shows them: the header is row 1, the first
data row is row 2 (Parquet rows the same way, as if the table were opened in a spreadsheet).
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import langcodes
import pandas as pd

REQUIRED_COLUMNS = ("shot_id", "source", "language", "script")
OPTIONAL_COLUMNS = ("lock_sha256", "speaker", "take", "dialogue")
KNOWN_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

SHOT_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# BCP-47 tags become folder names and object keys: letters, digits and hyphens only.
LANGUAGE_CHARS = re.compile(r"[A-Za-z0-9-]{2,35}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# One shot's line. The model reads it inside a 1,024-token prompt (Gemma's tokenizer spends about a
# token on each CJK character), so a longer line would be cut without a word; and 1,000 characters
# is over a minute of speech at any natural rate, more than a shot holds.
MAX_SCRIPT_CHARS = 1_000

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PARQUET_SUFFIXES = (".parquet", ".pq")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
# Byte-order marks, longest first (a UTF-32 file is refused by the NUL check after decoding).
BYTE_ORDER_MARKS = ((b"\xef\xbb\xbf", "utf-8", "UTF-8"), (b"\xff\xfe", "utf-16-le", "UTF-16 LE"),
                    (b"\xfe\xff", "utf-16-be", "UTF-16 BE"))
FIRST_DATA_ROW = 2  # the header is row 1
_EXPORT_AGAIN = (f"export the manifest again: a header row ({', '.join(REQUIRED_COLUMNS)}, …) and one row per "
                 "(shot, language) below it")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest. `row` is the spreadsheet row: the header is row 1, the first
    data row is row 2."""

    row: int | None
    column: str | None
    message: str
    hint: str

    def __str__(self) -> str:
        where = ", ".join(
            part for part in (f"row {self.row}" if self.row else "", self.column or "") if part
        )
        return f"{where or 'manifest'}: {self.message} — {self.hint}"


class ManifestError(Exception):
    """The manifest has problems; nothing runs until every one is fixed. Warnings found on the way
    are listed after them."""

    def __init__(self, path: Path, problems: list[Problem], warnings: list[Problem] | tuple[Problem, ...] = ()):
        self.path = path
        self.problems = problems
        self.warnings = tuple(warnings)
        lines = [f"  - {problem}" for problem in problems]
        lines += [f"  - warning: {warning}" for warning in self.warnings]
        rows = " (rows as a spreadsheet numbers them: the header is row 1)" if any(
            p.row for p in (*problems, *self.warnings)) else ""
        super().__init__(f"{path}: {len(problems)} problem(s){rows}\n" + "\n".join(lines))


@dataclass(frozen=True)
class ManifestRow:
    row: int  # spreadsheet row: the first data row is row 2
    shot_id: str
    source: str  # as written: a path (resolved by `resolve_source`) or an s3://bucket/key URI
    lock_sha256: str | None
    language: str  # canonical BCP-47 form, e.g. "pt-BR"
    script: str
    speaker: str
    take: int = 1  # chooses the take's seed: a retake of a rejected pair is the next integer
    dialogue: str = ""  # as written: supplied dialogue to mix instead of the generated speech, or ""


@dataclass(frozen=True)
class Table:
    """A manifest's cells as read: the header, each data row with its spreadsheet row number, and
    what reading found (rows whose cells do not line up with the header; how the text was decoded)."""

    columns: tuple[str, ...]
    records: tuple[tuple[int, dict[str, str]], ...]
    problems: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()


def read_table(path: Path) -> Table:
    """Read a CSV (see the module's docstring for encodings and delimiters) or Parquet manifest.
    A file that cannot be read as a table at all raises ManifestError."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        _refuse(path, f"unknown manifest type {suffix!r}", "use a .csv (or .tsv, .txt) or .parquet file")
    if path.stat().st_size == 0:
        _refuse(path, "the file is empty (0 bytes)", _EXPORT_AGAIN)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(path)
    return _read_delimited(path)


def _refuse(path: Path, message: str, hint: str) -> NoReturn:
    raise ManifestError(path, [Problem(None, None, message, hint)])


def _read_parquet(path: Path) -> Table:
    try:
        frame = pd.read_parquet(path).astype("string").fillna("")
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        _refuse(path, f"cannot be read as Parquet ({exc})", "export it again, or save it as CSV")
    columns = tuple(str(column).strip() for column in frame.columns)
    records = tuple(
        (number, dict(zip(columns, (str(cell) for cell in values))))
        for number, values in enumerate(frame.itertuples(index=False), start=FIRST_DATA_ROW)
    )
    return Table(columns, records)


def _decode(path: Path, data: bytes) -> tuple[str, str]:
    """The file's text and the name of its encoding (UTF-8 and UTF-16 by their byte-order mark,
    else UTF-8, else cp1252)."""
    for mark, codec, name in BYTE_ORDER_MARKS:
        if data.startswith(mark):
            try:
                text = data[len(mark):].decode(codec)
            except UnicodeDecodeError as exc:
                _refuse(path, f"starts with a {name} byte-order mark but is not {name} (byte {exc.start + len(mark)})",
                        "save it again as CSV UTF-8")
            break
    else:
        try:
            text, name = data.decode("utf-8"), "UTF-8"
        except UnicodeDecodeError:
            try:
                text, name = data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError as exc:
                _refuse(path, f"is neither UTF-8 nor Windows-1252 (cp1252): byte 0x{data[exc.start]:02x} at "
                        f"offset {exc.start}", "save it as CSV UTF-8")
    if "\x00" in text:
        _refuse(path, "holds NUL characters: UTF-16 without a byte-order mark, or not a text file",
                "save it as CSV UTF-8 (or as UTF-16 with its byte-order mark, Excel's \"Unicode Text\")")
    return text, name


def _detect_delimiter(header: str) -> str:
    """The delimiter that splits the header line into the most known column names; ties go to the
    one that makes more cells, then to the comma."""

    def score(delimiter: str) -> tuple[int, int]:
        cells = next(csv.reader([header], delimiter=delimiter))
        return sum(cell.strip() in KNOWN_COLUMNS for cell in cells), len(cells)

    return max(DELIMITERS, key=score)


def _read_delimited(path: Path) -> Table:
    text, encoding = _decode(path, path.read_bytes())
    header_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = _detect_delimiter(header_line)
    separated = f"{DELIMITERS[delimiter]}-separated"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        lines = list(reader)
    except csv.Error as exc:  # e.g. a cell over the csv module's field size limit (128 KiB)
        _refuse(path, f"cannot be read as {separated} values near line {reader.line_num} ({exc})",
                "check that line's quoting, or save the manifest again from the spreadsheet")
    # Blank rows are skipped but keep their numbers, as in a spreadsheet.
    numbered = [(number, cells) for number, cells in enumerate(lines, start=1) if any(c.strip() for c in cells)]
    if not numbered:
        _refuse(path, "holds no header row, only blank lines", _EXPORT_AGAIN)
    header = [cell.strip() for cell in numbered[0][1]]
    while not header[-1]:  # spreadsheets export formatted but empty columns as empty header cells
        header.pop()
    columns = tuple(header)
    records, problems = [], []
    for number, cells in numbered[1:]:
        extra = [cell for cell in cells[len(columns):] if cell.strip()]
        if len(cells) < len(columns) or extra:
            problems.append(_misaligned(number, len(cells), len(columns), separated, DELIMITERS[delimiter]))
            continue
        records.append((number, dict(zip(columns, cells))))
    warning = _cp1252_warning(records) if encoding == "cp1252" else None
    return Table(columns, tuple(records), tuple(problems), (warning,) if warning else ())


def _misaligned(row: int, cells: int, expected: int, separated: str, delimiter_name: str) -> Problem:
    hint = (f"the header is {separated}: separate this row's cells with a {delimiter_name} too" if cells < expected
            else f"the file is {separated}: put a cell that contains a {delimiter_name} in double quotes")
    return Problem(row, None, f"has {cells} cell(s) where the header has {expected}", hint)


def _cp1252_warning(records: list[tuple[int, dict[str, str]]]) -> Problem | None:
    """Where a cp1252 file's first non-ASCII cell is, and how it reads, so a wrong guess shows."""
    for number, cells in records:
        for column, cell in cells.items():
            if not cell.isascii():
                shown = cell if len(cell) <= 60 else cell[:57] + "…"
                return Problem(number, column, f"the file is not UTF-8; read as Windows-1252 (cp1252), this cell "
                               f"reads {shown!r}", "if that is wrong, save the manifest as CSV UTF-8")
    return None


def canonical_language(tag: str) -> str | None:
    """The canonical form of a valid BCP-47 tag, or None when the tag is not valid."""
    if not LANGUAGE_CHARS.fullmatch(tag) or not langcodes.tag_is_valid(tag):
        return None
    return langcodes.standardize_tag(tag)


def language_name(tag: str) -> str:
    """English name of a language tag, for prompts and reports ("pt-BR" → "Portuguese (Brazil)")."""
    return langcodes.Language.get(tag).display_name()


def resolve_source(manifest_path: Path, source: str) -> Path:
    """Relative sources resolve against the manifest's folder, not the working directory."""
    candidate = Path(source).expanduser()
    return candidate if candidate.is_absolute() else (Path(manifest_path).parent / candidate).resolve()


def _shown(source: str) -> str:
    """A source as messages may show it: a URL's query string (where presigned URLs keep their
    signature) is never repeated."""
    head, query, _ = source.partition("?")
    return f"{head}?…" if query else head


def parse_manifest(path: Path) -> tuple[list[ManifestRow], list[Problem]]:
    """`parse_table` of the file at `path` (its reading warnings are left out: see `read_table`)."""
    return parse_table(read_table(path))


def parse_table(table: Table) -> tuple[list[ManifestRow], list[Problem]]:
    """Apply every table rule; return the rows that parsed and every problem found."""
    problems: list[Problem] = list(table.problems)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    separator = _foreign_separator(table.columns) if missing else None
    if separator is not None:
        return [], [Problem(None, None, f"required column(s) {', '.join(missing)} missing: the header reads as one "
                            f"cell whose names are separated by {separator!r}, which dubflow does not read",
                            "save the manifest with a comma, semicolon, tab or pipe between cells")]
    for column in missing:
        problems.append(Problem(None, column, "required column is missing", f"add a '{column}' column"))
    for column in dict.fromkeys(c for c in table.columns if table.columns.count(c) > 1):
        problems.append(Problem(None, column, "column appears more than once", "keep one column of each name"))
    for column in table.columns:
        if column not in KNOWN_COLUMNS:
            problems.append(
                Problem(None, column, "unknown column", f"remove it or rename it to one of {', '.join(KNOWN_COLUMNS)}")
            )
    if missing:
        return [], problems
    if not table.records:
        problems.append(Problem(None, None, "the manifest has a header but no data rows",
                                f"add one row per (shot, language) below the header, from row {FIRST_DATA_ROW}"))

    rows: list[ManifestRow] = []
    seen_pairs: dict[tuple[str, str], int] = {}
    shot_sources: dict[str, tuple[str, int]] = {}
    for index, record in table.records:
        cell = {column: record.get(column, "") for column in KNOWN_COLUMNS}
        row_problems = []

        shot_id = cell["shot_id"].strip()
        if not SHOT_ID_PATTERN.fullmatch(shot_id) or ".." in shot_id or shot_id in (".",):
            row_problems.append(
                Problem(
                    index,
                    "shot_id",
                    f"{shot_id!r} is not safe as a file name or object key",
                    "use 1–128 characters from A–Z a–z 0–9 . _ - and no '..'",
                )
            )

        raw_language = cell["language"].strip()
        language = canonical_language(raw_language)
        if language is None:
            hint = "use a BCP-47 tag such as fr, de, es-419 or pt-BR"
            if "_" in raw_language:
                hint = f"BCP-47 uses hyphens: write {raw_language.replace('_', '-')!r}"
            row_problems.append(Problem(index, "language", f"{raw_language!r} is not a valid language tag", hint))

        script = cell["script"].strip()
        if not script:
            row_problems.append(Problem(index, "script", "script is empty", "give the translated line to be spoken"))
        elif len(script) > MAX_SCRIPT_CHARS:
            row_problems.append(
                Problem(index, "script", f"script is {len(script):,} characters long, over the limit of "
                        f"{MAX_SCRIPT_CHARS:,}", "a shot's line fits in a prompt and a shot: shorten it, or split "
                        "the shot and its line in two")
            )

        source = cell["source"].strip()
        if not source:
            row_problems.append(
                Problem(index, "source", "source is empty", "give the path or s3://bucket/key of the locked picture")
            )

        lock = cell["lock_sha256"].strip().lower()
        if lock and not SHA256_PATTERN.fullmatch(lock):
            row_problems.append(
                Problem(index, "lock_sha256", f"{lock!r} is not a sha256", "give 64 hex digits or leave it empty")
            )

        if shot_id and source:
            first_source, first_row = shot_sources.setdefault(shot_id, (source, index))
            if first_source != source:
                row_problems.append(
                    Problem(
                        index,
                        "source",
                        f"shot {shot_id!r} has source {_shown(source)!r} here but {_shown(first_source)!r} "
                        f"in row {first_row}",
                        "one shot_id names one locked picture; fix the source or use another shot_id",
                    )
                )
        if shot_id and language:
            first_row = seen_pairs.setdefault((shot_id, language), index)
            if first_row != index:
                row_problems.append(
                    Problem(
                        index,
                        "language",
                        f"({shot_id}, {language}) already appears in row {first_row}",
                        "keep one row per (shot, language)",
                    )
                )

        take, take_problem = parse_take(cell["take"], index)
        if take_problem:
            row_problems.append(take_problem)

        problems.extend(row_problems)
        if not row_problems:
            rows.append(
                ManifestRow(
                    row=index,
                    shot_id=shot_id,
                    source=source,
                    lock_sha256=lock or None,
                    language=language,
                    script=script,
                    speaker=cell["speaker"].strip(),
                    take=take,
                    dialogue=cell["dialogue"].strip(),
                )
            )
    return rows, problems


def _foreign_separator(columns: tuple[str, ...]) -> str | None:
    """What stands between known column names inside one header cell (e.g. ':' or ' '), when the
    header was written with a separator dubflow does not read."""
    for cell in columns:
        found = sorted((cell.find(name), name) for name in KNOWN_COLUMNS if name in cell)
        if len(found) >= 2:
            (first_at, first), (second_at, _) = found[0], found[1]
            return cell[first_at + len(first):second_at] or None
    return None


def parse_take(text: str, row: int) -> tuple[int, Problem | None]:
    """The `take` cell: empty means 1; otherwise a whole number from 1 (Parquet integers arrive as text)."""
    text = text.strip()
    if not text:
        return 1, None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        return 1, Problem(row, "take", f"{text!r} is not a take number", "give a whole number from 1 (empty means 1)")
    return int(text), None
