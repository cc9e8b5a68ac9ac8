"""Demucs separation through dubflow versus the demucs command line run once per file: real-time factors.

    python bench/separation.py [--device cpu|cuda] [--files 8] [--seconds 10] [--repeats 3]
                               [--model-dir DIR] [--json out.json]

Model: the full-size `htdemucs` architecture (`HTDEMUCS_KWARGS`: 41.98 M parameters, 7.8 s segments)
with random weights, written once in Demucs' own package format (`build_random_htdemucs`) into
--model-dir; every route loads that one file through Demucs' loader. Inputs: --files synthetic stereo
48 kHz 24-bit WAVs of --seconds each (a harmonic "voice" with a syllable envelope, a chord, noise;
different per file), the same files for every route. Same separation settings everywhere: no shifts,
overlap 0.25, the model's 7.8 s segment.

Routes, each timed over the whole set of files, wall clock (and CPU seconds of the process or its
children), device synchronised:

- cli: per file, a fresh ``python -m demucs.separate --repo DIR -n NAME -d DEVICE --shifts 0
  --overlap 0.25 --two-stems vocals --int24 -o OUT FILE`` (argument list, no shell), as a user without
  dubflow would run it: every process starts Python, imports torch, loads the model, reads the file,
  separates and writes vocals + no_vocals.
- dubflow: in this process, a `Separator` (what the resident model is) loaded once per repeat (load_s),
  then every file read with `media.io.read_track`, all of them separated by one
  `Separator.separate_many` call (segments of all files batched, `batch_size` 4) and dialogue + bed
  written as 24-bit WAVs (batched_s). Reported with and without the load.
- dubflow per file: the same loaded model, one `Separator.separate` call per file, as
  `tasks/separate.py` calls it for each shot (per_file_s).

Speed = seconds of audio separated per wall-clock second (x real time, higher is better); RTF = wall
seconds per second of audio (lower is better); ratio = dubflow speed / cli speed = cli wall / dubflow
wall. The routes alternate order from one repeat to the next; the table gives the median over
repeats. The weights are random: outputs are noise, only time means anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import demucs
import numpy as np
import torch
from demucs.pretrained import get_model

from dubflow.models.profiles import cache_dir
from dubflow.models.separator import HTDEMUCS_KWARGS, Separator, build_random_htdemucs
from dubflow.media.io import AudioTrack, read_track, write_wav

SAMPLE_RATE = 48_000
TARGET_RATIO = 2.0  # issue 9: dubflow >= 2x the per-file command line's throughput
SHIFTS = 0
OVERLAP = 0.25


def synthetic_soundtrack(seconds: float, seed: int) -> np.ndarray:
    """(2, n) float32 at 48 kHz: a voiced 'speaker' in the centre, a panned chord, independent noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = rng.uniform(110, 220) * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))  # vibrato
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    syllables = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t), 0, None) ** 2
    voice = syllables * sum(np.sin(k * phase) / k for k in range(1, 8))
    chord = sum(np.sin(2 * np.pi * rng.uniform(200, 800) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3))
    chord *= 0.5 + 0.5 * np.sin(2 * np.pi * 0.25 * t)
    pan = rng.uniform(0.2, 0.8)
    mix = np.stack([0.4 * voice + 0.15 * pan * chord, 0.4 * voice + 0.15 * (1 - pan) * chord])
    mix += 0.02 * rng.standard_normal(mix.shape)
    return (0.7 * mix / np.abs(mix).max()).astype(np.float32)  # peak at -3 dBFS


