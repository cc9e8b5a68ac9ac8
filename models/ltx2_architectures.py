"""LTX-2 architectures as plain constructor kwargs, and random-weight components built from them.

An :class:`LTX2Architecture` holds the keyword arguments of every component's constructor, so one
code path builds the real model's shapes (for FLOP/memory planning and GPU dry runs with random
weights) and the tiny CPU model the tests and the ``smoke`` profile run.

``LTX_2_3``
    The full-size LTX-2.3 (22B) architecture. The transformer, connectors, video VAE, audio VAE,
    vocoder (with bandwidth extension to 48 kHz) and x2 spatial latent upsampler kwargs are copied
    from the ``version == "2.3"`` branches of diffusers' ``scripts/convert_ltx2_to_diffusers.py``
    (added by diffusers PR #13217 and unchanged since), the scheduler from that script's
    distilled-checkpoint branch (LipDub runs distilled). The text encoder is Gemma 3 12B: the values of
    ``google/gemma-3-12b-it``'s ``config.json`` (the conversion script's default text encoder is its
    QAT-unquantized variant, same architecture), written in transformers 5's ``rope_parameters``
    form. The 1024-token prompt window is ltx-core's ``TOKENIZER_MAX_LENGTH``
    (``ltx_core/text_encoders/gemma/gemma_assets.py``) and the LTX-2 pipelines'
    ``max_sequence_length`` default. :func:`parameter_counts` gives 18.99B for the transformer and
    3.17B for the connectors (the "22B"), 12.19B for Gemma 3 with its vision tower, 0.73B video VAE,
    0.50B latent upsampler, 0.13B vocoder, 0.05B audio VAE.

``SMOKE``
    Tiny random components for CPU: exactly what ``models/lipdub.py``'s smoke profile built before
    this module existed, bit for bit for the same seed (same classes, same switches, same
    compression ratios: 8x temporal, 32x spatial, 25 audio latents per second, 48 kHz stereo out),
    plus a tiny x2 spatial latent upsampler, built last.

The tokenizer is never downloaded: :func:`build_tokenizer` makes a Gemma tokenizer with a character
vocabulary and byte fallback, for every architecture. Its vocabulary is far smaller than Gemma's;
every id it produces is still a valid row of the real embedding table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import GemmaTokenizer

__all__ = [
    "COMPONENT_NAMES",
    "LTX2Architecture",
    "LTX_2_3",
    "SMOKE",
    "build_components",
    "build_tokenizer",
    "parameter_counts",
]

# The components with weights, in the order they are built: the order the smoke profile has always
# drawn them from one seeded generator, so a seed reproduces the smoke weights it always produced.
COMPONENT_NAMES = ("text_encoder", "transformer", "connectors", "vae", "audio_vae", "vocoder", "latent_upsampler")


@dataclass(frozen=True)
class LTX2Architecture:
    """Constructor kwargs of every LTX-2 component (treat the dicts as read-only)."""

    name: str
    transformer: dict[str, Any]  # LTX2VideoTransformer3DModel
    connectors: dict[str, Any]  # LTX2TextConnectors
    vae: dict[str, Any]  # AutoencoderKLLTX2Video
    audio_vae: dict[str, Any]  # AutoencoderKLLTX2Audio
    vocoder: dict[str, Any]  # LTX2VocoderWithBWE
    latent_upsampler: dict[str, Any]  # LTX2LatentUpsamplerModel
    text_encoder: dict[str, Any]  # transformers Gemma3Config -> Gemma3ForConditionalGeneration
    scheduler: dict[str, Any]  # FlowMatchEulerDiscreteScheduler
    tokenizer_window: int  # prompt tokens (the tokenizer's model_max_length)


# ---------------------------------------------------------------------------------------------------
# LTX-2.3, full size.

# Gemma 3 12B (google/gemma-3-12b-it config.json). Its hidden size and layer count fix the
# connectors' input: caption_channels = 3840, text_proj_in_factor = 48 layers + the embedding = 49.
_GEMMA_3_12B = dict(
    text_config=dict(
        vocab_size=262_208, hidden_size=3840, intermediate_size=15_360, num_hidden_layers=48,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, max_position_embeddings=131_072,
        sliding_window=1024, sliding_window_pattern=6,  # 5 local layers, then 1 global
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        attention_bias=False, attention_dropout=0.0, final_logit_softcapping=None, attn_logit_softcapping=None,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    ),
    vision_config=dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16, image_size=896, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6, attention_dropout=0.0, vision_use_head=False,
    ),
    mm_tokens_per_image=256,
    # Gemma's own image-token ids, all inside its 262208-row vocabulary.
    boi_token_index=255_999, eoi_token_index=256_000, image_token_index=262_144,
)

LTX_2_3 = LTX2Architecture(
    name="ltx-2.3",
    transformer=dict(
        in_channels=128, out_channels=128, patch_size=1, patch_size_t=1,
        num_attention_heads=32, attention_head_dim=128, cross_attention_dim=4096,
        vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20, base_height=2048, base_width=2048,
        gated_attn=True, cross_attn_mod=True,
        audio_in_channels=128, audio_out_channels=128, audio_patch_size=1, audio_patch_size_t=1,
        audio_num_attention_heads=32, audio_attention_head_dim=64, audio_cross_attention_dim=2048,
        audio_scale_factor=4, audio_pos_embed_max_pos=20, audio_sampling_rate=16_000, audio_hop_length=160,
        audio_gated_attn=True, audio_cross_attn_mod=True,
        num_layers=48, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=3840,
        attention_bias=True, attention_out_bias=True,
        rope_theta=10_000.0, rope_double_precision=True, causal_offset=1,
        timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000,
        rope_type="split", use_prompt_embeddings=False, perturbed_attn=True,
    ),
    connectors=dict(
        caption_channels=3840, text_proj_in_factor=49,
        video_connector_num_attention_heads=32, video_connector_attention_head_dim=128,
        video_connector_num_layers=8, video_connector_num_learnable_registers=128, video_gated_attn=True,
        audio_connector_num_attention_heads=32, audio_connector_attention_head_dim=64,
        audio_connector_num_layers=8, audio_connector_num_learnable_registers=128, audio_gated_attn=True,
        connector_rope_base_seq_len=4096, rope_theta=10_000.0, rope_double_precision=True,
        causal_temporal_positioning=False, rope_type="split",
        per_modality_projections=True, video_hidden_dim=4096, audio_hidden_dim=2048, proj_bias=True,
    ),
    vae=dict(
        in_channels=3, out_channels=3, latent_channels=128,
        block_out_channels=(256, 512, 1024, 1024), decoder_block_out_channels=(256, 512, 512, 1024),
        down_block_types=("LTX2VideoDownBlock3D",) * 4,
        layers_per_block=(4, 6, 4, 2, 2), decoder_layers_per_block=(4, 6, 4, 2, 2),
        spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True, True),
        decoder_inject_noise=(False,) * 5,
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
        upsample_residual=(False,) * 4, upsample_factor=(2, 2, 1, 2),
        # The script's --timestep_conditioning flag defaults to off.
        timestep_conditioning=False,
        patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, encoder_causal=True, decoder_causal=False,
        encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="zeros",
        spatial_compression_ratio=32, temporal_compression_ratio=8,
    ),
    audio_vae=dict(
        base_channels=128, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=None,
        in_channels=2, resolution=256, latent_channels=8, norm_type="pixel", causality_axis="height",
        dropout=0.0, mid_block_add_attention=False, sample_rate=16_000, mel_hop_length=160,
        is_causal=True, mel_bins=64, double_z=True,
    ),
    vocoder=dict(
        in_channels=128, hidden_channels=1536, out_channels=2,
        upsample_kernel_sizes=[11, 4, 4, 4, 4, 4], upsample_factors=[5, 2, 2, 2, 2, 2],
        resnet_kernel_sizes=[3, 7, 11], resnet_dilations=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        act_fn="snakebeta", leaky_relu_negative_slope=0.1,
        antialias=True, antialias_ratio=2, antialias_kernel_size=12, final_act_fn=None, final_bias=False,
        bwe_in_channels=128, bwe_hidden_channels=512, bwe_out_channels=2,
        bwe_upsample_kernel_sizes=[12, 11, 4, 4, 4], bwe_upsample_factors=[6, 5, 2, 2, 2],
        bwe_resnet_kernel_sizes=[3, 7, 11], bwe_resnet_dilations=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        bwe_act_fn="snakebeta", bwe_leaky_relu_negative_slope=0.1,
        bwe_antialias=True, bwe_antialias_ratio=2, bwe_antialias_kernel_size=12,
        bwe_final_act_fn=None, bwe_final_bias=False,
        filter_length=512, hop_length=80, window_length=512, num_mel_channels=64,
        input_sampling_rate=16_000, output_sampling_rate=48_000,
    ),
    latent_upsampler=dict(
        in_channels=128, mid_channels=1024, num_blocks_per_stage=4, dims=3,
        spatial_upsample=True, temporal_upsample=False, rational_spatial_scale=2.0, use_rational_resampler=False,
    ),
    text_encoder=_GEMMA_3_12B,
    scheduler=dict(
        use_dynamic_shifting=False, base_shift=0.95, max_shift=2.05,
        base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=None,
    ),
    tokenizer_window=1024,
)


# ---------------------------------------------------------------------------------------------------
# SMOKE: tiny, CPU.


def _char_vocab() -> dict[str, int]:
    """Gemma's special tokens, all 256 byte-fallback tokens, the word marker and printable ASCII."""
    vocab = {token: i for i, token in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["▁", *map(chr, range(33, 127))]:
        vocab.setdefault(char, len(vocab))
    return vocab


_SMOKE_VOCAB = len(_char_vocab())
_SMOKE_WINDOW = 128  # prompt tokens; a multiple of the connectors' learnable registers
_SMOKE_GEMMA_LAYERS, _SMOKE_GEMMA_HIDDEN = 2, 16
_SMOKE_REGISTERS = 16
_SMOKE_VIDEO_HEADS, _SMOKE_VIDEO_HEAD_DIM = 2, 8
_SMOKE_AUDIO_HEADS, _SMOKE_AUDIO_HEAD_DIM = 2, 4
_SMOKE_VIDEO_DIM = _SMOKE_VIDEO_HEADS * _SMOKE_VIDEO_HEAD_DIM
_SMOKE_AUDIO_DIM = _SMOKE_AUDIO_HEADS * _SMOKE_AUDIO_HEAD_DIM
_SMOKE_VIDEO_LATENT_CHANNELS = 8
_SMOKE_AUDIO_LATENT_CHANNELS, _SMOKE_MEL_BINS = 2, 16
# The audio VAE compresses mel bins 4x; the transformer sees latent channels x latent mel bins.
_SMOKE_AUDIO_PACKED = _SMOKE_AUDIO_LATENT_CHANNELS * (_SMOKE_MEL_BINS // 4)

SMOKE = LTX2Architecture(
    name="smoke",
    # LTX-2.3 switches throughout (gated attention, cross-attention modulation, per-modality text
    # projections, STG-capable attention, split RoPE) so the smoke model runs the code real weights run.
    transformer=dict(
        in_channels=_SMOKE_VIDEO_LATENT_CHANNELS, out_channels=_SMOKE_VIDEO_LATENT_CHANNELS,
        patch_size=1, patch_size_t=1,
        num_attention_heads=_SMOKE_VIDEO_HEADS, attention_head_dim=_SMOKE_VIDEO_HEAD_DIM,
        cross_attention_dim=_SMOKE_VIDEO_DIM, vae_scale_factors=(8, 32, 32), gated_attn=True, cross_attn_mod=True,
        audio_in_channels=_SMOKE_AUDIO_PACKED, audio_out_channels=_SMOKE_AUDIO_PACKED,
        audio_num_attention_heads=_SMOKE_AUDIO_HEADS, audio_attention_head_dim=_SMOKE_AUDIO_HEAD_DIM,
        audio_cross_attention_dim=_SMOKE_AUDIO_DIM, audio_gated_attn=True, audio_cross_attn_mod=True,
        num_layers=2, caption_channels=_SMOKE_GEMMA_HIDDEN, rope_type="split", use_prompt_embeddings=False,
        perturbed_attn=True,
    ),
    connectors=dict(
        caption_channels=_SMOKE_GEMMA_HIDDEN, text_proj_in_factor=_SMOKE_GEMMA_LAYERS + 1,
        video_connector_num_attention_heads=_SMOKE_VIDEO_HEADS,
        video_connector_attention_head_dim=_SMOKE_VIDEO_HEAD_DIM,
        video_connector_num_layers=1, video_connector_num_learnable_registers=_SMOKE_REGISTERS,
        video_gated_attn=True,
        audio_connector_num_attention_heads=_SMOKE_AUDIO_HEADS,
        audio_connector_attention_head_dim=_SMOKE_AUDIO_HEAD_DIM,
        audio_connector_num_layers=1, audio_connector_num_learnable_registers=_SMOKE_REGISTERS,
        audio_gated_attn=True,
        connector_rope_base_seq_len=_SMOKE_WINDOW, rope_type="split", per_modality_projections=True,
        video_hidden_dim=_SMOKE_VIDEO_DIM, audio_hidden_dim=_SMOKE_AUDIO_DIM, proj_bias=True,
    ),
    # The LTX-2.3 VAE layout with 1/32 of its channels: 4x4 patches then 2x down per block = 32x
    # spatial, 8x temporal, exactly as the real VAE, so padding and latent shapes match it.
    vae=dict(
        latent_channels=_SMOKE_VIDEO_LATENT_CHANNELS,
        block_out_channels=(8, 16, 32, 32), decoder_block_out_channels=(8, 16, 16, 32),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True, True),
        decoder_inject_noise=(False,) * 5,
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
        upsample_residual=(False,) * 4, upsample_factor=(2, 2, 1, 2),
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="zeros",
        spatial_compression_ratio=32, temporal_compression_ratio=8,
    ),
    # base_channels doubles as the width of the packed latent statistics: latent channels x latent mel bins.
    audio_vae=dict(
        base_channels=_SMOKE_AUDIO_PACKED, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=1, in_channels=2,
        resolution=16, latent_channels=_SMOKE_AUDIO_LATENT_CHANNELS,
        sample_rate=16_000, mel_hop_length=160, mel_bins=_SMOKE_MEL_BINS,
    ),
    # 16 kHz vocoder (x160) + bandwidth extension to 48 kHz stereo (x240 from its 80-sample-hop mel).
    vocoder=dict(
        in_channels=2 * _SMOKE_MEL_BINS, hidden_channels=64, resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
        bwe_in_channels=2 * _SMOKE_MEL_BINS, bwe_hidden_channels=32, bwe_resnet_kernel_sizes=[3],
        bwe_resnet_dilations=[[1, 3, 5]], num_mel_channels=_SMOKE_MEL_BINS,
        input_sampling_rate=16_000, output_sampling_rate=48_000,
    ),
    # The LTX-2.3 upsampler layout (conv + pixel shuffle, no rational resampler) at the smoke VAE's
    # latent width. Every block norms with GroupNorm(32, mid_channels); 64 gives each group two channels,
    # so even a one-cell latent (1 frame, 1x1 at half size) has more than one value per group.
    latent_upsampler=dict(
        in_channels=_SMOKE_VIDEO_LATENT_CHANNELS, mid_channels=64, num_blocks_per_stage=1, dims=3,
        spatial_upsample=True, temporal_upsample=False, rational_spatial_scale=2.0, use_rational_resampler=False,
    ),
    text_encoder=dict(
        text_config=dict(
            vocab_size=_SMOKE_VOCAB, hidden_size=_SMOKE_GEMMA_HIDDEN, intermediate_size=32,
            num_hidden_layers=_SMOKE_GEMMA_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
            max_position_embeddings=4 * _SMOKE_WINDOW, sliding_window=_SMOKE_WINDOW,
            pad_token_id=0, eos_token_id=1, bos_token_id=2,
        ),
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=8, intermediate_size=16, num_hidden_layers=1,
            num_attention_heads=2, image_size=28, patch_size=14,
        ),
        mm_tokens_per_image=4,
        # No image tokens in a text-only vocabulary: park them just past it (Gemma 3 maps an image id
        # at or past its vocabulary to row 0 before the embedding lookup).
        boi_token_index=_SMOKE_VOCAB, eoi_token_index=_SMOKE_VOCAB, image_token_index=_SMOKE_VOCAB,
    ),
    scheduler=dict(shift=1.0, use_dynamic_shifting=False),
    tokenizer_window=_SMOKE_WINDOW,
)


