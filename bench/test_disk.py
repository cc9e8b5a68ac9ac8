"""Peak and leftover disk use of a test session: pytest runs with a fresh TMPDIR, so everything the
session writes outside the checkout (its `dubflow-tests-*` folder: Prefect home, model and stage
cache, Dask scratch; pytest's own temporary folders) lands there, and `du` of that folder is polled
while it runs.

    .venv/bin/python bench/test_disk.py                      # the whole suite
    .venv/bin/python bench/test_disk.py tests/test_cli.py    # any pytest arguments

Prints one JSON line: pytest's exit code, peak bytes, bytes and files left when it ended, seconds;
then removes the scratch folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

POLL_S = 2.0


def disk_use(folder: Path) -> int:
    """Bytes on disk under `folder` (as `du` counts them), skipping what vanishes meanwhile."""
    total = 0
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total


def main(pytest_args: list[str]) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="dubflow-disk-"))
    env = {key: value for key, value in os.environ.items()
           if key not in ("DUBFLOW_CACHE", "PREFECT_HOME", "DASK_TEMPORARY_DIRECTORY")}
    env["TMPDIR"] = str(scratch)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, disk_use(scratch))
            done.wait(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    started = time.monotonic()
    poller.start()
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", *pytest_args], env=env)
    done.set()
    poller.join()
    left = sorted(str(path.relative_to(scratch)) for path in scratch.rglob("*") if path.is_file())
    result = {"pytest_args": pytest_args, "exit_code": code, "peak_bytes": peak, "left_bytes": disk_use(scratch),
              "left_files": left[:20], "seconds": round(time.monotonic() - started, 1)}
    shutil.rmtree(scratch)
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
