"""Reference numbers from upstream LTX-2 DubIt for dubflow's equivalence tests (tests/test_upstream_dubit.py).

Runs Lightricks' own code (``ltx-core`` + ``ltx-pipelines``, checked out OUTSIDE this repository: its
licence forbids committing or vendoring it) and writes, into one folder under ``tests/data/``:

``checkpoint.safetensors.xz``
    A tiny LTX-2.3-shaped model with seeded random weights in upstream's own single-file layout,
    the configuration as ``config`` metadata: the transformer (every LTX-2.3 switch: gated attention,
    cross-attention AdaLN with ``prompt_adaln_single``, split RoPE, per-modality text projections;
    the real 128 video and 128 audio latent channels, which upstream's pipeline blocks hard-code)
    under ``model.diffusion_model.``, the video VAE under ``vae.``, the audio VAE under
    ``audio_vae.``, the vocoder with bandwidth extension under ``vocoder.`` (LTX-2.3's layouts at
    tiny widths: ``VIDEO_VAE_CONFIG``, ``AUDIO_VAE_CONFIG``, ``VOCODER_CONFIG``). Every component is
    read back through upstream's own ``Builder``s before use. xz-compressed (the test unpacks it).
``spatial_upscaler.safetensors.xz``
    The x2 spatial latent upsampler as upstream ships it: its own file, its configuration as metadata.
``lora.safetensors``
    A random rank-2 IC-LoRA in the official key layout (``diffusion_model.`` prefix), fused by
    upstream's loader at strength 1.0 in both stages, as ``DubItPipeline`` does.
``reference.safetensors``
    Inputs (text-connector outputs, reference video latents at both stage sizes, the voice
    reference's audio latent, every noise tensor in the order drawn, source frames) and upstream's
    outputs: the first transformer forward (velocities), stage-1 video and audio latents, the
    upsampled latent (stage 2's start), the stage-2 video latent, the decoded frames and the decoded
    audio (with its rate); the reference encodings (source frames at both stage sizes, a voice);
    the voice front end: upstream's ``AudioProcessor`` (torchaudio resampler + log-mel) on one
    waveform at 16, 44.1 and 48 kHz, stereo and mono. The metadata names the upstream commit and the
    geometry.
``decode_tiles.json``
    Upstream's decode tiles (``AUTO_TILING``) for that checkpoint's VAE at several picture sizes, with
    the commit.

It is upstream's own code path throughout: ``DiffusionStage`` with its conditioning classes
(``VideoConditionByReferenceLatent``, ``AudioConditionByReferenceLatent`` via
``dubit.patchify_dubit_audio_reference_latent``), ``SimpleDenoiser``, the Euler loop and the Gaussian
noiser (recorded, not replaced), and the pipeline blocks ``DubItPipeline`` uses for the rest
(``VideoUpsampler``, ``VideoDecoder``, ``AudioDecoder``, ``ImageConditioner``, ``AudioConditioner``).
The only change is the LoRA fusion rule at fp32 (see ``run_dubit_stages``).

Run (the upstream checkout and a Python environment with its dependencies, e.g. torch, torchaudio,
einops, transformers<5.15, safetensors, scipy, av)::

    git --git-dir=<LTX-2 clone> archive 400fd31 --prefix=LTX-2-400fd31/ | tar -x -C /work/upstream
    PYTHONPATH=/work/upstream/LTX-2-400fd31/packages/ltx-core/src:/work/upstream/LTX-2-400fd31/packages/ltx-pipelines/src \\
        <venv>/bin/python tools/dubit_reference.py --upstream /work/upstream/LTX-2-400fd31 \\
        --commit 400fd31054597515f47125691032c04b1c3ee24e --out tests/data/upstream_dubit
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20_261_204
FPS = 24.0
NUM_FRAMES = 9  # 8k+1: two latent frames (the decoder's temporal upsampling runs)
HEIGHT, WIDTH = 64, 128  # full (stage-2) size; stage 1 at half: 1x2 latent cells, stage 2: 2x4
VIDEO_HEADS, VIDEO_HEAD_DIM = 2, 8
AUDIO_HEADS, AUDIO_HEAD_DIM = 2, 4
LATENT_CHANNELS = 128  # upstream's DiffusionStage builds 128-channel video and 8x16 audio latents
LAYERS = 2
TEXT_TOKENS = 16
LORA_RANK = 2
LORA_BLOCK_TARGETS = tuple(
    f"{attn}.{proj}"
    for attn in ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
    for proj in ("to_q", "to_k", "to_v", "to_out.0")
) + ("ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2", "patchify_proj")
VOICE_RATES = (16_000, 44_100, 48_000)
VOICE_SECONDS = 0.4

# LTX-2.3's transformer (22B) in upstream's configuration terms (the values diffusers' conversion
# script maps to dubflow's LTX_2_3.transformer); bench/dubit_gpu_equivalence.py builds it at full size.
LTX_2_3_UPSTREAM_CONFIG = {
    "dropout": 0.0, "attention_bias": True, "num_vector_embeds": None, "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000, "use_linear_projection": False, "only_cross_attention": False,
    "cross_attention_norm": True, "double_self_attention": False, "upcast_attention": False,
    "standardization_norm": "rms_norm", "norm_elementwise_affine": False, "qk_norm": "rms_norm",
    "positional_embedding_type": "rope", "use_audio_video_cross_attention": True, "share_ff": False,
    "av_cross_ada_norm": True, "use_middle_indices_grid": True,
    "num_attention_heads": 32, "attention_head_dim": 128, "in_channels": 128, "out_channels": 128,
    "num_layers": 48, "cross_attention_dim": 4096, "norm_eps": 1e-6, "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048], "timestep_scale_multiplier": 1000,
    "audio_num_attention_heads": 32, "audio_attention_head_dim": 64, "audio_in_channels": 128,
    "audio_out_channels": 128, "audio_cross_attention_dim": 2048, "audio_positional_embedding_max_pos": [20],
    "av_ca_timestep_scale_multiplier": 1000, "rope_type": "split", "frequencies_precision": "float64",
    "apply_gated_attention": True, "cross_attention_adaln": True, "use_prompt_adaln_single": True,
    "caption_proj_before_connector": True,  # LTX-2.3 (22B): the text connectors project, not the transformer
}
# The tiny model the CI reference is made with: LTX-2.3's configuration at small sizes.
TRANSFORMER_CONFIG = {
    **LTX_2_3_UPSTREAM_CONFIG,
    "num_attention_heads": VIDEO_HEADS, "attention_head_dim": VIDEO_HEAD_DIM,
    "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "num_layers": LAYERS,
    "cross_attention_dim": VIDEO_HEADS * VIDEO_HEAD_DIM, "audio_num_attention_heads": AUDIO_HEADS,
    "audio_attention_head_dim": AUDIO_HEAD_DIM, "audio_in_channels": LATENT_CHANNELS,
    "audio_out_channels": LATENT_CHANNELS, "audio_cross_attention_dim": AUDIO_HEADS * AUDIO_HEAD_DIM,
}


# The rest of the single file and the upsampler, in upstream's configuration terms: LTX-2.3's layouts
# (block order, up/down-sampling types, padding, activations, bandwidth extension) at tiny widths.
# Where upstream ties a width to the 128-channel latents it stays 128: the video VAE encoder's first
# stage and its output, the audio VAE's base width (its per-channel statistics cover the packed 8x16
# latent), the upsampler's input and output.
VIDEO_VAE_CONFIG = {
    "_class_name": "CausalVideoAutoencoder", "dims": 3, "in_channels": 3, "out_channels": 3,
    "latent_channels": LATENT_CHANNELS, "patch_size": 4, "norm_layer": "pixel_norm", "latent_log_var": "uniform",
    "causal_decoder": False, "timestep_conditioning": False, "spatial_padding_mode": "zeros",
    "decoder_base_channels": 4,
    "encoder_blocks": [
        ["res_x", {"num_layers": 0}], ["compress_space_res", {"multiplier": 1}], ["res_x", {"num_layers": 0}],
        ["compress_time_res", {"multiplier": 1}], ["res_x", {"num_layers": 0}], ["compress_all_res", {"multiplier": 1}],
        ["res_x", {"num_layers": 0}], ["compress_all_res", {"multiplier": 1}], ["res_x", {"num_layers": 0}],
    ],
    # Listed from the pixels up, as upstream does (the decoder runs them in reverse): LTX-2.3's
    # upsampling order and channel reductions (diffusers: upsample_type, upsample_factor).
    "decoder_blocks": [
        ["res_x", {"num_layers": 1}], ["compress_space", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
        ["compress_time", {"multiplier": 2}], ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 1}],
        ["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 2}], ["res_x", {"num_layers": 1}],
    ],
}
AUDIO_VAE_CONFIG = {
    "model": {"params": {"sampling_rate": 16_000, "ddconfig": {
        "ch": LATENT_CHANNELS, "out_ch": 2, "ch_mult": [1, 1, 1], "num_res_blocks": 0, "attn_resolutions": [],
        "resolution": 256, "z_channels": 8, "double_z": True, "norm_type": "pixel", "causality_axis": "height",
        "dropout": 0.0, "mid_block_add_attention": False, "in_channels": 2, "mel_bins": 64,
    }}},
    "preprocessing": {"stft": {"hop_length": 160, "filter_length": 1024, "causal": True}, "mel": {"n_mel_channels": 64}},
}
_GENERATOR = {
    "resblock": "AMP1", "stereo": True, "activation": "snakebeta", "resblock_kernel_sizes": [3],
    "resblock_dilation_sizes": [[1, 3, 5]], "use_tanh_at_final": False, "use_bias_at_final": False,
}
VOCODER_CONFIG = {
    "vocoder": {**_GENERATOR, "upsample_rates": [5, 2, 2, 2, 2, 2], "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
                "upsample_initial_channel": 64},
    "bwe": {**_GENERATOR, "upsample_rates": [6, 5, 2, 2, 2], "upsample_kernel_sizes": [12, 11, 4, 4, 4],
            "upsample_initial_channel": 32, "input_sampling_rate": 16_000, "output_sampling_rate": 48_000,
            "n_fft": 512, "hop_length": 80, "num_mels": 64},
}
UPSAMPLER_CONFIG = {
    "in_channels": LATENT_CHANNELS, "mid_channels": 32, "num_blocks_per_stage": 1, "dims": 3, "spatial_upsample": True,
    "temporal_upsample": False, "spatial_scale": 2.0, "rational_resampler": False,
}
CHECKPOINT_CONFIG = {
    "transformer": TRANSFORMER_CONFIG, "vae": VIDEO_VAE_CONFIG, "audio_vae": AUDIO_VAE_CONFIG, "vocoder": VOCODER_CONFIG,
}
VOCODER_OUTPUT_GAIN = 8
CHECKPOINT = "checkpoint.safetensors"
UPSAMPLER = "spatial_upscaler.safetensors"


def build_upstream_checkpoint(out: Path, generator: torch.Generator, config: dict = CHECKPOINT_CONFIG) -> dict:
    """Random weights in upstream's models, saved in upstream's single-file layout: the transformer
    under ``model.diffusion_model.`` (when ``config`` has one), the video VAE under ``vae.``, the audio
    VAE under ``audio_vae.``, the vocoder under ``vocoder.``; ``config`` as ``config`` metadata. Returns
    the transformer's part."""
    from ltx_core.model.audio_vae.model_configurator import (
        AudioDecoderConfigurator, AudioEncoderConfigurator, VocoderConfigurator,
    )
    from ltx_core.model.transformer.model_configurator import LTXModelConfigurator
    from ltx_core.model.video_vae.model_configurator import VideoDecoderConfigurator, VideoEncoderConfigurator

    metadata = {"config": config}
    transformer = {}
    if "transformer" in config:
        for name, tensor in LTXModelConfigurator.from_metadata(metadata).state_dict().items():
            fan_in = tensor.shape[-1] if tensor.ndim >= 2 else 1
            scale = 0.1 if tensor.ndim < 2 or "scale_shift_table" in name else 1.0 / math.sqrt(fan_in)
            transformer[f"model.diffusion_model.{name}"] = (torch.randn(tensor.shape, generator=generator) * scale).contiguous()
    state = dict(transformer)
    for prefix, configurator in (
        ("vae.encoder.", VideoEncoderConfigurator), ("vae.decoder.", VideoDecoderConfigurator),
        ("audio_vae.encoder.", AudioEncoderConfigurator), ("audio_vae.decoder.", AudioDecoderConfigurator),
    ):
        for name, tensor in random_state(configurator.from_metadata(metadata), generator).items():
            # Encoder and decoder share one set of latent statistics, stored once beside them.
            key = prefix.rsplit(".", 2)[0] + "." + name if name.startswith("per_channel_statistics.") else prefix + name
            state.setdefault(key, tensor)
    for name, tensor in random_state(VocoderConfigurator.from_metadata(metadata), generator).items():
        # Both generators' last convolutions at 1/8: random weights otherwise drive 84 % of the samples
        # into the final clamp, where any two implementations agree trivially; at 1/8 a few still clip
        # before the bandwidth extension (so its clamp is tested) and 20 % after it.
        state[f"vocoder.{name}"] = tensor / VOCODER_OUTPUT_GAIN if name.endswith("conv_post.weight") else tensor
    save_file(state, str(out / CHECKPOINT), metadata={"config": json.dumps(metadata["config"])})
    return transformer


