"""dubflow's LipDub computes what upstream LTX-2 DubIt computes, checked against upstream's own numbers.

``tests/data/upstream_dubit/`` was written by ``tools/dubit_reference.py`` running Lightricks' code
(``ltx-core``/``ltx-pipelines`` at the commit in its metadata) on a tiny LTX-2.3-shaped model with
random weights: the single-file checkpoint (upstream's layout, written from upstream's models:
transformer, video VAE, audio VAE, vocoder), the spatial upscaler file, an IC-LoRA in the official
layout, the inputs, every noise tensor upstream drew, and upstream's outputs. Here the files go
through dubflow's real loading path (the ``ltx-2.3`` profile with ``DUBFLOW_LTX_CHECKPOINT`` and
``DUBFLOW_LTX_UPSAMPLER``; LoRA fused through peft), dubflow encodes the references, samples both
stages replaying upstream's noise, upsamples and decodes. Everything must agree to 1e-5 relative in fp32.
"""

from __future__ import annotations

import json
import lzma
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dubflow.models.lipdub import LipDubLoadError, LipDubModel, build_smoke_weights, load_upsampler_file
from dubflow.models.lipdub_pipeline import (
    AUDIO_REFERENCE_GAP_SECONDS,
    DECODE_TILE_OVERLAP,
    STAGE_1_SIGMAS,
    STAGE_2_SIGMAS,
    PromptEmbedding,
    ShotReferences,
    decode_tile_size,
    log_mel,
    resample_sinc,
)
from dubflow.models.ltx2_architectures import LTX_2_3, SMOKE
from dubflow.models.ltx_files import LIPDUB_LORA_FILE
from dubflow.models.profiles import load_lipdub, resolve_profile
from dubflow.models.weights import check_weights, weights_identity

DATA = Path(__file__).parent / "data" / "upstream_dubit"
TOLERANCE = 1e-5

# The harness's transformer in diffusers' terms: the smoke model's LTX-2.3 switches, with the real
# 128 video and 128 audio latent channels (upstream's pipeline blocks hard-code them).
TRANSFORMER_CONFIG = {
    **SMOKE.transformer,
    "in_channels": 128, "out_channels": 128, "audio_in_channels": 128, "audio_out_channels": 128,
    "num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16,
    "audio_num_attention_heads": 2, "audio_attention_head_dim": 4, "audio_cross_attention_dim": 8,
    "num_layers": 2, "rope_double_precision": True, "use_prompt_adaln_single": True,
}
# The rest of the single file in diffusers' terms: LTX-2.3's layouts at the harness's widths
# (tools/dubit_reference.py: VIDEO_VAE_CONFIG, AUDIO_VAE_CONFIG, VOCODER_CONFIG).
COMPONENT_CONFIGS = {
    "vae": ("AutoencoderKLLTX2Video", {
        **LTX_2_3.vae, "block_out_channels": (128,) * 4, "layers_per_block": (0,) * 5,
        "decoder_block_out_channels": (8, 16, 16, 32), "decoder_layers_per_block": (1,) * 5,
    }),
    "audio_vae": ("AutoencoderKLLTX2Audio", {**LTX_2_3.audio_vae, "ch_mult": (1, 1, 1), "num_res_blocks": 0}),
    "vocoder": ("LTX2VocoderWithBWE", {
        **LTX_2_3.vocoder, "hidden_channels": 64, "resnet_kernel_sizes": [3], "resnet_dilations": [[1, 3, 5]],
        "bwe_hidden_channels": 32, "bwe_resnet_kernel_sizes": [3], "bwe_resnet_dilations": [[1, 3, 5]],
    }),
}


