"""LipDub on diffusers' LTX-2: smoke weights, IC-LoRA loading and fusing, the voice reference, two stages,
exact shapes, windows, reference reuse, determinism, residency."""

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
    NoVoiceReferenceError,
    SourceShot,
    build_prompt,
    build_smoke_weights,
    get_resident_model,
    read_reference_downscale_factor,
)
from dubflow.models import lipdub_pipeline
from dubflow.models.kernels import Kernels
from dubflow.models.ltx_files import LIPDUB_LORA_FILE

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


def _shot(num_frames: int, height: int, width: int, seed: int = 0, fps: Fraction = FPS,
          sample_rate: int = 48_000, channels: int = 2) -> SourceShot:
    rng = np.random.default_rng(seed + 1000)
    samples = round(Fraction(num_frames) / fps * sample_rate)
    audio = (0.1 * rng.standard_normal((channels, samples))).astype(np.float32)
    return SourceShot(_frames(num_frames, height, width, seed), fps, audio, sample_rate)


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
    assert '"LTX2LipDubPipeline"' in index
    for sub in ("transformer", "vae", "audio_vae", "connectors", "vocoder", "text_encoder", "tokenizer", "scheduler",
                "latent_upsampler"):
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
    from dubflow.models.lipdub import SMOKE_SEED
    from dubflow.models.lipdub_pipeline import LTX2LipDubPipeline
    from dubflow.models.ltx2_architectures import SMOKE, build_components

    built = build_components(SMOKE, "cpu", torch.float32, SMOKE_SEED)
    loaded = LTX2LipDubPipeline.from_pretrained(smoke_weights, dtype=torch.float32)
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


# --- the voice reference and the two stages --------------------------------------------------------


