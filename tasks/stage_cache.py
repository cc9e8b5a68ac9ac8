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

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import types
import typing
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
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
CACHE_REMOTE_ENV = "DUBFLOW_CACHE_REMOTE"  # s3://bucket/prefix where stage results are shared
# The order the run's computed/reused line names the stages in.
STAGES = ("conform", "separate", "lipdub", "remix", "mux", "mezzanine", "subtitles", "qc")


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
                found = _use(final, result_type)
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


def _use(folder: Path, result_type: type[T]) -> T | None:
    """`_load`, marking the result used now (under the shared lock: a prune either ran before and the
    result is gone, or runs after and sees it used by a live run)."""
    with _locked(folder.parent.parent, exclusive=False):
        try:
            os.utime(folder / RESULT_FILE)
        except FileNotFoundError:
            return None
        return _load(folder, result_type)


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


# --- Keeping the cache bounded: leases of running runs, sizes, pruning -------------------------------
#
# A running run holds a lease, `<root>/.runs/<token>.json` (its pid and host), from before its first
# lookup until it ends. Every lookup that finds a result touches its `result.json` (so its time is
# when it was last used) under a shared lock on `<root>/.lock`; a prune holds that lock exclusively
# while it chooses and moves results aside. A result used or written since the oldest live lease
# began is therefore never pruned: a run either touched it first (kept) or finds it gone and
# computes it again. A lease whose process is gone (same host) is dead and removed by the next prune.

LEASES = ".runs"
LOCK_FILE = ".lock"
CACHE_MAX_GB_ENV = "DUBFLOW_CACHE_MAX_GB"  # the size a run's final prune brings the cache down to
CACHE_MAX_AGE_DAYS_ENV = "DUBFLOW_CACHE_MAX_AGE_DAYS"  # results unused for longer are pruned after each run
DEFAULT_CACHE_MAX_GB = 20.0
DEFAULT_CACHE_MAX_AGE_DAYS = 30.0


@contextlib.contextmanager
def _locked(root: Path, exclusive: bool) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def run_lease(root: Path, token: str) -> Iterator[Path]:
    """Hold a lease on the cache at `root` for the run `token` while the block runs."""
    folder = Path(root) / LEASES
    folder.mkdir(parents=True, exist_ok=True)
    lease = folder / f"{token}.json"
    atomic_write_bytes(lease, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode("utf-8"))
    try:
        yield lease
    finally:
        lease.unlink(missing_ok=True)


def _lease_is_live(lease: Path) -> bool:
    """A lease of another host is taken as live (its process cannot be checked from here)."""
    try:
        holder = json.loads(lease.read_text(encoding="utf-8"))
        host, pid = holder["host"], int(holder["pid"])
    except (OSError, ValueError, TypeError, KeyError):
        return False  # not a lease this code wrote (a lease is written whole: atomic_write_bytes)
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


@dataclass(frozen=True)
class CacheEntry:
    stage: str
    name: str  # the key, or a hidden folder a run left unfinished (`.<key>.tmp-…`)
    folder: Path
    size: int  # bytes on disk
    last_used: float  # mtime of result.json (touched on every reuse), or of the unfinished folder


def cache_entries(root: Path) -> list[CacheEntry]:
    """Every stored result and unfinished folder under `root`, by stage."""
    entries = []
    for stage_folder in sorted(Path(root).iterdir()) if Path(root).is_dir() else []:
        if not stage_folder.is_dir() or stage_folder.name.startswith("."):
            continue
        for folder in stage_folder.iterdir():
            marker = folder / RESULT_FILE
            try:
                used = (marker if marker.is_file() else folder).stat().st_mtime
            except FileNotFoundError:
                continue  # removed meanwhile
            entries.append(CacheEntry(stage_folder.name, folder.name, folder, _disk_usage(folder), used))
    return entries


