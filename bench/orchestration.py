"""Orchestration overhead on the demo batch (issue 9, part 3): wall time of a run through Prefect versus
the same stage functions called one after another in plain Python, and the cost per task of a re-run
that only looks its results up.

    .venv/bin/python bench/orchestration.py [--repeats 2] [--threaded-plain] [--json bench/results/orchestration_cpu.json]
                                            [--profile smoke|ltx-2.3-random] [--fresh-timeout 600]
                                            [--cached-timeout 240] [--flow-fresh-only] [--keep]

A benchmark, not a test: it measures and reports, it asserts nothing about the figures.

``--profile smoke`` (default) runs everything on the CPU; ``--profile ltx-2.3-random`` runs the same
routes with the full-size LipDub model built at random on the GPU (each fresh child process builds
its own: the flow and the plain route both pay it), the separator still the smoke HTDemucs. Each
run's GPU busy fraction (bench/gpu_busy.py, NVML) is recorded where there is a driver.
``--flow-fresh-only`` runs only the fresh flow (its wall, task runs, GPU busy): no overhead figures.

Everything runs in a fresh temporary folder, on loopback only, with argument lists (no shell):

- Inputs: the demo's sample manifest, written by `manifests.samples.generate_samples` (4 shots, 10
  (shot, language) pairs: 854×480 and 1280×720, 50–144 frames, stereo and 5.1).
- A real Prefect server (`prefect server start` on 127.0.0.1, its own PREFECT_HOME, SQLite), started
  and stopped with bench/plan_10k.py's helpers (imported, not copied). The smoke models are built once
  into the benchmark's DUBFLOW_CACHE before anything is timed (a child process calls
  `resolve_profile("smoke")`), so every timed run loads the same files; the stage cache
  (`$DUBFLOW_CACHE/work`) is deleted before every fresh run.

Per repeat, four child processes (five with --threaded-plain; each a fresh Python: imports, model loads and all):

1. flow, fresh: `dubflow run MANIFEST --out OUT --profile PROFILE --run-id flow-fresh-N` with
   PREFECT_API_URL pointing at the server (the flow's default runner: `runner_threads()` threads; the model
   stages take turns on the profile's one device lease, `cpu` or `cuda:0`). Measured: the process's wall time and CPU seconds,
   the flow's own `wall` (its last line: from the flow body's start to before its artifacts), the
   server's CPU seconds, and from the server every task run of that flow run (`total_run_time`,
   start/end), summed per stage. Its output lines are time stamped (plan_10k.Watcher) for the phases.
2. flow, cached: the same command again with the same stage cache (`--run-id flow-cached-N`): every
   stage result is reused, so each task only looks its result up.
3. plain, fresh: this script with `--child-plain` and no Prefect API: the same wiring as
   `flows/localize.py` — parse the loudness profile, `open_destination`, `validate_manifest`,
   `resolve_profile`, `separator_spec`, `lipdub_identity`/`separator_identity`, then shot by shot the
   shot's `conform_shot` and `separate_shot` and, per pair, `lipdub_pair`, `remix_pair`, `mux_pair`, `subtitle_pair`,
   `qc_deliverables`, each through `StageCache.result` with the flow's keys exactly as the tasks call
   them, one after another in one thread, then the delivery files as `collect` lists them and
   `publish` (plain function) with `run_info`. Each phase and each stage call is timed.
4. plain, cached: the same again against the stage cache that 3 filled: the plain equivalent of 2.
5. with --threaded-plain, plain, threaded: route 3 with a fresh stage cache, but every stage submitted in
   the flow's order to a pool of the flow's size (`runner_threads()`), each waiting in its thread for its upstream results (what the
   flow's ThreadPoolTaskRunner does), still without Prefect: the flow's concurrency without Prefect,
   so flow fresh − plain threaded is what Prefect itself costs on the fresh run.

Time on the 2-core machine it was written on: about 8.5 min for the default four routes × 2 repeats
with the machine otherwise idle, 11.6 min with --threaded-plain; about twice that while another
process kept one core busy (the plain sequential route slows down most).

The order alternates between repeats (flow first, then plain first). The machine's CPU time during
each run (/proc/stat) minus this benchmark's own processes' (the child and the server) is recorded as
"others' CPU seconds": the machine is shared. Load averages before and after every run are recorded.

Derived (medians over repeats):
- overhead of the fresh run = (flow wall − plain wall) / flow wall, for whole processes and for the
  flow body versus the same span of the plain run. Negative means the flow was faster than plain
  sequential code: it overlaps CPU stages (mux, subtitles, QC of one pair) with the next model stage.
  With --threaded-plain, the same against the threaded plain route (same concurrency, no Prefect).
- per task, from the cached runs: (flow − plain) / task runs, for the whole process (fixed costs
  included: engine start, flow-run creation, artifacts, waiting for the server to record task runs;
  Prefect's import is in both routes, the task modules import it) and for the stage phase only (submission to the last stage task's end, versus the
  plain run's loop of cache lookups).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_10k  # noqa: E402  (its server, process and machine helpers)
from gpu_busy import GpuBusy  # noqa: E402
from plan_10k import Watcher, api_post, clean_env, machine_info, start_server, stop, tail  # noqa: E402

STAGE_NAME = re.compile(r"^[a-z]+")
FLOW_LAST_LINE = re.compile(r"dubflow: (\d+) of (\d+) pairs delivered, (\d+) failed; ([0-9.]+) \S+-seconds held by "
                            r"model stages; wall ([0-9.]+) s")
STAGE_ORDER = ("conform", "separate", "lipdub", "remix", "mux", "subtitles", "qc", "publish")


# --------------------------------------------------------------------------- the plain route (child process)


def plain_run(manifest: Path, out: Path, run_id: str, threaded: bool, profile_name: str) -> dict:
    """The localize flow's work without Prefect: same calls, same keys. Not ``threaded``: one after another in
    this thread; ``threaded``: submitted in the flow's order to a pool of the flow's size, each stage waiting
    in its thread for its upstream results, as the flow's thread runner does (a diagnosis route: how much
    of the flow's time is its concurrency rather than Prefect). Returns epoch time stamps of the phases
    and the seconds of every `StageCache.result` call."""
    marks = {"imports_start": time.time()}
    from concurrent.futures import Future, ThreadPoolExecutor

    from dubflow.flows.localize import run_info, runner_threads
    from dubflow.models.profiles import cache_dir, resolve_profile
    from dubflow.media.loudness_profiles import parse_loudness_profile
    from dubflow.tasks.conform import ConformedShot, conform_key, conform_shot
    from dubflow.tasks.lipdub import DubbedTake, lipdub_identity, lipdub_key, lipdub_pair
    from dubflow.tasks.mux import mux_key, mux_pair
    from dubflow.tasks.publish import DeliveryFile, PairOutcome, check_run_id, open_destination, publish
    from dubflow.tasks.qc import QCResult, qc_deliverables, qc_key
    from dubflow.tasks.remix import RemixedPair, remix_key, remix_pair
    from dubflow.tasks.retries import lipdub_timeout_s
    from dubflow.tasks.separate import SeparatedShot, separate_key, separate_shot, separator_identity, separator_spec
    from dubflow.tasks.stage_cache import StageCache
    from dubflow.tasks.subtitles import SubtitleFiles, subtitle_pair, subtitles_key
    from dubflow.tasks.validate import validate_manifest

    marks["start"] = time.time()  # the flow body's first line
    loudness = parse_loudness_profile("ebu-r128")
    destination = open_destination(out)
    validated = validate_manifest(manifest)
    marks["validated"] = time.time()
    profile = resolve_profile(profile_name)
    separator = separator_spec(profile)
    run_id = check_run_id(run_id)
    cache = StageCache(cache_dir() / "work")
    marks["profile_ready"] = time.time()  # where the flow prints its loudness-profile line
    model_identity, separator_params = lipdub_identity(profile), separator_identity(separator)
    take_timeout_s = lipdub_timeout_s()
    marks["identity_ready"] = time.time()

    calls: list[dict] = []  # appended from worker threads too (list.append is atomic)
    keys: list[tuple[str, str]] = []
    threads = runner_threads() if threaded else 0  # the flow's thread runner's size
    pool = ThreadPoolExecutor(threads) if threads else None

    def submit(stage: str, name: str, key: str, result_type, compute, *upstream: Future) -> Future:
        """`compute(*upstream results, out_dir)` through `StageCache.result`, now or in the pool."""
        keys.append((stage, key))

        def run():
            values = [future.result() for future in upstream]
            started = time.perf_counter()
            value = cache.result(stage, key, result_type, lambda out_dir: compute(*values, out_dir))
            calls.append({"stage": stage, "name": name, "s": time.perf_counter() - started})
            return value

        if pool is not None:
            return pool.submit(run)
        done: Future = Future()
        done.set_result(run())
        return done

    rows_by_shot: dict = {}
    for row in validated.rows:
        rows_by_shot.setdefault(row.shot_id, []).append(row)
    rows = [row for shot_rows in rows_by_shot.values() for row in shot_rows]
    conformed_by_shot: dict = {}
    separated_by_shot: dict = {}
    separate_keys: dict = {}
    takes: list[tuple[Future, str]] = []

    def submit_take(row) -> None:  # the flow's `submit_take`: the shot's conform and separation, then the pair's take
        shot, shot_rows = validated.shots[row.shot_id], rows_by_shot[row.shot_id]
        if row.shot_id not in separated_by_shot:
            conformed_by_shot[row.shot_id] = submit(
                "conform", f"conform {shot.shot_id}", conform_key(shot), ConformedShot,
                lambda out_dir, shot=shot: conform_shot(shot, out_dir))
            separate_keys[row.shot_id] = separate_key(shot, separator_params)
            separated_by_shot[row.shot_id] = submit(
                "separate", f"separate {shot.shot_id}", separate_keys[row.shot_id], SeparatedShot,
                lambda conformed_, out_dir, shot=shot: separate_shot(shot, conformed_, separator, out_dir),
                conformed_by_shot[row.shot_id])
        k_lipdub = lipdub_key(shot, row, profile, model_identity)
        takes.append((submit("lipdub", f"lipdub {row.shot_id} {row.language}", k_lipdub, DubbedTake,
                             lambda conformed_, out_dir, shot=shot, row=row, shot_rows=shot_rows:
                             lipdub_pair(shot, conformed_, row, shot_rows, profile, out_dir, take_timeout_s),
                             conformed_by_shot[row.shot_id]), k_lipdub))

    chains = []
    submit_take(rows[0])
    for index, row in enumerate(rows):  # in the flow's order: each take before the previous pair's downstream
        if index + 1 < len(rows):
            submit_take(rows[index + 1])
        shot = validated.shots[row.shot_id]
        separated = separated_by_shot[row.shot_id]
        take, k_lipdub = takes[index]
        k_remix = remix_key(k_lipdub, separate_keys[row.shot_id], separator_params, loudness)
        k_mux = mux_key("h264", k_lipdub, k_remix)
        k_subtitles = subtitles_key(row, k_remix)
        k_qc = qc_key(separate_keys[row.shot_id], k_remix, k_mux, k_subtitles, None, False)
        pair = f"{row.shot_id} {row.language}"
        remixed = submit("remix", f"remix {pair}", k_remix, RemixedPair,
                         lambda take_, separated_, out_dir, shot=shot:
                         remix_pair(take_, separated_, shot, out_dir, separator, loudness), take, separated)
        review = submit("mux", f"mux {pair}", k_mux, Path,
                        lambda take_, remixed_, out_dir, shot=shot: mux_pair(take_, remixed_, shot, out_dir, "h264"),
                        take, remixed)
        subtitles = submit("subtitles", f"subtitles {pair}", k_subtitles, SubtitleFiles,
                           lambda remixed_, out_dir, shot=shot, row=row: subtitle_pair(row, remixed_, shot, out_dir),
                           remixed)
        qc = submit("qc", f"qc {pair}", k_qc, QCResult,
                    lambda conformed_, separated_, remixed_, review_, subtitles_, out_dir, shot=shot:
                    qc_deliverables(shot, conformed_, separated_, remixed_, review_, subtitles_, None, False, out_dir),
                    conformed_by_shot[row.shot_id], separated, remixed, review, subtitles)
        chains.append((row, separated, take, remixed, review, subtitles, qc))
    marks["submitted"] = time.time()

    # As `collect` lists them (a failing stage raises here: the demo batch has none).
    outcomes, files, shared_beds = [], [], set()
    for row, *futures in chains:
        separated, take, remixed, review, subtitles, qc = (future.result() for future in futures)
        pair = f"{row.shot_id} {row.language}"
        outcomes.append(PairOutcome(row.shot_id, row.language, "delivered", None,
                                    sum(call["s"] for call in calls if call["name"].endswith(f" {pair}"))))
        prefix = f"{row.shot_id}/{row.language}/{row.shot_id}_{row.language}"
        files += [DeliveryFile(source, f"{prefix}{suffix}", role, row.shot_id, row.language)
                  for source, suffix, role in ((review, ".mp4", "review_mp4"), (remixed.mix, "_mix.wav", "mix"),
                                               (remixed.dialogue, "_dx.wav", "dx"), (subtitles.srt, ".srt", "srt"),
                                               (subtitles.vtt, ".vtt", "vtt"), (qc.report, "_qc.json", "qc"),
                                               (qc.summary, "_qc.txt", "qc_summary"))]
        if row.shot_id not in shared_beds:
            shared_beds.add(row.shot_id)
            files.append(DeliveryFile(separated.bed, f"{row.shot_id}/{row.shot_id}_me.wav", "me", row.shot_id, None))
    marks["stages_done"] = time.time()
    if pool is not None:
        pool.shutdown()
    started = time.perf_counter()
    published = publish(destination, run_id, files, outcomes, run_info(validated.path, profile, separator, loudness))
    calls.append({"stage": "publish", "name": "publish", "s": time.perf_counter() - started})
    marks["published"] = time.time()
    counts = cache.counts(keys)
    return {"marks": marks, "calls": calls, "threads": threads, "pairs": len(outcomes),
            "files_published": len(published.written), "stage_results_computed": sum(counts.computed.values()),
            "stage_results_reused": sum(counts.reused.values()), "cache_line": counts.describe(),
            "run_dir": published.location}


def prebuild(profile_name: str) -> dict:
    started = time.time()
    from dubflow.models.profiles import resolve_profile

    imported = time.time()
    profile = resolve_profile(profile_name)  # the smoke models (ltx-2.3-random: its smoke separator)
    return {"import_s": round(imported - started, 2), "build_s": round(time.time() - imported, 2),
            "profile": profile.name}


# --------------------------------------------------------------------------- measuring (parent)


def cpu_of_group(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in the process group `pgid` (the server's)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if int(fields[2]) == pgid:  # pgrp
            total += (int(fields[11]) + int(fields[12])) / plan_10k.CLOCK_TICKS
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / plan_10k.CLOCK_TICKS


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def epoch(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Server:
    def __init__(self, home: Path, wait_s: float):
        self.process, self.api, self.health_s = start_server(home, wait_s)
        self.seen_flow_runs: set[str] = set()

    def cpu_s(self) -> float:
        return cpu_of_group(self.process.pid)

    def new_flow_runs(self) -> list[dict]:
        """The flow runs the server holds that no earlier call returned."""
        runs = api_post(self.api, "/flow_runs/filter", {"limit": 200})
        fresh = [run for run in runs if run["id"] not in self.seen_flow_runs]
        self.seen_flow_runs.update(run["id"] for run in runs)
        return fresh

    def new_flow_run(self) -> dict:
        fresh = self.new_flow_runs()
        if len(fresh) != 1:
            raise RuntimeError(f"expected one new flow run on the server, found {len(fresh)}")
        return fresh[0]

    def task_runs(self, flow_run_id: str, expected: int, wait_s: float) -> tuple[list[dict], float]:
        """The flow run's task runs once `expected` of them are recorded with an end time (the server
        records them from events, asynchronously), or what is there after `wait_s`."""
        started = time.monotonic()
        while True:
            runs = api_post(self.api, "/task_runs/filter",
                            {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200})
            ended = [run for run in runs if run.get("end_time")]
            if len(ended) >= expected or time.monotonic() - started > wait_s:
                return runs, time.monotonic() - started
            time.sleep(0.5)

    def flow_run(self, flow_run_id: str) -> dict:
        return api_post(self.api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})[0]


def child_accounting(start: dict, server: Server) -> dict:
    """What happened between `start` (from `accounting_start`) and now: child CPU (waited-for children),
    server CPU, whole machine busy CPU, and the difference: other people's processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = usage.ru_utime + usage.ru_stime - start["children_cpu"]
    involuntary = usage.ru_nivcsw - start["children_nivcsw"]
    server_cpu = server.cpu_s() - start["server_cpu"]
    busy = machine_busy_s() - start["machine_busy"]
    wall = time.monotonic() - start["t"]
    return {"child_cpu_s": round(child_cpu, 2), "server_cpu_s": round(server_cpu, 2),
            "machine_busy_cpu_s": round(busy, 2), "others_cpu_s": round(busy - child_cpu - server_cpu, 2),
            "others_cores": round((busy - child_cpu - server_cpu) / wall, 2),
            "child_involuntary_switches": involuntary, "loadavg_after": loadavg()}


