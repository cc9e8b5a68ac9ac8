"""LipDub on one GPU with the full-size LTX-2.3 architecture (random weights): seconds per stage, peak memory.

    python bench/lipdub_gpu.py [--sizes 1280x720,1920x1080] [--frames 121] [--fps 24] [--repeats 2]
                               [--weights bf16,fp8] [--json out.json]

For each weight storage (bf16; fp8 = float8 storage, bf16 compute) and each size: one shot of random
frames and a voiced-noise soundtrack; text encode (one prompt), reference encode (picture at both
stage sizes + voice), stage 1, upsample, stage 2, decode — each timed with the device synchronised —
then the whole clip and its peak GPU memory. Repeats after the first are warm (the prompt cache is
cleared each time, so the text encoder runs, and is brought back from host memory if it was
released); the table reports the median of the warm repeats. Model build time and the memory the
weights hold are reported per storage. With both storages, the fp8 take is compared with the bf16
take of the same seed (relative L2 error of frames and audio). The weights are random: outputs are
noise; only time, memory and the bf16-vs-fp8 difference mean anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from fractions import Fraction

import numpy as np
import torch

from dubflow.models.lipdub import SourceShot, build_prompt, build_random_model
from dubflow.models.ltx2_architectures import LTX_2_3
from dubflow.models.kernels import Kernels
from dubflow.models.profiles import RANDOM_WEIGHTS_SEED

STAGES = ("text_encode", "reference_encode", "stage_1", "upsample", "stage_2", "decode")


def synthetic_shot(frames: int, width: int, height: int, fps: Fraction, seed: int) -> SourceShot:
    rng = np.random.default_rng(seed)
    picture = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    samples = round(Fraction(frames) / fps * 48_000)
    t = np.arange(samples) / 48_000
    voice = 0.2 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2
    audio = np.stack([voice, voice]).astype(np.float32) + 0.01 * rng.standard_normal((2, samples)).astype(np.float32)
    return SourceShot(picture, fps, audio, 48_000)


def run_clip(model, shot: SourceShot, prompt: str) -> tuple[dict[str, float], object]:
    timings: dict[str, float] = {}
    model._prompts.clear()  # measure the text encoder every time
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.embed_prompts([prompt])
    torch.cuda.synchronize()
    timings["text_encode"] = time.perf_counter() - start
    mark = time.perf_counter()
    prepared = model.prepare_shot(shot)  # no key: encoded every time
    torch.cuda.synchronize()
    timings["reference_encode"] = time.perf_counter() - mark
    output = model.dub(prepared, prompt, seed=1, timings=timings)
    torch.cuda.synchronize()
    timings["clip"] = time.perf_counter() - start
    timings["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    assert output.frames.shape == shot.frames.shape, (output.frames.shape, shot.frames.shape)
    assert np.isfinite(output.audio).all()
    return timings, output


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    value, reference = value.astype(np.float64), reference.astype(np.float64)
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's GPU kernels (models/kernels.Kernels), as $DUBFLOW_FP8_WEIGHTS/_ATTENTION/_COMPILE set them."""
    parser.add_argument("--fp8-weights", action="store_true", help="transformer weights stored in float8")
    parser.add_argument("--attention", default=Kernels().attention, help="a diffusers attention backend")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer block")


def kernels_from_args(args: argparse.Namespace) -> Kernels:
    return Kernels(fp8_weights=args.fp8_weights, attention=args.attention, compile_blocks=args.compile)


def kernel_arguments(args: argparse.Namespace) -> list[str]:
    """``add_kernel_arguments``' options as a child process's argument list."""
    return (["--fp8-weights"] if args.fp8_weights else []) + ["--attention", args.attention] + (
        ["--compile"] if args.compile else [])



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1280x720,1920x1080")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--fps", default="24")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--weights", default="bf16", help="comma-separated: bf16, fp8")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    fps = Fraction(args.fps)

    device = torch.cuda.get_device_name()
    print(f"GPU {device}; torch {torch.__version__}")
    prompt = build_prompt("A man in a grey coat", "French", "Bonjour, je suis très heureux de vous revoir ici.")
    results = {"gpu": device, "torch": torch.__version__, "frames": args.frames, "fps": str(fps), "variants": {}}
    takes: dict[str, dict[str, object]] = {}
    for storage in args.weights.split(","):
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model = build_random_model(LTX_2_3, "cuda", torch.bfloat16, RANDOM_WEIGHTS_SEED,
                                   Kernels(fp8_weights=storage == "fp8"))
        torch.cuda.synchronize()
        variant = {"build_s": time.perf_counter() - start, "weights_gib": torch.cuda.memory_allocated() / 2**30,
                   "sizes": {}}
        print(f"[{storage}] model built on the GPU (random weights, IC-LoRA fused): {variant['build_s']:.1f} s, "
              f"{variant['weights_gib']:.1f} GiB resident", flush=True)
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            shot = synthetic_shot(args.frames, width, height, fps, seed=width)
            runs = []
            for _ in range(args.repeats):
                timings, output = run_clip(model, shot, prompt)
                runs.append(timings)
            takes.setdefault(size, {})[storage] = output
            warm = runs[1:] or runs
            summary = {key: statistics.median(r[key] for r in warm) for key in runs[0]}
            variant["sizes"][size] = {"runs": runs, "median_warm": summary}
            print(f"[{storage}] {size}: " + ", ".join(f"{k} {summary[k]:.2f}" for k in (*STAGES, "clip", "peak_gib")),
                  flush=True)
        results["variants"][storage] = variant
        del model
        torch.cuda.empty_cache()

    print(f"\n| weights | size | {' | '.join(STAGES)} | clip s | peak GiB |")
    print("|---" * (len(STAGES) + 4) + "|")
    for storage, variant in results["variants"].items():
        for size, entry in variant["sizes"].items():
            m = entry["median_warm"]
            print(f"| {storage} | {size}x{args.frames} | " + " | ".join(f"{m[s]:.2f}" for s in STAGES)
                  + f" | {m['clip']:.2f} | {m['peak_gib']:.1f} |")
    if {"bf16", "fp8"} <= set(results["variants"]):
        results["fp8_vs_bf16"] = {}
        for size, pair in takes.items():
            errors = {"frames": relative_error(pair["fp8"].frames, pair["bf16"].frames),
                      "audio": relative_error(pair["fp8"].audio, pair["bf16"].audio)}
            results["fp8_vs_bf16"][size] = errors
            print(f"fp8 vs bf16 at {size}: relative L2 error frames {errors['frames']:.4f}, audio {errors['audio']:.4f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
