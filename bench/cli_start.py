"""A refused `dubflow run`, and `dubflow sample`'s shots, before and after a change.

    python bench/cli_start.py --before COMMIT [--repeats 5] [--json out.json]

Routes, alternating, --repeats each; each measurement is a child process of its own:

- before: the code of commit --before, exported with `git archive` as a `dubflow` package folder on
  the child's PYTHONPATH (`validation_memo.export_commit`)
- after: this checkout

Measured per route:

- refused: `python -m dubflow.flows.cli run missing.csv --out OUT`, what a user whose manifest path
  is wrong waits for (exit 2 from the input checks, before Prefect): the child's wall time and CPU
  time (user + system, from `getrusage` of the children).
- samples: `manifests.samples.generate_samples` of the five sample shots at full size, and at a
  quarter of their width and height (the tests' `small_samples_dir`), timed inside the child
  (wall and process CPU time; the imports are not timed).

Printed: every measurement, then the medians; the JSON holds them all with the machine's CPU count
and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from validation_memo import export_commit, write_report

RESULT_PREFIX = "SAMPLES_SECONDS "


def samples_child(folder: Path) -> None:
    """Prints RESULT_PREFIX + JSON {size: [wall s, cpu s]} for the full- and quarter-size samples."""
    from dataclasses import replace

    from dubflow.manifests.samples import SAMPLE_SHOTS, generate_samples

    quarter = tuple(replace(shot, width=2 * round(shot.width / 8), height=2 * round(shot.height / 8))
                    for shot in SAMPLE_SHOTS)
    seconds = {}
    for size, shots in (("full", SAMPLE_SHOTS), ("quarter", quarter)):
        wall, cpu = time.perf_counter(), time.process_time()
        generate_samples(folder / size, shots)
        seconds[size] = [time.perf_counter() - wall, time.process_time() - cpu]
    print(RESULT_PREFIX + json.dumps(seconds), flush=True)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_child(command: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    cpu, wall = children_cpu_s(), time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    return result, time.perf_counter() - wall, children_cpu_s() - cpu


def measure(route: str, tree: Path | None, work: Path, index: int, env: dict) -> dict:
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    refused, wall, cpu = time_child([sys.executable, "-m", "dubflow.flows.cli", "run", str(work / "missing.csv"),
                                     "--out", str(work / "out")], env)
    if refused.returncode != 2 or "missing.csv" not in refused.stderr:
        raise RuntimeError(f"{route}: the run was not refused for its manifest:\n{refused.stderr[-3000:]}")
    folder = work / f"{route}-{index}"
    samples, _, _ = time_child([sys.executable, __file__, "--samples-child", str(folder)], env)
    lines = [line for line in samples.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"{route}: the samples child gave no result:\n{samples.stderr[-3000:]}")
    return {"route": route, "run": index, "refused_wall_s": wall, "refused_cpu_s": cpu,
            "samples": json.loads(lines[-1][len(RESULT_PREFIX):])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="commit whose code is the 'before' route")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--samples-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.samples_child:
        samples_child(args.samples_child)
        return
    if not args.before:
        parser.error("--before COMMIT is required")

    with tempfile.TemporaryDirectory(prefix="cli-start-") as temporary:
        work = Path(temporary)
        tree = export_commit(args.before, work / "before")
        env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "DUBFLOW_CACHE": str(work / "cache")}
        runs = []
        for index in range(args.repeats):
            for route, route_tree in (("before", tree), ("after", None)):
                runs.append(measure(route, route_tree, work, index, env))
                run = runs[-1]
                print(f"{route} {index}: refused {run['refused_wall_s']:.2f} s wall, {run['refused_cpu_s']:.2f} s CPU; "
                      + ", ".join(f"samples {size} {wall:.2f} s wall, {cpu:.2f} s CPU"
                                  for size, (wall, cpu) in run["samples"].items()), flush=True)
        median = {}
        for route in ("before", "after"):
            mine = [run for run in runs if run["route"] == route]
            median[route] = {"refused_wall_s": statistics.median(run["refused_wall_s"] for run in mine),
                             "refused_cpu_s": statistics.median(run["refused_cpu_s"] for run in mine),
                             **{f"samples_{size}_{kind}_s": statistics.median(run["samples"][size][k] for run in mine)
                                for size in ("full", "quarter") for k, kind in enumerate(("wall", "cpu"))}}
            print(f"{route} (median): " + ", ".join(f"{key} {value:.2f}" for key, value in median[route].items()))
        if args.json:
            write_report(args.json, args.before, runs, median)


if __name__ == "__main__":
    main()
