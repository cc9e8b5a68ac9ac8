"""Full-size LTX-2.3 on one GPU: dubflow-bf16 vs upstream-fp32, next to upstream-bf16 vs upstream-fp32.

Issue 17's GPU check. One process holds the full LTX-2.3 transformer (48 layers, 19B parameters) with
seeded random weights, built by upstream's own ``LTXModelConfigurator`` (the LTX-2.3 configuration);
runs upstream's DubIt stages (``DiffusionStage`` with its conditioning classes, ``SimpleDenoiser``,
Euler loop, Gaussian noiser) in fp32, recording every noise tensor; casts the same model to bf16 in
place and runs upstream again on the recorded noise; then hands those very bf16 tensors (no copy:
``load_state_dict(assign=True)``) through diffusers' single-file key conversion plus dubflow's renames
to diffusers' transformer, and runs dubflow's ``sample_stage_1`` / ``sample_stage_2`` on the same
inputs and noise. Then, the transformer freed, the rest of the model at full size: LTX-2.3's x2 latent
upsampler, video VAE, audio VAE and vocoder with seeded random weights, written by upstream's own
configurators into upstream's single-file layout and upscaler file; upstream's pipeline blocks
(``VideoUpsampler``, ``VideoDecoder``, ``AudioDecoder``) run in fp32 and bf16, and dubflow's loaders
(``load_checkpoint_component``: the single file's key conversion and strict loading into diffusers'
classes configured by ``LTX_2_3``; ``load_upsampler_file``) and pipeline methods (``_upsample``, ``_decode_video``, ``_decode_audio``) in
bf16, each on upstream-fp32's own stage latents. Per checkpoint (first transformer forward, stage-1
video and audio latents, stage-2 video latent, upsampled latent, decoded frames, decoded audio) it
prints ‖x − upstream_fp32‖ / ‖upstream_fp32‖ for both bf16 runs and whether dubflow's is within 2× of
upstream's own; dubflow's tiled decode (its GPU path) is one more row.

Not covered here (see docs/fidelity.md): the IC-LoRA (fused before sampling, checked in fp32 on CPU by
tests/test_upstream_dubit.py) and the encoders. Inputs are random tensors of the real shapes:
1024-token text contexts, reference latents, a 4 s voice latent.

Needs the upstream checkout on PYTHONPATH (packages/ltx-core/src, packages/ltx-pipelines/src) and dubflow
importable. Usage: ``python bench/dubit_gpu_equivalence.py --out results.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import dubit_reference as harness  # noqa: E402  (the CI harness: the one LTX-2.3 config, its layouts and builders)

UPSTREAM_CONFIG = harness.LTX_2_3_UPSTREAM_CONFIG

SEED = 20_261_205
FPS = 24.0
NUM_FRAMES, HEIGHT, WIDTH = 49, 512, 768
TEXT_TOKENS = 1024
VOICE_LATENT_FRAMES = 100  # 4 s of voice at 25 audio latents per second

# --small: the same code paths on a narrow model (dry run on a CPU); the keys mean the same to both configs.
SMALL_DIMS = {"num_attention_heads": 2, "attention_head_dim": 8, "cross_attention_dim": 16,
              "audio_num_attention_heads": 2, "audio_attention_head_dim": 4, "audio_cross_attention_dim": 8}
DIMS: dict[str, int] = {}
CHECKPOINTS = ("forward.video", "forward.audio", "stage_1.video", "stage_1.audio", "stage_2.video")
DECODER_CHECKPOINTS = ("upsample.video", "decode.video", "decode.audio")


def _res(layers: int) -> list:
    return ["res_x", {"num_layers": layers}]


# The rest of LTX-2.3 in upstream's configuration terms at full size: the CI harness's layouts
# (tools/dubit_reference.py, checked number by number on CPU) at the widths of dubflow's LTX_2_3
# (diffusers' conversion script). Loading upstream's tensors strictly into diffusers' classes built
# from LTX_2_3 proves both describe the same shapes (0.73B video VAE, 0.05B audio VAE, 0.13B
# vocoder, 0.50B upsampler).
FULL_VIDEO_VAE = {
    **harness.VIDEO_VAE_CONFIG, "decoder_base_channels": 128,
    "encoder_blocks": [_res(4), ["compress_space_res", {"multiplier": 2}], _res(6), ["compress_time_res", {"multiplier": 2}],
                       _res(4), ["compress_all_res", {"multiplier": 2}], _res(2), ["compress_all_res", {"multiplier": 1}], _res(2)],
    "decoder_blocks": [_res(4), ["compress_space", {"multiplier": 2}], _res(6), ["compress_time", {"multiplier": 2}],
                       _res(4), ["compress_all", {"multiplier": 1}], _res(2), ["compress_all", {"multiplier": 2}], _res(2)],
}
_AUDIO_PARAMS = harness.AUDIO_VAE_CONFIG["model"]["params"]
FULL_AUDIO_VAE = {**harness.AUDIO_VAE_CONFIG, "model": {"params": {
    **_AUDIO_PARAMS, "ddconfig": {**_AUDIO_PARAMS["ddconfig"], "ch_mult": [1, 2, 4], "num_res_blocks": 2}}}}
_RESBLOCKS = {"resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5]] * 3}
FULL_VOCODER = {"vocoder": {**harness.VOCODER_CONFIG["vocoder"], **_RESBLOCKS, "upsample_initial_channel": 1536},
                "bwe": {**harness.VOCODER_CONFIG["bwe"], **_RESBLOCKS, "upsample_initial_channel": 512}}
FULL_UPSAMPLER = {**harness.UPSAMPLER_CONFIG, "mid_channels": 1024, "num_blocks_per_stage": 4}


def relative(found: torch.Tensor, expected: torch.Tensor) -> float:
    if found.shape != expected.shape:  # never let broadcasting compare the wrong things
        raise ValueError(f"shapes differ: {tuple(found.shape)} vs {tuple(expected.shape)}")
    found, expected = found.double().cpu(), expected.double().cpu()
    return float((found - expected).norm() / expected.norm())


def random_upstream_model(device: torch.device, generator: torch.Generator, layers: int) -> torch.nn.Module:
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator

    with torch.device("meta"):
        model = LTXModelConfigurator.from_metadata({"config": {"transformer": {**UPSTREAM_CONFIG, **DIMS, "num_layers": layers}}})
    model = model.to_empty(device=device).to(torch.float32)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            fan_in = tensor.shape[-1] if tensor.ndim >= 2 else 1
            scale = 0.1 if tensor.ndim < 2 or "scale_shift_table" in name else 1.0 / math.sqrt(fan_in)
            tensor.normal_(0.0, scale, generator=generator)
    return model.eval()


def inputs(device: torch.device, generator: torch.Generator) -> dict[str, torch.Tensor]:
    latent_frames = (NUM_FRAMES - 1) // 8 + 1

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, device=device)

    return {
        "video_context": randn(1, TEXT_TOKENS, {**UPSTREAM_CONFIG, **DIMS}["cross_attention_dim"]),
        "audio_context": randn(1, TEXT_TOKENS, {**UPSTREAM_CONFIG, **DIMS}["audio_cross_attention_dim"]),
        "reference_stage_1": randn(1, 128, latent_frames, HEIGHT // 64, WIDTH // 64),
        "reference_stage_2": randn(1, 128, latent_frames, HEIGHT // 32, WIDTH // 32),
        "voice": randn(1, 8, VOICE_LATENT_FRAMES, 16),
        "stage_2_initial": randn(1, 128, latent_frames, HEIGHT // 32, WIDTH // 32),
    }


def run_upstream(model, data: dict, dtype: torch.dtype, noises: list[torch.Tensor] | None) -> tuple[dict, list]:
    """Upstream's two DubIt stages on ``model``; noise drawn (and recorded) when ``noises`` is None, else replayed."""
    from ltx_core.components.noisers import GaussianNoiser
    from ltx_core.conditioning import AudioConditionByReferenceLatent, VideoConditionByReferenceLatent
    from ltx_core.model.transformer.model import X0Model
    from ltx_pipelines.dubit import patchify_dubit_audio_reference_latent
    from ltx_pipelines.utils.blocks import DiffusionStage
    from ltx_pipelines.utils.constants import DISTILLED_SIGMAS, STAGE_2_DISTILLED_SIGMAS
    from ltx_pipelines.utils.denoisers import SimpleDenoiser
    from ltx_pipelines.utils.types import ModalitySpec

    device = next(model.parameters()).device
    drawn: list[torch.Tensor] = []
    replay = list(noises) if noises is not None else None

    class Noiser(GaussianNoiser):
        def _sample_noise(self, latent_state):
            if replay is not None:
                return replay.pop(0).to(latent_state.latent.dtype)
            noise = super()._sample_noise(latent_state)
            drawn.append(noise.float())
            return noise

    class Resident(X0Model):
        """The stage frees its transformer after each call (``dispose``); this one is reused."""

        def dispose(self) -> None:
            pass

    captured: dict[str, torch.Tensor] = {}

    def first_forward(module, args, output) -> None:
        if not captured:
            captured["forward.video"], captured["forward.audio"] = output[0].float(), output[1].float()

    hook = model.register_forward_hook(first_forward)
    stage = DiffusionStage(SimpleNamespace(checkpoint="random weights", model_config=lambda: {"transformer": {}}),
                           dtype, device)
    stage._build_transformer = lambda **kwargs: Resident(model)
    video_context, audio_context = data["video_context"].to(dtype), data["audio_context"].to(dtype)

    def voice(latent: torch.Tensor) -> AudioConditionByReferenceLatent:
        patch, positions = patchify_dubit_audio_reference_latent(latent, negative_positions=True, device=device)
        return AudioConditionByReferenceLatent(patch, positions, strength=1.0)

    noiser = Noiser(torch.Generator(device=device).manual_seed(SEED + 2))
    video_1, audio_1 = stage(
        denoiser=SimpleDenoiser(video_context, audio_context), sigmas=DISTILLED_SIGMAS.to(device), noiser=noiser,
        width=WIDTH // 2, height=HEIGHT // 2, frames=NUM_FRAMES, fps=FPS,
        video=ModalitySpec(context=video_context,
                           conditionings=[VideoConditionByReferenceLatent(data["reference_stage_1"].to(dtype))]),
        audio=ModalitySpec(context=audio_context, conditionings=[voice(data["voice"].to(dtype))]),
    )
    stage_1_audio = audio_1.latent.clone()
    video_2, _ = stage(
        denoiser=SimpleDenoiser(video_context, audio_context), sigmas=STAGE_2_DISTILLED_SIGMAS.to(device),
        noiser=noiser, width=WIDTH, height=HEIGHT, frames=NUM_FRAMES, fps=FPS,
        video=ModalitySpec(context=video_context,
                           conditionings=[VideoConditionByReferenceLatent(data["reference_stage_2"].to(dtype))],
                           noise_scale=STAGE_2_DISTILLED_SIGMAS[0].item(),
                           initial_latent=data["stage_2_initial"].to(dtype)),
        audio=ModalitySpec(context=audio_context, conditionings=[voice(stage_1_audio)], frozen=True,
                           noise_scale=0.0, initial_latent=stage_1_audio),
    )
    hook.remove()
    results = {**captured, "stage_1.video": video_1.latent.float(), "stage_1.audio": stage_1_audio.float(),
               "stage_2.video": video_2.latent.float()}
    return results, drawn