def accounting_start(server: Server) -> dict:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"t": time.monotonic(), "children_cpu": usage.ru_utime + usage.ru_stime, "children_nivcsw": usage.ru_nivcsw,
            "server_cpu": server.cpu_s(),
            "machine_busy": machine_busy_s(), "loadavg_before": loadavg()}


def run_flow(label: str, manifest: Path, work: Path, server: Server, env: dict, timeout_s: float,
             expected_tasks: int, profile: str) -> dict:
    command = [sys.executable, "-m", "dubflow.flows.cli", "run", str(manifest), "--out", str(work / "out"),
               "--profile", profile, "--run-id", label]
    acct = accounting_start(server)
    wall0, mono0 = time.time(), time.monotonic()
    with GpuBusy() as busy:
        process = subprocess.Popen(command, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        watcher = Watcher(process, mono0, work / f"{label}.log", 0.5)
        try:
            process.wait(timeout=timeout_s)
            outcome = f"exit {process.returncode}"
        except subprocess.TimeoutExpired:
            outcome = f"stopped after {timeout_s:.0f} s: {stop(process, 30)}"
        process_wall = time.monotonic() - mono0
    watcher.close()
    result = {"label": label, "route": "flow", "outcome": outcome, "process_wall_s": round(process_wall, 2),
              "gpu_busy_fraction": busy.fraction,
              "loadavg_before": acct["loadavg_before"], **child_accounting(acct, server),
              "peak_rss_mib": plan_10k.mib(max((s[1] for s in watcher.samples), default=0))}
    last = next((FLOW_LAST_LINE.search(line) for _, line in reversed(watcher.lines) if FLOW_LAST_LINE.search(line)),
                None)
    if last:
        result["flow_reported"] = {"delivered": int(last[1]), "pairs": int(last[2]), "failed": int(last[3]),
                                   "model_stage_s": float(last[4]), "flow_wall_s": float(last[5])}
    cache_line = next((line for _, line in reversed(watcher.lines) if "computed: " in line and "reused: " in line), None)
    result["cache_line"] = cache_line.split(" - ", 1)[-1] if cache_line else None
    markers = {name: wall0 + t for name, t in watcher.markers.items()}
    if watcher.submitted:
        result["flow_submit_s"] = watcher.submitted["flow_submit_s"]
    if process.returncode != 0:
        server.new_flow_runs()  # whatever it left on the server is not the next run's
        result["log_tail"] = tail(work / f"{label}.log", 30).splitlines()
        return result

    flow_run = server.new_flow_run()
    task_runs, waited = server.task_runs(flow_run["id"], expected_tasks, 60.0)
    flow_run = server.flow_run(flow_run["id"])
    result["server_wait_for_task_runs_s"] = round(waited, 2)
    result["task_runs"] = len(task_runs)
    result["task_runs_ended"] = sum(1 for run in task_runs if run.get("end_time"))
    result["task_runs_not_completed"] = [run["name"] for run in task_runs if run.get("state_type") != "COMPLETED"]
    per_stage: dict[str, dict] = {}
    for run in task_runs:
        stage = STAGE_NAME.match(run["name"])[0]
        entry = per_stage.setdefault(stage, {"count": 0, "run_time_s": 0.0, "max_s": 0.0})
        entry["count"] += 1
        entry["run_time_s"] += run["total_run_time"]
        entry["max_s"] = max(entry["max_s"], run["total_run_time"])
    result["server_per_stage"] = {stage: {k: round(v, 3) for k, v in per_stage[stage].items()}
                                  for stage in STAGE_ORDER if stage in per_stage}
    result["server_sum_task_run_time_s"] = round(sum(run["total_run_time"] for run in task_runs), 2)
    stage_runs = [run for run in task_runs if not run["name"].startswith("publish")]
    publish_runs = [run for run in task_runs if run["name"].startswith("publish")]
    result["server_sum_stage_task_run_time_s"] = round(sum(run["total_run_time"] for run in stage_runs), 2)

    # Phases on one clock (epoch seconds: the client stamps states; this machine stamps the lines).
    t = {"process_start": wall0,
         "flow_run_started": markers.get("flow_run_started"),  # the "Beginning flow run" line
         "profile_ready": markers.get("validated_and_profile_ready"),  # the loudness-profile line
         "submitted": markers.get("submitted_line"),
         "first_stage_start": min((epoch(run["start_time"]) for run in stage_runs if run.get("start_time")), default=None),
         "stages_done": max((epoch(run["end_time"]) for run in stage_runs if run.get("end_time")), default=None),
         "publish_start": epoch(publish_runs[0]["start_time"]) if publish_runs else None,
         "publish_end": epoch(publish_runs[0]["end_time"]) if publish_runs else None,
         "flow_end": epoch(flow_run.get("end_time")),
         "process_end": wall0 + process_wall}
    result["flow_run_server"] = {"total_run_time_s": flow_run.get("total_run_time"),
                                 "start_to_end_s": round(t["flow_end"] - epoch(flow_run["start_time"]), 2)
                                 if flow_run.get("start_time") and t["flow_end"] else None}
    result["phases_s"] = phases(t, {
        "start_to_flow_run": ("process_start", "flow_run_started"),
        "validate_and_profile": ("flow_run_started", "profile_ready"),
        "identity_keys_submit": ("profile_ready", "submitted"),
        "stages": ("submitted", "stages_done"),
        "collect_wait_for_server": ("stages_done", "publish_start"),
        "publish": ("publish_start", "publish_end"),
        "report_and_artifacts": ("publish_end", "flow_end"),
        "flow_end_to_exit": ("flow_end", "process_end"),
    })
    if result.get("flow_submit_s") is not None and result["phases_s"].get("stages") is not None:
        result["phases_s"]["stages"] = round(result["phases_s"]["stages"] + result["flow_submit_s"], 2)  # from the first submit
    return result


def phases(t: dict, spans: dict) -> dict:
    return {name: (round(t[b] - t[a], 2) if t.get(a) is not None and t.get(b) is not None else None)
            for name, (a, b) in spans.items()}


def run_plain(label: str, manifest: Path, work: Path, server: Server, env: dict, timeout_s: float,
              profile: str, threaded: bool = False) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child-plain", str(manifest), str(work / "out"), label,
               str(int(threaded)), profile]
    acct = accounting_start(server)
    wall0, mono0 = time.time(), time.monotonic()
    try:
        with GpuBusy() as busy:
            done = subprocess.run(command, env=env, cwd=work, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL, start_new_session=True)
        outcome = f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
        return {"label": label, "route": "plain", "outcome": f"no answer within {timeout_s:.0f} s"}
    process_wall = time.monotonic() - mono0
    result = {"label": label, "route": "plain", "threaded": threaded, "outcome": outcome, "process_wall_s": round(process_wall, 2),
              "gpu_busy_fraction": busy.fraction,
              "loadavg_before": acct["loadavg_before"], **child_accounting(acct, server)}
    (work / f"{label}.log").write_text(done.stdout + done.stderr)
    payload = next((json.loads(line[len("PLAIN_RESULT "):]) for line in reversed(done.stdout.splitlines())
                    if line.startswith("PLAIN_RESULT ")), None)
    if payload is None:
        result["log_tail"] = (done.stdout + done.stderr).splitlines()[-30:]
        return result
    marks = {**payload["marks"], "process_start": wall0, "process_end": wall0 + process_wall}
    per_stage: dict[str, dict] = {}
    for call in payload["calls"]:
        entry = per_stage.setdefault(call["stage"], {"count": 0, "run_time_s": 0.0, "max_s": 0.0})
        entry["count"] += 1
        entry["run_time_s"] += call["s"]
        entry["max_s"] = max(entry["max_s"], call["s"])
    result["per_stage"] = {stage: {k: round(v, 3) for k, v in per_stage[stage].items()}
                           for stage in STAGE_ORDER if stage in per_stage}
    result["sum_stage_calls_s"] = round(sum(c["s"] for c in payload["calls"] if c["stage"] != "publish"), 2)
    result["sum_calls_s"] = round(sum(c["s"] for c in payload["calls"]), 2)
    result["stage_calls"] = len(payload["calls"])
    result["stage_results_computed"] = payload["stage_results_computed"]
    result["cache_line"] = payload["cache_line"]
    result["files_published"] = payload["files_published"]
    result["body_wall_s"] = round(marks["published"] - marks["start"], 2)  # the span the flow's own `wall` covers
    result["phases_s"] = phases(marks, {
        "start_to_body": ("process_start", "start"),  # interpreter + imports (dubflow, torch, prefect modules)
        "validate_and_profile": ("start", "profile_ready"),
        "identity_keys": ("profile_ready", "identity_ready"),
        "stages": ("identity_ready", "stages_done"),  # from the first submit (threaded) or call
        "publish": ("stages_done", "published"),
        "body_end_to_exit": ("published", "process_end"),
    })
    return result


