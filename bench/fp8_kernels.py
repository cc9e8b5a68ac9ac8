"""LipDub's two heaviest kernels in bf16 and in float8, at LipDub's shapes: time and error.

    python bench/fp8_kernels.py [--tokens 65280,16320] [--repeats 20] [--json out.json]

Attention: one video self-attention call, [1, tokens, 32 heads, 128] (65,280 tokens = stage 2 of a
1920x1080x121 shot, target + reference; 16,320 = stage 1), PyTorch SDPA in bf16 against
models/kernels.fp8_attention (cuDNN float8, with its quantisation and dequantisation), eager and
compiled. Feed-forward: LTX-2.3's video MLP (4096 -> 16384 -> GELU -> 4096) over the same tokens,
bf16 against torchao float8 linears (models/kernels.use_fp8_linears), both compiled. Inputs are random
(normal; query and key RMS-normalised per token as LTX-2's attention does). Error: relative L2 against
the same computation in float32. Times: CUDA events, median of ``--repeats`` calls after 3 warm-ups.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
import torch.nn.functional as F

from dubflow.models.kernels import fp8_attention, use_fp8_linears

HEADS, HEAD_DIM, WIDTH, FF_WIDTH = 32, 128, 4096, 16384


def time_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm())


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def attention_case(tokens: int, repeats: int) -> dict:
    shape = (1, tokens, HEADS, HEAD_DIM)
    q, k = (F.rms_norm(torch.randn(shape, device="cuda"), (HEAD_DIM,)).bfloat16() for _ in range(2))
    v = torch.randn(shape, device="cuda").bfloat16()
    reference = sdpa(q.float(), k.float(), v.float())
    flops = 4 * tokens * tokens * HEADS * HEAD_DIM
    row = {}
    for name, fn in (("sdpa_bf16", sdpa), ("cudnn_fp8", fp8_attention),
                     ("cudnn_fp8_compiled", torch.compile(fp8_attention))):
        out = fn(q, k, v)
        ms = time_ms(lambda: fn(q, k, v), repeats)
        row[name] = {"ms": ms, "tflops": flops / ms / 1e9, "relative_error": relative_error(out, reference)}
        print(f"attention {tokens} tokens {name}: {ms:.2f} ms, {flops / ms / 1e9:.0f} TFLOP/s, "
              f"error {row[name]['relative_error']:.4f}", flush=True)
    return row


def mlp_case(tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(WIDTH, FF_WIDTH), torch.nn.GELU(approximate="tanh"),
                              torch.nn.Linear(FF_WIDTH, WIDTH)).cuda()
    x = torch.randn(1, tokens, WIDTH, device="cuda")
    with torch.no_grad():
        reference = mlp(x)
        bf16 = copy.deepcopy(mlp).bfloat16()
        fp8 = copy.deepcopy(bf16)
        use_fp8_linears(fp8)
        flops = 2 * 2 * tokens * WIDTH * FF_WIDTH
        row = {}
        for name, module in (("bf16_compiled", bf16), ("fp8_compiled", fp8)):
            fn = torch.compile(module)
            out = fn(x.bfloat16())
            ms = time_ms(lambda: fn(x.bfloat16()), repeats)
            row[name] = {"ms": ms, "tflops": flops / ms / 1e9, "relative_error": relative_error(out, reference)}
            print(f"mlp {tokens} tokens {name}: {ms:.2f} ms, {flops / ms / 1e9:.0f} TFLOP/s, "
                  f"error {row[name]['relative_error']:.4f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="65280,16320")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import cudnn

    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "cudnn_backend": cudnn.backend_version_string(), "cudnn_frontend": cudnn.__version__,
               "attention": {}, "mlp": {}}
    print(f"GPU {results['gpu']}; torch {torch.__version__}; cuDNN {results['cudnn_backend']}, "
          f"frontend {results['cudnn_frontend']}", flush=True)
    with torch.no_grad():
        for tokens in (int(t) for t in args.tokens.split(",")):
            for case, run in (("attention", attention_case), ("mlp", mlp_case)):
                try:
                    results[case][tokens] = run(tokens, args.repeats)
                except Exception as error:  # report and go on: the other kernels still get measured
                    results[case][tokens] = {"error": f"{type(error).__name__}: {error}"}
                    print(f"{case} {tokens} tokens FAILED: {type(error).__name__}: {error}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
