"""Validate a manifest up front: table rules plus the files themselves, every problem at once.

A source may be a local path or `s3://bucket/key`; an S3 picture is fetched once into the
content-addressed cache (`$DUBFLOW_CACHE/sources/<sha256>`) and from then on treated like a local
file, so every later stage reads local paths.

Each line is also checked against its shot's length (`line_fit_problem`): a warning, or an error
with `strict_fit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av

from dubflow.manifests.schema import (
    ManifestError,
    ManifestRow,
    Problem,
    canonical_language,
    parse_table,
    read_table,
    resolve_source,
)
from dubflow.manifests.speech_rate import MAX_NATURAL_RATE, line_length
from dubflow.media.files import FileMemo, FileStamp, sha256_file
from dubflow.media.io import MediaError, MediaInfo, probe_many, read_audio
from dubflow.tasks.storage import (
    S3UriError,
    StorageError,
    FetchedSource,
    fetch_source,
    is_s3_uri,
    looks_like_url,
    parse_s3_uri,
    s3_client,
)


DIALOGUE_OVERRUN_S = 0.5  # how much longer than its shot a supplied dialogue file may be (room tone, a tail)


@dataclass(frozen=True)
class Shot:
    shot_id: str
    source: Path  # a local file: the picture itself, or its copy in the source cache
    sha256: str
    media: MediaInfo
    origin: str  # where the manifest says the picture is: a resolved local path or an s3:// URI


@dataclass(frozen=True)
class Manifest:
    path: Path
    shots: Mapping[str, Shot]
    rows: tuple[ManifestRow, ...]
    warnings: tuple[Problem, ...] = ()  # how the file was read when it took a guess; lines that may not fit
    languages: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "languages", tuple(sorted({row.language for row in self.rows})))

    @property
    def picture_seconds(self) -> Fraction:
        return sum((shot.media.duration for shot in self.shots.values()), Fraction(0))


def validate_manifest(
    path: Path, languages: Sequence[str] | None = None, endpoint_url: str | None = None, strict_fit: bool = False
) -> Manifest:
    """Return the validated manifest, or raise ManifestError listing every problem found.

    `languages` keeps only those target languages (each must be a valid tag present in the manifest).
    `endpoint_url` is the S3-compatible store that serves `s3://` sources (default: boto3's own
    `AWS_ENDPOINT_URL`, else AWS). A line that may not fit its shot is a warning, an error with
    `strict_fit`.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [Problem(None, None, "manifest file not found", "check the path")])
    table = read_table(path)
    rows, problems = parse_table(table)
    warnings = list(table.warnings)

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
    s3_sources = _S3Sources(endpoint_url)
    locks: dict[str, str] = {}  # a shot's lock, from the first of its rows that gives one
    for row in rows:
        if row.lock_sha256:
            locks.setdefault(row.shot_id, row.lock_sha256)
    found: list[tuple[ManifestRow, Path, str | None, str]] = []  # (row, local file, its sha256 if known, origin)
    for row in rows:
        if row.shot_id in checked:
            continue
        checked.add(row.shot_id)
        if is_s3_uri(row.source):
            fetched = s3_sources.fetch(row)
            if isinstance(fetched, Problem):
                problems.append(fetched)
                continue
            found.append((row, fetched.path, fetched.sha256, row.source))
        elif looks_like_url(row.source):
            # Not echoed: an https URL may be presigned, and its signature must not reach any output.
            problems.append(Problem(row.row, "source", "URL sources other than s3:// are not supported",
                                    "give a local path or s3://bucket/key"))
        else:
            source = resolve_source(path, row.source)
            if not source.is_file():
                problems.append(
                    Problem(row.row, "source", f"{source} does not exist",
                            "fix the path (relative paths start at the manifest's folder)")
                )
                continue
            found.append((row, source, None, str(source)))

    for (row, source, digest, origin), media in zip(found, _probe_sources([source for _, source, _, _ in found])):
        if isinstance(media, MediaError):
            # Name the picture as the manifest does, not by its copy in the source cache.
            problems.append(Problem(row.row, "source", f"unreadable media: {str(media).replace(str(source), origin)}",
                                    "re-export the locked picture"))
            continue
        if media.problems:
            problems.extend(Problem(row.row, "source", f"{origin}: {problem}",
                                    "re-export the source as the message says, or drop its rows")
                            for problem in media.problems)
            continue
        digest = digest or _HASHED.get(source, sha256_file)
        lock = locks.get(row.shot_id)
        if lock and lock != digest:
            problems.append(
                Problem(
                    row.row,
                    "lock_sha256",
                    f"picture hash {digest} of {origin} does not match the lock {lock}",
                    "the picture changed after lock: re-lock it or restore the locked file",
                )
            )
            continue
        shots[row.shot_id] = Shot(row.shot_id, source, digest, media, origin)

    for row in rows:
        if row.shot_id in shots and (wanted is None or row.language in wanted):
            problem = line_fit_problem(row, shots[row.shot_id])
            if problem is not None:
                (problems if strict_fit else warnings).append(problem)
    problems += [problem for row in rows if row.dialogue and row.shot_id in shots
                 if (problem := check_supplied_dialogue(path, row, shots[row.shot_id])) is not None]
    if problems:
        raise ManifestError(path, sorted(problems, key=lambda problem: problem.row or 0), warnings)
    kept = tuple(row for row in rows if wanted is None or row.language in wanted)
    return Manifest(path=path, shots={sid: shots[sid] for sid in dict.fromkeys(r.shot_id for r in kept)}, rows=kept,
                    warnings=tuple(warnings))


