"""The localization DAG: validate → per shot (conform → separate) → per (shot, language) (lipdub → remix
→ mux [→ mezzanine] → subtitles → qc) → publish; a shot's conformed soundtrack feeds its separation
and each of its pairs' LipDub and QC. Wiring and failure policy only; every stage's work is in
`tasks/`, what the run reports in `flows/report.py`.

Where tasks run: a thread pool in this process by default, whose model stages share this machine's
GPUs one stage per GPU (`dubflow.models.devices`); or a Dask cluster (`--cluster ADDRESS`,
`$DUBFLOW_CLUSTER`, or a cluster class from `$DUBFLOW_CLUSTER_CLASS`), where the GPU stages ask
for one `GPU` resource and every worker keeps its models resident across tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import dask
import distributed
import torch
from distributed.comm.addressing import normalize_address, resolve_address
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from dubflow.flows.report import Progress, RunSummary, publish_artifacts, read_run_seconds
from dubflow.manifests.schema import ManifestError, ManifestRow
from dubflow.models.devices import lease_records
from dubflow.models.profiles import ModelProfile, ProfileError, cache_dir, resolve_profile
from dubflow.models.separator import SeparatorSpec
from dubflow.media.loudness_profiles import LoudnessProfile, LoudnessProfileError, parse_loudness_profile
from dubflow.media.files import sha256_file
from dubflow.tasks.conform import conform_key, conform_shot_task
from dubflow.tasks.lipdub import lipdub_identity, lipdub_key, lipdub_pair_task
from dubflow.tasks.mux import mezzanine_pair_task, mux_key, mux_pair_task
from dubflow.tasks.destination import InvalidDestinationError, check_run_id, open_destination
from dubflow.tasks.publish import DeliveryFile, PairOutcome, publish_task
from dubflow.tasks.qc import qc_key, qc_pair_task
from dubflow.tasks.remix import remix_key, remix_pair_task, supplied_dialogue
from dubflow.tasks.review import ReviewedTake, review_page_task
from dubflow.tasks.separate import separate_key, separate_shot_task, separator_identity, separator_spec
from dubflow.tasks.stage_cache import (
    CACHE_REMOTE_ENV,
    CacheBoundsError,
    CacheRemoteError,
    StageCache,
    cache_bounds,
    check_remote,
    prune_after_run,
    run_lease,
)
from dubflow.tasks.subtitles import subtitle_pair_task, subtitles_key
from dubflow.tasks.retries import lipdub_timeout_s
from dubflow.tasks.validate import validate_manifest

EXIT_OK, EXIT_PAIRS_FAILED, EXIT_INVALID_INPUT = 0, 1, 2
VERSIONED_PACKAGES = ("dubflow", "torch", "diffusers", "transformers", "peft", "demucs", "prefect", "av", "pyloudnorm")
CLUSTER_ENV = "DUBFLOW_CLUSTER"  # a Dask scheduler address, e.g. tcp://dask-scheduler:8786
CLUSTER_CLASS_ENV = "DUBFLOW_CLUSTER_CLASS"  # or a cluster class to start, e.g. dask_kubernetes.operator.KubeCluster
CLUSTER_KWARGS_ENV = "DUBFLOW_CLUSTER_KWARGS"  # its keyword arguments, as JSON
GPU_WORKER_WAIT_S = 120.0  # how long a run waits for a cluster's first GPU worker (an autoscaler may be starting it)


class ClusterError(Exception):
    """The Dask cluster cannot run the GPU stages (no worker declares a GPU resource)."""


def task_runner_for(cluster: str | None = None) -> TaskRunner:
    """Where the run's tasks go: a Dask cluster at ``cluster`` (or `$DUBFLOW_CLUSTER`), one started
    from `$DUBFLOW_CLUSTER_CLASS` / `$DUBFLOW_CLUSTER_KWARGS`, else threads in this process
    (`runner_threads`: a waiting task holds its thread, and each GPU keeps its take, the next take
    waiting on the lease and their pairs' downstream stages in threads)."""
    address = cluster or os.environ.get(CLUSTER_ENV)
    if address:
        check_no_other_dask_client(address, address)
        return DaskTaskRunner(address=address)
    cluster_class = os.environ.get(CLUSTER_CLASS_ENV)
    if cluster_class:
        raw = os.environ.get(CLUSTER_KWARGS_ENV, "{}")
        try:
            kwargs = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ClusterError(f"{CLUSTER_KWARGS_ENV} is not JSON ({exc}); e.g. '{{\"n_workers\": 2}}'") from None
        check_no_other_dask_client(None, f"a new {cluster_class}")
        return DaskTaskRunner(cluster_class=cluster_class, cluster_kwargs=kwargs)
    return ThreadPoolTaskRunner(max_workers=runner_threads())


def check_no_other_dask_client(address: str | None, asked: str) -> None:
    """prefect-dask runs on this process's default Dask client whenever there is one, whatever address
    or cluster class it was given (its `DaskTaskRunner.client`): refuse a run that would silently go to
    another cluster than ``asked`` (``address``, when one was given)."""
    try:
        client = distributed.get_client()
    except ValueError:  # no Dask client in this process
        return
    existing = client.scheduler.address
    if address is not None and _scheduler(address) == _scheduler(existing):
        return
    raise ClusterError(
        f"this process already holds a Dask client connected to {existing}, and prefect-dask would run there "
        f"instead of on {asked}: close that client (client.close()) first, or ask for {existing}"
    )


def _scheduler(address: str) -> str:
    """A scheduler address in one spelling: protocol added, host name resolved."""
    address = normalize_address(address)
    try:
        return resolve_address(address)
    except (OSError, ValueError):  # unresolvable: compared as written
        return address


def runner_threads() -> int:
    """The thread runner's size: four, and four more per visible GPU."""
    return 4 + 4 * torch.cuda.device_count()


def require_gpu_workers(runner: DaskTaskRunner) -> int:
    """The number of the cluster's workers that declare a ``GPU`` resource, once there is one (waiting
    up to `GPU_WORKER_WAIT_S`); the GPU stages would otherwise wait forever for a worker to take them."""
    deadline = time.monotonic() + GPU_WORKER_WAIT_S
    while True:
        workers = runner.client.scheduler_info(n_workers=-1)["workers"].values()
        gpu_workers = sum(1 for worker in workers if worker.get("resources", {}).get("GPU", 0) >= 1)
        if gpu_workers:
            return gpu_workers
        if time.monotonic() > deadline:
            raise ClusterError(
                f"no worker of the Dask cluster at {runner.client.scheduler.address} declares a GPU resource "
                f"after {GPU_WORKER_WAIT_S:.0f} s; start one worker per GPU with `dask worker ADDRESS --nworkers 1 "
                "--resources GPU=1` and CUDA_VISIBLE_DEVICES set (see deploy/dask-gpu-worker.yaml)"
            )
        time.sleep(1.0)


def held_device_seconds(runner: TaskRunner) -> float:
    """Seconds model stages have held devices so far, in this process or, on a Dask cluster, in
    every worker (a worker shared with another run counts that run's stages too)."""
    if isinstance(runner, DaskTaskRunner):
        return sum(runner.client.run(_held_seconds).values())
    return _held_seconds()


def _held_seconds() -> float:
    return sum(sum(record.held_seconds.values()) for record in lease_records().values())


def gpu_stage(on_gpu: bool = True) -> AbstractContextManager:
    """Tasks submitted inside ask a Dask cluster for one ``GPU`` (when ``on_gpu``); other runners ignore it."""
    return dask.annotate(resources={"GPU": 1}) if on_gpu else nullcontext()


class PairsFailedError(Exception):
    """Some (shot, language) pairs failed; the others were delivered."""

    def __init__(self, summary: RunSummary):
        self.summary = summary
        names = "; ".join(f"{o.shot_id}/{o.language}: {o.reason}" for o in summary.failed)
        super().__init__(f"{len(summary.failed)} pair(s) failed — {names}")


@dataclass
class PairChain:
    """The futures of one (shot, language), in stage order (the first failed one names the reason),
    and each stage's result key."""

    row: ManifestRow
    stages: dict[str, PrefectFuture]
    keys: dict[str, str | None]


@flow(name="localize", task_runner=task_runner_for(), log_prints=True)
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
    cache_remote: str | None = None,
    strict_fit: bool = False,
    review_history: list[dict] | None = None,
) -> RunSummary:
    """`loudness`: a profile name or custom target (see `parse_loudness_profile`); `allow_qc_warnings`
    delivers pairs whose QC failed with the failures recorded; `prores` adds the ProRes 422 HQ
    mezzanine; `separator_*` override the model profile's Demucs model, folder, device and shifts.
    `out` is a folder or s3://bucket/prefix; `endpoint_url` names an S3-compatible store for it and
    for s3:// sources (default: AWS_ENDPOINT_URL, else AWS). Stage results are reused from
    `$DUBFLOW_CACHE/work` when their content inputs are unchanged (`dubflow.tasks.stage_cache`);
    `force` computes every stage again and replaces what is stored. `cache_remote` (default
    `$DUBFLOW_CACHE_REMOTE`), an s3:// prefix, shares stage results between machines. `strict_fit`
    makes a line too long for its shot an error instead of a warning. `review_history`: verdicts on
    earlier takes (`ReviewedTake` fields), shown on the review page."""
    started = time.monotonic()
    loudness_profile = parse_loudness_profile(loudness)
    destination = open_destination(out, endpoint_url)  # a bad --out fails now, not after the GPU work
    validated = validate_manifest(manifest, languages, endpoint_url, strict_fit)
    for warning in validated.warnings:
        print(f"warning: {warning}")
    runner = FlowRunContext.get().task_runner
    on_cluster = isinstance(runner, DaskTaskRunner)
    if on_cluster:
        print(f"Dask cluster with {require_gpu_workers(runner)} GPU worker(s)")
    model_profile = resolve_profile(profile, remote_gpus=on_cluster)
    separator = separator_spec(model_profile, separator_model, separator_repo, separator_device, separator_shifts)
    if model_profile.notice:
        print(model_profile.notice)
    print(f"loudness profile {loudness_profile.describe()}")
    run_id = check_run_id(run_id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    cache_remote = cache_remote or os.environ.get(CACHE_REMOTE_ENV) or None
    if cache_remote:
        check_remote(cache_remote, endpoint_url)
    cache = StageCache(cache_dir() / "work", force, remote=cache_remote, endpoint_url=endpoint_url)
    cache_bounds()  # a bad $DUBFLOW_CACHE_MAX_* fails now, not after the work
    # The lease keeps a prune (another command's, or this run's own at its end) off the results
    # this run uses while it runs.
    with run_lease(cache.root, cache.run):
        # Once per run: they read model files (the LoRA's sha256, the Demucs packages).
        model_identity, separator_params = lipdub_identity(model_profile), separator_identity(separator)

        # On a Dask cluster the stages that run a model on a GPU ask for one (LipDub always: a cluster's
        # workers are GPU workers); in this process the device leases keep one model stage per GPU.
        separating_on_gpu = separator.device.startswith("cuda")
        take_timeout_s = lipdub_timeout_s()
        held_at_start = held_device_seconds(runner)

        rows_by_shot: dict[str, list[ManifestRow]] = {}
        for row in validated.rows:
            rows_by_shot.setdefault(row.shot_id, []).append(row)
        rows = [row for shot_rows in rows_by_shot.values() for row in shot_rows]
        shot_keys: dict[str, dict[str, str]] = {}
        conformed: dict[str, PrefectFuture] = {}
        separated: dict[str, PrefectFuture] = {}
        takes: list[tuple[PrefectFuture, dict[str, str]]] = []

        def submit_take(row: ManifestRow) -> None:
            """The shot's conform and separation (on its first pair) and the pair's LipDub take, with their keys."""
            shot = validated.shots[row.shot_id]
            if row.shot_id not in separated:
                shot_keys[row.shot_id] = {"conform": conform_key(shot),
                                          "separate": separate_key(shot, separator_params)}
                conformed[row.shot_id] = conform_shot_task.submit(shot, cache, shot_keys[row.shot_id]["conform"])
                with gpu_stage(separating_on_gpu):
                    separated[row.shot_id] = separate_shot_task.submit(shot, conformed[row.shot_id], separator, cache,
                                                                       shot_keys[row.shot_id]["separate"])
            keys = {**shot_keys[row.shot_id], "lipdub": lipdub_key(shot, row, model_profile, model_identity)}
            with gpu_stage():
                take = lipdub_pair_task.submit(shot, conformed[row.shot_id], row, rows_by_shot[row.shot_id],
                                               model_profile, cache, keys["lipdub"], take_timeout_s)
            takes.append((take, keys))

        chains = []
        submitting = time.monotonic()
        # Shot by shot, each shot's separation then its pairs: runners start tasks in the order they are
        # submitted, so the first pairs run while later shots are still being planned. A thread runner's
        # task holds its thread while it waits for its upstream, so each pair's take is submitted before
        # the previous pair's downstream stages: the next take is waiting on the device when one ends.
        submit_take(rows[0])
        for index, row in enumerate(rows):
            if index + 1 < len(rows):
                submit_take(rows[index + 1])
            shot = validated.shots[row.shot_id]
            take, keys = takes[index]
            supplied = supplied_dialogue(validated.path, row)
            keys["remix"] = remix_key(keys["lipdub"], keys["separate"], separator_params, loudness_profile, supplied)
            keys["mux"] = mux_key("h264", keys["lipdub"], keys["remix"])
            keys["mezzanine"] = mux_key("prores", keys["lipdub"], keys["remix"]) if prores else None
            keys["subtitles"] = subtitles_key(row, keys["remix"])
            keys["qc"] = qc_key(keys["separate"], keys["remix"], keys["mux"], keys["subtitles"], keys["mezzanine"],
                                allow_qc_warnings, model_profile.notice)

            with gpu_stage(separating_on_gpu):
                remixed = remix_pair_task.submit(take, separated[row.shot_id], shot, separator, loudness_profile,
                                                 cache, keys["remix"], supplied)
            stages = {"conform": conformed[row.shot_id], "separate": separated[row.shot_id], "lipdub": take,
                      "remix": remixed, "mux": mux_pair_task.submit(take, remixed, shot, cache, keys["mux"])}
            if prores:
                stages["mezzanine"] = mezzanine_pair_task.submit(take, remixed, shot, cache, keys["mezzanine"])
            stages["subtitles"] = subtitle_pair_task.submit(row, remixed, shot, cache, keys["subtitles"])
            stages["qc"] = qc_pair_task.submit(shot, conformed[row.shot_id], separated[row.shot_id], remixed,
                                               stages["mux"], stages["subtitles"], stages.get("mezzanine"),
                                               allow_qc_warnings, cache, keys["qc"], model_profile.notice)
            chains.append(PairChain(row, stages, keys))
        submitted = len({id(future) for chain in chains for future in chain.stages.values()})
        print(f"submitted {submitted} stage tasks for {len(chains)} pairs in {time.monotonic() - submitting:.1f} s")

        progress = Progress(len(chains), f"dubflow run {run_id} ({model_profile.name} profile)")
        chain_of_qc = {chain.stages["qc"]: chain for chain in chains}
        try:
            for qc in as_completed(chain_of_qc):  # a pair has ended when its QC has
                qc.wait()  # done: this records its final state (`state` would ask the server)
                row = chain_of_qc[qc].row
                progress.pair_finished(row.shot_id, row.language, qc.state.is_completed())
            wait([future for chain in chains for future in chain.stages.values()])
        finally:
            progress.close()

        device_seconds = held_device_seconds(runner) - held_at_start
        outcomes, files, qc_reports = collect(chains)
        info = run_info(validated.path, model_profile, separator, loudness_profile)
        # Beside the stage results (shared storage on a cluster), where the publish task can read it.
        review_dir = cache.root.parent / "review" / cache.run
        try:
            files += review_page_task(
                run_id, rows, dict(validated.shots),
                {shot_id: future.result() for shot_id, future in separated.items() if future.state.is_completed()},
                outcomes, files, info["profile"], [ReviewedTake(**take) for take in review_history or []], review_dir)
            run_dir = publish_task(destination, run_id, files, outcomes, info).location
        finally:
            shutil.rmtree(review_dir, ignore_errors=True)
        pruned = prune_after_run(cache.root)
        summary = RunSummary(
            run_dir, tuple(outcomes), model_profile.notice,
            cache.counts((stage, key) for chain in chains for stage, key in chain.keys.items() if key),
            device="GPU" if model_profile.device.startswith("cuda") else "CPU",
            device_seconds=device_seconds, wall_seconds=time.monotonic() - started,
            pruned=pruned.describe() if pruned.removed else None,
        )
        publish_artifacts(summary, run_id, model_profile.name, qc_reports)
        print(summary.report())
        if summary.failed:
            raise PairsFailedError(summary)
        return summary


def collect(chains: list[PairChain]) -> tuple[list[PairOutcome], list[DeliveryFile], dict[tuple[str, str], Path]]:
    """Each pair's outcome (the first failed stage names the reason) and the files and QC reports of
    delivered pairs."""
    outcomes: list[PairOutcome] = []
    files: list[DeliveryFile] = []
    qc_reports: dict[tuple[str, str], Path] = {}
    shared_beds: set[str] = set()
    finished = [future for chain in chains for future in chain.stages.values() if future.state.is_final()]
    with get_client(sync_client=True) as client:
        seconds = read_run_seconds(client, {future.task_run_id for future in finished})
    for chain in chains:
        row = chain.row
        pair_seconds = sum(
            seconds.get(future.task_run_id, 0.0)
            for name, future in chain.stages.items()
            if name not in ("conform", "separate")  # shared by the shot's languages: not one pair's time
        )
        reason = next(
            (f"{name}: {future.result(raise_on_failure=False)}" for name, future in chain.stages.items()
             if future.state.is_failed() or future.state.is_crashed()),
            None,
        )
        if reason is None and not chain.stages["qc"].state.is_completed():
            reason = f"did not finish ({chain.stages['qc'].state.name})"
        if reason:
            outcomes.append(PairOutcome(row.shot_id, row.language, "failed", reason, pair_seconds))
            continue
        qc = chain.stages["qc"].result()
        take = chain.stages["lipdub"].result()
        notes = [f"delivered with QC warnings allowed: {'; '.join(qc.failures)}"] if qc.failures else []
        if take.memory_mode != "standard":
            notes.append(f"LipDub ran in {take.memory_mode} mode after running out of GPU memory")
        outcomes.append(PairOutcome(row.shot_id, row.language, "delivered", "; ".join(notes) or None, pair_seconds))
        qc_reports[(row.shot_id, row.language)] = qc.report
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
        if remixed.generated_dialogue is not None:  # supplied dialogue: LipDub's own speech, for reference
            pair_files.append((remixed.generated_dialogue, "_dx_generated.wav", "dx_generated"))
        if "mezzanine" in chain.stages:
            pair_files.append((chain.stages["mezzanine"].result(), ".mov", "mezzanine_mov"))
        files += [DeliveryFile(source, f"{prefix}{suffix}", role, row.shot_id, row.language)
                  for source, suffix, role in pair_files]
        if row.shot_id not in shared_beds:
            shared_beds.add(row.shot_id)
            files.append(DeliveryFile(separated.bed, f"{row.shot_id}/{row.shot_id}_me.wav", "me", row.shot_id, None))
    return outcomes, files, qc_reports


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
            **lipdub_model_names(profile),
            "lipdub_lora_sha256": sha256_file(profile.lipdub_lora) if profile.lipdub_lora else None,
            "separator": separator.model_name,
            "separator_folder": separator.repo.name if separator.repo else None,
            "separator_device": separator.device,
            "separator_shifts": separator.shifts,
        },
        "loudness": {**asdict(loudness), "measured_on": loudness.measured_on},
        "versions": versions,
    }


