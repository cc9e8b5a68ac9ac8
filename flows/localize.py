"""The localization DAG: validate → per shot (separate) → per (shot, language) (lipdub → remix → mux
[→ mezzanine] → subtitles → qc) → publish. Wiring, failure policy and reporting only; every stage's
work is in `tasks/`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from uuid import UUID

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import ThreadPoolTaskRunner

from dubflow.manifests.schema import ManifestError, ManifestRow
from dubflow.models.profiles import ModelProfile, ProfileError, cache_dir, resolve_profile
from dubflow.models.separator import SeparatorSpec
from dubflow.tasks.audio import LoudnessProfile, LoudnessProfileError, parse_loudness_profile
from dubflow.tasks.files import sha256_file
from dubflow.tasks.lipdub import lipdub_identity, lipdub_key, lipdub_pair_task
from dubflow.tasks.mux import mezzanine_pair_task, mux_key, mux_pair_task
from dubflow.tasks.publish import (
    DeliveryFile,
    InvalidDestinationError,
    PairOutcome,
    check_run_id,
    open_destination,
    publish_task,
)
from dubflow.tasks.qc import qc_key, qc_pair_task
from dubflow.tasks.remix import remix_key, remix_pair_task
from dubflow.tasks.separate import separate_key, separate_shot_task, separator_identity, separator_spec
from dubflow.tasks.stage_cache import CacheCounts, StageCache
from dubflow.tasks.subtitles import subtitle_pair_task, subtitles_key
from dubflow.tasks.validate import validate_manifest

EXIT_OK, EXIT_PAIRS_FAILED, EXIT_INVALID_INPUT = 0, 1, 2
RECORDING_WAIT_S = 30.0  # how long a finished task run may take to appear on the server
VERSIONED_PACKAGES = ("dubflow", "torch", "diffusers", "transformers", "peft", "demucs", "prefect", "av", "pyloudnorm")


@dataclass(frozen=True)
class RunSummary:
    run_dir: str  # a local path or s3://bucket/prefix/run-id
    outcomes: tuple[PairOutcome, ...]
    notice: str | None
    cache: CacheCounts  # stage results computed and reused by this run

    @property
    def failed(self) -> list[PairOutcome]:
        return [o for o in self.outcomes if o.status != "delivered"]

    def report(self) -> str:
        lines = [f"{'shot':<16} {'lang':<6} {'status':<10} {'seconds':>8}  reason"]
        for o in self.outcomes:
            lines.append(f"{o.shot_id:<16} {o.language:<6} {o.status:<10} {o.seconds:>8.1f}  {o.reason or ''}")
        delivered = len(self.outcomes) - len(self.failed)
        lines.append(f"{delivered} of {len(self.outcomes)} pairs delivered to {self.run_dir}")
        lines.append(f"delivery manifest: {self.run_dir}/delivery.json")
        if self.notice:
            lines.append(self.notice)
        lines.append(self.cache.describe())
        return "\n".join(lines)


class PairsFailedError(Exception):
    """Some (shot, language) pairs failed; the others were delivered."""

    def __init__(self, summary: RunSummary):
        self.summary = summary
        names = "; ".join(f"{o.shot_id}/{o.language}: {o.reason}" for o in summary.failed)
        super().__init__(f"{len(summary.failed)} pair(s) failed — {names}")


@dataclass
class PairChain:
    """The futures of one (shot, language), in stage order; the first failed one names the reason."""

    row: ManifestRow
    stages: dict[str, PrefectFuture]


@flow(name="localize", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True)
def localize(
    manifest: Path,
    out: str | Path,
    languages: list[str] | None = None,
    profile: str = "smoke",
    run_id: str | None = None,
    loudness: str = "ebu-r128",
    allow_qc_warnings: bool = False,
    prores: bool = False,
    separator_model: str | None = None,
    separator_repo: Path | None = None,
    separator_device: str | None = None,
    separator_shifts: int | None = None,
    endpoint_url: str | None = None,
    force: bool = False,
) -> RunSummary:
    """`loudness`: a profile name or custom target (see `parse_loudness_profile`); `allow_qc_warnings`
    delivers pairs whose QC failed with the failures recorded; `prores` adds the ProRes 422 HQ
    mezzanine; `separator_*` override the model profile's Demucs model, folder, device and shifts.
    `out` is a folder or s3://bucket/prefix; `endpoint_url` names an S3-compatible store for it and
    for s3:// sources (default: AWS_ENDPOINT_URL, else AWS). Stage results are reused from
    `$DUBFLOW_CACHE/work` when their content inputs are unchanged (`dubflow.tasks.stage_cache`);
    `force` computes every stage again and replaces what is stored."""
    loudness_profile = parse_loudness_profile(loudness)
    destination = open_destination(out, endpoint_url)  # a bad --out fails now, not after the GPU work
    validated = validate_manifest(manifest, languages, endpoint_url)
    model_profile = resolve_profile(profile)
    separator = separator_spec(model_profile, separator_model, separator_repo, separator_device, separator_shifts)
    if model_profile.notice:
        print(model_profile.notice)
    print(f"loudness profile {loudness_profile.describe()}")
    run_id = check_run_id(run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    cache = StageCache(cache_dir() / "work", force)
    # Once per run: they read model files (the LoRA's sha256, the Demucs packages).
    model_identity, separator_params = lipdub_identity(model_profile), separator_identity(separator)

    separate_keys = {shot_id: separate_key(shot, separator_params) for shot_id, shot in validated.shots.items()}
    separated = {
        shot_id: separate_shot_task.submit(shot, separator, cache, separate_keys[shot_id])
        for shot_id, shot in validated.shots.items()
    }
    rows_by_shot: dict[str, list[ManifestRow]] = {}
    for row in validated.rows:
        rows_by_shot.setdefault(row.shot_id, []).append(row)
    chains = []
    for row in validated.rows:
        shot = validated.shots[row.shot_id]
        keys = {"separate": separate_keys[row.shot_id],
                "lipdub": lipdub_key(shot, row, model_profile, model_identity)}
        keys["remix"] = remix_key(keys["lipdub"], keys["separate"], separator_params, loudness_profile)
        keys["mux"] = mux_key("h264", keys["lipdub"], keys["remix"])
        keys["mezzanine"] = mux_key("prores", keys["lipdub"], keys["remix"]) if prores else None
        keys["subtitles"] = subtitles_key(row, keys["remix"])
        keys["qc"] = qc_key(keys["separate"], keys["remix"], keys["mux"], keys["subtitles"], keys["mezzanine"],
                            allow_qc_warnings)

        take = lipdub_pair_task.submit(shot, row, rows_by_shot[row.shot_id], model_profile, cache, keys["lipdub"])
        remixed = remix_pair_task.submit(take, separated[row.shot_id], shot, separator, loudness_profile, cache,
                                         keys["remix"])
        stages = {"separate": separated[row.shot_id], "lipdub": take, "remix": remixed,
                  "mux": mux_pair_task.submit(take, remixed, cache, keys["mux"])}
        if prores:
            stages["mezzanine"] = mezzanine_pair_task.submit(take, remixed, cache, keys["mezzanine"])
        stages["subtitles"] = subtitle_pair_task.submit(row, remixed, shot, cache, keys["subtitles"])
        stages["qc"] = qc_pair_task.submit(shot, separated[row.shot_id], remixed, stages["mux"], stages["subtitles"],
                                           stages.get("mezzanine"), allow_qc_warnings, cache, keys["qc"])
        chains.append(PairChain(row, stages))
    wait([future for chain in chains for future in chain.stages.values()])

    outcomes, files = collect(chains)
    run_dir = publish_task(destination, run_id, files, outcomes,
                           run_info(validated.path, model_profile, separator, loudness_profile)).location
    summary = RunSummary(run_dir, tuple(outcomes), model_profile.notice, cache.counts())
    create_table_artifact(
        key="localization-summary",
        table=[
            {"shot": o.shot_id, "language": o.language, "status": o.status, "seconds": round(o.seconds, 2),
             "output": f"{run_dir}/{o.shot_id}/{o.language}" if o.status == "delivered" else "", "reason": o.reason or ""}
            for o in outcomes
        ],
        description=f"dubflow run {run_id} ({model_profile.name} profile); stage results {summary.cache.describe()}"
        + (f" — {model_profile.notice}" if model_profile.notice else ""),
    )
    print(summary.report())
    if summary.failed:
        raise PairsFailedError(summary)
    return summary


def collect(chains: list[PairChain]) -> tuple[list[PairOutcome], list[DeliveryFile]]:
    """Each pair's outcome (first failed stage names the reason) and the files of delivered pairs."""
    outcomes: list[PairOutcome] = []
    files: list[DeliveryFile] = []
    shared_beds: set[str] = set()
    with get_client(sync_client=True) as client:
        for chain in chains:
            row = chain.row
            seconds = sum(
                _run_seconds(client, future.task_run_id)
                for name, future in chain.stages.items()
                if name != "separate"  # shared by the shot's languages: not one pair's time
            )
            reason = next(
                (f"{name}: {future.result(raise_on_failure=False)}" for name, future in chain.stages.items()
                 if future.state.is_failed() or future.state.is_crashed()),
                None,
            )
            if reason is None and not chain.stages["qc"].state.is_completed():
                reason = f"did not finish ({chain.stages['qc'].state.name})"
            if reason:
                outcomes.append(PairOutcome(row.shot_id, row.language, "failed", reason, seconds))
                continue
            qc = chain.stages["qc"].result()
            warnings = f"delivered with QC warnings allowed: {'; '.join(qc.failures)}" if qc.failures else None
            outcomes.append(PairOutcome(row.shot_id, row.language, "delivered", warnings, seconds))
            separated = chain.stages["separate"].result()
            remixed = chain.stages["remix"].result()
            subtitles = chain.stages["subtitles"].result()
            prefix = f"{row.shot_id}/{row.language}/{row.shot_id}_{row.language}"
            pair_files = [
                (chain.stages["mux"].result(), ".mp4", "review_mp4"),
                (remixed.mix, "_mix.wav", "mix"),
                (remixed.dialogue, "_dx.wav", "dx"),
                (subtitles.srt, ".srt", "srt"),
                (subtitles.vtt, ".vtt", "vtt"),
                (qc.report, "_qc.json", "qc"),
                (qc.summary, "_qc.txt", "qc_summary"),
            ]
            if "mezzanine" in chain.stages:
                pair_files.append((chain.stages["mezzanine"].result(), ".mov", "mezzanine_mov"))
            files += [DeliveryFile(source, f"{prefix}{suffix}", role, row.shot_id, row.language)
                      for source, suffix, role in pair_files]
            if row.shot_id not in shared_beds:
                shared_beds.add(row.shot_id)
                files.append(DeliveryFile(separated.bed, f"{row.shot_id}/{row.shot_id}_me.wav", "me", row.shot_id, None))
    return outcomes, files


