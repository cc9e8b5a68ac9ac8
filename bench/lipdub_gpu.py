"""LipDub on one GPU with the full-size LTX-2.3 architecture (random weights): seconds per stage, peak memory.

    python bench/lipdub_gpu.py [--sizes 1280x720,1920x1080] [--frames 121] [--fps 24] [--repeats 2]
                               [--variants bf16+compile,fp8lin+compile,fp8lin+fp8attn+compile]
                               [--fp8-weights] [--fp8-linears] [--attention B] [--compile] [--json out.json]

For each kernel variant (models/kernels.Kernels, spelled as words joined by "+": bf16, compile,
fp8w = float8 storage with bf16 compute, fp8lin = float8 linears, fp8attn = cuDNN float8 video
self-attention, attn=<diffusers backend>; without --variants, the one variant the kernel options
name) and each size: one shot of random frames and a voiced-noise soundtrack; text encode (one
prompt), reference encode (picture at both stage sizes + voice), stage 1, upsample, stage 2, decode
— each timed with the device synchronised — then the whole clip and its peak GPU memory. Repeats
after the first are warm (the prompt cache is cleared each time, so the text encoder runs); the
table reports the median of the warm repeats. Model build time and the memory the weights hold are
reported per variant, and dynamo's counters (graphs, recompiles, fallbacks) after it.

Drift: every variant's take is compared with the first variant's take of the same weights, seed and
shot: relative L2 of each stage's last transformer prediction (video and audio latents), of the
decoded frames and of the audio. The weights are random: outputs are noise; only time, memory and
the differences between variants mean anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import traceback
from dataclasses import asdict
from fractions import Fraction

import numpy as np
import torch

from dubflow.models.lipdub import SourceShot, build_prompt, build_random_model
from dubflow.models.ltx2_architectures import LTX_2_3, SMOKE
from dubflow.models.kernels import FP8_ATTENTION, Kernels
from dubflow.models.profiles import RANDOM_WEIGHTS_SEED

ARCHITECTURES = {"ltx-2.3": LTX_2_3, "smoke": SMOKE}
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
    cuda = model.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model._prompts.clear()  # measure the text encoder every time
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    model.embed_prompts([prompt])
    sync()
    timings["text_encode"] = time.perf_counter() - start
    mark = time.perf_counter()
    prepared = model.prepare_shot(shot)  # no key: encoded every time
    sync()
    timings["reference_encode"] = time.perf_counter() - mark
    output = model.dub(prepared, prompt, seed=1, timings=timings)
    sync()
    timings["clip"] = time.perf_counter() - start
    timings["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    assert output.frames.shape == shot.frames.shape, (output.frames.shape, shot.frames.shape)
    assert np.isfinite(output.audio).all()
    return timings, output


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    value, reference = value.astype(np.float64), reference.astype(np.float64)
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """The model's GPU kernels (models/kernels.Kernels), as $DUBFLOW_FP8_WEIGHTS/_FP8_LINEARS/_ATTENTION/_COMPILE set them."""
    parser.add_argument("--fp8-weights", action="store_true", help="transformer weights stored in float8, bf16 compute")
    parser.add_argument("--fp8-linears", action="store_true", help="transformer linears computed in float8 (torchao)")
    parser.add_argument("--attention", default=Kernels().attention,
                        help=f"a diffusers attention backend, or {FP8_ATTENTION} (cuDNN float8 video self-attention)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer block")


def kernels_from_args(args: argparse.Namespace) -> Kernels:
    return Kernels(fp8_weights=args.fp8_weights, attention=args.attention, compile_blocks=args.compile,
                   fp8_linears=args.fp8_linears)


def kernel_arguments(args: argparse.Namespace) -> list[str]:
    """``add_kernel_arguments``' options as a child process's argument list."""
    return (["--fp8-weights"] if args.fp8_weights else []) + (["--fp8-linears"] if args.fp8_linears else []) + [
        "--attention", args.attention] + (["--compile"] if args.compile else [])


VARIANT_WORDS = {"bf16": {}, "compile": {"compile_blocks": True}, "fp8w": {"fp8_weights": True},
                 "fp8lin": {"fp8_linears": True}, "fp8attn": {"attention": FP8_ATTENTION}}


def parse_variant(name: str) -> Kernels:
    """``fp8lin+fp8attn+compile`` -> Kernels; words: bf16, compile, fp8w, fp8lin, fp8attn, attn=<backend>."""
    fields: dict[str, object] = {}
    for word in name.split("+"):
        if word.startswith("attn="):
            fields["attention"] = word[len("attn="):]
        elif word in VARIANT_WORDS:
            fields.update(VARIANT_WORDS[word])
        else:
            raise SystemExit(f"unknown kernel word {word!r} in variant {name!r}: use {', '.join(VARIANT_WORDS)}, attn=<backend>")
    return Kernels(**fields)


class StageOutputs:
    """The transformer's last prediction of each stage (video and audio), told apart by their token counts."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.last: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handle = transformer.register_forward_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs, output) -> None:
        video, audio = output[0], output[1]
        self.last[kwargs["hidden_states"].shape[1]] = (video.float().cpu(), audio.float().cpu())

    def by_stage(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {f"stage_{i + 1}": self.last[tokens] for i, tokens in enumerate(sorted(self.last))}


def drift(take: dict, reference: dict) -> dict[str, float]:
    """Relative L2 of a take against the reference take: each stage's last prediction, frames, audio."""
    errors = {}
    for stage, (video, audio) in take["stages"].items():
        ref_video, ref_audio = reference["stages"][stage]
        errors[f"{stage}_video"] = relative_error(video.numpy(), ref_video.numpy())
        errors[f"{stage}_audio"] = relative_error(audio.numpy(), ref_audio.numpy())
    errors["frames"] = relative_error(take["frames"], reference["frames"])
    errors["audio"] = relative_error(take["audio"], reference["audio"])
    return errors