def lipdub_model_names(profile: ModelProfile) -> dict[str, str]:
    """What LipDub really ran with: the weights folder and LoRA file names of real weights; for
    random weights a description, never the published file name the smoke LoRA is stored under."""
    if not profile.random_weights:
        return {"lipdub_base": profile.lipdub_weights.name, "lipdub_lora": profile.lipdub_lora.name}
    if profile.lipdub_weights is not None:
        return {"lipdub_base": f"tiny random LTX-2.3 ({profile.name})", "lipdub_lora": f"tiny random IC-LoRA ({profile.name})"}
    return {"lipdub_base": f"full-size LTX-2.3 architecture, random ({profile.name})",
            "lipdub_lora": f"random IC-LoRA ({profile.name})"}


def run_localization(
    manifest: Path,
    out: str | Path,
    languages: list[str] | None = None,
    profile_name: str = "smoke",
    run_id: str | None = None,
    cluster: str | None = None,
    started: float | None = None,
    **options: object,
) -> int:
    """Run the flow and map its end to the CLI's exit codes: 0 delivered, 1 pairs failed, 2 bad input.
    `cluster`: a Dask scheduler address to run the tasks on (default: `task_runner_for`'s choice).
    `options` are the flow's other parameters (loudness, allow_qc_warnings, prores, separator_*,
    endpoint_url, force, cache_remote). Prints the summary table and the run's last line once, its
    wall time counted from `started` (the command's start; default: now)."""
    started = time.monotonic() if started is None else started
    try:
        run = localize.with_options(task_runner=task_runner_for(cluster)) if cluster else localize
    except ClusterError as exc:
        print(f"dubflow: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    state = run(manifest, out, languages, profile_name, run_id, **options, return_state=True)
    result = state.result(raise_on_failure=False)
    if state.is_completed():
        print(replace(result, wall_seconds=time.monotonic() - started).report())
        return EXIT_OK
    if isinstance(result, PairsFailedError):
        print(replace(result.summary, wall_seconds=time.monotonic() - started).report(), file=sys.stderr)
        return EXIT_PAIRS_FAILED
    if isinstance(result, (ManifestError, ProfileError, LoudnessProfileError, InvalidDestinationError, ClusterError,
                           CacheRemoteError, CacheBoundsError)):
        print(f"dubflow: {result}", file=sys.stderr)
        return EXIT_INVALID_INPUT
    if isinstance(result, BaseException) and not isinstance(result, Exception):
        raise result  # an interrupt the flow recorded as a crash: the command reports it
    print(f"dubflow: run failed: {result}", file=sys.stderr)
    return EXIT_PAIRS_FAILED
