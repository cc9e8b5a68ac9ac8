from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Every test session gets its own Prefect home and model cache, so runs never share a database.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="dubflow-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_SESSION_HOME / "prefect"))
os.environ.setdefault("DUBFLOW_CACHE", str(_SESSION_HOME / "cache"))


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard sample shots, generated once per test session (treat as read-only)."""
    from dubflow.manifests.samples import generate_samples

    directory = tmp_path_factory.mktemp("samples")
    generate_samples(directory)
    return directory


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for every flow test of the session (started on first use)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield
