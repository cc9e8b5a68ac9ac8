"""Stage 6, once per run: publish the delivery package atomically, delivery manifest last.

The run is assembled in a hidden staging folder beside the destination, the delivery manifest
(`delivery.parquet`, then `delivery.json`) is written into it last, and the folder is renamed into
place. A reader that sees `<out>/<run-id>/` sees a complete delivery; a re-run of the same run id
swaps the whole folder, so old and new files are never mixed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.tasks.files import atomic_write_bytes, sha256_file

DELIVERY_MANIFEST = "delivery.json"


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


def publish_local(
    out_dir: Path,
    run_id: str,
    files: list[DeliveryFile],
    outcomes: list[PairOutcome],
    run_info: dict,
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / run_id
    staging = out_dir / f".{run_id}.staging-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()  # even a run where every pair failed publishes its delivery manifest
        entries = []
        for item in files:
            target = staging / item.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.source, target)
            entries.append(
                {"path": item.path, "role": item.role, "shot_id": item.shot_id, "language": item.language,
                 "size": target.stat().st_size, "sha256": sha256_file(target)}
            )
        pd.DataFrame(entries, columns=["path", "role", "shot_id", "language", "size", "sha256"]).to_parquet(
            staging / "delivery.parquet", index=False
        )
        manifest = {**run_info, "run_id": run_id, "pairs": [asdict(o) for o in outcomes], "files": entries}
        atomic_write_bytes(staging / DELIVERY_MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode())
        _fsync_tree(staging)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


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


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(out_dir: Path, run_id: str, files: list[DeliveryFile], outcomes: list[PairOutcome], run_info: dict) -> Path:
    return publish_local(out_dir, run_id, files, outcomes, run_info)
