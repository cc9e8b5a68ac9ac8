"""LipDub over a batch of shots x languages through one resident model, versus one clip per process.

Expected GPU time (one H100, full-size LTX-2.3, bf16, 1280x720x121): the resident batch of 4 shots x 3
languages about 6-7 min (~1 min start and imports, ~75 s a shot); each one-clip-per-process clip 1.5-2 min.

    python bench/lipdub_batch.py [--architecture ltx-2.3|smoke] [--size 1280x720] [--frames 121] [--shots 4]
                                 [--languages 3] [--fresh-process-clips 3] [--warm-up] [kernel options]
                                 [--json out.json]

Random weights (``build_random_model``: the full-size LTX-2.3 architecture built on the GPU, or the tiny
``smoke`` one, which also runs on a CPU); ``--shots`` synthetic shots (``synthetic_shot`` from
bench/lipdub_gpu.py, 24 fps, one seed per shot), ``--languages`` prompts per shot (French, German,
Spanish, English, Russian: the languages LipDub is validated on upstream; the speaker names the shot,
so each shot has its own prompts, as real shots do), one seed per pair.

Resident batch: one model, built once (its build time reported apart), and for every (shot, language)
pair, shot by shot, exactly the model calls of ``tasks/lipdub.py: lipdub_pair``:
``prepare_shot(shot, key=<shot>:<model identity>)`` — the shot's first language encodes the references,
the others find them cached —, ``embed_prompts(<all the shot's prompts>)`` — one Gemma batch on the
shot's first pair, cached after — and ``dub(prepared, prompt, seed)``. With ``--warm-up``, one
throwaway take right after the build (``warm_up``; timed apart, outside the batch and its GPU busy
figure, as a worker's load-time warm-up would be). Not included: what the flow does
around the model (decoding the shot from its file, writing the picture master and the WAV, the device
lease, the other stages), so this is the model's share of a batch. Reported: the batch's wall time,
time per clip (wall / clips), and per pair the seconds of each call (device-synchronised).

GPU busy fraction (bench/gpu_busy.py): NVML's utilisation counter polled every 0.1 s by a thread over
the batch and averaged: the idle time (host-side work between and inside calls, process start-up), not
how well the kernels use the GPU (for that see bench/lipdub_flops.py). Also per model call (prepare_shot,
embed_prompts, dub): the busy fraction over that call's spans, to show where the idle time is, and the
whole timeline in the JSON. Without an NVIDIA driver (CPU) it is not measured. The GPU is NVML's device
for the first entry of CUDA_VISIBLE_DEVICES (an index or a UUID; device 0 when unset).

One clip per process (the upstream CLI's way): for the first ``--fresh-process-clips`` pairs of the
batch, a fresh ``python bench/lipdub_batch.py --child S,L ...`` (an argument list, no shell) each, run
before the resident model exists, so each child has the GPU to itself. A child starts Python, imports,
builds the model, makes its shot, text-encodes its one prompt, encodes the references, dubs, exits; the
parent times the whole process, the child reports its stages. The per-clip figure is the process's wall
time less making the synthetic shot (input the resident batch makes outside its timing too). The
random-weight build (~6 s on an H100) stands in for loading weights: a real load reads ~70 GB of
weights from disk, far slower, so the measured per-clip cost is a lower bound of the upstream CLI's.
The child's text_encode is reported apart (the text encoder stays on the GPU while takes fit beside
it; one that does not moves it to host memory once, a cost a one-clip CLI shares).
Only the clips named are measured; the projection to the whole batch is printed as an extrapolation.

The weights are random: outputs are noise; only time and GPU activity mean anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import torch

from dubflow.models.lipdub import LipDubModel, SourceShot, build_prompt, build_random_model
from dubflow.models.profiles import RANDOM_WEIGHTS_SEED
from gpu_busy import POLL_S, GpuBusy  # bench/ on sys.path
from lipdub_gpu import add_kernel_arguments, kernel_arguments, kernels_from_args, synthetic_shot  # bench/ on sys.path
from lipdub_plain_route import ARCHITECTURES, Clock, device_and_dtype

FPS = Fraction(24)
SPEAKER = "A man in a grey coat"
LANGUAGES = (
    ("French", "Bonjour, je suis très heureux de vous revoir ici."),
    ("German", "Guten Tag, ich freue mich sehr, Sie hier wiederzusehen."),
    ("Spanish", "Hola, me alegra mucho volver a verte aquí."),
    ("English", "Hello, I am very happy to see you here again."),
    ("Russian", "Здравствуйте, я очень рад снова видеть вас здесь."),
)
CHILD_RESULT = "CHILD-RESULT "  # prefixes the child's one line of JSON on stdout


def prompt(shot: int, language: int) -> str:
    # Unique per shot, as real shots' lines are: each shot's prompts miss the cache and run Gemma once.
    return build_prompt(f"{SPEAKER} in shot {shot + 1}", *LANGUAGES[language])


def pair_seed(shot: int, language: int) -> int:
    return 1000 * shot + language


def make_shot(index: int, size: tuple[int, int], frames: int) -> SourceShot:
    return synthetic_shot(frames, *size, FPS, seed=index)


def warm_up(model: LipDubModel, size: tuple[int, int], frames: int) -> None:
    """One throwaway take (a synthetic shot, a prompt no pair uses), as a worker would run right after it
    loads its model: the process's first-use costs (CUDA libraries, kernel selection, the compiled
    block's graphs for both stages' token counts, the first Gemma call) fall here, not on the first shot."""
    shot = synthetic_shot(frames, *size, FPS, seed=10_000)
    text = build_prompt("A voice for warming up", *LANGUAGES[0])
    model.dub(model.prepare_shot(shot), text, seed=0)


def run_batch(
    model: LipDubModel, shots: list[SourceShot], languages: int, device: torch.device
) -> tuple[list[dict], list[tuple[str, float, float]]]:
    """Every pair as tasks/lipdub.py's ``lipdub_pair`` calls the model; seconds per call and per pair, and
    each call's (name, start, end) in perf_counter time (the device synchronised at both ends)."""
    pairs = []
    spans: list[tuple[str, float, float]] = []
    for s, shot in enumerate(shots):
        prompts = [prompt(s, language) for language in range(languages)]
        for language in range(languages):
            timings: dict = {"shot": s, "language": LANGUAGES[language][0]}
            clock = Clock(device)
            start = time.perf_counter()
            prepared = model.prepare_shot(shot, key=f"shot-{s}:{model.identity}")
            clock.lap(timings, "prepare_shot")
            spans.append(("prepare_shot", start, start := time.perf_counter()))
            model.embed_prompts(prompts)
            clock.lap(timings, "embed_prompts")
            spans.append(("embed_prompts", start, start := time.perf_counter()))
            output = model.dub(prepared, prompts[language], pair_seed(s, language))
            clock.lap(timings, "dub")
            spans.append(("dub", start, time.perf_counter()))
            timings["pair"] = clock.total()
            assert output.frames.shape == shot.frames.shape, output.frames.shape
            pairs.append(timings)
            print(f"resident pair {len(pairs)}: " + ", ".join(
                f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in timings.items()), flush=True)
    return pairs, spans


