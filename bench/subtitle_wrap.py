"""Time the subtitle line balancer (`tasks.subtitles.wrap_text`) against script length.

The scripts are German prose (the subtitle tests' line, repeated and cut at a space) of each
length asked for. `--rev` times the `wrap_text` of another git revision of `tasks/subtitles.py`
(loaded from `git show`), to compare with the balancer it replaced; a call that takes longer than
`--give-up-s` ends that revision's series (the old balancer grows about as n^4).

    python bench/subtitle_wrap.py --json bench/results/subtitle_wrap_cpu.json
    python bench/subtitle_wrap.py --rev 605c900 --lengths 300 600 1200 --json bench/results/subtitle_wrap_before_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TEXT = ("Es regnete an jenem Abend, wie heute, und niemand kam. Und dann, viel später in der Nacht, "
        "klopfte jemand dreimal an die Tür und ging wieder, ohne ein einziges Wort zu sagen.")


def script_of(length: int) -> str:
    text = (TEXT + " ") * (length // len(TEXT) + 1)
    return text[:length].rsplit(" ", 1)[0]


def wrap_text_of(rev: str | None) -> Callable[[str], list]:
    if rev is None:
        from dubflow.tasks.subtitles import wrap_text

        return wrap_text
    source = subprocess.run(["git", "show", f"{rev}:tasks/subtitles.py"], check=True, capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp(prefix="subtitles-")) / f"subtitles_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.wrap_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default=None, help="git revision whose wrap_text is timed (default: this checkout)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 1000, 1200, 5000, 20000, 100000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--give-up-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    wrap_text = wrap_text_of(args.rev)
    results = []
    for length in args.lengths:
        script = script_of(length)
        times, lines = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            cues = wrap_text(script)
            times.append(time.perf_counter() - start)
            lines = sum(len(cue) for cue in cues)
        median = statistics.median(times)
        results.append({"characters": len(script), "words": len(script.split()), "lines": lines,
                        "median_s": median, "min_s": min(times), "max_s": max(times), "repeats": len(times)})
        print(f"{len(script):>7} characters  {lines:>5} lines  median {median * 1000:10.3f} ms  "
              f"({median / len(script) * 1e6:.2f} µs a character)", flush=True)
        if median > args.give_up_s:
            break
    report = {"rev": args.rev or "working tree", "python": sys.version.split()[0], "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