def dubflow_transformer(model, layers: int) -> torch.nn.Module:
    """diffusers' LTX-2.3 transformer holding ``model``'s own (bf16) tensors, renamed as dubflow's
    single-file loader renames an official checkpoint."""
    from diffusers import LTX2VideoTransformer3DModel
    from diffusers.loaders.single_file_utils import convert_ltx2_transformer_to_diffusers

    from dubflow.models.lipdub import rename_checkpoint_key
    from dubflow.models.ltx2_architectures import LTX_2_3

    official = {rename_checkpoint_key(f"model.diffusion_model.{k}"): v for k, v in model.state_dict().items()}
    converted = convert_ltx2_transformer_to_diffusers(official)
    with torch.device("meta"):
        transformer = LTX2VideoTransformer3DModel(**{**LTX_2_3.transformer, **DIMS, "num_layers": layers})
    transformer.load_state_dict(converted, strict=True, assign=True)
    return transformer.requires_grad_(False).eval()


def run_dubflow(transformer, data: dict, noises: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    from dubflow.models.lipdub_pipeline import (
        STAGE_1_SIGMAS, STAGE_2_SIGMAS, LTX2LipDubPipeline, PromptEmbedding, ShotReferences,
    )
    from dubflow.models.ltx2_architectures import LTX_2_3, build_components_on_meta, build_tokenizer
    from diffusers import FlowMatchEulerDiscreteScheduler

    others = ("text_encoder", "connectors", "vae", "audio_vae", "vocoder", "latent_upsampler")
    pipe = LTX2LipDubPipeline(
        **build_components_on_meta(LTX_2_3, others), transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**LTX_2_3.scheduler), tokenizer=build_tokenizer(LTX_2_3.tokenizer_window),
    )
    device, dtype = transformer.device, transformer.dtype
    references = ShotReferences(
        video_stage_1=pipe.video_reference_tokens(data["reference_stage_1"], FPS, 1),
        video_stage_2=pipe.video_reference_tokens(data["reference_stage_2"], FPS, 1),
        audio=pipe.audio_reference_tokens(pipe._pack_audio_latents(data["voice"])),
        num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, frame_rate=FPS,
    )
    prompt = PromptEmbedding(data["video_context"].to(dtype), data["audio_context"].to(dtype),
                             torch.ones(1, TEXT_TOKENS, device=device))
    queue = list(noises[:3])  # upstream's 4th draw is stage 2's audio at scale 0

    def replay(shape, generator, device):
        return queue.pop(0)[:, : shape[1]].to(device)

    captured: dict[str, torch.Tensor] = {}

    def first_forward(module, args, output) -> None:
        if not captured:
            captured["forward.video"], captured["forward.audio"] = output[0].float(), output[1].float()

    hook = transformer.register_forward_hook(first_forward)
    pipe._noise = replay
    with torch.inference_mode():
        video_1, audio_1 = pipe.sample_stage_1(references, prompt, None, STAGE_1_SIGMAS, device)
        initial = pipe._pack_latents(data["stage_2_initial"], 1, 1)
        video_2 = pipe.sample_stage_2(initial, audio_1, references, prompt, None, STAGE_2_SIGMAS, device)
    hook.remove()
    return {**captured, "stage_1.video": video_1, "stage_1.audio": audio_1, "stage_2.video": video_2}


