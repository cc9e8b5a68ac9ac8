from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Every test session gets its own Prefect home, model and stage cache and Dask scratch space, so runs
# never share a database; all of it is removed when the session ends (after the session's Prefect
# test server has stopped: atexit runs after the fixtures' teardown).
_SESSION_PREFIX = "dubflow-tests-"
_SESSION_PID = "pid"  # in each session folder: the session's process, so a later session can tell it ended


def _remove_killed_sessions() -> None:
    """Session folders of earlier sessions killed before their exit handler ran (their process is gone)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_SESSION_PREFIX}*"):
        try:
            pid = int((folder / _SESSION_PID).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError) as exc:
            if isinstance(exc, ProcessLookupError):
                shutil.rmtree(folder, ignore_errors=True)
            # no marker (not a session of this code), or a live process: left alone


_remove_killed_sessions()
_SESSION_HOME = Path(tempfile.mkdtemp(prefix=_SESSION_PREFIX))
(_SESSION_HOME / _SESSION_PID).write_text(str(os.getpid()))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ.setdefault("DUBFLOW_CACHE", str(_SESSION_HOME / "cache"))
os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", str(_SESSION_HOME / "dask"))


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard sample shots, generated once per test session (treat as read-only)."""
    from dubflow.manifests.samples import generate_samples

    directory = tmp_path_factory.mktemp("samples")
    generate_samples(directory)
    return directory


@pytest.fixture(scope="session")
def small_samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample shots at a quarter of their width and height (even sizes), everything else theirs:
    ids, rates, frame counts, layouts, lines. For flow tests whose checks do not depend on the
    picture's size: every take, mux and QC decode then handles a sixteenth of the pixels."""
    from dataclasses import replace

    from dubflow.manifests.samples import SAMPLE_SHOTS, generate_samples

    shots = tuple(replace(shot, width=_quarter_even(shot.width), height=_quarter_even(shot.height))
                  for shot in SAMPLE_SHOTS)
    directory = tmp_path_factory.mktemp("small_samples")
    generate_samples(directory, shots)
    return directory


def _quarter_even(pixels: int) -> int:
    return 2 * round(pixels / 8)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for every flow test of the session (started on first use)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
