"""LipDub inference on diffusers' LTX-2 components: re-lip a locked shot and generate the new line.

One :class:`LipDubModel` wraps one ``LTX2InContextPipeline`` loaded with ``from_pretrained`` from a
diffusers-format directory, with the LipDub IC-LoRA loaded through diffusers/peft
(``load_lora_weights``, which converts the official ``diffusion_model.`` key layout) and fused once.
The locked shot is the video reference (``LTX2ReferenceCondition``): its latent tokens ride along
with the target tokens, clean, so the model keeps everything but the mouth.

Shapes are never lossy. The VAE needs 8k+1 frames and the transformer a picture in whole latent
cells, so :meth:`LipDubModel.generate` pads the frame count *up* (repeating the last frame) and the
picture *up* to the spatial multiple (replicating the edges, centred), then trims and crops back to
exactly the source's frame count and size. The frame rate reaches the pipeline as the exact float
of the source's ``Fraction``.

The ``smoke`` profile builds tiny random LTX-2 components (:func:`build_smoke_weights`) with the
same classes, the same compression ratios (8x temporal, 32x spatial, 25 audio latents per second),
the same vocoder output rate (48 kHz stereo) and an IC-LoRA in the official key format, saves them
with ``save_pretrained`` and loads them through :meth:`LipDubModel.load` like real weights.

Not yet here (later issue): the audio (voice) reference and two-stage sampling. ``generate`` will
grow an ``audio``/``sample_rate`` argument, and :meth:`LipDubModel.spatial_multiple` already takes
the stage count.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from dubflow.models.profiles import LIPDUB_LORA_FILE
from dubflow.models.residency import resident

__all__ = [
    "ADAPTER_NAME",
    "LipDubLoadError",
    "LipDubModel",
    "LipDubOutput",
    "build_prompt",
    "build_smoke_weights",
    "get_resident_model",
    "read_reference_downscale_factor",
]

logger = logging.getLogger(__name__)

ADAPTER_NAME = "lipdub"
DEFAULT_SPEAKER = "A person"
REFERENCE_DOWNSCALE_KEY = "reference_downscale_factor"
# Upstream pads prompts to 1024 Gemma tokens; a tokenizer may declare a shorter window (the smoke one does).
MAX_PROMPT_TOKENS = 1024
# Frames per float resize: bounds the float32 working set at full HD to a few hundred MB.
_RESIZE_CHUNK = 16


class LipDubLoadError(Exception):
    """The LTX-2 weights or the LipDub IC-LoRA cannot be used as given."""


@dataclass(frozen=True)
class LipDubOutput:
    frames: np.ndarray  # (num_frames, height, width, 3) uint8: exactly the source's frame count and size
    audio: np.ndarray  # (channels, samples) float32: generated speech (and whatever ambience the model makes)
    sample_rate: int


def build_prompt(speaker: str, language_name: str, script: str) -> str:
    """``A man in a grey coat speaking in French saying: "…"``; an empty speaker gets a neutral default.

    The model does not translate: ``script`` must already be the line in the target language's own
    script. Whitespace runs (line breaks included) collapse to single spaces; nothing else is touched.
    """
    speaker = " ".join(speaker.split()).rstrip(".,;: ")
    language_name = " ".join(language_name.split())
    script = " ".join(script.split())
    if not language_name:
        raise ValueError("language_name is empty")
    if not script:
        raise ValueError("script is empty: there is no line to dub")
    speaker = speaker[:1].upper() + speaker[1:] if speaker else DEFAULT_SPEAKER
    return f'{speaker} speaking in {language_name} saying: "{script}"'


def read_reference_downscale_factor(lora_path: Path) -> int:
    """The IC-LoRA's reference downscale factor from its safetensors metadata (1 when absent)."""
    from safetensors import safe_open

    with safe_open(str(lora_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    raw = metadata.get(REFERENCE_DOWNSCALE_KEY)
    if raw is None:
        return 1
    try:
        factor = int(str(raw).strip())
    except ValueError:
        factor = 0
    if factor < 1:
        raise LipDubLoadError(f"{lora_path}: metadata {REFERENCE_DOWNSCALE_KEY}={raw!r} is not a positive integer")
    return factor


class LipDubModel:
    """A loaded LipDub pipeline (LTX-2 base + fused IC-LoRA) on one device. Thread-safe: calls serialize."""

    load_count: ClassVar[int] = 0  # every successful load, process-wide; lets tests see residency work

    def __init__(self, pipe, *, reference_downscale_factor: int, weights_dir: Path, lora_path: Path) -> None:
        self.pipe = pipe
        self.reference_downscale_factor = reference_downscale_factor
        self.weights_dir = weights_dir
        self.lora_path = lora_path
        # A diffusers pipeline keeps per-call state (scheduler timesteps, guidance scales) on itself.
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        weights_dir: Path,
        lora_path: Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> LipDubModel:
        from diffusers import FlowMatchEulerDiscreteScheduler, LTX2InContextPipeline
        from safetensors.torch import load_file

        weights_dir, lora_path = Path(weights_dir), Path(lora_path)
        if not (weights_dir / "model_index.json").is_file():
            raise LipDubLoadError(f"{weights_dir} is not a diffusers-format directory (no model_index.json)")
        if not lora_path.is_file():
            raise LipDubLoadError(f"LipDub IC-LoRA not found: {lora_path}")

        factor = read_reference_downscale_factor(lora_path)
        pipe = LTX2InContextPipeline.from_pretrained(weights_dir, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        # LipDub is a distilled model sampled on a fixed sigma schedule: the scheduler must not shift it.
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
            pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0, shift_terminal=None
        )
        pipe.to(device)

        raw = load_file(str(lora_path))
        # The mixin's own conversion (official `diffusion_model.` layout -> diffusers module names).
        expected = pipe.lora_state_dict(raw)
        pipe.load_lora_weights(raw, adapter_name=ADAPTER_NAME)
        components = _verify_lora_applied(pipe, expected, lora_path)
        pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=[ADAPTER_NAME])
        # Fused into the base weights once; the peft wrappers would only cost time at every forward.
        pipe.unload_lora_weights()

        model = cls(pipe, reference_downscale_factor=factor, weights_dir=weights_dir, lora_path=lora_path)
        cls.load_count += 1
        logger.info(
            "LipDub loaded from %s + %s on %s (%s), reference_downscale_factor=%d",
            weights_dir, lora_path.name, device, dtype, factor,
        )
        return model

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vocoder.config.output_sampling_rate)

    @property
    def frame_multiple(self) -> int:
        """Valid frame counts are ``frame_multiple * k + 1``."""
        return self.pipe.vae_temporal_compression_ratio * self.pipe.transformer_temporal_patch_size

    def spatial_multiple(self, stages: int = 1) -> int:
        """Width and height must be multiples of this; two-stage generation runs stage 1 at half size."""
        cell = self.pipe.vae_spatial_compression_ratio * self.pipe.transformer_spatial_patch_size
        return cell * self.reference_downscale_factor * (2 ** (stages - 1))

    def generate(
        self,
        frames: np.ndarray,
        fps: Fraction,
        prompt: str,
        seed: int,
        max_height: int | None = None,
        num_inference_steps: int | None = None,
    ) -> LipDubOutput:
        """Re-lip ``frames`` (the locked shot, ``(F, H, W, 3)`` uint8) to ``prompt``.

        ``max_height`` below ``H`` generates at that height (aspect kept) and resizes the result back
        to ``H x W``; the smoke profile uses it to stay fast, the real profile passes None.
        ``num_inference_steps`` None samples the distilled 8-step schedule; a number samples that many
        steps on the pipeline's linear schedule.
        """
        from diffusers.pipelines.ltx2 import LTX2ReferenceCondition
        from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES

        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
        num_frames, height, width, _ = frames.shape
        if num_frames < 1 or height < 1 or width < 1:
            raise ValueError(f"frames are empty: {frames.shape}")
        fps = Fraction(fps)
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        if num_inference_steps is not None and num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")

        gen_h, gen_w = _generation_size(height, width, max_height)
        multiple = self.spatial_multiple(stages=1)
        pad_h, pad_w = _round_up(gen_h, multiple), _round_up(gen_w, multiple)
        top, left = (pad_h - gen_h) // 2, (pad_w - gen_w) // 2
        padded_frames = _round_up(num_frames - 1, self.frame_multiple) + 1

        picture = _to_float(frames, (gen_h, gen_w))  # (F, 3, gen_h, gen_w) in [0, 1]
        picture = F.pad(picture, (left, pad_w - gen_w - left, top, pad_h - gen_h - top), mode="replicate")
        if padded_frames > num_frames:
            tail = picture[-1:].expand(padded_frames - num_frames, -1, -1, -1)
            picture = torch.cat([picture, tail])
        factor = self.reference_downscale_factor
        reference = picture if factor == 1 else _resize(picture, (pad_h // factor, pad_w // factor))

        if num_inference_steps is None:
            schedule = {"sigmas": list(DISTILLED_SIGMA_VALUES)}
        else:
            schedule = {"num_inference_steps": num_inference_steps}
        tokenizer_window = getattr(self.pipe.tokenizer, "model_max_length", MAX_PROMPT_TOKENS) or MAX_PROMPT_TOKENS
        with self._lock:
            video, audio = self.pipe(
                prompt=prompt,
                reference_conditions=[LTX2ReferenceCondition(frames=reference, strength=1.0)],
                reference_downscale_factor=factor,
                height=pad_h,
                width=pad_w,
                num_frames=padded_frames,
                frame_rate=float(fps),
                # Distilled: one transformer forward per step, no guidance of any kind.
                guidance_scale=1.0,
                stg_scale=0.0,
                modality_scale=1.0,
                guidance_rescale=0.0,
                audio_guidance_scale=1.0,
                audio_stg_scale=0.0,
                audio_modality_scale=1.0,
                audio_guidance_rescale=0.0,
                # A CPU generator: the same seed gives the same initial noise on every device.
                generator=torch.Generator(device="cpu").manual_seed(int(seed)),
                max_sequence_length=min(MAX_PROMPT_TOKENS, int(tokenizer_window)),
                output_type="pt",
                return_dict=False,
                **schedule,
            )

        video = video[0, :num_frames, :, top : top + gen_h, left : left + gen_w]  # (F, 3, gen_h, gen_w)
        out_frames = _to_uint8(video, (height, width))
        sample_rate = self.sample_rate
        out_audio = _fit_audio(audio[0].float().cpu().numpy(), round(Fraction(num_frames) / fps * sample_rate))
        return LipDubOutput(frames=out_frames, audio=out_audio, sample_rate=sample_rate)


def _verify_lora_applied(pipe, expected: dict[str, torch.Tensor], lora_path: Path) -> list[str]:
    """Fail unless every LoRA tensor in the file was loaded, unchanged, into a module of the pipeline.

    diffusers only logs a warning for LoRA keys that match no module, and a LoRA that silently does
    nothing would turn LipDub into plain text-to-video. Returns the components that carry the adapter.
    """
    from peft import get_peft_model_state_dict

    components, problems = [], []
    for name in pipe._lora_loadable_modules:
        wanted = {k[len(name) + 1 :]: v for k, v in expected.items() if k.startswith(f"{name}.")}
        if not wanted:
            continue
        model = getattr(pipe, name)
        if ADAPTER_NAME not in getattr(model, "peft_config", {}):
            problems.append(f"{name}: adapter not injected")
            continue
        loaded = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
        missing = sorted(set(wanted) - set(loaded))
        extra = sorted(set(loaded) - set(wanted))
        changed = sorted(
            k for k in set(wanted) & set(loaded)
            if not torch.equal(loaded[k], wanted[k].to(device=loaded[k].device, dtype=loaded[k].dtype))
        )
        for label, keys in (("not applied", missing), ("not in the file", extra), ("altered on load", changed)):
            if keys:
                problems.append(f"{name}: {len(keys)} LoRA tensor(s) {label}, e.g. {', '.join(keys[:3])}")
        components.append(name)
    unknown = sorted(k for k in expected if k.split(".", 1)[0] not in pipe._lora_loadable_modules)
    if unknown:
        problems.append(f"{len(unknown)} LoRA tensor(s) for no loadable component, e.g. {', '.join(unknown[:3])}")
    if not components and not problems:
        problems.append("the file holds no LoRA tensors")
    if problems:
        raise LipDubLoadError(f"IC-LoRA {lora_path} does not fit these weights: " + "; ".join(problems))
    return components


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _generation_size(height: int, width: int, max_height: int | None) -> tuple[int, int]:
    if max_height is None or max_height >= height:
        return height, width
    if max_height < 1:
        raise ValueError(f"max_height must be positive, got {max_height}")
    return max_height, max(1, round(width * max_height / height))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w); uint8 stays uint8 (torch's fast path), float is done in chunks."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype == torch.uint8:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    shrinking = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    parts = [
        F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
        for chunk in x.split(_RESIZE_CHUNK)
    ]
    return torch.cat(parts).clamp_(0.0, 1.0)


def _to_float(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, h, w) float32 in [0, 1]; resized while still uint8."""
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2)  # a channels-last view, no copy
    return _resize(pixels, size).float().div_(255.0)


def _to_uint8(video: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(F, 3, h, w) float in [0, 1] -> (F, H, W, 3) uint8; quantised first, then resized as uint8."""
    pixels = video.float().mul(255.0).round_().clamp_(0.0, 255.0).to(device="cpu", dtype=torch.uint8)
    pixels = _resize(pixels.contiguous(memory_format=torch.channels_last), size)
    return np.ascontiguousarray(pixels.permute(0, 2, 3, 1).numpy())


def _fit_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """Exactly ``samples`` long: drop the padded frames' audio, or pad the causal decoder's few-ms shortfall."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if audio.shape[1] >= samples:
        return audio[:, :samples].copy()
    return np.pad(audio, ((0, 0), (0, samples - audio.shape[1])))


# ---------------------------------------------------------------------------------------------------
# Residency: one model per (device, weights, LoRA, dtype) per process.

def get_resident_model(
    weights_dir: Path,
    lora_path: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LipDubModel:
    """The process's LipDub model for these weights on this device, loaded on first use only."""
    key = ("lipdub", str(torch.device(device)), str(Path(weights_dir).resolve()), str(Path(lora_path).resolve()), str(dtype))
    return resident(key, lambda: LipDubModel.load(Path(weights_dir), Path(lora_path), device=device, dtype=dtype))


# ---------------------------------------------------------------------------------------------------
# Smoke weights: tiny random LTX-2 components in the real layout.

SMOKE_SEED = 20_260_101
_SMOKE_MARKER = ".dubflow-smoke-complete"
# Bump when the smoke architecture changes, so caches built by an older dubflow are rebuilt.
_SMOKE_VERSION = "ltx2-smoke-1"

_GEMMA_LAYERS = 2
_GEMMA_HIDDEN = 16
_TOKENIZER_WINDOW = 128  # prompt tokens; a multiple of the connectors' learnable registers
_CONNECTOR_REGISTERS = 16
_VIDEO_HEADS, _VIDEO_HEAD_DIM = 2, 8
_AUDIO_HEADS, _AUDIO_HEAD_DIM = 2, 4
_VIDEO_LATENT_CHANNELS = 8
_AUDIO_LATENT_CHANNELS, _MEL_BINS = 2, 16
_LORA_RANK = 2
# Official (ltx-core) module names the smoke IC-LoRA adapts. Inside the blocks they equal diffusers'
# names; `patchify_proj` (diffusers: `proj_in`) exercises the mixin's renaming.
_LORA_BLOCK_TARGETS = tuple(
    f"{attn}.{proj}"
    for attn in ("attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn")
    for proj in ("to_q", "to_k", "to_v", "to_out.0")
) + ("ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2")
_LORA_TOP_TARGETS = (("patchify_proj", "proj_in"),)


def build_smoke_weights(weights_dir: Path) -> Path:
    """Write tiny random LTX-2 components (diffusers layout) plus a tiny IC-LoRA (official layout).

    Deterministic (fixed seed) and idempotent: a complete directory is left as it is. The directory
    is assembled next to its destination and renamed into place, so a reader never sees half of it.
    Returns ``weights_dir``; the LoRA is ``weights_dir / LIPDUB_LORA_FILE``.
    """
    weights_dir = Path(weights_dir)
    if _smoke_complete(weights_dir):
        return weights_dir
    weights_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{weights_dir.name}-", dir=weights_dir.parent))
    try:
        _write_smoke_weights(staging)
        if weights_dir.exists() and not _smoke_complete(weights_dir):
            shutil.rmtree(weights_dir)  # an interrupted or outdated build
        try:
            os.replace(staging, weights_dir)
        except OSError:
            if not _smoke_complete(weights_dir):  # not a concurrent builder that won the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return weights_dir


def _smoke_complete(weights_dir: Path) -> bool:
    marker = weights_dir / _SMOKE_MARKER
    return marker.is_file() and marker.read_text().strip() == _SMOKE_VERSION


def _write_smoke_weights(out: Path) -> None:
    from diffusers import LTX2InContextPipeline
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMOKE_SEED)
        components = _smoke_components()
        pipe = LTX2InContextPipeline(**components)
        pipe.save_pretrained(out)
        lora = _smoke_lora(components["transformer"])
    save_file(lora, str(out / LIPDUB_LORA_FILE), metadata={REFERENCE_DOWNSCALE_KEY: "1"})
    (out / _SMOKE_MARKER).write_text(_SMOKE_VERSION + "\n")