def write_upstream_files(folder: Path) -> tuple[Path, Path]:
    """Upstream's single-file checkpoint (video VAE, audio VAE, vocoder; no transformer: it was compared
    above) and upscaler file at full size, seeded random weights, written by the CI harness's builders."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED + 3)
    harness.build_upstream_checkpoint(folder, generator, {"vae": FULL_VIDEO_VAE, "audio_vae": FULL_AUDIO_VAE,
                                                          "vocoder": FULL_VOCODER})
    harness.build_upsampler(folder, generator, FULL_UPSAMPLER)
    return folder / harness.CHECKPOINT, folder / harness.UPSAMPLER


def run_upstream_decoders(files: tuple[Path, Path], latents: dict, dtype: torch.dtype, device: torch.device) -> dict:
    """Upstream's pipeline blocks as ``DubItPipeline`` runs them (video decode untiled)."""
    from ltx_pipelines.utils.blocks import AudioDecoder, VideoDecoder, VideoUpsampler

    checkpoint, upscaler = str(files[0]), str(files[1])
    with torch.inference_mode():
        upsampled = VideoUpsampler(checkpoint, upscaler, dtype, device)(latents["stage_1.video"].to(dtype))
        frames = torch.cat(list(VideoDecoder(checkpoint, dtype, device)(latents["stage_2.video"].to(dtype))))
        sound = AudioDecoder(checkpoint, dtype, device)(latents["stage_1.audio"].to(dtype))
    return {"upsample.video": upsampled.float(), "decode.video": frames.float().permute(0, 3, 1, 2),  # (F, 3, H, W)
            "decode.audio": sound.waveform.float()}


