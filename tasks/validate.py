"""Validate a manifest up front: table rules plus the files themselves, every problem at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from dubflow.manifests.schema import (
    ManifestError,
    ManifestRow,
    Problem,
    canonical_language,
    parse_manifest,
    resolve_source,
)
from dubflow.tasks.files import sha256_file
from dubflow.tasks.media import MediaError, MediaInfo, probe


@dataclass(frozen=True)
class Shot:
    shot_id: str
    source: Path
    sha256: str
    media: MediaInfo


@dataclass(frozen=True)
class Manifest:
    path: Path
    shots: Mapping[str, Shot]
    rows: tuple[ManifestRow, ...]
    languages: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "languages", tuple(sorted({row.language for row in self.rows})))

    @property
    def picture_seconds(self) -> Fraction:
        return sum((shot.media.duration for shot in self.shots.values()), Fraction(0))


def validate_manifest(path: Path, languages: Sequence[str] | None = None) -> Manifest:
    """Return the validated manifest, or raise ManifestError listing every problem found.

    `languages` keeps only those target languages (each must be a valid tag present in the manifest).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [Problem(None, None, "manifest file not found", "check the path")])
    rows, problems = parse_manifest(path)

    wanted: set[str] | None = None
    if languages is not None:
        wanted = set()
        present = {row.language for row in rows}
        for tag in languages:
            canonical = canonical_language(tag.strip())
            if canonical is None or canonical not in present:
                problems.append(
                    Problem(
                        None,
                        "language",
                        f"--languages asks for {tag!r}, which no valid row of the manifest has",
                        f"choose from {', '.join(sorted(present)) or 'the manifest languages'}",
                    )
                )
            else:
                wanted.add(canonical)

    shots: dict[str, Shot] = {}
    checked: set[str] = set()
    for row in rows:
        if row.shot_id in checked:
            continue
        checked.add(row.shot_id)
        source = resolve_source(path, row.source)
        if not source.is_file():
            problems.append(
                Problem(row.row, "source", f"{source} does not exist", "fix the path (relative paths start at the manifest's folder)")
            )
            continue
        try:
            media = probe(source)
        except MediaError as exc:
            problems.append(Problem(row.row, "source", f"unreadable media: {exc}", "re-export the locked picture"))
            continue
        digest = sha256_file(source)
        lock = next((r.lock_sha256 for r in rows if r.shot_id == row.shot_id and r.lock_sha256), None)
        if lock and lock != digest:
            problems.append(
                Problem(
                    row.row,
                    "lock_sha256",
                    f"picture hash {digest} does not match the lock {lock}",
                    "the picture changed after lock: re-lock it or restore the locked file",
                )
            )
            continue
        shots[row.shot_id] = Shot(row.shot_id, source, digest, media)

    if problems:
        raise ManifestError(path, problems)
    kept = tuple(row for row in rows if wanted is None or row.language in wanted)
    return Manifest(path=path, shots={sid: shots[sid] for sid in dict.fromkeys(r.shot_id for r in kept)}, rows=kept)