class _TransformerCalls:
    """Records the keyword arguments of every transformer forward (a hook; the model runs unchanged)."""

    def __init__(self, model: LipDubModel) -> None:
        self.calls: list[dict] = []
        self._handle = model.pipe.transformer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        self.calls.append({k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    def __enter__(self) -> _TransformerCalls:
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def _upstream(name: str) -> torch.Tensor:
    """A value upstream LTX-2 DubIt computed (tests/data/upstream_dubit, tools/dubit_reference.py)."""
    with safe_open(str(Path(__file__).parent / "data" / "upstream_dubit" / "reference.safetensors"), "pt") as handle:
        return handle.get_tensor(name)


# Upstream's schedules and where its voice reference ends (its first forward's audio positions: the
# target tokens, then the reference's, which alone sit at timestep 0).
UPSTREAM_STAGE_1_SIGMAS = _upstream("upstream.stage_1_sigmas").tolist()
UPSTREAM_STAGE_2_SIGMAS = _upstream("upstream.stage_2_sigmas").tolist()
_UPSTREAM_REFERENCE_TOKENS = _upstream("forward.audio_timesteps")[0, :, 0] == 0
UPSTREAM_VOICE_END = float(_upstream("forward.audio_positions")[0, 0, _UPSTREAM_REFERENCE_TOKENS, 1].max())


def test_two_distilled_stages_with_the_voice_reference_at_negative_times(model: LipDubModel) -> None:
    shot = _shot(9, 60, 100, seed=4)
    with _TransformerCalls(model) as recorded:
        model.generate(shot, PROMPT, seed=3)
    calls = recorded.calls
    steps_1, steps_2 = len(UPSTREAM_STAGE_1_SIGMAS) - 1, len(UPSTREAM_STAGE_2_SIGMAS) - 1
    assert len(calls) == steps_1 + steps_2  # one forward per step: no guidance
    stage_1, stage_2 = calls[:steps_1], calls[steps_1:]
    assert [float(c["sigma"][0]) / 1000 for c in stage_1] == pytest.approx(UPSTREAM_STAGE_1_SIGMAS[:-1], abs=1e-7)
    assert [float(c["sigma"][0]) / 1000 for c in stage_2] == pytest.approx(UPSTREAM_STAGE_2_SIGMAS[:-1], abs=1e-7)

    # Stage 2's audio is the frozen stage-1 latent plus that same latent as the voice reference.
    target_audio_tokens = stage_2[0]["audio_hidden_states"].shape[1] // 2
    for call in (*stage_1, *stage_2):
        starts = call["audio_coords"][0, 0, :, 0]
        ends = call["audio_coords"][0, 0, :, 1]
        reference = slice(target_audio_tokens, None)
        assert call["audio_hidden_states"].shape[1] > target_audio_tokens
        assert (starts[: target_audio_tokens] >= 0).all()
        assert (ends[reference] < 0).all() and (starts[reference] < 0).all()
        assert float(ends[reference].max()) == pytest.approx(UPSTREAM_VOICE_END, abs=1e-6)
        # The reference is context, clean: timestep 0 for its tokens.
        assert (call["audio_timestep"][0, reference] == 0).all()
    for call in stage_1:  # the step's sigma for the target
        assert (call["audio_timestep"][0, :target_audio_tokens] == call["sigma"][0]).all()
    # Stage 2 keeps the stage-1 audio frozen: clean timesteps and the same latent at every step, and
    # the voice reference is that latent.
    frozen = stage_2[0]["audio_hidden_states"]
    torch.testing.assert_close(frozen[:, :target_audio_tokens], frozen[:, target_audio_tokens:])
    for call in stage_2:
        assert (call["audio_timestep"] == 0).all() and float(call["audio_sigma"][0]) == 0.0
        torch.testing.assert_close(call["audio_hidden_states"], frozen)
    # Stage 2 runs at twice the stage-1 width and height: four times the target video tokens.
    stage_1_video = stage_1[0]["timestep"][0].count_nonzero()
    stage_2_video = stage_2[0]["timestep"][0].count_nonzero()
    assert stage_2_video == 4 * stage_1_video
    # The video reference rides along clean in both stages, at the stage's own size.
    for call in (stage_1[0], stage_2[0]):
        assert call["hidden_states"].shape[1] == 2 * int(call["timestep"][0].count_nonzero())


def test_the_voice_reference_changes_the_take(model: LipDubModel) -> None:
    shot = _shot(9, 60, 100, seed=6)
    other_voice = SourceShot(shot.frames, shot.fps, np.ascontiguousarray(shot.audio[:, ::-1]) * 3, shot.sample_rate)
    first = model.generate(shot, PROMPT, seed=5)
    again = model.generate(shot, PROMPT, seed=5)
    changed = model.generate(other_voice, PROMPT, seed=5)
    np.testing.assert_array_equal(first.audio, again.audio)
    assert not np.array_equal(first.audio, changed.audio)
    assert not np.array_equal(first.frames, changed.frames)


def test_a_shot_without_sound_is_refused_clearly(model: LipDubModel) -> None:
    silent = SourceShot(_frames(9, 60, 100), FPS, np.zeros((0, 0), np.float32), 0)
    with pytest.raises(NoVoiceReferenceError, match="voice"):
        model.generate(silent, PROMPT, seed=1)


def test_log_mel_uses_slaney_filters_on_the_vae_grid(model: LipDubModel) -> None:
    from dubflow.models.lipdub_pipeline import slaney_mel_filterbank

    filters = slaney_mel_filterbank(513, 64, 16_000)
    assert filters.shape == (513, 64) and (filters >= 0).all()
    assert (filters.sum(0) > 0).all()  # every band catches some frequency
    peaks = filters.argmax(0)
    assert (peaks[1:] >= peaks[:-1]).all()  # bands rise with frequency
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(16_000) / 16_000).unsqueeze(0)
    mel = model.pipe.log_mel(tone, 16_000)
    assert mel.shape == (1, 2, 16_000 // model.pipe.audio_hop_length + 1, model.pipe.audio_mel_bins)
    loudest = int(mel[0, 0].mean(0).argmax())
    centres = slaney_mel_filterbank(513, model.pipe.audio_mel_bins, 16_000).argmax(0) * 8_000 / 512
    assert abs(float(centres[loudest]) - 1000) < 600  # the 1 kHz tone lands in the band around 1 kHz


# --- shapes: never lossy ----------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [*range(1, 18), 31, 64, 100, 121, 199, 200])
def test_every_frame_count_comes_back_exact(model: LipDubModel, num_frames: int) -> None:
    out = model.generate(_shot(num_frames, 8, 8, seed=num_frames), PROMPT, seed=1)
    assert out.frames.shape == (num_frames, 8, 8, 3)
    assert out.audio.shape == (2, round(Fraction(num_frames) / FPS * out.sample_rate))


def test_window_plan_covers_every_frame_count_exactly(model: LipDubModel) -> None:
    for num_frames in range(1, 1201):
        windows = model.plan_windows(num_frames)
        assert windows[0][0] == 0 and windows[-1][0] + windows[-1][1] == num_frames
        for (start, length), (next_start, _) in zip(windows, windows[1:]):
            assert length == model.window_frames and (length - 1) % model.frame_multiple == 0
            assert 0 < next_start - start <= model.window_frames - model.window_overlap  # every join overlaps


@pytest.mark.parametrize(
    ("height", "width", "max_height"),
    [(480, 854, None), (1080, 1920, 128), (60, 100, None), (33, 31, None)],
)
def test_sizes_come_back_exact(model: LipDubModel, height: int, width: int, max_height: int | None) -> None:
    out = model.generate(_shot(9, height, width), PROMPT, seed=1, max_height=max_height)
    assert out.frames.shape == (9, height, width, 3) and out.frames.dtype == np.uint8
    assert out.frames.std() > 0 and np.isfinite(out.audio).all() and np.abs(out.audio).max() > 0


def test_padding_keeps_every_source_pixel_and_the_exact_rate(model: LipDubModel) -> None:
    """The full-size reference the VAE encodes holds every source pixel: padded up, never cropped."""
    encoded: list[torch.Tensor] = []
    hook = model.pipe.vae.encoder.register_forward_pre_hook(lambda module, args: encoded.append(args[0].clone()))
    source = _shot(7, 60, 100, seed=5)
    try:
        with _TransformerCalls(model) as recorded:
            model.generate(source, PROMPT, seed=2)
    finally:
        hook.remove()

    assert {call["fps"] for call in recorded.calls} == {float(FPS)}
    full = next(e for e in encoded if e.shape[-2:] == (64, 128))  # stage-2 reference: multiples of 64
    assert tuple(full.shape) == (1, 3, 9, 64, 128)  # 8k+1 frames
    pixels = ((full[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    top, left = (64 - 60) // 2, (128 - 100) // 2
    frames = source.frames
    np.testing.assert_array_equal(pixels[:7, top : top + 60, left : left + 100], frames)
    np.testing.assert_array_equal(pixels[7:, top : top + 60, left : left + 100], np.stack([frames[-1]] * 2))
    np.testing.assert_array_equal(pixels[:7, :top, left : left + 100], np.repeat(frames[:, :1], top, axis=1))
    np.testing.assert_array_equal(pixels[:7, top : top + 60, :left], np.repeat(frames[:, :, :1], left, axis=2))


def test_a_tiled_decode_uses_upstreams_tiles(model: LipDubModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the VAE decodes in tiles. A 512x768 picture is one of upstream's tiles: it must come out
    exactly as the untiled decode, which diffusers' default 512 px tiles do not give; the tile settings
    the encoder uses are left as they were."""
    pipe = model.pipe
    cell = pipe.vae_spatial_compression_ratio
    grid = (2, 512 // cell, 768 // cell)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, grid[0] * grid[1] * grid[2], pipe.vae.config.latent_channels, generator=generator)
    settings = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height", "tile_sample_stride_width")
    before = {name: getattr(pipe.vae, name) for name in settings}
    with torch.inference_mode():
        untiled = pipe._decode_video(latents, grid)
        pipe.vae.enable_tiling()
        try:
            tiled = pipe._decode_video(latents, grid)
            after = {name: getattr(pipe.vae, name) for name in settings}
            monkeypatch.setattr(lipdub_pipeline, "decode_tile_size", lambda height, width, cell: (512, 512))
            diffusers_tiles = pipe._decode_video(latents, grid)
        finally:
            pipe.vae.disable_tiling()
    assert torch.equal(tiled, untiled)
    assert not torch.equal(diffusers_tiles, untiled)
    assert after == before


def test_a_30_second_shot_is_windowed_and_stitched_exactly(model: LipDubModel) -> None:
    fps = Fraction(24000, 1001)
    num_frames = 30 * 24  # 30.03 s at 23.976
    shot = _shot(num_frames, 8, 12, seed=9, fps=fps)
    windows = model.plan_windows(num_frames)
    assert len(windows) >= 3
    with _TransformerCalls(model) as recorded:
        out = model.generate(shot, PROMPT, seed=4)
    assert len(recorded.calls) == len(windows) * ((len(UPSTREAM_STAGE_1_SIGMAS) - 1) + (len(UPSTREAM_STAGE_2_SIGMAS) - 1))
    assert out.frames.shape == (num_frames, 8, 12, 3)
    assert out.audio.shape == (2, round(Fraction(num_frames) / fps * out.sample_rate))
    # The joins are cross-faded: no frame is left empty and the sound has no gap, but for the causal
    # audio decoder's few-ms shortfall at the very end of the take.
    assert (out.frames.reshape(num_frames, -1).std(axis=1) > 0).all()
    silent = np.flatnonzero(np.abs(out.audio).max(axis=0) == 0)
    assert silent.size == 0 or silent.min() > out.audio.shape[1] - 0.05 * out.sample_rate


def test_crossfade_is_linear_and_keeps_the_ends() -> None:
    from dubflow.models.lipdub import _crossfade

    out = _crossfade(torch.zeros(3, 1), torch.ones(3, 1))
    torch.testing.assert_close(out[:, 0], torch.tensor([0.25, 0.5, 0.75]))


def test_generate_is_deterministic_per_seed_and_prompt(model: LipDubModel) -> None:
    shot = _shot(9, 60, 100, seed=3)
    first = model.generate(shot, PROMPT, seed=7)
    again = model.generate(shot, PROMPT, seed=7)
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.audio, again.audio)

    other_seed = model.generate(shot, PROMPT, seed=8)
    other_prompt = model.generate(shot, build_prompt("a woman", "Spanish", "Hola, ¿qué tal?"), seed=7)
    for other in (other_seed, other_prompt):
        assert not np.array_equal(first.frames, other.frames)
        assert not np.array_equal(first.audio, other.audio)


def test_bad_shots_are_refused(model: LipDubModel) -> None:
    good = _shot(3, 60, 100)
    for frames in (good.frames.astype(np.float32), good.frames[..., :2]):
        with pytest.raises(ValueError):
            model.generate(SourceShot(frames, FPS, good.audio, good.sample_rate), PROMPT, seed=1)
    with pytest.raises(ValueError):
        model.generate(SourceShot(good.frames, Fraction(0), good.audio, good.sample_rate), PROMPT, seed=1)
    with pytest.raises(ValueError, match="mono or stereo"):
        model.generate(SourceShot(good.frames, FPS, np.zeros((6, 100), np.float32), 48_000), PROMPT, seed=1)


def test_reference_downscale_factor_two(smoke_weights: Path, lora_path: Path, tmp_path: Path) -> None:
    lora_x2 = _copy_lora(lora_path, tmp_path / "x2.safetensors", metadata={"reference_downscale_factor": "2"})
    model = LipDubModel.load(smoke_weights, lora_x2)
    assert model.reference_downscale_factor == 2
    assert model.spatial_multiple() == 128
    with _TransformerCalls(model) as recorded:
        out = model.generate(_shot(7, 60, 100), PROMPT, seed=1)
    assert out.frames.shape == (7, 60, 100, 3)
    # The reference is encoded at half the target size: a quarter of the target's tokens.
    call = recorded.calls[-1]
    target = int(call["timestep"][0].count_nonzero())
    assert call["hidden_states"].shape[1] == target + target // 4


# --- reuse: one reference encoding and one text batch per shot ----------------------------------------


def test_references_and_prompts_are_encoded_once_per_shot(model: LipDubModel) -> None:
    shot = _shot(9, 60, 100, seed=11)
    prompts = [build_prompt("a man", name, line) for name, line in
               (("French", "Bonjour."), ("German", "Guten Tag."), ("Spanish", "Buenos días."))]
    batches: list[list[str]] = []
    encode = model.pipe.encode_prompts
    model.pipe.encode_prompts = lambda texts, *a, **k: batches.append(list(texts)) or encode(texts, *a, **k)
    before = model.reference_encodings
    try:
        takes = []
        for prompt in prompts:  # as three (shot, language) tasks would, each naming all of the shot's prompts
            prepared = model.prepare_shot(shot, key="shot-11")
            model.embed_prompts(prompts)
            takes.append(model.dub(prepared, prompt, seed=1))
    finally:
        del model.pipe.encode_prompts
    assert model.reference_encodings == before + 1
    assert batches == [prompts]
    assert not np.array_equal(takes[0].audio, takes[1].audio)
    # A cached take is the same take: reuse changes nothing but the time.
    np.testing.assert_array_equal(takes[0].frames, model.generate(shot, prompts[0], seed=1).frames)


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


def test_fp8_weight_storage_keeps_shapes_and_stays_close(smoke_weights: Path, lora_path: Path,
                                                         model: LipDubModel) -> None:
    fp8 = LipDubModel.load(smoke_weights, lora_path, kernels=Kernels(fp8_weights=True))
    stored = {p.dtype for name, p in fp8.pipe.transformer.named_parameters() if name.endswith("weight") and p.ndim == 2}
    assert torch.float8_e4m3fn in stored
    shot = _shot(9, 60, 100, seed=12)
    exact, approx = model.generate(shot, PROMPT, seed=2), fp8.generate(shot, PROMPT, seed=2)
    assert approx.frames.shape == exact.frames.shape and approx.audio.shape == exact.audio.shape
    assert not np.array_equal(approx.frames, exact.frames)  # the weights really changed precision


def test_a_shots_languages_share_one_reference_encoding_through_the_task(small_samples_dir: Path,
                                                                       tmp_path: Path) -> None:
    """The stage function as the flow calls it, once per (shot, language): the shot is encoded once.
    The small sample shots: how often a shot is encoded, and the takes' frame counts and rates, do
    not depend on the picture's size."""
    from dubflow.models.profiles import load_lipdub, resolve_profile
    from dubflow.tasks.conform import conform_shot
    from dubflow.tasks.lipdub import lipdub_pair
    from dubflow.media.io import probe
    from dubflow.tasks.validate import validate_manifest

    manifest = validate_manifest(small_samples_dir / "manifest.csv")
    shot_id, rows = next((s, [r for r in manifest.rows if r.shot_id == s]) for s in manifest.shots
                         if sum(r.shot_id == s for r in manifest.rows) >= 3)
    shot = manifest.shots[shot_id]
    profile = resolve_profile("smoke")
    model = load_lipdub(profile)
    model._prepared.clear()  # the shot may be cached from an earlier test: count from a cold cache
    before = model.reference_encodings
    conformed = conform_shot(shot, tmp_path / "conform")
    takes = [lipdub_pair(shot, conformed, row, rows, profile, tmp_path / row.language) for row in rows]
    assert model.reference_encodings == before + 1
    for take in takes:
        picture = probe(take.picture)
        assert (picture.frame_count, picture.fps) == (shot.media.frame_count, shot.media.fps)


def test_a_take_that_runs_out_of_memory_beside_the_text_encoder_moves_it_once_per_size(
    smoke_weights: Path, lora_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The residency rule's control flow, with a CUDA out-of-memory planted in the first attempt.

    A CPU cannot run out of GPU memory nor page-lock host memory, so the model is told it is on
    ``cuda`` and the move to host memory is recorded instead of made; the takes themselves run."""
    model = LipDubModel.load(smoke_weights, lora_path)
    shot, other, small = _shot(9, 64, 96, seed=3), _shot(9, 64, 96, seed=4), _shot(9, 32, 64, seed=5)
    prepared = [model.prepare_shot(s) for s in (shot, other, small)]  # on the CPU it is, before the pretence
    model.device = torch.device("cuda")
    moves: list[str] = []
    monkeypatch.setattr(model, "offload_text_encoder", lambda: moves.append("offload"))
    monkeypatch.setattr(model, "onload_text_encoder", lambda: moves.append("onload"))
    monkeypatch.setattr(model, "_text_encoder_on_device", lambda: not moves or moves[-1] == "onload")
    real_dub, attempts = model._dub, []

    def dub_out_of_memory_once(*args, **kwargs):
        attempts.append(args[0].generation_size)
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (planted)")
        return real_dub(*args, **kwargs)

    monkeypatch.setattr(model, "_dub", dub_out_of_memory_once)
    first = model.dub(prepared[0], PROMPT, seed=1)
    assert len(attempts) == 2 and moves == ["onload", "offload"]  # encoded, then moved off once, take redone
    assert first.frames.shape == shot.frames.shape
    model.dub(prepared[1], PROMPT, seed=1)  # same size: moved off before the take, no failure
    assert len(attempts) == 3 and moves == ["onload", "offload", "offload"]
    model.dub(prepared[2], PROMPT, seed=1)  # a size that never failed keeps the encoder where it is
    assert len(attempts) == 4 and moves == ["onload", "offload", "offload"]


def test_an_out_of_memory_without_the_text_encoder_on_the_gpu_is_not_retried(
    smoke_weights: Path, lora_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = LipDubModel.load(smoke_weights, lora_path)  # on the CPU: nothing to move, the error is the task's
    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory (planted)")

    monkeypatch.setattr(model, "_dub", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        model.dub(model.prepare_shot(_shot(9, 64, 96)), PROMPT, seed=1)
    assert len(calls) == 1


def test_gpu_kernels_come_from_the_environment_and_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from dubflow.models.kernels import FP8_ATTENTION
    from dubflow.models.profiles import ProfileError, gpu_kernels

    for name in ("DUBFLOW_KERNELS", "DUBFLOW_FP8_WEIGHTS", "DUBFLOW_FP8_LINEARS", "DUBFLOW_ATTENTION", "DUBFLOW_COMPILE"):
        monkeypatch.delenv(name, raising=False)
    assert gpu_kernels() == Kernels()  # no GPU with float8 units here: plain bf16
    monkeypatch.setenv("DUBFLOW_KERNELS", "fp8")
    assert gpu_kernels() == Kernels(fp8_linears=True, attention=FP8_ATTENTION, compile_blocks=True)
    monkeypatch.setenv("DUBFLOW_ATTENTION", "native")
    monkeypatch.setenv("DUBFLOW_FP8_LINEARS", "0")
    assert gpu_kernels() == Kernels(compile_blocks=True)
    monkeypatch.setenv("DUBFLOW_KERNELS", "bf16")
    monkeypatch.delenv("DUBFLOW_FP8_LINEARS")
    monkeypatch.setenv("DUBFLOW_FP8_WEIGHTS", "1")
    monkeypatch.setenv("DUBFLOW_ATTENTION", "_native_cudnn")
    monkeypatch.setenv("DUBFLOW_COMPILE", "1")
    assert gpu_kernels() == Kernels(fp8_weights=True, attention="_native_cudnn", compile_blocks=True)
    monkeypatch.setenv("DUBFLOW_FP8_LINEARS", "1")
    with pytest.raises(ProfileError, match="exclude each other"):
        gpu_kernels()
    monkeypatch.delenv("DUBFLOW_FP8_LINEARS")
    monkeypatch.setenv("DUBFLOW_ATTENTION", "fastest")
    with pytest.raises(ProfileError, match="DUBFLOW_ATTENTION='fastest' is not an attention choice"):
        gpu_kernels()
    monkeypatch.setenv("DUBFLOW_ATTENTION", "native")
    monkeypatch.setenv("DUBFLOW_COMPILE", "yes")
    with pytest.raises(ProfileError, match="DUBFLOW_COMPILE='yes': use 1"):
        gpu_kernels()
    monkeypatch.setenv("DUBFLOW_KERNELS", "fp4")
    with pytest.raises(ProfileError, match="DUBFLOW_KERNELS='fp4': use one of fp8, bf16"):
        gpu_kernels()