def busy_by_call(busy: GpuBusy, spans: list[tuple[str, float, float]]) -> dict[str, dict[str, float | None]]:
    """Per model call: its seconds in the batch and the GPU busy fraction over them (where the idle is)."""
    table: dict[str, dict[str, float | None]] = {}
    for name in dict.fromkeys(span[0] for span in spans):
        mine = [(start, end) for call, start, end in spans if call == name and end - start >= 2 * POLL_S]
        seconds = sum(end - start for call, start, end in spans if call == name)
        weighted = [(busy.fraction_between(start, end), end - start) for start, end in mine]
        weighted = [(f, d) for f, d in weighted if f is not None]
        total = sum(d for _, d in weighted)
        table[name] = {"seconds": seconds, "busy_fraction": sum(f * d for f, d in weighted) / total if total else None}
    return table


def run_child(args: argparse.Namespace, size: tuple[int, int]) -> None:
    """One clip in this fresh process, the way a one-clip CLI does it; prints its stages as JSON."""
    shot_index, language = (int(v) for v in args.child.split(","))
    device, dtype = device_and_dtype(args.architecture)
    timings: dict[str, float] = {}
    clock = Clock(device)
    model = build_random_model(ARCHITECTURES[args.architecture], str(device), dtype, RANDOM_WEIGHTS_SEED,
                               kernels_from_args(args))
    clock.lap(timings, "build")
    shot = make_shot(shot_index, size, args.frames)
    clock.lap(timings, "make_shot")
    model.embed_prompts([prompt(shot_index, language)])
    clock.lap(timings, "text_encode")
    prepared = model.prepare_shot(shot)
    clock.lap(timings, "reference_encode")
    output = model.dub(prepared, prompt(shot_index, language), pair_seed(shot_index, language))
    clock.lap(timings, "dub")
    assert output.frames.shape == shot.frames.shape
    print(CHILD_RESULT + json.dumps(timings), flush=True)


