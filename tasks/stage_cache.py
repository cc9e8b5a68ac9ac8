"""Content-addressed stage results: a re-run reuses every stage whose inputs did not change.

A stage's result lives in `<root>/<stage>/<key>/`: the files it wrote and `result.json` (the result's
fields, each file relative to the folder with its size). The key is the sha256 of the canonical
JSON of the stage name, the stage's version and its content inputs (hashes, texts, model identities,
parameters, upstream keys) — never a path or a run id, so the same work in another run, folder or
machine finds it.

With a remote (`--cache-remote s3://bucket/prefix`, `$DUBFLOW_CACHE_REMOTE`), every computed result
is also uploaded to `<prefix>/<stage>/<key>/` (its files first, `result.json` last), and a result not
found locally is looked for there before it is computed: machines that share no filesystem (Dask
workers, CI runners, tomorrow's night run) share finished work. Downloads are checked against the
sha256 each file was uploaded with.

A stage writes into a fresh temporary folder beside the final one; `result.json` is written last and
the folder is renamed into place, so a folder under its key is always complete. A process killed
mid-stage leaves only a temporary folder (a dot-name, never looked up). A result whose files are
missing or changed in size counts as absent and is computed again. Results are never modified once
in place: each stage writes only into its own folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import types
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dubflow.media.files import atomic_write_bytes
from dubflow.tasks.storage import (
    S3Uri,
    S3UriError,
    StorageError,
    check_bucket,
    digest_file,
    download_file,
    list_keys,
    parse_s3_uri,
    s3_client,
    upload_files,
)

T = TypeVar("T")
RESULT_FILE = "result.json"
# The order the run's computed/reused line names the stages in.
STAGES = ("separate", "lipdub", "remix", "mux", "mezzanine", "subtitles", "qc")


class CacheRemoteError(Exception):
    """The stage cache's remote cannot be used; found before any work starts."""


def check_remote(remote: str, endpoint_url: str | None = None) -> str:
    """`remote` if it is an s3:// prefix in a bucket these credentials can write to."""
    try:
        check_bucket(s3_client(endpoint_url), parse_s3_uri(remote, prefix=True), "write stage results to")
    except (S3UriError, StorageError) as exc:
        raise CacheRemoteError(f"--cache-remote: {exc}") from None
    return remote


class StaleResultError(Exception):
    """A stored result whose files are gone or changed: treated as absent."""


def stage_key(stage: str, version: int, **inputs: Any) -> str:
    """sha256 of the canonical JSON of the stage, its version and its content inputs.

    Inputs must be JSON values (str, int, float, bool, None, lists, dicts): a Path is refused, so a
    location can never slip into a key."""
    document = {"stage": stage, "version": version, "inputs": inputs}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheCounts:
    computed: dict[str, int]
    reused: dict[str, int]

    def describe(self) -> str:
        """e.g. `computed: lipdub 1, remix 1; reused: separate 1, lipdub 2, remix 2`."""
        def listing(counts: dict[str, int]) -> str:
            named = [f"{stage} {counts[stage]}" for stage in STAGES if counts.get(stage)]
            return ", ".join(named) or "nothing"

        return f"computed: {listing(self.computed)}; reused: {listing(self.reused)}"


