"""FLOPs of one LTX-2.3 transformer forward per LipDub stage, counted by torch's FlopCounterMode.

    python bench/lipdub_flops.py [--frames 121] [--fps 24] [--sizes 1920x1080,1280x720] [--tflops 798]
                                 [--timings bench/results/lipdub_gpu_h100.json]

The full-size transformer is built on the ``meta`` device (no memory, no GPU): FlopCounterMode
counts the matmuls and attention of a forward over the exact token counts LipDub uses — stage 1 at
half size with the video reference and the voice reference appended, stage 2 at full size with the
video reference — and multiplies by the steps of the distilled schedules. Divided by a bf16 matmul
rate (default 798 TFLOP/s, measured on the lent H100 with an 8192³ bf16 product) this is the
arithmetic floor; with ``--timings`` (a bench/lipdub_gpu.py result) it prints the model FLOPs
utilisation of the measured stages.
"""

from __future__ import annotations

import argparse
import json
from fractions import Fraction

import torch
from torch.utils.flop_counter import FlopCounterMode

from dubflow.models.lipdub_pipeline import STAGE_1_SIGMAS, STAGE_2_SIGMAS
from dubflow.models.ltx2_architectures import LTX_2_3, build_components_on_meta

PROMPT_TOKENS = 1024  # Gemma prompts are padded to the full window
AUDIO_LATENTS_PER_SECOND = 25
TEMPORAL, SPATIAL = 8, 32


def forward_flops(transformer: torch.nn.Module, grid: tuple[int, int, int], video_ref: int, audio: int,
                  audio_ref: int) -> int:
    config = transformer.config
    frames, height, width = grid
    video = frames * height * width + video_ref
    audio_total = audio + audio_ref

    def meta(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.empty(*shape, device="meta", dtype=dtype)

    with FlopCounterMode(display=False) as counter:
        transformer(
            hidden_states=meta(1, video, config.in_channels),
            audio_hidden_states=meta(1, audio_total, config.audio_in_channels),
            encoder_hidden_states=meta(1, PROMPT_TOKENS, config.cross_attention_dim),
            audio_encoder_hidden_states=meta(1, PROMPT_TOKENS, config.audio_cross_attention_dim),
            encoder_attention_mask=meta(1, PROMPT_TOKENS, dtype=torch.float32),
            audio_encoder_attention_mask=meta(1, PROMPT_TOKENS, dtype=torch.float32),
            timestep=meta(1, video, dtype=torch.float32),
            audio_timestep=meta(1, audio_total, dtype=torch.float32),
            sigma=meta(1, dtype=torch.float32),
            audio_sigma=meta(1, dtype=torch.float32),
            num_frames=frames, height=height, width=width, fps=24.0, audio_num_frames=audio_total,
            video_coords=meta(1, 3, video, 2, dtype=torch.float32),
            audio_coords=meta(1, 1, audio_total, 2, dtype=torch.float32),
            use_cross_timestep=True, return_dict=False,
        )
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--fps", default="24")
    parser.add_argument("--sizes", default="1920x1080,1280x720")
    parser.add_argument("--tflops", type=float, default=798.0, help="measured bf16 matmul rate of the GPU")
    parser.add_argument("--timings", default=None, help="a bench/lipdub_gpu.py JSON result (bf16 variant)")
    args = parser.parse_args()

    transformer = build_components_on_meta(LTX_2_3, ("transformer",))["transformer"]
    measured = {}
    if args.timings:
        with open(args.timings) as handle:
            measured = json.load(handle)["variants"]["bf16"]["sizes"]
    latent_frames = (args.frames - 1) // TEMPORAL + 1
    audio = round(Fraction(args.frames) / Fraction(args.fps) * AUDIO_LATENTS_PER_SECOND)
    steps_1, steps_2 = len(STAGE_1_SIGMAS) - 1, len(STAGE_2_SIGMAS) - 1
    print(f"| shot | stage | video tokens (target + ref) | TFLOP / forward | steps | floor at {args.tflops:.0f} TFLOP/s | measured | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        width, height = (int(v) for v in size.split("x"))
        # Generated at multiples of 64 (whole latent cells at half size), as dubflow pads.
        full = (latent_frames, -(-height // 64) * 2, -(-width // 64) * 2)
        half = (latent_frames, full[1] // 2, full[2] // 2)
        stages = (
            ("stage_1", half, audio, steps_1),  # + video reference (same size) + voice reference
            ("stage_2", full, 0, steps_2),  # + video reference; audio frozen, no voice reference
        )
        for name, grid, audio_ref, steps in stages:
            tokens = grid[0] * grid[1] * grid[2]
            flops = forward_flops(transformer, grid, tokens, audio, audio_ref)
            floor = flops * steps / (args.tflops * 1e12)
            seconds = measured.get(size, {}).get("median_warm", {}).get(name)
            tail = f"{seconds:.1f} s | {floor / seconds:.0%}" if seconds else "— | —"
            print(f"| {size}x{args.frames} | {name} | {tokens:,} + {tokens:,} | {flops / 1e12:,.0f} | {steps} "
                  f"| {floor:.1f} s | {tail} |")


if __name__ == "__main__":
    main()
