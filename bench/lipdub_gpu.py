"""LipDub on one GPU with the full-size LTX-2.3 architecture (random weights): seconds per stage, peak memory.

    python bench/lipdub_gpu.py [--sizes 1280x720,1920x1080] [--frames 121] [--fps 24] [--repeats 2] [--json out.json]

For each size: one shot of random frames and a voiced-noise soundtrack; text encode (one prompt),
reference encode (picture at both stage sizes + voice), stage 1, upsample, stage 2, decode — each
timed with the device synchronised — then the whole clip, and the peak GPU memory of the clip.
Repeats after the first are warm (kernels compiled/cached, prompt cache cleared each time); the
table reports the median of the warm repeats. Model build time and the memory the weights hold are
reported once. The weights are random: outputs are noise; only time and memory mean anything.
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


def run_clip(model, shot: SourceShot, prompt: str) -> dict[str, float]:
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
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1280x720,1920x1080")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--fps", default="24")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    fps = Fraction(args.fps)

    device = torch.cuda.get_device_name()
    print(f"GPU {device}; torch {torch.__version__}")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build_random_model(LTX_2_3, "cuda", torch.bfloat16, RANDOM_WEIGHTS_SEED)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    weights_gib = torch.cuda.memory_allocated() / 2**30
    print(f"model built on the GPU (random weights, IC-LoRA fused): {build_s:.1f} s, {weights_gib:.1f} GiB resident")

    prompt = build_prompt("A man in a grey coat", "French", "Bonjour, je suis très heureux de vous revoir ici.")
    results = {"gpu": device, "torch": torch.__version__, "build_s": build_s, "weights_gib": weights_gib,
               "frames": args.frames, "fps": str(fps), "sizes": {}}
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        shot = synthetic_shot(args.frames, width, height, fps, seed=width)
        runs = [run_clip(model, shot, prompt) for _ in range(args.repeats)]
        warm = runs[1:] or runs
        summary = {key: statistics.median(r[key] for r in warm) for key in runs[0]}
        results["sizes"][size] = {"runs": runs, "median_warm": summary}
        print(f"{size}: " + ", ".join(f"{k} {summary[k]:.2f}" for k in (*STAGES, "clip", "peak_gib")), flush=True)

    print(f"\n| size | {' | '.join(STAGES)} | clip s | peak GiB |")
    print("|---" * (len(STAGES) + 3) + "|")
    for size, entry in results["sizes"].items():
        m = entry["median_warm"]
        print(f"| {size}x{args.frames} | " + " | ".join(f"{m[s]:.2f}" for s in STAGES) + f" | {m['clip']:.2f} | {m['peak_gib']:.1f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