def run_dubflow_decoders(files: tuple[Path, Path], latents: dict, device: torch.device) -> dict:
    """dubflow's loaders and pipeline methods, bf16, as a run on a GPU loads and calls them."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from safetensors.torch import load_file

    from dubflow.models.lipdub import LipDubModel, load_checkpoint_component, load_upsampler_file
    from dubflow.models.lipdub_pipeline import LTX2LipDubPipeline
    from dubflow.models.ltx2_architectures import LTX_2_3, build_components_on_meta, build_tokenizer

    dtype = torch.bfloat16
    official = load_file(str(files[0]))
    bundled = ("vae", "audio_vae", "vocoder")
    loaded = {name: load_checkpoint_component(name, official, getattr(LTX_2_3, name), dtype, files[0].name)
              for name in bundled}
    pipe = LTX2LipDubPipeline(
        **build_components_on_meta(LTX_2_3, ("text_encoder", "connectors", "transformer")), **loaded,
        latent_upsampler=load_upsampler_file(files[1], dtype), scheduler=FlowMatchEulerDiscreteScheduler(**LTX_2_3.scheduler),
        tokenizer=build_tokenizer(LTX_2_3.tokenizer_window),
    )
    for name in (*bundled, "latent_upsampler"):
        getattr(pipe, name).to(device)
    LipDubModel(pipe, reference_downscale_factor=1, identity="random weights")  # as a load: the vocoder in fp32
    video_1, video_2 = latents["stage_1.video"], latents["stage_2.video"]
    grid_1, grid_2 = tuple(video_1.shape[2:]), tuple(video_2.shape[2:])
    audio = pipe._pack_audio_latents(latents["stage_1.audio"])
    with torch.inference_mode():
        results = {
            "upsample.video": pipe._upsample(pipe._pack_latents(video_1, 1, 1), grid_1),
            "decode.video": pipe._decode_video(pipe._pack_latents(video_2, 1, 1), grid_2),
            "decode.audio": pipe._decode_audio(audio, audio.shape[1]),
        }
        pipe.vae.enable_tiling()  # dubflow's GPU path (models/lipdub.py `_use_kernels`)
        results["decode.video tiled"] = pipe._decode_video(pipe._pack_latents(video_2, 1, 1), grid_2)
    results["upsample.video"] = pipe._unpack_latents(results["upsample.video"], *grid_2, 1, 1)
    return results


def packed(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Upstream's stage outputs are unpatchified; dubflow's packed (B, tokens, C): compare packed."""
    if tensor.ndim == 5:
        return tensor.flatten(2).transpose(1, 2)
    if tensor.ndim == 4:
        return tensor.transpose(1, 2).flatten(2)
    return tensor