# Per process, by file version (`FileMemo`): `dubflow run` validates in its checks and again in the
# flow, and the second validation finds every unchanged picture here instead of decoding and hashing it.
_PROBED: FileMemo[MediaInfo] = FileMemo()
_HASHED: FileMemo[str] = FileMemo()


def _probe_sources(paths: Sequence[Path]) -> list[MediaInfo | MediaError]:
    """`probe_many` for the pictures not probed before in this process as they are now; every picture
    not yet known decoded through in one go, shared out over child processes (one per CPU)."""
    stamps = [_stamp(path) for path in paths]
    known = [_PROBED.known(path, stamp) if stamp else None for path, stamp in zip(paths, stamps)]
    probed = iter(probe_many([path for path, media in zip(paths, known) if media is None]))
    found: list[MediaInfo | MediaError] = []
    for path, stamp, media in zip(paths, stamps, known):
        if media is None:
            media = next(probed)
            if stamp and isinstance(media, MediaInfo):
                _PROBED.keep(path, stamp, media)
        found.append(replace(media, path=path) if isinstance(media, MediaInfo) else media)
    return found


def _stamp(path: Path) -> FileStamp | None:
    try:
        return FileStamp.of(path)
    except OSError:
        return None  # gone or unreadable: the probe says why


def line_fit_problem(row: ManifestRow, shot: Shot) -> Problem | None:
    """The line needs more than MAX_NATURAL_RATE syllables (or CJK characters) a second over its shot.

    The time measured against is the shot's picture duration, the most the line can have: the
    original dialogue's own regions are found only by separation, after validation, and before it
    the soundtrack's energy is music and effects as much as speech. So a warning here means the line
    is too long even spoken across the whole shot; a line short for its shot is not flagged (a
    one-word answer in a long shot is ordinary)."""
    length = line_length(row.script, row.language)
    if length is None:
        return None
    seconds = shot.media.duration
    rate = length.rate(seconds)
    if rate <= MAX_NATURAL_RATE:
        return None
    unit = length.unit
    return Problem(
        row.row,
        "script",
        f"the line needs {rate:.1f} {unit}/s: about {length.count:.0f} {unit} in the shot's {float(seconds):.3f} s "
        f"(its whole picture; the dialogue's own span is known only after separation), over the "
        f"{MAX_NATURAL_RATE:g} {unit}/s a speaker says naturally",
        f"shorten the line to about {math.floor(MAX_NATURAL_RATE * seconds)} {unit}, or give it a longer shot",
    )


def check_supplied_dialogue(manifest_path: Path, row: ManifestRow, shot: Shot) -> Problem | None:
    """A row's `dialogue` file: a local file (relative to the manifest, like `source`) with an audio
    stream that is at most `DIALOGUE_OVERRUN_S` longer than the shot (the mix trims it to the picture)."""
    if is_s3_uri(row.dialogue) or looks_like_url(row.dialogue):
        return Problem(row.row, "dialogue", "supplied dialogue must be a local file",
                       "download it and give its path (relative paths start at the manifest's folder)")
    audio = resolve_source(manifest_path, row.dialogue)
    if not audio.is_file():
        return Problem(row.row, "dialogue", f"{audio} does not exist",
                       "fix the path (relative paths start at the manifest's folder)")
    try:
        samples, rate = read_audio(audio)
    except (MediaError, av.error.FFmpegError, OSError) as exc:
        return Problem(row.row, "dialogue", f"{audio} is not readable audio ({exc})", "export it as WAV or FLAC")
    if samples.shape[1] == 0:
        return Problem(row.row, "dialogue", f"{audio} holds no audio", "export the recorded line again")
    seconds, shot_seconds = samples.shape[1] / rate, float(shot.media.duration)
    if seconds > shot_seconds + DIALOGUE_OVERRUN_S:
        return Problem(row.row, "dialogue", f"{audio} lasts {seconds:.3f} s, the shot {shot_seconds:.3f} s",
                       f"trim it to the shot (at most {DIALOGUE_OVERRUN_S:g} s longer; the mix cuts it at the "
                       "picture's last frame)")
    return None


class _S3Sources:
    """Fetches the S3 sources of one validation with one client, made on first use. After a failure
    that every request would hit (endpoint unreachable, credentials missing or rejected), the
    remaining S3 rows are reported against it instead of each waiting out its own retries."""

    def __init__(self, endpoint_url: str | None):
        self.endpoint_url = endpoint_url
        self.client = None
        self.endpoint_failure: tuple[int, StorageError] | None = None

    def fetch(self, row: ManifestRow) -> FetchedSource | Problem:
        try:
            uri = parse_s3_uri(row.source)
        except S3UriError as exc:
            return Problem(row.row, "source", f"not a usable S3 URI: {exc}", "write it as s3://bucket/key")
        if self.endpoint_failure is not None:
            first_row, error = self.endpoint_failure
            return Problem(row.row, "source", f"{uri} not checked: {error.what} (row {first_row})", error.hint)
        if self.client is None:
            self.client = s3_client(self.endpoint_url)
        from dubflow.models.profiles import cache_dir  # imports torch: only manifests with S3 sources pay for it

        try:
            return fetch_source(self.client, uri, cache_dir())
        except StorageError as exc:
            if exc.endpoint_wide:
                self.endpoint_failure = (row.row, exc)
            return Problem(row.row, "source", exc.what, exc.hint)