def write_inputs(folder: Path, files: int, seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [write_wav(folder / f"shot{i:03d}.wav",
                      AudioTrack(synthetic_soundtrack(seconds, seed=i), SAMPLE_RATE, "stereo"))
            for i in range(files)]


def machine_info(device: str) -> dict:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    info = {
        "cpu": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "demucs": demucs.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def model_info(name: str, repo: Path) -> dict:
    (package,) = repo.glob("*.th")
    (model,) = get_model(name, repo=repo).models  # the bag holds the one package
    return {
        "name": name,
        "repo": str(repo),
        "package": package.name,
        "package_sha256": hashlib.sha256(package.read_bytes()).hexdigest(),
        "package_bytes": package.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "segment_s": float(model.segment),
        "kwargs": {key: str(value) for key, value in HTDEMUCS_KWARGS.items()},
        "random_weights": True,
    }


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_command(track: Path, name: str, repo: Path, device: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "demucs.separate", "--repo", str(repo), "-n", name, "-d", device,
            "--shifts", str(SHIFTS), "--overlap", str(OVERLAP), "--two-stems", "vocals", "--int24",
            "-o", str(out), str(track)]


def run_cli(tracks: list[Path], name: str, repo: Path, device: str, out: Path) -> dict:
    """One demucs.separate process per file, one after another."""
    per_file = []
    cpu_start = children_cpu_seconds()
    for track in tracks:
        start = time.perf_counter()
        done = subprocess.run(cli_command(track, name, repo, device, out), capture_output=True, text=True)
        per_file.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"demucs.separate failed on {track} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    cpu_s = children_cpu_seconds() - cpu_start
    stems = sorted(out.glob(f"{name}/*/*.wav"))
    assert len(stems) == 2 * len(tracks), stems  # vocals + no_vocals per file
    return {"wall_s": sum(per_file), "cpu_s": cpu_s, "per_file_s": per_file}


def load_separator(name: str, repo: Path, device: str) -> tuple[Separator, float]:
    """A fresh Separator built as `get_resident_separator` builds the resident one (its defaults, shifts
    0; overlap 0.25 is also the default, passed so the CLI's is visibly the same); timed from reading
    the package to the model on the device."""
    start = time.perf_counter()
    separator = Separator(name, repo, device=device, shifts=SHIFTS, overlap=OVERLAP)
    synchronize(device)
    return separator, time.perf_counter() - start


def run_dubflow(separator: Separator, tracks: list[Path], out: Path, batched: bool) -> dict:
    """Read every file, separate them (one `separate_many` call, or one `separate` call per file),
    write each file's dialogue and bed as 24-bit 48 kHz WAVs."""
    out.mkdir(parents=True)
    cpu_start = time.process_time()
    start = time.perf_counter()
    inputs = [read_track(track) for track in tracks]
    soundtracks = [(track.samples, track.sample_rate, track.layout) for track in inputs]
    if batched:
        stems = separator.separate_many(soundtracks)
    else:
        stems = [separator.separate(*soundtrack) for soundtrack in soundtracks]
    for track, source, result in zip(tracks, inputs, stems):
        write_wav(out / f"{track.stem}_dx.wav", AudioTrack(result.dialogue, result.sample_rate, source.layout))
        write_wav(out / f"{track.stem}_me.wav", AudioTrack(result.bed, result.sample_rate, source.layout))
    return {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start}


def summarize(runs: list[dict], audio_seconds: float) -> dict:
    """Median wall and CPU seconds per row over the repeats, speed, RTF and ratio to the CLI."""
    rows = {
        "cli_per_file_process": [r["cli"] for r in runs],
        "dubflow_batched_with_load": [{"wall_s": r["dubflow_load_s"] + r["dubflow_batched"]["wall_s"],
                                       "cpu_s": r["dubflow_load_cpu_s"] + r["dubflow_batched"]["cpu_s"]}
                                      for r in runs],
        "dubflow_batched_resident": [r["dubflow_batched"] for r in runs],
        "dubflow_per_file_resident": [r["dubflow_per_file"] for r in runs],
    }
    summary = {}
    for row, values in rows.items():
        wall = statistics.median(v["wall_s"] for v in values)
        summary[row] = {
            "wall_s": wall,
            "cpu_s": statistics.median(v["cpu_s"] for v in values),
            "speed_x_realtime": audio_seconds / wall,
            "rtf_wall_per_audio": wall / audio_seconds,
        }
    cli_wall = summary["cli_per_file_process"]["wall_s"]
    for row in summary:
        summary[row]["ratio_to_cli"] = cli_wall / summary[row]["wall_s"]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model-dir", type=Path, default=cache_dir() / "bench" / "demucs",
                        help="Demucs local model folder for the random full-size htdemucs (written once)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    name, repo = build_random_htdemucs(args.model_dir)
    machine = machine_info(args.device)
    model = model_info(name, repo)
    audio_seconds = args.files * args.seconds
    print(f"{machine['cpu']} ({machine['cpus_usable']} usable CPUs, {machine['torch_threads']} torch threads), "
          f"device {machine.get('gpu', args.device)}; torch {machine['torch']}, demucs {machine['demucs']}")
    print(f"model {name}: {model['parameters'] / 1e6:.2f} M parameters, random weights, {repo}")
    print(f"{args.files} files x {args.seconds:g} s = {audio_seconds:g} s of stereo 48 kHz audio, "
          f"{args.repeats} repeats", flush=True)
    if args.device.startswith("cuda"):
        torch.zeros(1, device=args.device)  # CUDA context: once per process, like the imports, not per batch

    settings = {"shifts": SHIFTS, "overlap": OVERLAP,
                "cli_command": cli_command(Path("FILE"), name, Path("MODEL_DIR"), args.device, Path("OUT"))}
    runs = []
    with tempfile.TemporaryDirectory(prefix="dubflow-bench-separation-") as tmp:
        tracks = write_inputs(Path(tmp) / "inputs", args.files, args.seconds)
        for repeat in range(args.repeats):
            run: dict = {"repeat": repeat + 1, "loadavg_before": os.getloadavg()}
            work = Path(tmp) / f"repeat{repeat}"

            def cli() -> None:
                run["cli"] = run_cli(tracks, name, repo, args.device, work / "cli")

            def dubflow() -> None:
                cpu_start = time.process_time()
                separator, run["dubflow_load_s"] = load_separator(name, repo, args.device)
                run["dubflow_load_cpu_s"] = time.process_time() - cpu_start
                settings["dubflow_batch_size"] = separator.batch_size
                run["dubflow_batched"] = run_dubflow(separator, tracks, work / "batched", batched=True)
                run["dubflow_per_file"] = run_dubflow(separator, tracks, work / "per_file", batched=False)

            # Alternate which route goes first, so that a slow spell on a shared machine hits both.
            for route in (cli, dubflow) if repeat % 2 == 0 else (dubflow, cli):
                route()
            run["loadavg_after"] = os.getloadavg()
            shutil.rmtree(work)
            runs.append(run)
            print(f"repeat {repeat + 1}: cli {run['cli']['wall_s']:.2f} s "
                  f"(per file {', '.join(f'{s:.2f}' for s in run['cli']['per_file_s'])}); "
                  f"dubflow load {run['dubflow_load_s']:.2f} s + batched {run['dubflow_batched']['wall_s']:.2f} s, "
                  f"per file {run['dubflow_per_file']['wall_s']:.2f} s; "
                  f"load average {run['loadavg_before'][0]:.2f} -> {run['loadavg_after'][0]:.2f}", flush=True)

    summary = summarize(runs, audio_seconds)
    labels = {
        "cli_per_file_process": "demucs.separate, one process per file",
        "dubflow_batched_with_load": "dubflow separate_many, incl. its one model load",
        "dubflow_batched_resident": "dubflow separate_many, model resident",
        "dubflow_per_file_resident": "dubflow separate per file, model resident",
    }
    print("\n| route | wall s (median) | CPU s | speed (x real time) | RTF (wall/audio) | throughput vs CLI |")
    print("|---|---|---|---|---|---|")
    for row, entry in summary.items():
        print(f"| {labels[row]} | {entry['wall_s']:.2f} | {entry['cpu_s']:.1f} | {entry['speed_x_realtime']:.3f} "
              f"| {entry['rtf_wall_per_audio']:.3f} | {entry['ratio_to_cli']:.2f}x |")
    ratio = summary["dubflow_batched_with_load"]["ratio_to_cli"]
    met = ratio >= TARGET_RATIO
    print(f"\ntarget dubflow >= {TARGET_RATIO:g}x the per-file CLI (model load included): "
          f"{'met' if met else 'NOT met'} ({ratio:.2f}x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        results = {
            "benchmark": "separation",
            "command": [Path(sys.argv[0]).as_posix(), *sys.argv[1:]],
            "machine": machine,
            "model": model,
            "inputs": {"files": args.files, "seconds_each": args.seconds, "audio_seconds": audio_seconds,
                       "sample_rate": SAMPLE_RATE, "channels": 2, "format": "WAV PCM 24-bit"},
            "settings": settings,
            "definitions": {
                "speed_x_realtime": "audio seconds separated per wall-clock second (higher is better)",
                "rtf_wall_per_audio": "wall-clock seconds per audio second (lower is better)",
                "ratio_to_cli": "row speed / cli speed = cli wall / row wall, over the same files",
            },
            "runs": runs,
            "median": summary,
            "target_ratio": TARGET_RATIO,
            "target_met": met,
        }
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
