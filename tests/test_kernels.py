"""Kernel choices (models/kernels.py) that can be checked without a GPU: the exclusive options, float8
quantisation against e4m3's own rounding bound, and the attention routing on the smoke model."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from dubflow.models.kernels import E4M3_MAX, FP8_ATTENTION, Kernels, _quantize, check_fp8_support, use_fp8_attention
from dubflow.models.lipdub import SourceShot, build_prompt, build_smoke_weights, get_resident_model
from dubflow.models.ltx_files import LIPDUB_LORA_FILE

PROMPT = build_prompt("a man in a grey coat", "French", "Bonjour, comment allez-vous ?")


def test_float8_storage_and_float8_compute_exclude_each_other() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        Kernels(fp8_weights=True, fp8_linears=True)
    assert Kernels(fp8_linears=True, attention=FP8_ATTENTION) != Kernels()  # so a take's key tells them apart


def test_quantisation_maps_the_largest_magnitude_to_the_e4m3_maximum_within_its_rounding() -> None:
    x = torch.randn(2, 300, 4, 32, generator=torch.Generator().manual_seed(0)) * 3.0
    quantized, descale = _quantize(x.bfloat16())
    assert quantized.dtype == torch.float8_e4m3fn and descale.shape == (1, 1, 1, 1)
    scaled = quantized.float()
    assert scaled.abs().max().item() == E4M3_MAX
    # e4m3 keeps 3 mantissa bits: a normal value (|v| >= 2**-6) rounds to within 2**-4 of itself
    source = x.bfloat16().float() / descale
    normal = source.abs() >= 2.0 ** -6
    assert ((scaled - source).abs()[normal] / source.abs()[normal]).max().item() <= 2.0 ** -4
    np.testing.assert_allclose((scaled * descale).numpy(), x.bfloat16().float().numpy(), rtol=2.0 ** -4 + 1e-3,
                               atol=2.0 ** -9 * descale.item())


def _smoke_shot() -> SourceShot:
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (9, 60, 100, 3), dtype=np.uint8)
    audio = (0.1 * rng.standard_normal((2, 14_414))).astype(np.float32)
    return SourceShot(frames, Fraction(30000, 1001), audio, 48_000)


def test_only_the_routed_attention_changes_path(tmp_path_factory: pytest.TempPathFactory) -> None:
    weights = build_smoke_weights(tmp_path_factory.mktemp("kernels") / "ltx-2")
    model = get_resident_model(weights, weights / LIPDUB_LORA_FILE, "cpu", torch.float32)
    shot = _smoke_shot()
    before = model.generate(shot, PROMPT, seed=4)
    use_fp8_attention([])  # the dispatch is wrapped, nothing routed: every attention as before, bit for bit
    after = model.generate(shot, PROMPT, seed=4)
    np.testing.assert_array_equal(before.frames, after.frames)
    np.testing.assert_array_equal(before.audio, after.audio)

    routed = model.pipe.transformer.transformer_blocks[0].attn1.processor
    try:
        use_fp8_attention([model.pipe.transformer.transformer_blocks[0].attn1])
        with pytest.raises(ValueError, match="cudnn_fp8 attention runs on CUDA"):
            model.generate(shot, PROMPT, seed=4)
    finally:
        vars(routed).pop("_attention_backend", None)  # back to the class default


def test_float8_kernels_are_refused_where_there_are_no_float8_units() -> None:
    check_fp8_support(torch.device("cpu"), Kernels())  # bf16 asks nothing
    with pytest.raises(ValueError, match="no float8 matrix units.*DUBFLOW_KERNELS=bf16"):
        check_fp8_support(torch.device("cpu"), Kernels(fp8_linears=True))
    with pytest.raises(ValueError, match="no float8 matrix units"):
        check_fp8_support(torch.device("cpu"), Kernels(attention=FP8_ATTENTION))