# ---------------------------------------------------------------------------------------------------
# Building.


def build_tokenizer(window: int) -> GemmaTokenizer:
    """A Gemma tokenizer with a character vocabulary and byte fallback: any script, no download.

    ``window`` is its ``model_max_length`` (the prompt window the pipeline pads to).
    """
    from transformers import GemmaTokenizer

    return GemmaTokenizer(vocab=_char_vocab(), merges=[], add_bos_token=True, model_max_length=window)


def build_components(
    arch: LTX2Architecture, device: str | torch.device, dtype: torch.dtype, seed: int
) -> dict[str, Any]:
    """Random-weight components of ``arch``, named as ``LTX2InContextPipeline(...)`` takes them,
    plus ``"latent_upsampler"``.

    Weights are created directly on ``device`` in ``dtype``, never on the host first: the full-size
    set is about 36B parameters (67 GiB in bfloat16; it builds in seconds on one 80 GB GPU). They are
    a function of ``seed``, ``arch``, the device type and the torch build; the global RNG is left as
    it was. While it builds, this sets the process-wide default dtype, so callers serialise model
    construction (``models.residency`` does).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    device = torch.device(device)
    with _seeded(device, seed), _default_dtype(dtype), device:
        modules = {name: _build_module(name, getattr(arch, name)) for name in COMPONENT_NAMES}
    for module in modules.values():
        module.eval()
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(**arch.scheduler),
        tokenizer=build_tokenizer(arch.tokenizer_window),
        **modules,
    )


def build_components_on_meta(
    arch: LTX2Architecture, names: tuple[str, ...] = COMPONENT_NAMES, dtype: torch.dtype = torch.bfloat16
) -> dict[str, torch.nn.Module]:
    """Components with shapes but no storage (``meta`` device): for counting parameters and FLOPs."""
    with torch.device("meta"), _default_dtype(dtype):
        return {name: _build_module(name, getattr(arch, name)) for name in names}


def parameter_counts(arch: LTX2Architecture) -> dict[str, int]:
    """Parameters per component (buffers excluded), counted on the ``meta`` device: no memory used."""
    return {
        name: sum(p.numel() for p in module.parameters()) for name, module in build_components_on_meta(arch).items()
    }


def _build_module(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors, LTX2VocoderWithBWE
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    if name == "text_encoder":
        return Gemma3ForConditionalGeneration(Gemma3Config(**kwargs))
    classes = {
        "transformer": LTX2VideoTransformer3DModel,
        "connectors": LTX2TextConnectors,
        "vae": AutoencoderKLLTX2Video,
        "audio_vae": AutoencoderKLLTX2Audio,
        "vocoder": LTX2VocoderWithBWE,
        "latent_upsampler": LTX2LatentUpsamplerModel,
    }
    return classes[name](**kwargs)


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the CPU generator and ``device``'s own; restore both afterwards, leave the rest alone."""
    if device.type in ("cpu", "meta"):
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
        return
    device_module = torch.get_device_module(device)
    with torch.random.fork_rng(devices=[device], device_type=device.type):
        torch.random.default_generator.manual_seed(seed)
        with device_module.device(device):  # manual_seed seeds the current device of its type
            device_module.manual_seed(seed)
        yield


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