def build_upsampler(out: Path, generator: torch.Generator, config: dict = UPSAMPLER_CONFIG) -> None:
    """The x2 spatial latent upsampler as upstream ships it: its own file, its configuration as metadata."""
    from ltx_core.model.upsampler.model_configurator import LatentUpsamplerConfigurator

    model = LatentUpsamplerConfigurator.from_metadata({"config": config})
    save_file(random_state(model, generator), str(out / UPSAMPLER), metadata={"config": json.dumps(config)})


def random_state(model: torch.nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded random parameters and latent statistics; other buffers (filters, STFT bases) as upstream builds them.

    Values are ternary (-s, 0, s per tensor, s = 1/sqrt(fan-in)): as random as any for an equivalence
    test, and the files compress well (the VAEs are wide where the 128-channel latents force it)."""
    parameters = dict(model.named_parameters())
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("std-of-means"):
            value = 2.0 ** torch.randint(-1, 2, tensor.shape, generator=generator).float()
        elif name in parameters or name.endswith("mean-of-means"):
            fan_in = tensor[0].numel() if tensor.ndim >= 2 else 4
            value = torch.randint(-1, 2, tensor.shape, generator=generator).float() / math.sqrt(fan_in)
        else:
            value = tensor.float()
        state[name] = value.contiguous()
    return state


def build_lora(out: Path, state: dict, generator: torch.Generator) -> None:
    tensors = {}
    for layer in range(LAYERS):
        for target in LORA_BLOCK_TARGETS:
            name = target if target == "patchify_proj" else f"transformer_blocks.{layer}.{target}"
            if target == "patchify_proj" and layer:
                continue
            out_features, in_features = state[f"model.diffusion_model.{name}.weight"].shape
            tensors[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(LORA_RANK, in_features, generator=generator) * 0.3
            tensors[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(out_features, LORA_RANK, generator=generator) * 0.3
    save_file(tensors, str(out / "lora.safetensors"), metadata={"reference_downscale_factor": "1"})


class RecordingNoiser:
    """Upstream's GaussianNoiser, keeping every noise tensor it draws (in order) for the record."""

    def __init__(self, generator: torch.Generator) -> None:
        from ltx_core.components.noisers import GaussianNoiser

        self.inner = GaussianNoiser(generator)
        self.noises: list[torch.Tensor] = []
        sample = self.inner._sample_noise

        def recording(latent_state):
            noise = sample(latent_state)
            self.noises.append(noise.clone())
            return noise

        self.inner._sample_noise = recording

    def __call__(self, latent_state, noise_scale: float = 1.0):
        return self.inner(latent_state, noise_scale)


def run_dubit_stages(out: Path, generator: torch.Generator) -> dict[str, torch.Tensor]:
    from ltx_core.conditioning import AudioConditionByReferenceLatent, VideoConditionByReferenceLatent
    from ltx_core.loader import LoraPathStrengthAndSDOps
    from ltx_core.loader.fuse_loras import FuseRule, bf16_fuse_rule
    from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_pipelines.dubit import patchify_dubit_audio_reference_latent
    from ltx_pipelines.utils.blocks import AudioDecoder, DiffusionStage, VideoDecoder, VideoUpsampler
    from ltx_pipelines.utils.denoisers import SimpleDenoiser
    from ltx_pipelines.utils.types import ModalitySpec

    from ltx_pipelines.utils.constants import (
        DISTILLED_SIGMA_VALUES, DISTILLED_SIGMAS, STAGE_2_DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMAS,
    )

    cpu = torch.device("cpu")
    latent_frames = (NUM_FRAMES - 1) // 8 + 1
    video_context = torch.randn(1, TEXT_TOKENS, VIDEO_HEADS * VIDEO_HEAD_DIM, generator=generator)
    audio_context = torch.randn(1, TEXT_TOKENS, AUDIO_HEADS * AUDIO_HEAD_DIM, generator=generator)
    reference_1 = torch.randn(1, LATENT_CHANNELS, latent_frames, HEIGHT // 64, WIDTH // 64, generator=generator)
    reference_2 = torch.randn(1, LATENT_CHANNELS, latent_frames, HEIGHT // 32, WIDTH // 32, generator=generator)
    # The voice reference as the audio VAE emits it: (B, 8 channels, frames, 16 mel bins); a longer
    # clip than the target, as a whole shot's sound would be.
    voice = torch.randn(1, 8, 13, 16, generator=generator)

    stage = DiffusionStage.from_checkpoint(
        str(out / CHECKPOINT), torch.float32, cpu,
        loras=(LoraPathStrengthAndSDOps(str(out / "lora.safetensors"), 1.0, LTXV_LORA_COMFY_RENAMING_MAP),),
    )
    # Upstream fuses LoRAs with bf16 aggregation whatever the model's dtype (`bf16_fuse_rule`: the
    # fused weight is rounded to bf16), which in an fp32 run is a 3e-3 relative change of every
    # adapted layer. For an fp32 reference the harness fuses with upstream's own rule at fp32; a bf16
    # run (the real one) is unaffected.
    stage._transformer_builder = stage._transformer_builder.with_fuse_rule(
        FuseRule(aggregation_dtype=torch.float32, fuse_fn=bf16_fuse_rule.fuse_fn)
    )
    calls: list[dict[str, torch.Tensor]] = []

    def audio_reference(latent: torch.Tensor) -> AudioConditionByReferenceLatent:
        patch, positions = patchify_dubit_audio_reference_latent(latent, negative_positions=True, device=cpu)
        return AudioConditionByReferenceLatent(patch, positions, strength=1.0)

    def record_first_forward(transformer) -> None:
        model = transformer.velocity_model if hasattr(transformer, "velocity_model") else transformer

        def hook(module, args, output):
            if not calls:
                video, audio = args[0], args[1]
                calls.append({
                    "forward.video_in": video.latent.clone(), "forward.audio_in": audio.latent.clone(),
                    "forward.video_timesteps": video.timesteps.clone(), "forward.audio_timesteps": audio.timesteps.clone(),
                    "forward.video_positions": video.positions.clone(), "forward.audio_positions": audio.positions.clone(),
                    "forward.video_out": output[0].clone(), "forward.audio_out": output[1].clone(),
                })

        model.register_forward_hook(hook)

    original_build = stage._build_transformer

    def build_and_hook(**kwargs):
        transformer = original_build(**kwargs)
        record_first_forward(transformer)
        return transformer

    stage._build_transformer = build_and_hook
    noiser = RecordingNoiser(generator)
    denoiser = SimpleDenoiser(video_context, audio_context)
    video_1, audio_1 = stage(
        denoiser=denoiser, sigmas=DISTILLED_SIGMAS.to(torch.float32), noiser=noiser, width=WIDTH // 2, height=HEIGHT // 2,
        frames=NUM_FRAMES, fps=FPS,
        video=ModalitySpec(context=video_context, conditionings=[VideoConditionByReferenceLatent(reference_1)]),
        audio=ModalitySpec(context=audio_context, conditionings=[audio_reference(voice)]),
    )
    stage_1_audio = audio_1.latent.clone()
    # As DubItPipeline: the pipeline block that builds the VAE encoder (for its latent statistics) and
    # the upsampler from their files and runs `upsample_video`.
    upsampled = VideoUpsampler(str(out / CHECKPOINT), str(out / UPSAMPLER), torch.float32, cpu)(video_1.latent[:1])
    video_2, _ = stage(
        denoiser=SimpleDenoiser(video_context, audio_context), sigmas=STAGE_2_DISTILLED_SIGMAS.to(torch.float32), noiser=noiser,
        width=WIDTH, height=HEIGHT, frames=NUM_FRAMES, fps=FPS,
        video=ModalitySpec(context=video_context, conditionings=[VideoConditionByReferenceLatent(reference_2)],
                           noise_scale=STAGE_2_DISTILLED_SIGMAS[0].item(), initial_latent=upsampled),
        audio=ModalitySpec(context=audio_context, conditionings=[audio_reference(stage_1_audio)], frozen=True,
                           noise_scale=0.0, initial_latent=stage_1_audio),
    )
    # Decode as DubItPipeline does: video from stage 2, audio from stage 1 (audio VAE -> mel -> vocoder
    # with bandwidth extension), through upstream's pipeline blocks. Untiled: the tiny clip is one
    # tile (dubflow tiles only on a GPU, with diffusers' tiling).
    frames = torch.cat(list(VideoDecoder(str(out / CHECKPOINT), torch.float32, cpu)(video_2.latent)))
    sound = AudioDecoder(str(out / CHECKPOINT), torch.float32, cpu)(stage_1_audio)
    tensors = {
        "input.video_context": video_context, "input.audio_context": audio_context,
        "input.reference_stage_1": reference_1, "input.reference_stage_2": reference_2,
        "input.voice_latent": voice,
        "upstream.stage_1_sigmas": torch.tensor(DISTILLED_SIGMA_VALUES, dtype=torch.float64),
        "upstream.stage_2_sigmas": torch.tensor(STAGE_2_DISTILLED_SIGMA_VALUES, dtype=torch.float64),
        "stage_1.video": video_1.latent, "stage_1.audio": stage_1_audio, "stage_2.video": video_2.latent,
        "upsample.video": upsampled, "decode.video": frames, "decode.audio": sound.waveform,
        "decode.audio_rate": torch.tensor(sound.sampling_rate),
        **calls[0],
    }
    for index, noise in enumerate(noiser.noises):
        tensors[f"noise.{index}"] = noise
    return tensors


def encode_references(out: Path, voice: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The references as DubItPipeline encodes them, through its pipeline blocks: source frames (uint8,
    another size than the take, the same aspect) resized and normalised by `video_preprocess` and
    VAE-encoded with its default encode tiling at both stage sizes; the voice (a stereo 48 kHz wave)
    through `encode_audio` (front end + audio VAE encoder)."""
    from ltx_core.model.audio_vae import encode_audio
    from ltx_core.model.video_vae import TileSizeConfig
    from ltx_core.types import Audio
    from ltx_pipelines.utils.blocks import AudioConditioner, ImageConditioner
    from ltx_pipelines.utils.media_io import video_preprocess

    cpu = torch.device("cpu")
    frames = torch.randint(0, 256, (NUM_FRAMES, HEIGHT * 3 // 4, WIDTH * 3 // 4, 3), generator=generator, dtype=torch.uint8)
    conditioner = ImageConditioner(str(out / CHECKPOINT), torch.float32, cpu)

    def encode(height: int, width: int) -> torch.Tensor:
        pixels = video_preprocess((frame[None] for frame in frames), height, width, torch.float32, cpu)
        return conditioner(lambda encoder: encoder.tiled_encode(pixels, TileSizeConfig.default()))

    voice_latent = AudioConditioner(str(out / CHECKPOINT), torch.float32, cpu)(
        lambda encoder: encode_audio(Audio(voice[None], 48_000), encoder, None)
    )
    return {
        "encode.frames": frames, "encode.video_stage_1": encode(HEIGHT // 2, WIDTH // 2),
        "encode.video_stage_2": encode(HEIGHT, WIDTH), "encode.voice": voice_latent,
    }


def voice_front_end(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Upstream's AudioProcessor (torchaudio resample to 16 kHz + log-mel) at several input rates."""
    from ltx_core.model.audio_vae.ops import AudioProcessor
    from ltx_core.types import Audio

    processor = AudioProcessor(target_sample_rate=16_000, mel_bins=64, mel_hop_length=160, n_fft=1024)
    tensors = {}
    for rate in VOICE_RATES:
        samples = round(VOICE_SECONDS * rate)
        t = torch.arange(samples, dtype=torch.float64) / rate
        # A voiced-like signal: harmonics of a gliding pitch plus noise, energy up to Nyquist.
        pitch = 140.0 + 60.0 * t
        tone = sum(torch.sin(2 * math.pi * k * torch.cumsum(pitch, 0) / rate) / k for k in range(1, 30))
        wave = (0.3 * tone).float().expand(2, -1).clone()
        wave += 0.05 * torch.randn(2, samples, generator=generator)
        tensors[f"voice.{rate}.wave"] = wave
        tensors[f"voice.{rate}.resampled"] = processor.resample_audio(Audio(wave[None], rate)).waveform[0]
        tensors[f"voice.{rate}.mel"] = processor.waveform_to_mel(Audio(wave[None], rate))
        # Mono: upstream's encoder wants two channels; its front end, per channel, is what dubflow
        # duplicates into both.
        tensors[f"voice.{rate}.mono_mel"] = processor.waveform_to_mel(Audio(wave[None, :1], rate))
    return tensors


# Picture sizes (height, width) at which upstream's decode tiles are recorded: landscape, portrait,
# square, UHD, and sizes upstream decodes in one tile.
TILED_SIZES = ((256, 384), (512, 768), (544, 960), (768, 1280), (832, 1536), (1024, 1024), (1088, 1920),
               (1920, 1088), (2176, 3840))


def decode_tiles(checkpoint: Path) -> list[dict[str, int]]:
    """Upstream DubIt's decode tiling (``AUTO_TILING``) for ``checkpoint``'s VAE (LTX-2.3's is convolutional)
    at ``TILED_SIZES``."""
    from ltx_core.tiling import TileSizeConfig
    from ltx_core.types import VIDEO_SCALE_FACTORS
    from ltx_pipelines.utils.helpers import tiling_config_for_vae

    rows = []
    for height, width in TILED_SIZES:
        config = tiling_config_for_vae(str(checkpoint), height=height, width=width, num_frames=121)
        assert isinstance(config, TileSizeConfig), config
        rows.append({"height": height, "width": width, "scale": VIDEO_SCALE_FACTORS.height,
                     "tile_height": config.height.tile_size, "tile_width": config.width.tile_size,
                     "overlap_height": config.height.overlap, "overlap_width": config.width.overlap,
                     "tile_frames": config.frames.tile_size, "overlap_frames": config.frames.overlap})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", type=Path, required=True, help="the LTX-2 checkout (outside this repository)")
    parser.add_argument("--commit", required=True, help="the full commit id of that checkout")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import ltx_core

    if not Path(ltx_core.__file__).resolve().is_relative_to(args.upstream.resolve()):
        raise SystemExit(f"ltx_core comes from {ltx_core.__file__}, not from {args.upstream}: set PYTHONPATH")
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED)
    state = build_upstream_checkpoint(args.out, generator)
    build_lora(args.out, state, generator)
    build_upsampler(args.out, generator)
    tensors = {**run_dubit_stages(args.out, torch.Generator().manual_seed(SEED + 1)),
               **voice_front_end(torch.Generator().manual_seed(SEED + 2))}
    tensors |= encode_references(args.out, tensors["voice.48000.wave"], torch.Generator().manual_seed(SEED + 3))
    metadata = {
        "upstream_commit": args.commit, "fps": repr(FPS), "num_frames": str(NUM_FRAMES), "height": str(HEIGHT),
        "width": str(WIDTH),
        "torch": torch.__version__,
    }
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(args.out / "reference.safetensors"), metadata=metadata)
    (args.out / "decode_tiles.json").write_text(json.dumps({"upstream_commit": args.commit, "tiles": decode_tiles(args.out / CHECKPOINT)}, indent=1) + "\n")
    for name in (CHECKPOINT, UPSAMPLER):  # ternary weights: xz keeps the repository small (the test unpacks them)
        raw = args.out / name
        (args.out / f"{name}.xz").write_bytes(lzma.compress(raw.read_bytes(), preset=9))
        raw.unlink()
    print(f"wrote {args.out}: {len(tensors)} tensors from upstream {args.commit}")


if __name__ == "__main__":
    main()
