"""LipDub on diffusers' LTX-2: smoke weights, IC-LoRA loading and fusing, exact shapes, determinism, residency."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dubflow.models.lipdub import (
    ADAPTER_NAME,
    LipDubLoadError,
    LipDubModel,
    build_prompt,
    build_smoke_weights,
    get_resident_model,
    read_reference_downscale_factor,
)
from dubflow.models.profiles import LIPDUB_LORA_FILE

FPS = Fraction(30000, 1001)
PROMPT = build_prompt("a man in a grey coat", "French", "Bonjour, comment allez-vous ?")


@pytest.fixture(scope="session")
def smoke_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_smoke_weights(tmp_path_factory.mktemp("lipdub") / "ltx-2")


@pytest.fixture(scope="session")
def lora_path(smoke_weights: Path) -> Path:
    return smoke_weights / LIPDUB_LORA_FILE


@pytest.fixture(scope="session")
def model(smoke_weights: Path, lora_path: Path) -> LipDubModel:
    return get_resident_model(smoke_weights, lora_path, "cpu", torch.float32)


def _frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _copy_lora(source: Path, target: Path, *, metadata: dict[str, str] | None, extra: dict | None = None) -> Path:
    tensors = load_file(str(source))
    tensors.update(extra or {})
    save_file(tensors, str(target), metadata=metadata)
    return target


class _Records(logging.Handler):
    """Collects log records; diffusers' loggers do not propagate to the root logger, so caplog misses them."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# --- prompt ------------------------------------------------------------------------------------------


def test_build_prompt() -> None:
    assert build_prompt("a man in a grey coat", "French", "Bonjour.") == (
        'A man in a grey coat speaking in French saying: "Bonjour."'
    )
    assert build_prompt("", "Russian", "  Привет,\n  мир!  ") == 'A person speaking in Russian saying: "Привет, мир!"'
    assert build_prompt("An old woman.", "German", "Hallo") == 'An old woman speaking in German saying: "Hallo"'
    with pytest.raises(ValueError):
        build_prompt("a man", "French", "   ")
    with pytest.raises(ValueError):
        build_prompt("a man", "", "Bonjour")


# --- smoke weights -----------------------------------------------------------------------------------