def _relative(found: torch.Tensor, expected: torch.Tensor) -> float:
    assert found.shape == expected.shape, (found.shape, expected.shape)
    return float((found.double() - expected.double()).norm() / expected.double().norm())


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(DATA / "reference.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()


@pytest.fixture(scope="module")
def upstream_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A weights folder with the harness's configs (the smoke model's text encoder and connectors, unused
    here), and upstream's single-file checkpoint and upscaler file exactly as upstream's code wrote them."""
    root = tmp_path_factory.mktemp("upstream")
    weights = Path(shutil.copytree(build_smoke_weights(root / "smoke"), root / "weights"))
    configs = {"transformer": ("LTX2VideoTransformer3DModel", TRANSFORMER_CONFIG), **COMPONENT_CONFIGS}
    for name, (class_name, config) in configs.items():
        shutil.rmtree(weights / name)  # the single file provides it; only its config stays
        (weights / name).mkdir()
        (weights / name / "config.json").write_text(json.dumps({"_class_name": class_name, **config}))
    shutil.rmtree(weights / "latent_upsampler")  # upstream's upscaler file replaces it
    shutil.copy(DATA / "lora.safetensors", weights / LIPDUB_LORA_FILE)
    files = {"weights": weights}
    for name in ("checkpoint", "spatial_upscaler"):  # stored xz-compressed (see tools/dubit_reference.py)
        files[name] = root / f"{name}.safetensors"
        files[name].write_bytes(lzma.decompress((DATA / f"{name}.safetensors.xz").read_bytes()))
    return files


@pytest.fixture(scope="module")
def model(upstream_files: dict[str, Path]) -> LipDubModel:
    """Loaded the way a run loads it: profile ``ltx-2.3``, a weights folder, ``DUBFLOW_LTX_CHECKPOINT``
    (transformer, VAEs and vocoder) and ``DUBFLOW_LTX_UPSAMPLER``."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DUBFLOW_LTX_WEIGHTS", str(upstream_files["weights"]))
        env.setenv("DUBFLOW_LTX_CHECKPOINT", str(upstream_files["checkpoint"]))
        env.setenv("DUBFLOW_LTX_UPSAMPLER", str(upstream_files["spatial_upscaler"]))
        env.setenv("DUBFLOW_FP8_WEIGHTS", "0")
        return load_lipdub(resolve_profile("ltx-2.3"), "cpu")


@pytest.fixture(scope="module")
def sampled(model: LipDubModel, reference) -> dict[str, torch.Tensor]:
    """dubflow's two stages, upsample and decode (as ``LTX2LipDubPipeline.__call__`` runs them) on upstream's
    inputs, upstream's noise replayed in the order it was drawn."""
    tensors, metadata = reference
    pipe = model.pipe
    fps = float(metadata["fps"])
    references = ShotReferences(
        video_stage_1=pipe.video_reference_tokens(tensors["input.reference_stage_1"], fps, 1),
        video_stage_2=pipe.video_reference_tokens(tensors["input.reference_stage_2"], fps, 1),
        audio=pipe.audio_reference_tokens(pipe._pack_audio_latents(tensors["input.voice_latent"])),
        num_frames=int(metadata["num_frames"]), height=int(metadata["height"]), width=int(metadata["width"]),
        frame_rate=fps,
    )
    prompt = PromptEmbedding(
        tensors["input.video_context"], tensors["input.audio_context"], torch.ones(1, tensors["input.video_context"].shape[1])
    )
    # Upstream draws noise over target and reference tokens alike (the references' share is masked
    # out); dubflow draws the targets' only. Stage 2's audio draw (noise.3) is scaled by 0 upstream.
    noises = [tensors["noise.0"], tensors["noise.1"], tensors["noise.2"]]

    def replay(shape, generator, device):
        noise = noises.pop(0)
        return noise[:, : shape[1]].to(device)

    calls = []
    hook = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: calls.append((kwargs, output)) if not calls else None, with_kwargs=True
    )
    original = pipe._noise
    pipe._noise = replay
    try:
        with torch.inference_mode():
            video_1, audio_1 = pipe.sample_stage_1(references, prompt, None, STAGE_1_SIGMAS, model.device)
            upsampled = pipe._upsample(video_1, pipe._latent_grid(references, 1))
            video_2 = pipe.sample_stage_2(upsampled, audio_1, references, prompt, None, STAGE_2_SIGMAS, model.device)
            frames = pipe._decode_video(video_2, pipe._latent_grid(references, 2))
            waveform = pipe._decode_audio(audio_1, audio_1.shape[1])
    finally:
        pipe._noise = original
        hook.remove()
    assert not noises
    kwargs, (video_out, audio_out) = calls[0]
    return {
        "forward.video_in": kwargs["hidden_states"], "forward.audio_in": kwargs["audio_hidden_states"],
        "forward.video_coords": kwargs["video_coords"], "forward.audio_coords": kwargs["audio_coords"],
        "forward.video_out": video_out, "forward.audio_out": audio_out,
        "stage_1.video": video_1, "stage_1.audio": audio_1, "upsample.video": upsampled, "stage_2.video": video_2,
        "decode.video": frames, "decode.audio": waveform,
    }


