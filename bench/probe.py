"""Validation's media probe: files a second, decoded through in child processes.

    python bench/probe.py [--files 200] [--repeats 3] [--json out.json]

Input: one sample shot (`manifests.samples.write_sample_shot`: 96×64, 48 frames at 24 fps, H.264 +
48 kHz stereo 24-bit PCM in MOV, 2 s) copied --files times, so every route reads the same bytes.

Routes, each timed over all the files, wall clock, the order alternating between repeats:

- probe_many: `media.io.probe_many(paths)`, what `validate_manifest` runs: the files shared out over
  one child process per CPU, each child decoding its share one file after another.
- probe per file: `media.io.probe(path)` for each file in turn, one child process a file (what a
  stage that probes one file pays).
- in process: the child's own work (`media.io._probe_in_process`) in this process, one file after
  another: the decoding alone, with no process start (and no protection from a crash).

The table gives the median over repeats, and files a second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from dubflow.manifests.samples import SampleShot, write_sample_shot
from dubflow.media.io import _probe_in_process, probe, probe_many


def make_files(folder: Path, count: int) -> list[Path]:
    template = SampleShot("probe_template", 96, 64, Fraction(24), 48, "stereo", "A woman in a red scarf", {})
    (folder / "stems").mkdir(parents=True)
    source = folder / "template.mov"
    write_sample_shot(source, folder / "stems", template, seed=0)
    paths = [folder / f"shot_{index:05d}.mov" for index in range(count)]
    for path in paths:
        shutil.copyfile(source, path)
    return paths


def timed(route, paths: list[Path]) -> float:
    started = time.perf_counter()
    route(paths)
    return time.perf_counter() - started


ROUTES = {
    "probe_many": lambda paths: probe_many(paths),
    "probe per file": lambda paths: [probe(path) for path in paths],
    "in process": lambda paths: [_probe_in_process(path) for path in paths],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = make_files(Path(folder), args.files)
        times: dict[str, list[float]] = {name: [] for name in ROUTES}
        for repeat in range(args.repeats):
            order = list(ROUTES) if repeat % 2 == 0 else list(reversed(ROUTES))
            for name in order:
                times[name].append(timed(ROUTES[name], paths))
    result = {
        "files": args.files, "cpus": os.cpu_count(), "repeats": args.repeats,
        "routes": {name: {"median_s": round(statistics.median(values), 3),
                          "files_per_s": round(args.files / statistics.median(values), 1),
                          "runs_s": [round(value, 3) for value in values]}
                   for name, values in times.items()},
    }
    print(f"{args.files} files, {os.cpu_count()} CPUs, median of {args.repeats}")
    for name, route in result["routes"].items():
        print(f"  {name:15} {route['median_s']:8.2f} s  {route['files_per_s']:8.1f} files/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