def _smoke_tokenizer():
    """A Gemma tokenizer with a character vocabulary and byte fallback: any script, no download."""
    from transformers import GemmaTokenizer

    vocab = {token: i for i, token in enumerate(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"))}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in ["▁", *map(chr, range(33, 127))]:
        vocab.setdefault(char, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, model_max_length=_TOKENIZER_WINDOW)


def _smoke_components() -> dict:
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2VocoderWithBWE
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = _smoke_tokenizer()
    vocab_size = len(tokenizer)
    text_encoder = Gemma3ForConditionalGeneration(
        Gemma3Config(
            text_config=dict(
                vocab_size=vocab_size, hidden_size=_GEMMA_HIDDEN, intermediate_size=32,
                num_hidden_layers=_GEMMA_LAYERS, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                max_position_embeddings=4 * _TOKENIZER_WINDOW, sliding_window=_TOKENIZER_WINDOW,
                pad_token_id=0, eos_token_id=1, bos_token_id=2,
            ),
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2, image_size=28, patch_size=14,
            ),
            mm_tokens_per_image=4,
            # No image tokens in a text-only vocabulary: park them just past it.
            boi_token_index=vocab_size, eoi_token_index=vocab_size, image_token_index=vocab_size,
        )
    ).eval()
    video_dim, audio_dim = _VIDEO_HEADS * _VIDEO_HEAD_DIM, _AUDIO_HEADS * _AUDIO_HEAD_DIM
    audio_latent_mel_bins = _MEL_BINS // 4  # the audio VAE compresses mel bins 4x
    # LTX-2.3 switches throughout (gated attention, cross-attention modulation, per-modality text
    # projections, STG-capable attention, split RoPE) so the smoke model runs the code real weights run.
    transformer = LTX2VideoTransformer3DModel(
        in_channels=_VIDEO_LATENT_CHANNELS, out_channels=_VIDEO_LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=_VIDEO_HEADS, attention_head_dim=_VIDEO_HEAD_DIM, cross_attention_dim=video_dim,
        vae_scale_factors=(8, 32, 32), gated_attn=True, cross_attn_mod=True,
        audio_in_channels=_AUDIO_LATENT_CHANNELS * audio_latent_mel_bins,
        audio_out_channels=_AUDIO_LATENT_CHANNELS * audio_latent_mel_bins,
        audio_num_attention_heads=_AUDIO_HEADS, audio_attention_head_dim=_AUDIO_HEAD_DIM,
        audio_cross_attention_dim=audio_dim, audio_gated_attn=True, audio_cross_attn_mod=True,
        num_layers=2, caption_channels=_GEMMA_HIDDEN, rope_type="split", use_prompt_embeddings=False,
        perturbed_attn=True,
    )
    connectors = LTX2TextConnectors(
        caption_channels=_GEMMA_HIDDEN, text_proj_in_factor=_GEMMA_LAYERS + 1,
        video_connector_num_attention_heads=_VIDEO_HEADS, video_connector_attention_head_dim=_VIDEO_HEAD_DIM,
        video_connector_num_layers=1, video_connector_num_learnable_registers=_CONNECTOR_REGISTERS,
        video_gated_attn=True,
        audio_connector_num_attention_heads=_AUDIO_HEADS, audio_connector_attention_head_dim=_AUDIO_HEAD_DIM,
        audio_connector_num_layers=1, audio_connector_num_learnable_registers=_CONNECTOR_REGISTERS,
        audio_gated_attn=True,
        connector_rope_base_seq_len=_TOKENIZER_WINDOW, rope_type="split", per_modality_projections=True,
        video_hidden_dim=video_dim, audio_hidden_dim=audio_dim, proj_bias=True,
    )
    # The LTX-2.3 VAE layout with 1/32 of its channels: 4x4 patches then 2x down per block = 32x spatial,
    # 8x temporal, exactly as the real VAE, so padding and latent shapes match the real profile.
    vae = AutoencoderKLLTX2Video(
        latent_channels=_VIDEO_LATENT_CHANNELS,
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
    )
    # base_channels doubles as the width of the packed latent statistics: latent channels x latent mel bins.
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=_AUDIO_LATENT_CHANNELS * audio_latent_mel_bins, output_channels=2, ch_mult=(1, 2, 4),
        num_res_blocks=1, in_channels=2, resolution=16, latent_channels=_AUDIO_LATENT_CHANNELS,
        sample_rate=16_000, mel_hop_length=160, mel_bins=_MEL_BINS,
    )
    # 16 kHz vocoder (x160) + bandwidth extension to 48 kHz stereo (x240 from its 80-sample-hop mel).
    vocoder = LTX2VocoderWithBWE(
        in_channels=2 * _MEL_BINS, hidden_channels=64, resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
        bwe_in_channels=2 * _MEL_BINS, bwe_hidden_channels=32, bwe_resnet_kernel_sizes=[3],
        bwe_resnet_dilations=[[1, 3, 5]], num_mel_channels=_MEL_BINS,
        input_sampling_rate=16_000, output_sampling_rate=48_000,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return dict(
        scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
        connectors=connectors, transformer=transformer, vocoder=vocoder,
    )


def _smoke_lora(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Random rank-2 LoRA tensors keyed like an official LTX-2 IC-LoRA (``diffusion_model.`` prefix)."""
    modules = dict(transformer.named_modules())
    targets = list(_LORA_TOP_TARGETS)
    for index in range(len(transformer.transformer_blocks)):
        targets += [(f"transformer_blocks.{index}.{name}",) * 2 for name in _LORA_BLOCK_TARGETS]
    tensors = {}
    for official, diffusers_name in targets:
        linear = modules[diffusers_name]
        prefix = f"diffusion_model.{official}"
        # Non-zero B (peft initialises it to zero), so fusing visibly moves every targeted weight.
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(_LORA_RANK, linear.in_features) * 0.5
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(linear.out_features, _LORA_RANK) * 0.5
    return {k: v.contiguous() for k, v in tensors.items()}