def test_reference_data_names_its_upstream_commit(reference) -> None:
    _, metadata = reference
    assert len(metadata["upstream_commit"]) == 40 and metadata["upstream_commit"].startswith("400fd31")


def test_sigma_schedules_are_upstreams(reference) -> None:
    tensors, _ = reference
    assert list(STAGE_1_SIGMAS) == tensors["upstream.stage_1_sigmas"].tolist()
    assert list(STAGE_2_SIGMAS) == tensors["upstream.stage_2_sigmas"].tolist()


def test_first_forward_inputs_and_positions_are_upstreams(reference, sampled) -> None:
    tensors, _ = reference
    assert torch.equal(sampled["forward.video_in"], tensors["forward.video_in"])
    assert torch.equal(sampled["forward.audio_in"], tensors["forward.audio_in"])
    # RoPE coordinates (pixel/second bounds per token): target then reference, voice at negative times.
    assert _relative(sampled["forward.video_coords"], tensors["forward.video_positions"]) < 1e-7
    assert _relative(sampled["forward.audio_coords"], tensors["forward.audio_positions"]) < 1e-7
    target = round(int(reference[1]["num_frames"]) / float(reference[1]["fps"]) * 25)  # 25 audio latents a second
    voice_end = sampled["forward.audio_coords"][0, 0, target:, 1].max().item()
    assert voice_end == pytest.approx(-AUDIO_REFERENCE_GAP_SECONDS, abs=1e-6)


@pytest.mark.parametrize("checkpoint", ["forward.video_out", "forward.audio_out", "stage_1.video", "stage_1.audio",
                                        "upsample.video", "stage_2.video", "decode.video", "decode.audio"])
def test_matches_upstream_at_every_checkpoint(model: LipDubModel, reference, sampled, checkpoint: str) -> None:
    tensors, _ = reference
    expected = tensors[checkpoint]
    if checkpoint == "decode.video":
        expected = expected.permute(0, 3, 1, 2)  # upstream yields (F, H, W, 3); dubflow (F, 3, H, W)
    elif checkpoint.endswith(".video"):
        expected = model.pipe._pack_latents(expected, 1, 1)
    elif checkpoint == "stage_1.audio":
        expected = model.pipe._pack_audio_latents(expected)
    assert _relative(sampled[checkpoint], expected) <= TOLERANCE


@pytest.mark.parametrize("stage", [1, 2])
def test_reference_video_encoding_matches_upstream(model: LipDubModel, reference, stage: int) -> None:
    """The source frames (another size than the take) resized to the stage's size and VAE-encoded."""
    tensors, metadata = reference
    frames = tensors["encode.frames"].permute(0, 3, 1, 2).float() / 255.0
    height, width = int(metadata["height"]) // (3 - stage), int(metadata["width"]) // (3 - stage)
    with torch.inference_mode():
        tokens = model.pipe._encode_video_reference(frames, height, width, float(metadata["fps"]), 1)
    expected = model.pipe._pack_latents(tensors[f"encode.video_stage_{stage}"], 1, 1)
    assert _relative(tokens.latents, expected) <= TOLERANCE


def test_voice_encoding_matches_upstream(model: LipDubModel, reference) -> None:
    """A stereo 48 kHz voice through the front end and the audio VAE encoder."""
    tensors, _ = reference
    with torch.inference_mode():
        tokens = model.pipe.encode_voice(tensors["voice.48000.wave"], 48_000)
    assert _relative(tokens.latents, model.pipe._pack_audio_latents(tensors["encode.voice"])) <= TOLERANCE


