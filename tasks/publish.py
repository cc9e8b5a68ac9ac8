"""Stage 6, once per run: publish the delivery package to a local folder or an S3 prefix, the delivery
manifest (`delivery.parquet`, then `delivery.json`) last.

Both backends build the same manifest and keep the same promise: a reader that sees
`<run-id>/delivery.json` sees a complete delivery, and the run folder holds exactly the files that
manifest lists.

Local folder: the run is assembled in a hidden staging folder beside the destination, the manifest
is written into it last and the folder is renamed into place; a re-run of the same run id swaps the
whole folder, so old and new files are never mixed.

S3 (`s3://bucket/prefix`) has no rename, so order does the work, all inside `<prefix>/<run-id>/`:
1. hash every file and list what the run folder already holds;
2. an object already there with the same size, sha256 metadata and S3 checksum is skipped, so a
   re-run uploads only what is new or changed;
3. if anything is to change and an earlier `delivery.json` is there, it is deleted first: the earlier
   delivery is withdrawn before any object it lists changes;
4. the files are uploaded and verified (see `dubflow.tasks.storage` for the checksums trusted);
5. stale objects of an earlier attempt (not in the new manifest) and multipart uploads it left
   unfinished are removed, so the run folder matches the manifest, as a local delivery does;
6. `delivery.parquet`, then `delivery.json`.
A failure before step 6 completes leaves no `delivery.json` (or the earlier, untouched delivery when
nothing had changed yet); re-running the same run id finishes the delivery, skipping finished
objects. Nothing outside `<prefix>/<run-id>/` is ever written or deleted.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.media.files import sha256_file
from dubflow.tasks.destination import Destination, InvalidDestinationError, check_run_id, open_destination
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.storage import (
    S3Uri,
    StorageError,
    abort_unfinished_uploads,
    check_name,
    delete_keys,
    digest_bytes,
    digest_file,
    list_keys,
    put_bytes,
    s3_client,
    stored_matches,
    upload_files,
)

# Destination checks live in tasks/destination.py (light imports, used before any work); re-exported here.

DELIVERY_MANIFEST = "delivery.json"
DELIVERY_TABLE = "delivery.parquet"
MANIFEST_COLUMNS = ["path", "role", "shot_id", "language", "size", "sha256"]


@dataclass(frozen=True)
class DeliveryFile:
    source: Path  # where the stage wrote it
    path: str  # relative to the run folder, e.g. "sh010/fr/sh010_fr.mp4"
    role: str  # review_mp4 | mix | dx | me | qc
    shot_id: str
    language: str | None  # None for per-shot files (the shared M&E)


@dataclass(frozen=True)
class PairOutcome:
    shot_id: str
    language: str
    status: str  # delivered | failed
    reason: str | None
    seconds: float


@dataclass(frozen=True)
class Published:
    location: str  # the run folder: a local path or s3://bucket/prefix/run-id
    written: tuple[str, ...]  # paths relative to the run folder written by this publish, manifest last
    skipped: tuple[str, ...] = ()  # already there with the same sha256 (S3 re-runs)
    removed: tuple[str, ...] = ()  # stale objects of an earlier attempt (S3 re-runs)

    def describe(self) -> str:
        return (f"published {self.location}: {len(self.written)} written, {len(self.skipped)} already there, "
                f"{len(self.removed)} stale removed")


def publish(
    destination: Destination, run_id: str, files: list[DeliveryFile], outcomes: list[PairOutcome], run_info: dict
) -> Published:
    if destination.s3 is None:
        run_dir = publish_local(destination.folder, run_id, files, outcomes, run_info)
        return Published(str(run_dir), tuple(item.path for item in files) + (DELIVERY_TABLE, DELIVERY_MANIFEST))
    return publish_s3(destination.s3, run_id, files, outcomes, run_info, s3_client(destination.endpoint_url))


def publish_local(
    out_dir: Path,
    run_id: str,
    files: list[DeliveryFile],
    outcomes: list[PairOutcome],
    run_info: dict,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / check_name(run_id)
    staging = out_dir / f".{run_id}.staging-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()  # even a run where every pair failed publishes its delivery manifest
        entries = []
        for item in files:
            target = staging / item.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, target)
            entries.append(_entry(item, target.stat().st_size, sha256_file(target)))  # hash what was written
        for name, data in manifest_documents(run_id, entries, outcomes, run_info).items():
            # A plain write, so the file gets the umask's mode like the copies (a temporary file
            # would be 0600, unreadable to the rest of a shared delivery folder); the staging folder's
            # rename is what makes the delivery appear whole.
            (staging / name).write_bytes(data)
        _fsync_tree(staging)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def publish_s3(
    prefix: S3Uri,
    run_id: str,
    files: list[DeliveryFile],
    outcomes: list[PairOutcome],
    run_info: dict,
    client: Any,
) -> Published:
    """Publish under `<prefix>/<run-id>/` in the order the module docstring gives."""
    run = prefix.child(run_id)
    targets = [run.child(*item.path.split("/")) for item in files]
    digests = [digest_file(item.source) for item in files]
    documents = manifest_documents(
        run_id, [_entry(item, d.size, d.sha256) for item, d in zip(files, digests)], outcomes, run_info
    )
    marker = run.child(DELIVERY_MANIFEST)
    existing: set[str] | None = None
    withdrawn = False
    try:
        existing = set(list_keys(client, run))
        pending = [(item.source, uri, digest) for item, uri, digest in zip(files, targets, digests)
                   if uri.key not in existing or not stored_matches(client, uri, digest)]
        stale = sorted(existing - {uri.key for uri in targets} - {run.child(name).key for name in documents})
        if (pending or stale) and marker.key in existing:
            delete_keys(client, run, [marker.key])
            withdrawn = True
        upload_files(client, pending)
        if stale:
            delete_keys(client, run, stale)
        abort_unfinished_uploads(client, run)
        written = [uri for _, uri, _ in pending]
        for name, data in documents.items():  # parquet, then json: the json is the "complete" marker
            uri = run.child(name)
            if withdrawn or uri.key not in existing or not stored_matches(client, uri, digest_bytes(data)):
                put_bytes(client, uri, data)
                written.append(uri)
    except StorageError as exc:
        if existing is None:
            state = f"nothing at {run} was changed"
        elif marker.key in existing and not withdrawn:
            state = f"{marker} is still the earlier, complete delivery"
        else:
            state = f"{run} has no {DELIVERY_MANIFEST}, so the delivery is not complete"
        raise StorageError(
            f"publishing {run} stopped: {exc.what}; {state}",
            f"{exc.hint}, then run again with --run-id {run_id}: objects already uploaded are skipped",
            endpoint_wide=exc.endpoint_wide,
        ) from None
    uploaded = {uri for _, uri, _ in pending}
    relative = len(run.key) + 1
    return Published(
        str(run),
        written=tuple(uri.key[relative:] for uri in written),
        skipped=tuple(item.path for item, uri in zip(files, targets) if uri not in uploaded),
        removed=tuple(key[relative:] for key in stale),
    )


def manifest_documents(
    run_id: str, entries: list[dict], outcomes: list[PairOutcome], run_info: dict
) -> dict[str, bytes]:
    """The delivery manifest in both forms, in the order they are written: table first, JSON last."""
    table = io.BytesIO()
    pd.DataFrame(entries, columns=MANIFEST_COLUMNS).to_parquet(table, index=False)
    manifest = {**run_info, "run_id": run_id, "pairs": [asdict(o) for o in outcomes], "files": entries}
    return {
        DELIVERY_TABLE: table.getvalue(),
        DELIVERY_MANIFEST: json.dumps(manifest, indent=2, ensure_ascii=False).encode(),
    }


def _entry(item: DeliveryFile, size: int, sha256: str) -> dict:
    return {"path": item.path, "role": item.role, "shot_id": item.shot_id, "language": item.language,
            "size": size, "sha256": sha256}


def _swap_into_place(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    # Two renames: at every moment the run folder is the old delivery, absent, or the new one.
    retired = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex[:8]}")
    os.replace(final, retired)
    os.replace(staging, final)
    shutil.rmtree(retired)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@task(name="publish", cache_policy=NO_CACHE, **STAGE_RETRIES)
def publish_task(
    destination: Destination, run_id: str, files: list[DeliveryFile], outcomes: list[PairOutcome], run_info: dict
) -> Published:
    published = publish(destination, run_id, files, outcomes, run_info)
    print(published.describe())
    return published