def test_smoke_weights_layout(smoke_weights: Path, lora_path: Path) -> None:
    index = (smoke_weights / "model_index.json").read_text()
    assert '"LTX2InContextPipeline"' in index
    for sub in ("transformer", "vae", "audio_vae", "connectors", "vocoder", "text_encoder", "tokenizer", "scheduler"):
        assert (smoke_weights / sub).is_dir(), sub
    assert lora_path.is_file()
    size = sum(p.stat().st_size for p in smoke_weights.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"smoke weights are {size / 2**20:.1f} MiB"


def test_smoke_weights_deterministic_and_idempotent(smoke_weights: Path, tmp_path: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in smoke_weights.rglob("*") if p.is_file()}
    assert build_smoke_weights(smoke_weights) == smoke_weights
    assert {p: p.stat().st_mtime_ns for p in smoke_weights.rglob("*") if p.is_file()} == before

    again = build_smoke_weights(tmp_path / "again")
    assert _tree_digest(again) == _tree_digest(smoke_weights)


def test_interrupted_build_is_redone(smoke_weights: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(smoke_weights, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    for marker in broken.glob(".dubflow-smoke-complete"):
        marker.unlink()
    build_smoke_weights(broken)
    assert _tree_digest(broken) == _tree_digest(smoke_weights)


def test_weights_round_trip_through_save_and_load(smoke_weights: Path) -> None:
    from diffusers import LTX2InContextPipeline

    from dubflow.models.lipdub import SMOKE_SEED, _smoke_components

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMOKE_SEED)
        built = _smoke_components()
    loaded = LTX2InContextPipeline.from_pretrained(smoke_weights, dtype=torch.float32)
    for name, original in built.items():
        restored = getattr(loaded, name)
        assert type(restored) is type(original), name
        if isinstance(original, torch.nn.Module):
            a, b = original.state_dict(), restored.state_dict()
            assert a.keys() == b.keys(), name
            assert all(torch.equal(a[k], b[k]) for k in a), name
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(built["scheduler"].config)
    assert loaded.tokenizer(PROMPT).input_ids == built["tokenizer"](PROMPT).input_ids
    assert loaded.tokenizer(PROMPT).input_ids[0] == loaded.tokenizer.bos_token_id


# --- IC-LoRA -----------------------------------------------------------------------------------------


def test_lora_file_uses_the_official_key_format(lora_path: Path) -> None:
    with safe_open(str(lora_path), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert keys and all(k.startswith("diffusion_model.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert any(k.startswith("diffusion_model.patchify_proj.") for k in keys)  # renamed to proj_in on load
    assert metadata["reference_downscale_factor"] == "1"


def test_reference_downscale_factor_is_read_from_metadata(lora_path: Path, tmp_path: Path) -> None:
    assert read_reference_downscale_factor(lora_path) == 1
    assert read_reference_downscale_factor(_copy_lora(lora_path, tmp_path / "x2.safetensors", metadata={
        "reference_downscale_factor": "2"})) == 2
    assert read_reference_downscale_factor(_copy_lora(lora_path, tmp_path / "none.safetensors", metadata=None)) == 1
    with pytest.raises(LipDubLoadError):
        read_reference_downscale_factor(_copy_lora(lora_path, tmp_path / "bad.safetensors", metadata={
            "reference_downscale_factor": "half"}))


def test_every_lora_key_is_fused_into_its_target(smoke_weights: Path, lora_path: Path) -> None:
    from diffusers import LTX2VideoTransformer3DModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    records = _Records()
    diffusers_logger = logging.getLogger("diffusers")
    diffusers_logger.addHandler(records)
    try:
        model = LipDubModel.load(smoke_weights, lora_path)
    finally:
        diffusers_logger.removeHandler(records)
    # diffusers' only report of LoRA keys that matched nothing (`_maybe_warn_for_unhandled_keys`).
    assert not [m for m in records.messages if "unexpected keys" in m or "missing keys" in m], records.messages

    base = dict(LTX2VideoTransformer3DModel.from_pretrained(smoke_weights, subfolder="transformer").named_parameters())
    fused = dict(model.pipe.transformer.named_parameters())
    assert fused.keys() == base.keys()  # the peft wrappers are gone, the fused weights stay
    assert not any(isinstance(m, BaseTunerLayer) for m in model.pipe.transformer.modules())
    assert ADAPTER_NAME not in getattr(model.pipe.transformer, "peft_config", {})

    lora = load_file(str(lora_path))
    targets = set()
    for key in lora:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removeprefix("diffusion_model.").removesuffix(".lora_A.weight").replace("patchify_proj", "proj_in")
        weight = f"{module}.weight"
        targets.add(weight)
        expected = base[weight] + lora[key.replace("lora_A", "lora_B")] @ lora[key]
        assert not torch.equal(fused[weight], base[weight]), weight
        torch.testing.assert_close(fused[weight], expected, rtol=1e-5, atol=1e-6)
    assert len(targets) == len(lora) // 2
    untouched = [name for name in base if name not in targets]
    assert untouched and all(torch.equal(fused[name], base[name]) for name in untouched)


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param("transformer_blocks.0.attn1.to_nowhere", id="unknown-module"),
        pytest.param("transformer_blocks.99.attn1.to_q", id="missing-block"),
    ],
)
def test_lora_keys_that_match_nothing_are_refused(smoke_weights: Path, lora_path: Path, tmp_path: Path,
                                                  extra: str) -> None:
    tensors = {
        f"diffusion_model.{extra}.lora_A.weight": torch.ones(2, 16),
        f"diffusion_model.{extra}.lora_B.weight": torch.ones(16, 2),
    }
    bad = _copy_lora(lora_path, tmp_path / "bad.safetensors", metadata={"reference_downscale_factor": "1"},
                     extra=tensors)
    before = LipDubModel.load_count
    with pytest.raises(LipDubLoadError, match="not applied"):
        LipDubModel.load(smoke_weights, bad)
    assert LipDubModel.load_count == before


def test_missing_weights_are_a_clear_error(tmp_path: Path, lora_path: Path, smoke_weights: Path) -> None:
    with pytest.raises(LipDubLoadError, match="model_index.json"):
        LipDubModel.load(tmp_path, lora_path)
    with pytest.raises(LipDubLoadError, match="not found"):
        LipDubModel.load(smoke_weights, tmp_path / "nope.safetensors")


# --- generate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_frames", "height", "width", "max_height"),
    [
        (1, 60, 100, None),
        (7, 60, 100, None),
        (50, 60, 100, None),
        (7, 480, 854, 128),
        (50, 480, 854, 160),
        (9, 33, 31, 128),
    ],
)
def test_generate_returns_the_source_frame_count_and_size(model: LipDubModel, num_frames: int, height: int,
                                                          width: int, max_height: int | None) -> None:
    out = model.generate(_frames(num_frames, height, width), FPS, PROMPT, seed=1, max_height=max_height,
                         num_inference_steps=2)
    assert out.frames.shape == (num_frames, height, width, 3)
    assert out.frames.dtype == np.uint8
    assert out.sample_rate == 48_000
    assert out.audio.dtype == np.float32
    assert out.audio.shape == (2, round(Fraction(num_frames) / FPS * out.sample_rate))
    assert np.isfinite(out.audio).all()
    assert out.frames.std() > 0 and np.abs(out.audio).max() > 0


def test_generate_pads_without_loss_and_passes_the_exact_rate(model: LipDubModel) -> None:
    """The reference the VAE sees holds every source pixel: padded up (edges, last frame), never cropped."""
    seen: dict[str, object] = {}

    def capture_reference(module, args):
        seen.setdefault("reference", args[0].detach().clone())

    def capture_fps(module, args, kwargs):
        seen.setdefault("fps", kwargs["fps"])

    hooks = [
        model.pipe.vae.encoder.register_forward_pre_hook(capture_reference),
        model.pipe.transformer.register_forward_pre_hook(capture_fps, with_kwargs=True),
    ]
    source = _frames(7, 60, 100, seed=5)
    try:
        model.generate(source, FPS, PROMPT, seed=2, num_inference_steps=1)
    finally:
        for hook in hooks:
            hook.remove()

    assert seen["fps"] == float(FPS)
    reference = seen["reference"]  # (1, 3, frames, height, width) in [-1, 1]
    assert tuple(reference.shape) == (1, 3, 9, 64, 128)  # 8k+1 frames, multiples of 32
    pixels = ((reference[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    top, left = (64 - 60) // 2, (128 - 100) // 2
    np.testing.assert_array_equal(pixels[:7, top : top + 60, left : left + 100], source)
    np.testing.assert_array_equal(pixels[7:, top : top + 60, left : left + 100], np.stack([source[-1]] * 2))
    np.testing.assert_array_equal(pixels[:7, :top, left : left + 100], np.repeat(source[:, :1], top, axis=1))
    np.testing.assert_array_equal(pixels[:7, top : top + 60, :left], np.repeat(source[:, :, :1], left, axis=2))


def test_generate_is_deterministic_per_seed_and_prompt(model: LipDubModel) -> None:
    source = _frames(9, 60, 100, seed=3)
    first = model.generate(source, FPS, PROMPT, seed=7, num_inference_steps=2)
    again = model.generate(source, FPS, PROMPT, seed=7, num_inference_steps=2)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.audio, again.audio)

    other_seed = model.generate(source, FPS, PROMPT, seed=8, num_inference_steps=2)
    other_prompt = model.generate(source, FPS, build_prompt("a woman", "Spanish", "Hola, ¿qué tal?"), seed=7,
                                  num_inference_steps=2)
    for other in (other_seed, other_prompt):
        assert not np.array_equal(first.frames, other.frames)
        assert not np.array_equal(first.audio, other.audio)


def test_generate_with_the_distilled_schedule(model: LipDubModel) -> None:
    out = model.generate(_frames(9, 60, 100), FPS, PROMPT, seed=1)  # num_inference_steps=None: 8 sigmas
    assert out.frames.shape == (9, 60, 100, 3)
    assert model.pipe.scheduler.sigmas.numel() == 9  # the 8 distilled sigmas + the terminal 0


def test_generate_rejects_bad_frames(model: LipDubModel) -> None:
    with pytest.raises(ValueError):
        model.generate(_frames(3, 60, 100).astype(np.float32), FPS, PROMPT, seed=1)
    with pytest.raises(ValueError):
        model.generate(_frames(3, 60, 100)[..., :2], FPS, PROMPT, seed=1)
    with pytest.raises(ValueError):
        model.generate(_frames(3, 60, 100), Fraction(0), PROMPT, seed=1)


def test_reference_downscale_factor_two(smoke_weights: Path, lora_path: Path, tmp_path: Path) -> None:
    lora_x2 = _copy_lora(lora_path, tmp_path / "x2.safetensors", metadata={"reference_downscale_factor": "2"})
    model = LipDubModel.load(smoke_weights, lora_x2)
    assert model.reference_downscale_factor == 2
    assert model.spatial_multiple() == 64
    out = model.generate(_frames(7, 60, 100), FPS, PROMPT, seed=1, num_inference_steps=1)
    assert out.frames.shape == (7, 60, 100, 3)


# --- residency ---------------------------------------------------------------------------------------


def test_resident_model_is_loaded_once_per_process(model: LipDubModel, smoke_weights: Path, lora_path: Path,
                                                   tmp_path: Path) -> None:
    before = LipDubModel.load_count
    assert get_resident_model(smoke_weights, lora_path, "cpu", torch.float32) is model
    assert LipDubModel.load_count == before

    # Fresh weights: several tasks asking at once share one load.
    copy = tmp_path / "copy"
    shutil.copytree(smoke_weights, copy)
    results: list[LipDubModel] = []
    threads = [
        threading.Thread(target=lambda: results.append(get_resident_model(copy, copy / LIPDUB_LORA_FILE, "cpu")))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert results[0] is not model
    assert LipDubModel.load_count == before + 1