@pytest.mark.parametrize("size", json.loads((DATA / "decode_tiles.json").read_text())["tiles"],
                         ids=lambda size: f"{size['height']}x{size['width']}")
def test_decode_tiles_are_upstreams(size: dict[str, int]) -> None:
    """On a GPU dubflow decodes in upstream's spatial tiles: the same tile sizes and overlap."""
    assert decode_tile_size(size["height"], size["width"], size["scale"]) == (size["tile_height"], size["tile_width"])
    assert DECODE_TILE_OVERLAP == size["overlap_height"] == size["overlap_width"]


def test_decoded_audio_is_at_upstreams_rate(model: LipDubModel, reference) -> None:
    tensors, _ = reference
    assert model.sample_rate == int(tensors["decode.audio_rate"]) == 48_000


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_voice_front_end_matches_upstream(reference, rate: int) -> None:
    """At LTX-2.3's settings: 16 kHz, hop 160, 64 mel bins."""
    tensors, _ = reference
    wave = tensors[f"voice.{rate}.wave"]
    assert _relative(resample_sinc(wave, rate, 16_000), tensors[f"voice.{rate}.resampled"]) <= TOLERANCE
    # dubflow's log-mel is (1, channels, mel frames, mel bins), upstream's layout.
    assert _relative(log_mel(wave, rate, 16_000, 160, 64), tensors[f"voice.{rate}.mel"]) <= TOLERANCE
    mono = log_mel(wave[:1], rate, 16_000, 160, 64)  # duplicated into both channels
    expected = tensors[f"voice.{rate}.mono_mel"]
    assert _relative(mono, expected.expand(-1, 2, -1, -1)) <= TOLERANCE


def test_log_mel_frame_count_follows_the_hop(reference) -> None:
    tensors, _ = reference
    mel = tensors["voice.16000.mel"]
    assert mel.shape[2] == math.floor(tensors["voice.16000.wave"].shape[1] / 160) + 1


def test_models_check_accepts_upstreams_files(upstream_files: dict[str, Path]) -> None:
    report = check_weights(upstream_files["weights"], checkpoint=upstream_files["checkpoint"],
                           upsampler=upstream_files["spatial_upscaler"])
    assert report.ok, report.render()
    for name in ("transformer", "vae", "audio_vae", "vocoder"):
        assert any(line.startswith(f"checkpoint.safetensors ({name}):") for line in report.checked), report.render()
    assert any(line.startswith("spatial_upscaler.safetensors (latent_upsampler):") for line in report.checked)


def test_an_upscaler_file_that_does_not_fit_is_refused_naming_why(upstream_files: dict[str, Path], tmp_path: Path) -> None:
    tensors = load_file(str(upstream_files["spatial_upscaler"]))
    with safe_open(str(upstream_files["spatial_upscaler"]), framework="pt") as handle:
        metadata = handle.metadata()
    bare = tmp_path / "bare.safetensors"
    save_file(tensors, str(bare))
    with pytest.raises(LipDubLoadError, match="no JSON `config` in its metadata"):
        load_upsampler_file(bare, torch.float32)
    short = tmp_path / "short.safetensors"
    missing = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != missing}, str(short), metadata=metadata)
    with pytest.raises(LipDubLoadError, match=f"Missing key.*{missing}"):
        load_upsampler_file(short, torch.float32)


def test_replacing_the_upscaler_file_changes_the_weights_identity(upstream_files: dict[str, Path], tmp_path: Path) -> None:
    weights, memo = upstream_files["weights"], tmp_path / "memo.json"
    upsampler = tmp_path / "ltx-2.3-spatial-upscaler-x2-1.0.safetensors"
    shutil.copy(upstream_files["spatial_upscaler"], upsampler)
    lora = weights / LIPDUB_LORA_FILE
    before = weights_identity(weights, lora, None, memo, upsampler)
    with safe_open(str(upsampler), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: v * 2 for k, v in load_file(str(upsampler)).items()}, str(upsampler), metadata=metadata)
    after = weights_identity(weights, lora, None, memo, upsampler)
    assert before["upsampler"] != after["upsampler"] and before["base"] == after["base"]