def _disk_usage(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.lstat().st_blocks * 512
        except FileNotFoundError:
            continue
    return total


def usage_by_stage(root: Path) -> dict[str, tuple[int, int]]:
    """Per stage: (entries, bytes on disk)."""
    usage: dict[str, tuple[int, int]] = {}
    for entry in cache_entries(root):
        count, size = usage.get(entry.stage, (0, 0))
        usage[entry.stage] = (count + 1, size + entry.size)
    return usage


@dataclass(frozen=True)
class PruneReport:
    removed: tuple[CacheEntry, ...]
    kept_for_runs: int  # entries a live run used or wrote: never removed
    live_runs: int
    bytes_left: int

    def describe(self, dry_run: bool = False) -> str:
        freed = human_size(sum(entry.size for entry in self.removed))
        held = f"; {self.kept_for_runs} kept for {self.live_runs} running run(s)" if self.live_runs else ""
        done = f"would remove {len(self.removed)} result(s), {freed}" if dry_run else \
            f"removed {len(self.removed)} result(s), {freed} freed"
        return f"stage cache: {done}; {human_size(self.bytes_left)} left{held}"


def prune(root: Path, max_age_s: float | None = None, max_bytes: int | None = None,
          dry_run: bool = False) -> PruneReport:
    """Remove results unused for longer than `max_age_s`, then the least recently used until the
    cache holds at most `max_bytes` — never one a live run used or wrote since it began (a cache held
    that way can stay above `max_bytes`). `dry_run`: say what would go, remove nothing."""
    root = Path(root)
    doomed: list[CacheEntry] = []
    with _locked(root, exclusive=True):
        leases = sorted((root / LEASES).glob("*.json")) if (root / LEASES).is_dir() else []
        live = [lease for lease in leases if _lease_is_live(lease)]
        if not dry_run:
            for lease in set(leases) - set(live):
                lease.unlink(missing_ok=True)
        held_since = min((lease.stat().st_mtime for lease in live), default=float("inf"))
        entries = sorted(cache_entries(root), key=lambda entry: entry.last_used)
        held = [entry for entry in entries if entry.last_used >= held_since]
        free = [entry for entry in entries if entry.last_used < held_since]
        now = time.time()
        if max_age_s is not None:
            doomed = [entry for entry in free if now - entry.last_used > max_age_s]
        total = sum(entry.size for entry in entries) - sum(entry.size for entry in doomed)
        for entry in free:
            if max_bytes is None or total <= max_bytes:
                break
            if entry not in doomed:
                doomed.append(entry)
                total -= entry.size
        retired = [] if dry_run else [_retire(entry.folder) for entry in doomed]
    for folder in retired:
        shutil.rmtree(folder, ignore_errors=True)
    return PruneReport(tuple(doomed), len(held), len(live), total)


class CacheBoundsError(Exception):
    """`$DUBFLOW_CACHE_MAX_GB` or `$DUBFLOW_CACHE_MAX_AGE_DAYS` is not a number; found before any work."""


def cache_bounds() -> tuple[float, int]:
    """The bound every run applies when it ends, as (max age in seconds, max bytes):
    `$DUBFLOW_CACHE_MAX_AGE_DAYS` (default 30) and `$DUBFLOW_CACHE_MAX_GB` (default 20)."""
    bounds = []
    for name, default in ((CACHE_MAX_AGE_DAYS_ENV, DEFAULT_CACHE_MAX_AGE_DAYS), (CACHE_MAX_GB_ENV, DEFAULT_CACHE_MAX_GB)):
        text = os.environ.get(name)
        try:
            value = default if text is None else float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:  # also refuses nan
            raise CacheBoundsError(f"{name}={text!r} is not a number of {'days' if 'DAYS' in name else 'GB'} "
                                   f"(0 or more); unset it for the default {default:g}")
        bounds.append(value)
    return bounds[0] * 86400, int(bounds[1] * 1e9)


def prune_after_run(root: Path) -> PruneReport:
    """Apply `cache_bounds` to the cache at `root`."""
    max_age_s, max_bytes = cache_bounds()
    return prune(root, max_age_s=max_age_s, max_bytes=max_bytes)


def _retire(folder: Path) -> Path:
    """Rename a result out of its key first, so no lookup ever sees it half removed."""
    retired = folder.with_name(f".pruned-{uuid.uuid4().hex[:12]}")
    os.replace(folder, retired)
    return retired


def human_size(size: float) -> str:
    """Decimal units, as `du --si` prints them."""
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError
