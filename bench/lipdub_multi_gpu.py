"""A LipDub batch on Dask GPU workers, one worker per GPU: throughput on 1 GPU versus N, GPU busy.

Expected GPU time (two H100s, full-size LTX-2.3, bf16, 4 shots x 3 languages at 1280x720x121):
about 4-5 min on one GPU, 2-3 min on two, plus ~1 min of start-up per cluster.

    python bench/lipdub_multi_gpu.py [--gpus 1,2] [--shots 4] [--languages 3] [--size 1280x720]
                                     [--frames 121] [--fp8-weights] [--attention B] [--compile] [--json out.json]

For each GPU count n in ``--gpus`` (run one after the other, on the same machine): a Dask cluster
of n worker processes, as deploy/dask-gpu-worker.yaml runs them — one worker per GPU (worker
``gpu-<i>`` runs its takes on ``cuda:<i>``), 4 threads, 8 OpenMP threads, an 88 GiB memory bound,
the resource ``GPU=1`` — and a client that submits
one task per (shot, language) pair, shot by shot, each asking for ``resources={"GPU": 1}``: what
flows/localize.py does on a cluster (``dask.annotate(resources={"GPU": 1})`` around LipDub). Dask
decides which worker runs which pair, so a shot's languages may land on either GPU.

A task makes the model calls of ``tasks/lipdub.lipdub_pair`` on the worker's resident model
(``get_resident_random_model``: built on the worker's first task, reused after): ``prepare_shot``
keyed by shot, ``embed_prompts`` with all of the shot's prompts, ``dub``. Not included: decoding
and writing media and the other stages (bench/orchestration.py measures those on the CPU).

Reported per n: the batch's wall time from the first submit to the last result (model builds
included: every worker pays its own, in parallel), clips per minute, and the ratio to n=1; each
worker's model loads (must be 1); for every GPU, the largest number of LipDub tasks that ran on it
at once (from the tasks' start and end times; must be 1) and its busy fraction (NVML utilisation
polled every 0.1 s from this process, see bench/lipdub_batch.py). The weights are random: outputs
are noise; only time and GPU activity mean anything.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import time
from dataclasses import asdict

import torch

from gpu_busy import GpuBusy
from lipdub_batch import LANGUAGES, make_shot, pair_seed, prompt
from lipdub_gpu import add_kernel_arguments, kernels_from_args
from lipdub_plain_route import ARCHITECTURES, device_and_dtype

from dubflow.models.lipdub import SourceShot
from dubflow.models.kernels import Kernels

# As deploy/dask-gpu-worker.yaml runs a worker: CPU stages beside the one GPU task, memory bound.
WORKER_THREADS, WORKER_MEMORY_LIMIT, WORKER_OMP_THREADS = 4, "88GiB", 8


def dub_pair(shot: int, language: int, args: argparse.Namespace, size: tuple[int, int], kernels: Kernels) -> dict:
    """On a worker: one (shot, language) take on the worker's resident model; times and where it ran."""
    from distributed import get_worker

    from dubflow.models.lipdub import LipDubModel, get_resident_random_model
    from dubflow.models.profiles import RANDOM_WEIGHTS_SEED

    started = time.time()
    device, dtype = device_and_dtype(args.architecture)
    gpu = get_worker().name.removeprefix("gpu-")
    if device.type == "cuda":
        device = torch.device("cuda", int(gpu))
        torch.cuda.set_device(device)  # so that nothing of this process lands on another worker's GPU
    model = get_resident_random_model(ARCHITECTURES[args.architecture], str(device), dtype, RANDOM_WEIGHTS_SEED,
                                      kernels)
    loaded = time.time()
    source = worker_shot(shot, size, args.frames)
    shot_ready = time.time()
    prepared = model.prepare_shot(source, key=f"shot-{shot}:{model.identity}")
    model.embed_prompts([prompt(shot, other) for other in range(args.languages)])
    output = model.dub(prepared, prompt(shot, language), pair_seed(shot, language))
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert output.frames.shape == source.frames.shape, output.frames.shape
    return {"shot": shot, "language": LANGUAGES[language][0], "gpu": gpu,
            "pid": os.getpid(), "start": started, "model_ready": loaded, "shot_ready": shot_ready, "end": time.time(),
            "model_loads_in_worker": LipDubModel.load_count}


@functools.lru_cache(maxsize=None)
def worker_shot(shot: int, size: tuple[int, int], frames: int) -> SourceShot:
    """The synthetic shot, made once per worker process: it stands in for input the flow decodes from a
    file, and making it (hundreds of millions of random numbers) would otherwise be timed in every take."""
    return make_shot(shot, size, frames)


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of the intervals that overlap at any instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start (+1)
        running += step
        peak = max(peak, running)
    return peak