def _run_seconds(client: SyncPrefectClient, task_run_id: UUID) -> float:
    """The task run's recorded run time. The server records task runs from events, asynchronously: a
    stage that finished in milliseconds (a reused result) can be read before it is recorded, so wait
    for it a bounded while."""
    deadline = time.monotonic() + RECORDING_WAIT_S
    while True:
        try:
            return client.read_task_run(task_run_id).total_run_time.total_seconds()
        except ObjectNotFound:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def run_info(manifest_path: Path, profile: ModelProfile, separator: SeparatorSpec, loudness: LoudnessProfile) -> dict:
    """What the delivery manifest records about how it was made (never credentials)."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_manifest": {"name": Path(manifest_path).name, "sha256": sha256_file(manifest_path)},
        "profile": {"name": profile.name, "random_weights": profile.random_weights, "notice": profile.notice},
        "models": {
            # Names and hashes only: never a full local path (it can carry user names or mount secrets).
            "lipdub_base": profile.lipdub_weights.name if profile.lipdub_weights else "ltx-2.3 architecture, random",
            "lipdub_lora": profile.lipdub_lora.name if profile.lipdub_lora else "random",
            "lipdub_lora_sha256": sha256_file(profile.lipdub_lora) if profile.lipdub_lora else None,
            "separator": separator.model_name,
            "separator_folder": separator.repo.name if separator.repo else None,
            "separator_device": separator.device,
            "separator_shifts": separator.shifts,
        },
        "loudness": {**asdict(loudness), "measured_on": loudness.measured_on},
        "versions": versions,
    }


def run_localization(
    manifest: Path,
    out: str | Path,
    languages: list[str] | None = None,
    profile_name: str = "smoke",
    run_id: str | None = None,
    **options: object,
) -> int:
    """Run the flow and map its end to the CLI's exit codes: 0 delivered, 1 pairs failed, 2 bad input.
    `options` are the flow's other parameters (loudness, allow_qc_warnings, prores, separator_*, endpoint_url,
    force)."""
    state = localize(manifest, out, languages, profile_name, run_id, **options, return_state=True)
    result = state.result(raise_on_failure=False)
    if state.is_completed():
        return EXIT_OK
    if isinstance(result, PairsFailedError):
        print(result.summary.report(), file=sys.stderr)
        return EXIT_PAIRS_FAILED
    if isinstance(result, (ManifestError, ProfileError, LoudnessProfileError, InvalidDestinationError)):
        print(result, file=sys.stderr)
        return EXIT_INVALID_INPUT
    print(f"run failed: {result}", file=sys.stderr)
    return EXIT_PAIRS_FAILED