def med(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def summarize(runs: list[dict], expected_tasks: int, stage_tasks: int) -> dict:
    by = {label: [run for run in runs if run["kind"] == label] for label in
          ("flow_fresh", "flow_cached", "plain_fresh", "plain_cached", "plain_threaded")}

    def m(kind: str, get) -> float | None:
        values = []
        for run in by[kind]:
            try:
                values.append(get(run))
            except (KeyError, TypeError):
                pass
        return med(values)

    s: dict = {}
    for kind in [kind for kind in by if by[kind]]:
        s[kind] = {
            "runs": len(by[kind]),
            "process_wall_s": m(kind, lambda r: r["process_wall_s"]),
            "body_wall_s": m(kind, (lambda r: r["flow_reported"]["flow_wall_s"]) if kind.startswith("flow")
                             else (lambda r: r["body_wall_s"])),
            "child_cpu_s": m(kind, lambda r: r["child_cpu_s"]),
            "server_cpu_s": m(kind, lambda r: r["server_cpu_s"]),
            "others_cpu_s": m(kind, lambda r: r["others_cpu_s"]),
            "others_cores": m(kind, lambda r: r["others_cores"]),
            "child_involuntary_switches": m(kind, lambda r: r["child_involuntary_switches"]),
            "gpu_busy_fraction": m(kind, lambda r: r["gpu_busy_fraction"]),
            "phases_s": {name: m(kind, lambda r, n=name: r["phases_s"][n])
                         for name in (by[kind][0]["phases_s"] if by[kind] and "phases_s" in by[kind][0] else {})},
            "per_stage_s": {stage: m(kind, lambda r, st=stage: (r.get("server_per_stage") or r.get("per_stage"))[st]["run_time_s"])
                            for stage in STAGE_ORDER},
            "sum_stage_s": m(kind, lambda r: r.get("server_sum_stage_task_run_time_s", r.get("sum_stage_calls_s"))),
        }
        if kind.startswith("flow"):
            s[kind]["task_runs"] = m(kind, lambda r: r["task_runs"])
            s[kind]["server_sum_task_run_time_s"] = m(kind, lambda r: r["server_sum_task_run_time_s"])
    ff, pf, fc, pc = s["flow_fresh"], s["plain_fresh"], s["flow_cached"], s["plain_cached"]

    def ratio(a, b):
        return None if a is None or b is None or b == 0 else round(a / b, 4)

    def diff(a, b):
        return None if a is None or b is None else round(a - b, 3)

    tasks = fc.get("task_runs") or expected_tasks
    # The server's own background work (services, heartbeats) while no flow talks to it: its CPU during the plain runs.
    plain = [run for run in runs if run["kind"].startswith("plain") and "server_cpu_s" in run]
    idle_rate = (sum(run["server_cpu_s"] for run in plain) / sum(run["process_wall_s"] for run in plain)) if plain else None

    def server_net(kind: str) -> float | None:
        flows = [run["server_cpu_s"] - idle_rate * run["process_wall_s"] for run in by[kind] if "server_cpu_s" in run]
        return med(flows) if idle_rate is not None else None

    s["derived"] = {
        "fresh_overhead_process": ratio(diff(ff["process_wall_s"], pf["process_wall_s"]), ff["process_wall_s"]),
        "fresh_overhead_body": ratio(diff(ff["body_wall_s"], pf["body_wall_s"]), ff["body_wall_s"]),
        "fresh_flow_minus_plain_process_s": diff(ff["process_wall_s"], pf["process_wall_s"]),
        "fresh_flow_minus_plain_body_s": diff(ff["body_wall_s"], pf["body_wall_s"]),
        "fresh_stage_phase_flow_minus_plain_s": diff(ff["phases_s"].get("stages"), pf["phases_s"].get("stages")),
        "fresh_sum_task_run_time_over_plain_stage_sum": ratio(ff["sum_stage_s"], pf["sum_stage_s"]),
        "fresh_flow_stage_sum_over_stage_phase": ratio(ff["sum_stage_s"], ff["phases_s"].get("stages")),
        "task_runs_cached": tasks,
        "cached_per_task_process_ms": None if diff(fc["process_wall_s"], pc["process_wall_s"]) is None
        else round(1000 * diff(fc["process_wall_s"], pc["process_wall_s"]) / tasks, 1),
        "cached_per_task_stage_phase_ms": None if diff(fc["phases_s"].get("stages"), pc["phases_s"].get("stages")) is None
        else round(1000 * diff(fc["phases_s"].get("stages"), pc["phases_s"].get("stages")) / stage_tasks, 1),
        "server_idle_cpu_cores": None if idle_rate is None else round(idle_rate, 4),
        "server_cpu_net_of_idle_s": {"flow_fresh": server_net("flow_fresh"), "flow_cached": server_net("flow_cached")},
        "cached_per_task_cpu_ms": None if None in (fc["child_cpu_s"], fc["server_cpu_s"], pc["child_cpu_s"])
        else round(1000 * (fc["child_cpu_s"] + fc["server_cpu_s"] - pc["child_cpu_s"]) / tasks, 1),
        **({"fresh_overhead_vs_threaded_process": ratio(diff(ff["process_wall_s"], s["plain_threaded"]["process_wall_s"]),
                                                        ff["process_wall_s"]),
            "fresh_overhead_vs_threaded_body": ratio(diff(ff["body_wall_s"], s["plain_threaded"]["body_wall_s"]),
                                                     ff["body_wall_s"]),
            "fresh_flow_minus_threaded_process_s": diff(ff["process_wall_s"], s["plain_threaded"]["process_wall_s"]),
            "fresh_flow_minus_threaded_body_s": diff(ff["body_wall_s"], s["plain_threaded"]["body_wall_s"])}
           if "plain_threaded" in s else {}),
        "cached_fixed_flow_s": {name: fc["phases_s"].get(name) for name in
                                ("start_to_flow_run", "validate_and_profile", "identity_keys_submit",
                                 "collect_wait_for_server", "publish", "report_and_artifacts", "flow_end_to_exit")},
        "cached_fixed_plain_s": {name: pc["phases_s"].get(name) for name in
                                 ("start_to_body", "validate_and_profile", "identity_keys", "publish", "body_end_to_exit")},
    }
    return s


def markdown(summary: dict) -> str:
    kinds = [k for k in ("flow_fresh", "plain_fresh", "plain_threaded", "flow_cached", "plain_cached") if k in summary]
    head = "| | " + " | ".join(k.replace("_", " ") for k in kinds) + " |"
    rule = "|---" * (len(kinds) + 1) + "|"
    lines = ["Σ per stage (flow: task runs' total_run_time from the server; plain: StageCache.result calls)", "",
             head, rule]
    for stage in STAGE_ORDER:
        lines.append(f"| {stage} | " + " | ".join(f"{summary[k]['per_stage_s'].get(stage)} s" for k in kinds) + " |")
    lines += ["", head, rule]
    for name, key in (("process wall", "process_wall_s"), ("body wall", "body_wall_s"), ("client CPU", "child_cpu_s"),
                      ("server CPU", "server_cpu_s"), ("others' CPU", "others_cpu_s"), ("others' cores", "others_cores"),
                      ("client involuntary switches", "child_involuntary_switches"), ("GPU busy", "gpu_busy_fraction")):
        unit = "" if key in ("others_cores", "child_involuntary_switches", "gpu_busy_fraction") else " s"
        lines.append(f"| {name} | " + " | ".join(f"{summary[k][key]}{unit}" for k in kinds) + " |")
    lines += ["", "derived: " + json.dumps(summary["derived"])]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", choices=("smoke", "ltx-2.3-random"), default="smoke",
                        help="ltx-2.3-random: the full-size LipDub model on the GPU (its separator is the smoke one)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/orchestration_cpu.json"))
    parser.add_argument("--fresh-timeout", type=float, default=600.0, help="seconds a fresh run may take")
    parser.add_argument("--cached-timeout", type=float, default=240.0, help="seconds a cached run may take")
    parser.add_argument("--server-wait", type=float, default=120.0)
    parser.add_argument("--threaded-plain", action="store_true",
                        help="also run the plain route fresh on the flow's threads in the flow's order (no Prefect): separates "
                             "the flow's concurrency from Prefect's cost (adds one fresh run per repeat)")
    parser.add_argument("--flow-fresh-only", action="store_true",
                        help="only the fresh flow run of each repeat (its wall, task runs and GPU busy): no plain route, "
                             "no overhead figures")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    machine = machine_info()
    machine["gpu"] = GpuBusy().device_name  # NVML's name; None without a driver
    machine["profile"] = args.profile
    device = "the GPU's `cuda:0`" if args.profile != "smoke" else "the one `cpu`"
    machine["task_runner"] = (f"dubflow's default: ThreadPoolTaskRunner (localize.runner_threads(): 4, 4 more per GPU); "
                              f"model stages (separate, lipdub) take turns on {device} device lease")
    print(f"{machine['cpu']}, {machine['cpus_usable']} usable CPUs, load {machine['load_average_at_start']}; "
          f"prefect {machine['prefect']}, torch {machine['torch']}", flush=True)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dubflow-orchestration-"))
    server = None
    runs: list[dict] = []
    result: dict = {"benchmark": "orchestration", "command": ["bench/orchestration.py", *sys.argv[1:]],
                    "machine": machine}
    try:
        from dubflow.manifests.samples import generate_samples  # light: numpy, pandas, PyAV

        t0 = time.monotonic()
        manifest = generate_samples(work / "samples")
        rows = manifest.read_text().strip().splitlines()[1:]
        shots = len({row.split(",")[0] for row in rows})
        pairs = len(rows)
        stage_tasks = shots + 5 * pairs
        expected_tasks = stage_tasks + 1  # + publish
        result["inputs"] = {"manifest": "manifests.samples.generate_samples (the demo's)", "shots": shots,
                            "pairs": pairs, "stage_tasks": stage_tasks, "task_runs_expected": expected_tasks,
                            "write_s": round(time.monotonic() - t0, 2)}
        print(f"samples: {shots} shots, {pairs} pairs in {work / 'samples'}", flush=True)

        cache = work / "cache"
        base = dict(PREFECT_HOME=str(work / "client-home"), DUBFLOW_CACHE=str(cache), PYTHONUNBUFFERED="1",
                    COLUMNS="1000")
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child-prebuild", args.profile],
                              env=clean_env(**base), capture_output=True, text=True, timeout=300,
                              start_new_session=True)
        prebuilt = next((json.loads(line[len("PREBUILD "):]) for line in done.stdout.splitlines()
                         if line.startswith("PREBUILD ")), None)
        if prebuilt is None:
            raise RuntimeError(f"smoke model build failed:\n{done.stderr[-3000:]}")
        result["smoke_models_prebuilt"] = prebuilt

        server = Server(work / "server-home", args.server_wait)
        result["server"] = {"health_after_s": round(server.health_s, 1)}
        print(f"Prefect server healthy after {server.health_s:.1f} s at {server.api}", flush=True)
        flow_env = clean_env(**base, PREFECT_API_URL=server.api)
        plain_env = clean_env(**base)

        def fresh_cache() -> None:
            shutil.rmtree(cache / "work", ignore_errors=True)

        def flow_pair(repeat: int) -> None:
            fresh_cache()
            kinds = (("flow_fresh", args.fresh_timeout), ("flow_cached", args.cached_timeout))
            for kind, timeout in kinds[:1] if args.flow_fresh_only else kinds:
                label = f"{kind.replace('_', '-')}-{repeat}"
                run = run_flow(label, manifest, work, server, flow_env, timeout, expected_tasks, args.profile)
                runs.append({"kind": kind, "repeat": repeat, **run})
                print(f"  {label}: {run['outcome']}, process {run['process_wall_s']} s, flow body "
                      f"{run.get('flow_reported', {}).get('flow_wall_s')} s, {run.get('task_runs')} task runs, "
                      f"Σ task run time {run.get('server_sum_task_run_time_s')} s; {run.get('cache_line')}; "
                      f"others' CPU {run.get('others_cpu_s')} s, load {run['loadavg_before']}→{run['loadavg_after']}, "
                      f"GPU busy {run.get('gpu_busy_fraction')}; {run.get('flow_reported')}", flush=True)

        def plain_pair(repeat: int) -> None:
            fresh_cache()
            for kind, timeout in (("plain_fresh", args.fresh_timeout), ("plain_cached", args.cached_timeout)):
                label = f"{kind.replace('_', '-')}-{repeat}"
                run = run_plain(label, manifest, work, server, plain_env, timeout, args.profile)
                report_plain(kind, repeat, label, run)

        def threaded(repeat: int) -> None:
            fresh_cache()
            label = f"plain-threaded-{repeat}"
            run = run_plain(label, manifest, work, server, plain_env, args.fresh_timeout, args.profile, threaded=True)
            report_plain("plain_threaded", repeat, label, run)

        def report_plain(kind: str, repeat: int, label: str, run: dict) -> None:
            runs.append({"kind": kind, "repeat": repeat, **run})
            print(f"  {label}: {run['outcome']}, process {run.get('process_wall_s')} s, body {run.get('body_wall_s')} s, "
                  f"Σ stage calls {run.get('sum_stage_calls_s')} s, computed {run.get('stage_results_computed')}; "
                  f"others' CPU {run.get('others_cpu_s')} s, load {run.get('loadavg_before')}→{run.get('loadavg_after')}",
                  flush=True)

        for repeat in range(1, args.repeats + 1):
            print(f"repeat {repeat} of {args.repeats}", flush=True)
            steps = [flow_pair] if args.flow_fresh_only else [flow_pair, plain_pair] + ([threaded] if args.threaded_plain else [])
            if repeat % 2 == 0:
                steps.reverse()
            for step in steps:
                step(repeat)
        if not args.flow_fresh_only:
            result["summary"] = summarize(runs, expected_tasks, stage_tasks)
            print(markdown(result["summary"]), flush=True)
    finally:
        if server is not None:
            result["server_stop"] = stop(server.process, 30)
            db = work / "server-home" / "prefect.db"
            result.setdefault("server", {})["sqlite_bytes"] = db.stat().st_size if db.exists() else None
        result["runs"] = runs
        result["machine"]["load_average_at_end"] = loadavg()
        result["benchmark_wall_s"] = round(time.monotonic() - started, 1)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"results in {args.json}", flush=True)
    ok = runs and all(run["outcome"] == "exit 0" for run in runs)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--child-plain":
        print("PLAIN_RESULT " + json.dumps(plain_run(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5] == "1",
                                                     sys.argv[6])), flush=True)
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--child-prebuild":
        print("PREBUILD " + json.dumps(prebuild(sys.argv[2])), flush=True)
        sys.exit(0)
    sys.exit(main())
