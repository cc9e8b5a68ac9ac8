"""PyTorch's attention kernels at LTX-2.3 LipDub's attention shapes: which backend to run on the GPU.

Expected GPU time (one H100): under a minute.

    python bench/attention_backends.py [--size 1280x768] [--frames 121] [--repeats 20] [--json out.json]

For each attention a transformer block of the full-size LTX-2.3 runs on a LipDub take (video
self-attention over target + reference tokens, video cross-attention to 1,024 text tokens with a
padding mask, audio self-attention, and the two audio<->video cross-attentions) at both stages'
token counts, ``scaled_dot_product_attention`` is timed under each of PyTorch's fused backends
(FlashAttention-2 as PyTorch ships it, memory-efficient, cuDNN), on bf16 random inputs in the
(batch, heads, tokens, head_dim) layout. A backend that refuses a shape (a mask it does not take,
say) is reported as such. Time: CUDA events around ``--repeats`` calls after 3 warm-ups; the
median of 5 such blocks. TFLOP/s counts 4·Nq·Nkv·head_dim·heads (two matrix products) per call.
``native`` is the backend PyTorch picks by itself (what diffusers' default "native" runs).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention

BACKENDS = {
    "native": None,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
TEXT_TOKENS, TEXT_VALID = 1024, 80  # prompts are padded to 1,024 Gemma tokens; a line is ~80 of them
VIDEO_HEADS, VIDEO_DIM, AUDIO_HEADS, AUDIO_DIM = 32, 128, 32, 64  # LTX-2.3 (models/ltx2_architectures.py)


def take_shapes(width: int, height: int, frames: int) -> list[dict]:
    """Each attention of one block, per stage: (name, query tokens, key tokens, heads, head dim, masked)."""
    latent_frames = (frames - 1) // 8 + 1
    audio = round(frames / 24 * 25)  # 25 audio latents a second at 24 fps
    shapes = []
    for stage, scale in (("stage 1", 2), ("stage 2", 1)):
        video = 2 * latent_frames * (height // 32 // scale) * (width // 32 // scale)  # target + reference
        audio_tokens = 2 * audio if stage == "stage 1" else audio  # stage 1 carries the voice reference
        shapes += [
            dict(stage=stage, name="video self", q=video, kv=video, heads=VIDEO_HEADS, dim=VIDEO_DIM, mask=False),
            dict(stage=stage, name="video x text", q=video, kv=TEXT_TOKENS, heads=VIDEO_HEADS, dim=VIDEO_DIM, mask=True),
            dict(stage=stage, name="audio self", q=audio_tokens, kv=audio_tokens, heads=AUDIO_HEADS, dim=AUDIO_DIM,
                 mask=False),
            dict(stage=stage, name="audio -> video", q=video, kv=audio_tokens, heads=AUDIO_HEADS, dim=AUDIO_DIM,
                 mask=False),
            dict(stage=stage, name="video -> audio", q=audio_tokens, kv=video, heads=AUDIO_HEADS, dim=AUDIO_DIM,
                 mask=False),
        ]
    return shapes


def time_backend(shape: dict, backend: SDPBackend | None, repeats: int) -> float:
    """Median milliseconds per call; raises RuntimeError when the backend refuses the inputs."""
    q = torch.randn(1, shape["heads"], shape["q"], shape["dim"], device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, shape["heads"], shape["kv"], shape["dim"], device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = None
    if shape["mask"]:
        mask = torch.zeros(1, 1, 1, shape["kv"], device="cuda", dtype=torch.bool)
        mask[..., :TEXT_VALID] = True

    def call() -> torch.Tensor:
        if backend is None:
            return scaled_dot_product_attention(q, k, v, attn_mask=mask)
        with sdpa_kernel(backend):
            return scaled_dot_product_attention(q, k, v, attn_mask=mask)

    for _ in range(3):
        call()
    blocks = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            call()
        end.record()
        torch.cuda.synchronize()
        blocks.append(start.elapsed_time(end) / repeats)
    return statistics.median(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x768", help="WxH of the take")
    parser.add_argument("--frames", type=int, default=121)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    width, height = (int(v) for v in args.size.split("x"))
    gpu = torch.cuda.get_device_name()
    print(f"{gpu}; torch {torch.__version__}; cuDNN {torch.backends.cudnn.version()}; take {args.size}x{args.frames}")
    print("| stage | attention | Nq | Nkv | heads x dim | " + " | ".join(f"{b} ms (TFLOP/s)" for b in BACKENDS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(BACKENDS))
    rows = []
    for shape in take_shapes(width, height, args.frames):
        flop = 4 * shape["q"] * shape["kv"] * shape["dim"] * shape["heads"]
        row = {**shape, "ms": {}, "refused": {}}
        for name, backend in BACKENDS.items():
            try:
                row["ms"][name] = time_backend(shape, backend, args.repeats)
            except RuntimeError as error:
                row["refused"][name] = str(error).splitlines()[0][:200]
        rows.append(row)
        cells = [f"{row['ms'][b]:.3f} ({flop / row['ms'][b] / 1e9:.0f})" if b in row["ms"] else "refused"
                 for b in BACKENDS]
        print(f"| {shape['stage']} | {shape['name']} | {shape['q']:,} | {shape['kv']:,} | "
              f"{shape['heads']}x{shape['dim']} | " + " | ".join(cells) + " |", flush=True)
    for stage in ("stage 1", "stage 2"):
        per_block = {b: sum(r["ms"].get(b, float("nan")) for r in rows if r["stage"] == stage) for b in BACKENDS}
        print(f"{stage}, one block's attention: " + ", ".join(f"{b} {ms:.2f} ms" for b, ms in per_block.items()))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"gpu": gpu, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
                       "size": args.size, "frames": args.frames, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