def dynamo_counters() -> dict[str, dict[str, int]]:
    """dynamo's counters (graphs, graph breaks, recompile-limit fallbacks) for the JSON."""
    from torch._dynamo.utils import counters

    return {group: {str(k): int(v) for k, v in values.items()} for group, values in counters.items()}


def run_variant(name: str, sizes: list[str], args: argparse.Namespace, prompt: str, takes: dict) -> dict:
    kernels = parse_variant(name)
    cuda = torch.cuda.is_available()
    torch._dynamo.reset()
    start = time.perf_counter()
    device = "cuda" if cuda else "cpu"
    model = build_random_model(ARCHITECTURES[args.architecture], device,
                               torch.bfloat16 if cuda else torch.float32, RANDOM_WEIGHTS_SEED, kernels)
    if cuda:
        torch.cuda.synchronize()
    variant = {"kernels": asdict(kernels), "build_s": time.perf_counter() - start,
               "weights_gib": torch.cuda.memory_allocated() / 2**30 if cuda else float("nan"), "sizes": {}}
    print(f"[{name}] model built on {device} (random weights, IC-LoRA fused): {variant['build_s']:.1f} s, "
          f"{variant['weights_gib']:.1f} GiB resident", flush=True)
    stages = StageOutputs(model.pipe.transformer)
    try:
        for size in sizes:
            width, height = (int(v) for v in size.split("x"))
            shot = synthetic_shot(args.frames, width, height, Fraction(args.fps), seed=width)
            runs = []
            for _ in range(args.repeats):
                timings, output = run_clip(model, shot, prompt)
                runs.append(timings)
                print(f"[{name}] {size} run {len(runs)}: clip {timings['clip']:.2f} s", flush=True)
            takes.setdefault(size, {})[name] = {"frames": output.frames, "audio": output.audio,
                                                "stages": stages.by_stage()}
            warm = runs[1:] or runs
            summary = {key: statistics.median(r[key] for r in warm) for key in runs[0]}
            variant["sizes"][size] = {"runs": runs, "median_warm": summary}
            print(f"[{name}] {size}: " + ", ".join(f"{k} {summary[k]:.2f}" for k in (*STAGES, "clip", "peak_gib")),
                  flush=True)
    finally:
        stages.handle.remove()
        variant["dynamo"] = dynamo_counters()
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="ltx-2.3",
                        help="smoke: the tiny architecture, which also runs on a CPU (float32), to check this script")
    parser.add_argument("--sizes", default="1280x720,1920x1080")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--fps", default="24")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default=None,
                        help="comma-separated kernel variants, the first the drift reference, e.g. "
                             "bf16+compile,fp8lin+compile,fp8lin+fp8attn+compile (default: the kernel options)")
    add_kernel_arguments(parser)
    parser.add_argument("--json", default=None, help="written after every variant")
    args = parser.parse_args()
    variants = args.variants.split(",") if args.variants else [kernel_variant_name(kernels_from_args(args))]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{args.architecture} on {device}; torch {torch.__version__}", flush=True)
    prompt = build_prompt("A man in a grey coat", "French", "Bonjour, je suis très heureux de vous revoir ici.")
    results = {"gpu": device, "architecture": args.architecture, "torch": torch.__version__, "frames": args.frames, "fps": args.fps,
               "reference": variants[0], "variants": {}, "drift": {}}
    takes: dict[str, dict[str, dict]] = {}
    for name in variants:
        try:
            results["variants"][name] = run_variant(name, args.sizes.split(","), args, prompt, takes)
        except Exception as error:  # one variant's failure (a kernel library missing, say) leaves the others
            results["variants"][name] = {"error": f"{type(error).__name__}: {error}",
                                         "traceback": traceback.format_exc()[-6000:]}
            print(f"[{name}] FAILED: {type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}", flush=True)
        for size, by_variant in takes.items():
            if variants[0] in by_variant and name != variants[0] and name in by_variant:
                results["drift"].setdefault(size, {})[name] = drift(by_variant[name], by_variant[variants[0]])
                print(f"[{name}] {size} drift vs {variants[0]}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in results["drift"][size][name].items()), flush=True)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2)

    print(f"\n| kernels | size | {' | '.join(STAGES)} | clip s | peak GiB | frames drift | audio drift |")
    print("|---" * (len(STAGES) + 6) + "|")
    for name, variant in results["variants"].items():
        for size, entry in variant.get("sizes", {}).items():
            m = entry["median_warm"]
            d = results["drift"].get(size, {}).get(name)
            print(f"| {name} | {size}x{args.frames} | " + " | ".join(f"{m[s]:.2f}" for s in STAGES)
                  + f" | {m['clip']:.2f} | {m['peak_gib']:.1f} | "
                  + (f"{d['frames']:.4f} | {d['audio']:.4f} |" if d else "reference | reference |"))


def kernel_variant_name(kernels: Kernels) -> str:
    words = [word for word, fields in VARIANT_WORDS.items()
             if fields and all(getattr(kernels, k) == v for k, v in fields.items())]
    if kernels.attention not in ("native", FP8_ATTENTION):
        words.append(f"attn={kernels.attention}")
    return "+".join(words) or "bf16"


if __name__ == "__main__":
    main()
