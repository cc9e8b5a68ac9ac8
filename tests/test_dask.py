"""GPU scheduling on Dask: a local cluster of two worker processes, each declaring one (logical) GPU.

The smoke models run on the workers' CPUs; what is checked is the scheduling: LipDub tasks ask for
one GPU, so never more than two run at once; each worker loads its LipDub model once and keeps it
for every take it runs; and the results are identical to the thread runner's.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import pandas as pd
import pytest
import torch
from distributed import Client, LocalCluster
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterName
from prefect_dask import DaskTaskRunner

from dubflow.flows.cli import main
from dubflow.flows import localize as localize_module
from dubflow.flows.localize import ClusterError, localize, task_runner_for
from dubflow.models.devices import lease_records
from dubflow.models.lipdub import LipDubModel
from dubflow.models.profiles import cache_dir
from dubflow.media.files import sha256_file


def _worker_state() -> dict:
    """Read on each worker with Client.run: its LipDub model loads and its device leases."""
    return {"lipdub_loads": LipDubModel.load_count,
            "leases": sum(sum(record.leases.values()) for record in lease_records().values())}


@pytest.fixture(scope="module")
def two_gpu_cluster():
    # Dask's nanny pins worker processes to one BLAS/OpenMP thread; CPU kernels with another thread
    # count may round differently. The workers get this process's count, so that the comparison with
    # the thread runner is of scheduling alone.
    threads = str(torch.get_num_threads())
    environ = {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, resources={"GPU": 1},
                          host="127.0.0.1", dashboard_address=None) as cluster:
            yield cluster


@pytest.fixture(scope="module")
def four_pairs(small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stereo and a 5.1 sample shot, two languages each, at a small size (what is checked here is
    scheduling and equality with the thread runner, which the picture's size does not change)."""
    table = pd.read_csv(small_samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[table.shot_id.isin(["sc01_sh010", "sc02_sh010"]) & table.language.isin(["fr", "de"])].copy()
    table["source"] = [str(small_samples_dir / s) for s in table.source]
    path = tmp_path_factory.mktemp("dask") / "manifest.csv"
    table.to_csv(path, index=False)
    return path


def _files(run_dir: Path) -> dict[str, str]:
    # The review page names its run (the review file it exports is keyed by run): not compared.
    return {entry["path"]: entry["sha256"] for entry in json.loads((run_dir / "delivery.json").read_text())["files"]
            if entry["role"] != "review"}


def test_two_gpu_workers_run_lipdub_one_take_each_and_match_the_thread_runner(
    prefect_server, two_gpu_cluster: LocalCluster, four_pairs: Path, tmp_path: Path, capsys
) -> None:
    with pytest.MonkeyPatch.context() as env:  # its own stage cache: the Dask run computes everything again
        env.setenv("DUBFLOW_CACHE", str(tmp_path / "thread-cache"))
        localize(four_pairs, tmp_path, run_id="threads")

    address = two_gpu_cluster.scheduler_address
    assert main(["run", str(four_pairs), "--out", str(tmp_path), "--run-id", "dask", "--cluster", address,
                 "--force"]) == 0
    assert "dubflow: 4 of 4 pairs delivered, 0 failed" in capsys.readouterr().out.splitlines()[-1]

    # Bit for bit: the LipDub picture masters and every delivered file (H.264 without x264's mbtree is a
    # function of its frames: media/io.py's X264_REPRODUCIBLE).
    assert _files(tmp_path / "dask") == _files(tmp_path / "threads")
    masters = {key.name: sha256_file(key / "picture.mov") for key in (tmp_path / "thread-cache/work/lipdub").iterdir()}
    assert len(masters) == 4
    for key, sha256 in masters.items():
        assert sha256_file(cache_dir() / "work" / "lipdub" / key / "picture.mov") == sha256

    with Client(address) as client:
        workers = client.run(_worker_state)
    assert len(workers) == 2
    # The model is loaded at most once per worker process, however many takes it ran (the scheduler
    # decides how the 4 takes spread over the 2 workers).
    assert all(state["lipdub_loads"] <= 1 for state in workers.values()), workers
    assert sum(state["lipdub_loads"] for state in workers.values()) >= 1
    assert sum(state["leases"] for state in workers.values()) >= 4 + 4 + 2  # 4 takes, 4 remixes, 2 separations

    with get_client(sync_client=True) as prefect:
        (run,) = [r for r in prefect.read_flow_runs(limit=200) if r.parameters.get("run_id") == "dask"]
        takes = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="lipdub")),
        )
    assert len(takes) == 4
    events = sorted([(t.start_time, 1) for t in takes] + [(t.end_time, -1) for t in takes])
    running, most = 0, 0
    for _, change in events:
        running += change
        most = max(most, running)
    assert most <= 2


def test_a_dask_client_already_open_on_another_cluster_is_refused(two_gpu_cluster: LocalCluster) -> None:
    """prefect-dask would run on this process's default client, whatever address it was given."""
    address = two_gpu_cluster.scheduler_address
    other = "tcp://127.0.0.1:1"
    with Client(address):
        with pytest.raises(ClusterError, match=f"already holds a Dask client connected to {address}.*instead of on {other}"):
            task_runner_for(other)
        assert isinstance(task_runner_for(address.replace("tcp://", "")), DaskTaskRunner)  # the same cluster, spelt otherwise
    assert isinstance(task_runner_for(other), DaskTaskRunner)  # no client open: nothing to refuse


def test_a_cluster_without_gpu_workers_is_refused_with_the_fix(
    prefect_server, four_pairs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(localize_module, "GPU_WORKER_WAIT_S", 1.0)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cpu_only:
        code = main(["run", str(four_pairs), "--out", str(tmp_path), "--cluster", cpu_only.scheduler_address])
    assert code == 2
    error = capsys.readouterr().err
    assert "declares a GPU resource" in error and "--resources GPU=1" in error
    assert not list(tmp_path.iterdir())  # nothing ran, nothing published
