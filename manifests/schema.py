"""The manifest: one row per (shot, language), read from CSV or Parquet into one typed model.

Table rules live here (columns, ids, language tags, scripts, duplicates). Rules that need the
files themselves (exists, readable media, lock hash) live in `dubflow.tasks.validate`, which
calls `parse_manifest` first and reports both kinds of problem together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import langcodes
import pandas as pd

REQUIRED_COLUMNS = ("shot_id", "source", "language", "script")
OPTIONAL_COLUMNS = ("lock_sha256", "speaker", "take", "dialogue")
KNOWN_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

SHOT_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# BCP-47 tags become folder names and object keys: letters, digits and hyphens only.
LANGUAGE_CHARS = re.compile(r"[A-Za-z0-9-]{2,35}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest. `row` counts data rows from 1 (the header is not a row)."""

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
    """The manifest has problems; nothing runs until every one is fixed."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{path}: {len(problems)} problem(s)\n{lines}")


@dataclass(frozen=True)
class ManifestRow:
    row: int
    shot_id: str
    source: str  # as written: a path (resolved by `resolve_source`) or an s3://bucket/key URI
    lock_sha256: str | None
    language: str  # canonical BCP-47 form, e.g. "pt-BR"
    script: str
    speaker: str
    take: int = 1  # chooses the take's seed: a retake of a rejected pair is the next integer
    dialogue: str = ""  # as written: supplied dialogue to mix instead of the generated speech, or ""


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (UTF-8, BOM or not) or Parquet manifest with every cell as a string or NA."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    elif suffix in (".parquet", ".pq"):
        table = pd.read_parquet(path).astype("string").fillna("")
    else:
        raise ManifestError(
            path, [Problem(None, None, f"unknown manifest type {suffix!r}", "use a .csv or .parquet file")]
        )
    table.columns = [str(column).strip() for column in table.columns]
    return table


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
    """Apply every table rule; return the rows that parsed and every problem found."""
    table = read_table(path)
    problems: list[Problem] = []
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    for column in missing:
        problems.append(Problem(None, column, "required column is missing", f"add a '{column}' column"))
    for column in table.columns:
        if column not in KNOWN_COLUMNS:
            problems.append(
                Problem(None, column, "unknown column", f"remove it or rename it to one of {', '.join(KNOWN_COLUMNS)}")
            )
    if missing:
        return [], problems
    if table.empty:
        problems.append(Problem(None, None, "manifest has no rows", "add one row per (shot, language)"))

    rows: list[ManifestRow] = []
    seen_pairs: dict[tuple[str, str], int] = {}
    shot_sources: dict[str, tuple[str, int]] = {}
    for index, record in enumerate(table.to_dict("records"), start=1):
        cell = {column: str(record.get(column, "") or "") for column in KNOWN_COLUMNS}
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


def parse_take(text: str, row: int) -> tuple[int, Problem | None]:
    """The `take` cell: empty means 1; otherwise a whole number from 1 (Parquet integers arrive as text)."""
    text = text.strip()
    if not text:
        return 1, None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        return 1, Problem(row, "take", f"{text!r} is not a take number", "give a whole number from 1 (empty means 1)")
    return int(text), None