def run_batch(gpus: int, args: argparse.Namespace, size: tuple[int, int], kernels: Kernels) -> dict:
    from distributed import Client, Nanny, Scheduler, SpecCluster

    import dask

    logging.getLogger("distributed").setLevel(logging.WARNING)
    # The deploy's worker settings. Its OpenMP/BLAS threads must be set before a worker process starts.
    dask.config.set({"distributed.nanny.pre-spawn-environ.OMP_NUM_THREADS": WORKER_OMP_THREADS,
                     "distributed.nanny.pre-spawn-environ.MKL_NUM_THREADS": WORKER_OMP_THREADS})

    workers = {
        f"gpu-{index}": {"cls": Nanny, "options": {
            "nthreads": WORKER_THREADS, "resources": {"GPU": 1}, "memory_limit": WORKER_MEMORY_LIMIT,
            # CUDA_VISIBLE_DEVICES through a Nanny's `env` did not keep a first run's two workers on
            # their own GPUs (both built their model on one): each worker's task picks cuda:<index>.
            "env": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "DASK_LOGGING__DISTRIBUTED": "warning"},
        }}
        for index in range(gpus)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    monitors = {str(index): GpuBusy(str(index)) for index in range(gpus)}
    with SpecCluster(workers=workers, scheduler=scheduler, asynchronous=False) as cluster, Client(cluster) as client:
        client.wait_for_workers(gpus, timeout=120)
        for monitor in monitors.values():
            monitor.__enter__()
        start = time.time()
        futures = [
            client.submit(dub_pair, s, language, args, size, kernels,
                          resources={"GPU": 1}, pure=False, key=f"lipdub-{s}-{language}")
            for s in range(args.shots) for language in range(args.languages)
        ]
        takes = client.gather(futures)
        wall = time.time() - start
        for monitor in monitors.values():
            monitor.__exit__(None, None, None)
    per_gpu = {}
    for gpu, monitor in monitors.items():
        mine = [t for t in takes if t["gpu"] == gpu]
        per_gpu[gpu] = {
            "takes": len(mine),
            "most_lipdub_tasks_at_once": most_at_once([(t["start"], t["end"]) for t in mine]),
            "worker_pids": sorted({t["pid"] for t in mine}),
            "model_loads": max((t["model_loads_in_worker"] for t in mine), default=0),
            "busy_fraction": monitor.fraction, "busy_samples": len(monitor.samples), "nvml_device": monitor.device_name,
        }
    for take in takes:
        for key in ("start", "model_ready", "shot_ready", "end"):
            take[key] -= start
    return {"gpus": gpus, "wall_s": wall, "clips": len(takes), "clips_per_minute": 60 * len(takes) / wall,
            "per_gpu": per_gpu, "takes": takes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="ltx-2.3",
                        help="smoke: the tiny model on the CPU, workers with logical GPUs (a plumbing check)")
    parser.add_argument("--gpus", default="1,2", help="comma-separated GPU counts, each run as its own cluster")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--languages", type=int, default=3, help=f"1-{len(LANGUAGES)} per shot")
    parser.add_argument("--size", default="1280x720", help="WxH")
    parser.add_argument("--frames", type=int, default=121)
    add_kernel_arguments(parser)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    counts = [int(v) for v in args.gpus.split(",")]
    available = torch.cuda.device_count()
    if not counts or min(counts) < 1 or (args.architecture != "smoke" and max(counts) > available):
        parser.error(f"--gpus: counts from 1 to the {available} GPUs this machine has")
    if args.shots < 1 or not 1 <= args.languages <= len(LANGUAGES):
        parser.error(f"--shots must be at least 1 and --languages 1 to {len(LANGUAGES)}")
    size = tuple(int(v) for v in args.size.split("x"))
    kernels = kernels_from_args(args)
    names = [torch.cuda.get_device_name(index) for index in range(available)]
    print(f"{available} GPUs ({', '.join(names)}); torch {torch.__version__}; {args.shots} shots x {args.languages} "
          f"languages at {args.size}x{args.frames}; {kernels}", flush=True)
    runs = []
    for gpus in counts:
        run = run_batch(gpus, args, size, kernels)
        runs.append(run)
        print(f"\n{gpus} GPU(s): {run['clips']} clips in {run['wall_s']:.1f} s = {run['clips_per_minute']:.2f} clips/min")
        for gpu, figures in run["per_gpu"].items():
            busy = "not measured" if figures["busy_fraction"] is None else f"{figures['busy_fraction']:.1%}"
            print(f"  GPU {gpu}: {figures['takes']} takes, at most {figures['most_lipdub_tasks_at_once']} at once, "
                  f"worker pids {figures['worker_pids']}, model loads {figures['model_loads']}, busy {busy}")
        for take in run["takes"]:
            print(f"  shot {take['shot']} {take['language']} on GPU {take['gpu']}: {take['start']:.1f} -> "
                  f"{take['end']:.1f} s (model ready {take['model_ready'] - take['start']:.1f} s after start)")
    base = runs[0]
    for run in runs[1:]:
        print(f"throughput {run['gpus']} GPUs / {base['gpus']}: "
              f"{run['clips_per_minute'] / base['clips_per_minute']:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"gpus_on_machine": names, "torch": torch.__version__, "shots": args.shots,
                       "languages": args.languages, "size": args.size, "frames": args.frames,
                       "kernels": asdict(kernels), "median_take_s": {
                           str(run["gpus"]): statistics.median(t["end"] - t["shot_ready"] for t in run["takes"])
                           for run in runs}, "runs": runs}, handle, indent=2)


if __name__ == "__main__":
    main()