@dataclass(frozen=True)
class StageCache:
    """Where stage results live and whether to recompute them. `run` is recorded in every result the
    run computes, so that the run can count what it computed and reused wherever its tasks ran (in
    this process or on a cluster's workers sharing the cache)."""

    root: Path
    force: bool = False
    run: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    remote: str | None = None  # s3://bucket/prefix shared by every machine of a run, or None
    endpoint_url: str | None = None  # of an S3-compatible store for `remote` (None: AWS_ENDPOINT_URL, else AWS)

    def result(self, stage: str, key: str, result_type: type[T], compute: Callable[[Path], T]) -> T:
        """The stored result of `stage` under `key`, or `compute(folder)` stored there first.

        `compute` writes its files into the folder it is given and returns a `result_type` whose
        Path fields point into it. A failure stores nothing and propagates."""
        final = Path(self.root) / stage / key
        if not self.force:
            try:
                found = _load(final, result_type)
            except StaleResultError:
                found = None
            if found is None and self.remote:
                found = self._pull(stage, key, final, result_type)
            if found is not None:
                return found
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{key}.tmp-{uuid.uuid4().hex[:8]}")
        temporary.mkdir()
        try:
            value = compute(temporary)
            document = {"stage": stage, "key": key, "run": self.run, "result": _encode(value, temporary)}
            atomic_write_bytes(temporary / RESULT_FILE, json.dumps(document, indent=1).encode("utf-8"))
            _place(temporary, final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)  # gone already when it was placed
        if self.remote:
            self._push(stage, key, final)
        return _load(final, result_type)

    def _remote_folder(self, stage: str, key: str) -> S3Uri:
        return parse_s3_uri(self.remote, prefix=True).child(stage, key)

    def _pull(self, stage: str, key: str, final: Path, result_type: type[T]) -> T | None:
        """The remote copy of a result, downloaded and placed under its key; None if there is none."""
        client = s3_client(self.endpoint_url)
        folder = self._remote_folder(stage, key)
        names = [object_key[len(folder.key) + 1 :] for object_key in list_keys(client, folder)]
        if RESULT_FILE not in names:
            return None  # absent, or its upload never finished (result.json goes last)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{key}.pull-{uuid.uuid4().hex[:8]}")
        try:
            for name in sorted(names, key=lambda n: n == RESULT_FILE):  # result.json last, as written
                download_file(client, folder.child(*name.split("/")), temporary.joinpath(*name.split("/")))
            _place(temporary, final)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        try:
            return _load(final, result_type)
        except StaleResultError:
            return None

    def _push(self, stage: str, key: str, final: Path) -> None:
        """Upload a placed result: its files, then `result.json`, so a reader never sees half of one."""
        client = s3_client(self.endpoint_url)
        folder = self._remote_folder(stage, key)
        files = [path for path in final.rglob("*") if path.is_file() and path != final / RESULT_FILE]
        for batch in (files, [final / RESULT_FILE]):
            upload_files(client, [(path, folder.child(*path.relative_to(final).parts), digest_file(path))
                                  for path in batch])

    def counts(self, results: Iterable[tuple[str, str]]) -> CacheCounts:
        """Of the run's stage results ``(stage, key)`` that exist, how many this run computed (its
        token is in them) and how many it reused; each distinct result once."""
        computed: Counter[str] = Counter()
        reused: Counter[str] = Counter()
        for stage, key in set(results):
            try:
                document = json.loads((Path(self.root) / stage / key / RESULT_FILE).read_text(encoding="utf-8"))
            except (FileNotFoundError, ValueError):
                continue  # the stage failed or never ran: neither computed nor reused
            (computed if document.get("run") == self.run else reused)[stage] += 1
        return CacheCounts(dict(computed), dict(reused))


def _place(temporary: Path, final: Path) -> None:
    """Rename the finished folder to its key, replacing a stale or forced-out one."""
    if final.exists():
        # Two renames, so the key never names a half-removed folder.
        retired = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, retired)
        shutil.rmtree(retired)
    try:
        os.rename(temporary, final)
    except OSError:
        if not (final / RESULT_FILE).is_file():
            raise
        # Another process stored the same key meanwhile: same inputs, same result; keep theirs.


def _load(folder: Path, result_type: type[T]) -> T | None:
    """The result stored in `folder`; None when there is none; StaleResultError when its files changed."""
    try:
        document = json.loads((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise StaleResultError(f"{folder / RESULT_FILE}: {exc}") from None
    return _decode(document["result"], result_type, folder)


def _encode(value: Any, folder: Path) -> Any:
    """JSON for a result: dataclasses as objects, tuples as lists, files relative to `folder` with sizes."""
    if isinstance(value, Path):
        path = value.resolve()
        if not path.is_relative_to(folder.resolve()) or not path.is_file():
            raise ValueError(f"a stage result names {value}, which is not a file in its own folder {folder}")
        return {"file": path.relative_to(folder.resolve()).as_posix(), "size": path.stat().st_size}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _encode(getattr(value, field.name), folder) for field in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_encode(item, folder) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a stage result")


def _decode(data: Any, annotation: Any, folder: Path) -> Any:
    """The value `_encode` stored, rebuilt as `annotation` (a type from a result dataclass's hints)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _decode(data, inner, folder)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        return tuple(_decode(item, item_type, folder) for item in data)
    if annotation is Path:
        path = folder / data["file"]
        if not path.is_file() or path.stat().st_size != data["size"]:
            raise StaleResultError(f"{path} is missing or not {data['size']} bytes")
        return path
    if dataclasses.is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        return annotation(**{field.name: _decode(data[field.name], hints[field.name], folder)
                             for field in dataclasses.fields(annotation)})
    return data