def run_fresh_processes(args: argparse.Namespace, pairs: list[tuple[int, int]]) -> list[dict]:
    """Each pair in a fresh Python process; its wall time measured here, its stages reported by it."""
    clips = []
    for shot_index, language in pairs:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", f"{shot_index},{language}",
                   "--architecture", args.architecture, "--size", args.size, "--frames", str(args.frames)]
        command += kernel_arguments(args)
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            sys.exit(f"child {shot_index},{language} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        line = next(line for line in done.stdout.splitlines() if line.startswith(CHILD_RESULT))
        stages = json.loads(line[len(CHILD_RESULT):])
        clip = {"shot": shot_index, "language": LANGUAGES[language][0], "wall": wall, **stages,
                # Python start, imports, CUDA set-up and teardown: what the child could not time itself.
                "process_overhead": wall - sum(stages.values()),
                "clip": wall - stages["make_shot"]}
        clips.append(clip)
        print(f"fresh-process clip {len(clips)}: " + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in clip.items()), flush=True)
    return clips


def busy_text(busy: GpuBusy) -> str:
    if busy.fraction is None:
        return f"not measured ({busy.unavailable or 'no sample: the block was shorter than a poll'})"
    return f"{busy.fraction:.1%} ({len(busy.samples)} samples)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="ltx-2.3")
    parser.add_argument("--size", default="1280x720", help="WxH")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--languages", type=int, default=3, help=f"1-{len(LANGUAGES)} per shot")
    parser.add_argument("--fresh-process-clips", type=int, default=3,
                        help="pairs (the batch's first) also run one per fresh process; 0 skips that part")
    add_kernel_arguments(parser)
    parser.add_argument("--warm-up", action="store_true",
                        help="one throwaway take after the build, timed apart (a worker's load-time warm-up)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "S,L": run one pair, print its stages
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    if args.child is not None:
        run_child(args, size)
        return
    all_pairs = [(s, language) for s in range(args.shots) for language in range(args.languages)]
    if args.shots < 1 or not 1 <= args.languages <= len(LANGUAGES):
        parser.error(f"--shots must be at least 1 and --languages 1 to {len(LANGUAGES)}")
    if not 0 <= args.fresh_process_clips <= len(all_pairs):
        parser.error(f"--fresh-process-clips must be 0 to {len(all_pairs)} (the batch's pairs)")
    device, dtype = device_and_dtype(args.architecture)
    print(f"{args.architecture} on {device} ({dtype}); torch {torch.__version__}; {args.shots} shots x "
          f"{args.languages} languages at {args.size}x{args.frames}, {FPS} fps", flush=True)
    results: dict = {"dtype": str(dtype), "torch": torch.__version__, "architecture": args.architecture,
                     "size": args.size, "frames": args.frames, "fps": str(FPS), "shots": args.shots,
                     "languages": args.languages, "kernels": asdict(kernels_from_args(args))}

    # Fresh processes first: this process holds no model yet, so each child has the whole GPU.
    fresh: list[dict] = []
    if args.fresh_process_clips:
        with GpuBusy() as fresh_busy:
            fresh = run_fresh_processes(args, all_pairs[: args.fresh_process_clips])
        results["one_clip_per_process"] = {
            "clips_measured": len(fresh), "clips": fresh, "gpu_busy_fraction": fresh_busy.fraction,
            "mean": {key: statistics.fmean(clip[key] for clip in fresh)
                     for key in fresh[0] if isinstance(fresh[0][key], float)},
        }

    # CUDA is first touched here, after the children: this process's context took none of their memory.
    results["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {results['device']}", flush=True)
    build = Clock(device)
    model = build_random_model(ARCHITECTURES[args.architecture], str(device), dtype, RANDOM_WEIGHTS_SEED,
                               kernels_from_args(args))
    build_s = build.total()
    warm_up_s = None
    if args.warm_up:
        warming = Clock(device)
        warm_up(model, size, args.frames)
        warm_up_s = warming.total()
        print(f"warm-up take: {warm_up_s:.1f} s", flush=True)
    shots = [make_shot(s, size, args.frames) for s in range(args.shots)]
    encodings_before = model.reference_encodings  # the warm-up's own
    with GpuBusy() as busy:
        batch = Clock(device)
        pairs, spans = run_batch(model, shots, args.languages, device)
        total_s = batch.total()
    by_call = busy_by_call(busy, spans)
    # The process's first-use costs (CUDA libraries, the first Gemma call, first kernels) fall on the first shot.
    first_shot_end = spans[len(spans) // args.shots - 1][2]  # every shot makes the same calls
    after_first_shot = busy.fraction_between(first_shot_end, spans[-1][2]) if args.shots > 1 else None
    per_clip = total_s / len(pairs)
    results["resident"] = {
        "build_s": build_s, "warm_up_s": warm_up_s, "total_s": total_s, "clips": len(pairs), "per_clip_s": per_clip,
        "per_clip_with_build_s": (total_s + build_s) / len(pairs), "gpu_busy_fraction": busy.fraction,
        "gpu_busy_samples": len(busy.samples), "nvml_device": busy.device_name, "pairs": pairs,
        "reference_encodings": model.reference_encodings - encodings_before, "gpu_busy_by_call": by_call,
        "gpu_busy_after_first_shot": after_first_shot,
        "gpu_utilisation_timeline": [[round(t - spans[0][1], 2), u] for t, u in zip(busy.times, busy.samples)],
    }

    first = [p["pair"] for p in pairs if p["language"] == LANGUAGES[0][0]]
    later = [p["pair"] for p in pairs if p["language"] != LANGUAGES[0][0]]
    print(f"\nresident model: built in {build_s:.1f} s; {len(pairs)} clips in {total_s:.1f} s = {per_clip:.2f} s "
          f"a clip ({(total_s + build_s) / len(pairs):.2f} s with the build); GPU busy {busy_text(busy)}")
    print(f"  a shot's first language {statistics.fmean(first):.2f} s a pair (references + all its prompts encoded)"
          + (f", later languages {statistics.fmean(later):.2f} s a pair" if later else ""))
    print(f"  reference encodings: {model.reference_encodings - encodings_before} for {args.shots} shots")
    if after_first_shot is not None:
        print(f"  GPU busy after the first shot (its first-use costs left out): {after_first_shot:.1%}")
    print("  GPU busy by call (calls of at least 0.2 s): " + "; ".join(
        f"{name} {row['seconds']:.1f} s, " + ("not measured" if row["busy_fraction"] is None else f"{row['busy_fraction']:.1%}")
        for name, row in by_call.items()))
    if fresh:
        mean = results["one_clip_per_process"]["mean"]
        ratio = mean["clip"] / per_clip
        results["one_clip_per_process"]["over_resident_per_clip"] = ratio
        print(f"one clip per process ({len(fresh)} clips measured): {mean['clip']:.2f} s a clip — "
              + ", ".join(f"{k} {mean[k]:.2f}" for k in ("process_overhead", "build", "text_encode",
                                                         "reference_encode", "dub"))
              + f"; GPU busy {busy_text(fresh_busy)}")
        print(f"  one clip per process / resident, per clip: {ratio:.2f}x")
        print(f"  extrapolated, not measured: {len(pairs)} clips one per process would take about "
              f"{len(pairs)} x {mean['clip']:.1f} = {len(pairs) * mean['clip']:.0f} s "
              f"(resident, measured: {total_s:.0f} s + {build_s:.0f} s build)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
