"""Time `dubflow run` spends validating the manifest, before and after the per-process probe/hash memo.

    python bench/validation_memo.py --before COMMIT [--repeats 3] [--json out.json]

`dubflow run` validates the manifest twice: in its input checks (`flows/cli.py: check_inputs`), then
again in the flow (`flows/localize.py: localize`). Before the memo each validation probed (decoded
through, in child processes) and hashed every picture; after it, the second finds every unchanged
picture in `tasks/validate.py`'s `FileMemo`s.

Input: the sample shots (`manifests.samples.generate_samples`, 5 shots × 11 pairs), made once and
read by every run. Each run is `dubflow run manifest.csv` (smoke profile, `flows.cli.main` in a
child process of its own) with both `validate_manifest` calls wrapped in a timer (the real function,
its wall time recorded); the run's stage work is not timed. Routes, alternating, --repeats each:

- before: the code of commit --before, exported with `git archive` as a `dubflow` package folder on
  the child's PYTHONPATH (found before the editable install, by the child and by the probe's own
  child processes alike)
- after: this checkout

All runs share one stage cache and Prefect home (temporary), so only the first run of each route
computes its stages; validation does the same work either way. Printed: each run's two validation
times; the JSON holds them all with the machine's CPU count and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("flows", "tasks", "models", "manifests", "media")
RESULT_PREFIX = "VALIDATION_SECONDS "


def export_commit(commit: str, directory: Path) -> Path:
    """A folder whose `dubflow/` holds the packages of `commit` (put it on PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, *PACKAGES],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory / "dubflow", filter="data")
    return directory


def write_report(path: Path, before: str, runs: list[dict], median: dict) -> None:
    """The runs of both routes and their medians, with the two commits and the machine's load, as JSON."""
    after = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    path.write_text(json.dumps({"before_commit": before, "after_commit": after, "cpus": os.cpu_count(),
                                "load_average_at_end": os.getloadavg(), "runs": runs, "median": median}, indent=1))


def child(manifest: Path, out: Path, run_id: str, tree: Path | None) -> None:
    """One `dubflow run`, its two validations timed; prints RESULT_PREFIX + JSON [cli s, flow s]."""
    import dubflow.tasks.validate as validate

    assert Path(validate.__file__).is_relative_to(tree or REPO), validate.__file__
    seconds: list[float] = []
    validate_manifest = validate.validate_manifest

    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return validate_manifest(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - started)

    # Before flows/cli.py and flows/localize.py import it by name (Prefect not yet imported: the
    # command sets its terminal up as it does for a user).
    validate.validate_manifest = timed
    import dubflow.flows.cli as cli

    code = cli.main(["run", str(manifest), "--out", str(out), "--run-id", run_id])
    print(RESULT_PREFIX + json.dumps({"exit": code, "seconds": seconds}), flush=True)


def run_route(route: str, manifest: Path, work: Path, tree: Path | None, index: int, env: dict) -> dict:
    command = [sys.executable, __file__, "--child", str(manifest), "--out", str(work / "out"),
               "--run-id", f"{route}-{index}"]
    if tree is not None:
        command += ["--tree", str(tree)]
    if tree is not None:
        env = {**env, "PYTHONPATH": str(tree)}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"{route} run {index} gave no result (exit {result.returncode}):\n{result.stderr[-3000:]}")
    found = json.loads(lines[-1][len(RESULT_PREFIX):])
    return {"route": route, "run": index, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="commit whose code is the 'before' route")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.out, args.run_id, args.tree)
        return
    if not args.before:
        parser.error("--before COMMIT is required")

    from dubflow.manifests.samples import generate_samples

    with tempfile.TemporaryDirectory(prefix="validation-memo-") as temporary:
        work = Path(temporary)
        manifest = generate_samples(work / "samples")
        tree = export_commit(args.before, work / "before")
        env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "DUBFLOW_CACHE": str(work / "cache")}
        runs = []
        for index in range(args.repeats):
            for route, route_tree in (("before", tree), ("after", None)):  # before first: the samples settle
                runs.append(run_route(route, manifest, work, route_tree, index, env))
                print(f"{route} run {index}: exit {runs[-1]['exit']}, validations "
                      + ", ".join(f"{s:.3f} s" for s in runs[-1]["seconds"]), flush=True)
        summary = {}
        for route in ("before", "after"):
            mine = [run["seconds"] for run in runs if run["route"] == route]
            summary[route] = {"check_inputs_median_s": statistics.median(s[0] for s in mine),
                              "flow_median_s": statistics.median(s[1] for s in mine),
                              "total_median_s": statistics.median(sum(s) for s in mine)}
            print(f"{route}: check_inputs {summary[route]['check_inputs_median_s']:.3f} s, flow "
                  f"{summary[route]['flow_median_s']:.3f} s, both {summary[route]['total_median_s']:.3f} s (median)")
        if args.json:
            write_report(args.json, args.before, runs, summary)


if __name__ == "__main__":
    main()