def row(name: str, expected: torch.Tensor, upstream_bf16: torch.Tensor, dubflow_bf16: torch.Tensor) -> dict:
    """One checkpoint: both bf16 runs' relative L2 against upstream fp32, and whether dubflow's is within 2x."""
    upstream_error = relative(upstream_bf16, expected)
    dubflow_error = relative(dubflow_bf16, expected)
    return {"checkpoint": name, "upstream_bf16_vs_fp32": upstream_error, "dubflow_bf16_vs_upstream_fp32": dubflow_error,
            "ratio": dubflow_error / upstream_error, "within_2x": dubflow_error <= 2 * upstream_error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--scratch", default="/tmp/dubit_gpu_equivalence", help="where upstream's decoder files are written (~6 GB)")
    parser.add_argument("--layers", type=int, default=UPSTREAM_CONFIG["num_layers"], help="fewer for a dry run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="narrow transformer, 9-frame 128x192 clip, 64 text tokens (dry run; decoders stay full size)")
    args = parser.parse_args()
    global NUM_FRAMES, HEIGHT, WIDTH, TEXT_TOKENS, VOICE_LATENT_FRAMES
    if args.small:
        NUM_FRAMES, HEIGHT, WIDTH, TEXT_TOKENS, VOICE_LATENT_FRAMES = 9, 128, 192, 64, 12
        DIMS.update(SMALL_DIMS)
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference is fp32
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(SEED)
    timings, started = {}, time.perf_counter()
    model = random_upstream_model(device, generator, args.layers)
    data = inputs(device, torch.Generator(device=device).manual_seed(SEED + 1))
    timings["build_s"] = time.perf_counter() - started
    started = time.perf_counter()
    with torch.inference_mode():
        fp32, noises = run_upstream(model, data, torch.float32, None)
    timings["upstream_fp32_s"] = time.perf_counter() - started
    model.requires_grad_(False).to(torch.bfloat16)  # in place, outside inference mode: dubflow reuses the tensors
    started = time.perf_counter()
    with torch.inference_mode():
        bf16, _ = run_upstream(model, data, torch.bfloat16, noises)
    timings["upstream_bf16_s"] = time.perf_counter() - started
    started = time.perf_counter()
    dubflow = run_dubflow(dubflow_transformer(model, args.layers), data, noises)
    timings["dubflow_bf16_s"] = time.perf_counter() - started
    rows = [row(name, packed(name, fp32[name]), packed(name, bf16[name]), packed(name, dubflow[name])) for name in CHECKPOINTS]

    # The decoders, on upstream-fp32's own stage latents; the transformer's memory given back first.
    latents = {name: fp32[name] for name in ("stage_1.video", "stage_1.audio", "stage_2.video")}
    del model, fp32, bf16, dubflow
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    started = time.perf_counter()
    files = write_upstream_files(Path(args.scratch))
    timings["write_decoder_files_s"] = time.perf_counter() - started
    decoded = {}
    for label, run in (("upstream_fp32", lambda: run_upstream_decoders(files, latents, torch.float32, device)),
                       ("upstream_bf16", lambda: run_upstream_decoders(files, latents, torch.bfloat16, device)),
                       ("dubflow_bf16", lambda: run_dubflow_decoders(files, latents, device))):
        started = time.perf_counter()
        decoded[label] = run()
        timings[f"decoders_{label}_s"] = time.perf_counter() - started
    rows += [row(name, decoded["upstream_fp32"][name], decoded["upstream_bf16"][name], decoded["dubflow_bf16"][name])
             for name in DECODER_CHECKPOINTS]
    rows.append(row("decode.video tiled", decoded["upstream_fp32"]["decode.video"], decoded["upstream_bf16"]["decode.video"],
                    decoded["dubflow_bf16"]["decode.video tiled"]))
    report = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "layers": args.layers, "torch": torch.__version__, "python": platform.python_version(),
        "geometry": {"frames": NUM_FRAMES, "height": HEIGHT, "width": WIDTH, "fps": FPS, "text_tokens": TEXT_TOKENS,
                     "voice_latent_frames": VOICE_LATENT_FRAMES},
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None, "timings": timings, "rows": rows,
    }
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"{'checkpoint':<20}{'upstream bf16':>16}{'dubflow bf16':>16}{'ratio':>8}  within 2x")
    for line in rows:
        print(f"{line['checkpoint']:<20}{line['upstream_bf16_vs_fp32']:>16.3e}{line['dubflow_bf16_vs_upstream_fp32']:>16.3e}"
              f"{line['ratio']:>8.2f}  {line['within_2x']}")
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}))


if __name__ == "__main__":
    main()
