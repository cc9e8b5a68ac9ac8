"""How LipDub's transformer runs on its device: the kernel choices that change rounding, not the algorithm."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kernels:
    """How LipDub's transformer runs (a CPU applies only ``fp8_weights``). None changes the algorithm;
    each changes the rounding of its arithmetic (measured in BENCHMARKS.md), so each is part of a take's key."""

    fp8_weights: bool = False  # weights stored in float8 (e4m3), cast per layer as it runs: half the memory
    attention: str = "native"  # a diffusers attention backend; "native": PyTorch's own choice of SDPA kernel
    compile_blocks: bool = False  # torch.compile of the transformer block, once per process (regional)
