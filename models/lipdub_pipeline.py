"""The LTX-2.3 LipDub algorithm as a diffusers pipeline: video + voice references, two distilled stages.

diffusers' ``LTX2InContextPipeline`` conditions on a reference *video* (the IC-LoRA's clean,
co-located tokens). LipDub also conditions on the shot's own *audio* so the new line keeps the
speaker's voice; that part is not in diffusers, and it is what this class adds. It inherits the
components, loading (``from_pretrained``, ``load_lora_weights``) and the packing helpers of the
in-context pipeline and writes its own sampling, which reads top to bottom as the algorithm:

1. ``encode_prompts``: Gemma 3 + text connectors, one batch for all of a shot's languages.
2. ``encode_voice`` and ``encode_references``: once per shot, reused for every language —
   the shot's whole audio (log-mel -> audio VAE) at *negative* time positions that end 0.04 s before
   t = 0, and the source frames VAE-encoded at the stage-1 and stage-2 sizes (divided by the LoRA's
   ``reference_downscale_factor``; their spatial coordinates multiplied by it).
3. ``__call__``: stage 1 at half width and height (8 Euler steps, video + audio references), the
   spatial latent upsampler (x2), stage 2 at full size (3 steps from sigma 0.909375, video reference
   at full size, the audio latent frozen at its stage-1 value and also passed as the voice
   reference), then decode: video from stage 2,
   audio from stage 1 (audio VAE -> mel -> vocoder with bandwidth extension).

Distilled sampling: one transformer forward per step, no guidance of any kind. Reference tokens are
clean (timestep 0) and never updated; every step is a plain Euler step of the flow on the target
tokens only. Shapes are exact here (frames 8k+1, sizes in whole latent cells at both stages): the
padding that makes any shot fit lives in ``dubflow.models.lipdub``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import (
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    FlowMatchEulerDiscreteScheduler,
    LTX2InContextPipeline,
    LTX2VideoTransformer3DModel,
)
from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors, LTX2VocoderWithBWE
from transformers import Gemma3ForConditionalGeneration, GemmaTokenizer, GemmaTokenizerFast

STAGE_1_SIGMAS = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0)
STAGE_2_SIGMAS = (0.909375, 0.725, 0.421875, 0.0)
# The voice reference ends this long before the target starts (upstream LTX-2 DubIt).
AUDIO_REFERENCE_GAP_SECONDS = 0.04
# LTX-2's audio VAE front end (ltx-core AudioProcessor): 1024-point STFT, magnitude, Slaney mel, log.
MEL_FFT_SIZE = 1024
MEL_LOG_FLOOR = 1e-5
# Its resampler to the audio VAE's rate: torchaudio.functional.resample's defaults (Hann-windowed sinc).
RESAMPLE_ZERO_CROSSINGS = 6
RESAMPLE_ROLLOFF = 0.99
TIMESTEP_SCALE = 1000.0  # the transformer takes sigma * 1000, as diffusers' flow-matching scheduler feeds it
# Decode tiles (when the VAE tiles, i.e. on a GPU) as upstream DubIt's AUTO_TILING for LTX-2's
# convolutional VAE (ltx-pipelines `tiling_config_for_vae`, ltx-core `TileSizeConfig.from_long_side`):
# 768 px on the long side, the short side's tile scaled by the aspect ratio on the latent grid, 64 px
# of overlap. A shot upstream decodes in one tile is decoded whole here too; diffusers' default 512 px
# tiles split a 512x768 shot and moved its frames 2.9e-2 from upstream's (H200, docs/fidelity.md).
# Upstream also tiles time (80 frames, 24 overlap); diffusers decodes the clip's frames together.
DECODE_TILE_LONG_SIDE = 768
DECODE_TILE_OVERLAP = 64


@dataclass(frozen=True)
class PromptEmbedding:
    """One prompt through Gemma and the connectors, batch 1: what the transformer cross-attends to."""

    video: torch.Tensor
    audio: torch.Tensor
    mask: torch.Tensor


@dataclass(frozen=True)
class Tokens:
    """A packed token sequence (batch 1) with its RoPE coordinates."""

    latents: torch.Tensor  # (1, N, C)
    coords: torch.Tensor  # (1, axes, N, 2)

    @property
    def count(self) -> int:
        return self.latents.shape[1]


@dataclass(frozen=True)
class ShotReferences:
    """A shot's reference encodings: computed once, reused for every language of the shot."""

    video_stage_1: Tokens  # source frames at the stage-1 size / reference_downscale_factor
    video_stage_2: Tokens  # source frames at the full size / reference_downscale_factor
    audio: Tokens  # source audio, clean, at negative time positions
    num_frames: int  # 8k+1
    height: int  # full (stage-2) size in pixels
    width: int
    frame_rate: float


@dataclass(frozen=True)
class LipDubResult:
    video: torch.Tensor  # (F, 3, H, W) float in [0, 1]
    audio: torch.Tensor  # (channels, samples) float at `sample_rate`
    sample_rate: int


class LTX2LipDubPipeline(LTX2InContextPipeline):
    """LTX-2.3 LipDub on diffusers components; ``latent_upsampler`` is the x2 spatial upscaler."""

    model_cpu_offload_seq = "text_encoder->connectors->transformer->latent_upsampler->vae->audio_vae->vocoder"
    _optional_components = [*LTX2InContextPipeline._optional_components, "latent_upsampler"]

    def __init__(
        self,
        scheduler: FlowMatchEulerDiscreteScheduler,
        vae: AutoencoderKLLTX2Video,
        audio_vae: AutoencoderKLLTX2Audio,
        text_encoder: Gemma3ForConditionalGeneration,
        tokenizer: GemmaTokenizer | GemmaTokenizerFast,
        connectors: LTX2TextConnectors,
        transformer: LTX2VideoTransformer3DModel,
        vocoder: LTX2VocoderWithBWE,
        latent_upsampler: LTX2LatentUpsamplerModel | None = None,
        # The in-context pipeline's optional components; LipDub uses none of them.
        audio_scheduler: FlowMatchEulerDiscreteScheduler | None = None,
        processor: None = None,
        prompt_enhancer: None = None,
    ) -> None:
        super().__init__(
            scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=text_encoder, tokenizer=tokenizer,
            connectors=connectors, transformer=transformer, vocoder=vocoder, audio_scheduler=audio_scheduler,
            processor=processor, prompt_enhancer=prompt_enhancer,
        )
        self.register_modules(latent_upsampler=latent_upsampler)
        clamp_vocoder_before_bandwidth_extension(vocoder)

    # --- geometry -------------------------------------------------------------------------------

    @property
    def frame_multiple(self) -> int:
        """Valid frame counts are ``frame_multiple * k + 1``."""
        return self.vae_temporal_compression_ratio * self.transformer_temporal_patch_size

    def spatial_multiple(self, reference_downscale_factor: int) -> int:
        """Width and height must be multiples of this: whole latent cells at half size, and for the reference."""
        cell = self.vae_spatial_compression_ratio * self.transformer_spatial_patch_size
        return 2 * cell * reference_downscale_factor

    @property
    def audio_latents_per_second(self) -> float:
        return self.audio_sampling_rate / self.audio_hop_length / self.audio_vae_temporal_compression_ratio

    @property
    def output_sample_rate(self) -> int:
        return int(self.vocoder.config.output_sampling_rate)

    # --- 1. prompts -----------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str], max_sequence_length: int = 1024) -> list[PromptEmbedding]:
        """All prompts in one Gemma batch; returned one per prompt (batch 1 each) for reuse in any order."""
        device = self._execution_device
        window = min(max_sequence_length, int(self.tokenizer_max_length or max_sequence_length))
        embeds, mask, _, _ = self.encode_prompt(
            prompt=list(prompts), do_classifier_free_guidance=False, num_videos_per_prompt=1,
            max_sequence_length=window, device=device,
        )
        video, audio, connector_mask = self.connectors(embeds, mask, padding_side=self.tokenizer_padding_side)
        return [
            PromptEmbedding(video[i : i + 1], audio[i : i + 1], connector_mask[i : i + 1]) for i in range(len(prompts))
        ]

    # --- 2. references --------------------------------------------------------------------------

    @torch.inference_mode()
    def encode_references(
        self,
        frames: torch.Tensor,
        voice: Tokens,
        frame_rate: float,
        reference_downscale_factor: int = 1,
    ) -> ShotReferences:
        """Encode a window's picture ``(F, 3, H, W)`` in [0, 1] once; ``voice`` from :meth:`encode_voice`.

        ``F`` must be 8k+1 and ``H``, ``W`` multiples of :meth:`spatial_multiple`.
        """
        num_frames, _, height, width = frames.shape
        multiple = self.spatial_multiple(reference_downscale_factor)
        if (num_frames - 1) % self.frame_multiple or height % multiple or width % multiple:
            raise ValueError(
                f"reference {num_frames}x{height}x{width} must be {self.frame_multiple}k+1 frames and multiples of {multiple} px"
            )
        factor = reference_downscale_factor
        return ShotReferences(
            video_stage_1=self._encode_video_reference(frames, height // 2 // factor, width // 2 // factor, frame_rate, factor),
            video_stage_2=self._encode_video_reference(frames, height // factor, width // factor, frame_rate, factor),
            audio=voice,
            num_frames=num_frames, height=height, width=width, frame_rate=frame_rate,
        )

    def _encode_video_reference(self, frames: torch.Tensor, height: int, width: int, frame_rate: float, factor: int) -> Tokens:
        device = self._execution_device
        pixels = frames.to(device=device, dtype=torch.float32)
        if pixels.shape[-2:] != (height, width):
            # As upstream (ltx_pipelines media_io.resize): bilinear, no antialiasing.
            pixels = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bilinear", antialias=False)
        pixels = (pixels * 2.0 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).unsqueeze(0).to(self.vae.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode()
        latent = self._normalize_latents(latent, self.vae.latents_mean, self.vae.latents_std)
        return self.video_reference_tokens(latent.float(), frame_rate, factor)

    def video_reference_tokens(self, latent: torch.Tensor, frame_rate: float, factor: int) -> Tokens:
        """A normalised video latent ``(1, C, F, H, W)`` as reference tokens, co-located with the target:
        at downscale factor f its grid is f times coarser, so its spatial coordinates are scaled by f."""
        _, _, latent_frames, latent_height, latent_width = latent.shape
        coords = self.transformer.rope.prepare_video_coords(
            1, latent_frames, latent_height, latent_width, latent.device, fps=frame_rate
        )
        coords[:, 1:3] = coords[:, 1:3] * factor
        packed = self._pack_latents(latent, self.transformer_spatial_patch_size, self.transformer_temporal_patch_size)
        return Tokens(packed, coords)

    @torch.inference_mode()
    def encode_voice(self, audio: torch.Tensor, sample_rate: int) -> Tokens:
        """The voice reference: a shot's whole sound ``(channels, samples)`` (upstream DubIt encodes the
        reference file's entire audio track) through log-mel and the audio VAE, as clean tokens."""
        device = self._execution_device
        mel = self.log_mel(audio.to(device=device, dtype=torch.float32), sample_rate)
        latent = self.audio_vae.encode(mel.to(self.audio_vae.dtype)).latent_dist.mode()
        packed = self._normalize_audio_latents(
            self._pack_audio_latents(latent), self.audio_vae.latents_mean, self.audio_vae.latents_std
        )
        return self.audio_reference_tokens(packed.float())

    def audio_reference_tokens(self, latents: torch.Tensor) -> Tokens:
        """Packed audio latents ``(1, N, C)`` as voice-reference tokens: context, not output, so the whole
        reference sits before t = 0, ending AUDIO_REFERENCE_GAP_SECONDS early."""
        coords = self.transformer.audio_rope.prepare_audio_coords(1, latents.shape[1], latents.device)
        coords = coords - coords[..., 1].max() - AUDIO_REFERENCE_GAP_SECONDS
        return Tokens(latents, coords)

    def log_mel(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``(channels, samples)`` at any rate -> ``(1, 2, mel_frames, mel_bins)``, the audio VAE's input."""
        return log_mel(audio, sample_rate, self.audio_sampling_rate, self.audio_hop_length, self.audio_mel_bins)

    # --- 3. sampling ----------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        references: ShotReferences,
        prompt: PromptEmbedding,
        generator: torch.Generator,
        stage_1_sigmas: tuple[float, ...] = STAGE_1_SIGMAS,
        stage_2_sigmas: tuple[float, ...] = STAGE_2_SIGMAS,
        timings: dict[str, float] | None = None,
    ) -> LipDubResult:
        """Generate the dubbed take for one prompt against a shot's references.

        ``timings``, when given, receives seconds per stage (device-synchronised), for benchmarks.
        """
        # Read once a take: diffusers finds it by walking every component's modules (tens of ms a time).
        device = self._execution_device
        clock = _StageClock(device, timings)
        video, audio = self.sample_stage_1(references, prompt, generator, stage_1_sigmas, device)
        clock.lap("stage_1")
        grid = self._latent_grid(references, 1)
        # Upsample x2 in the VAE's latent space (de-normalised), then back to the transformer's scale.
        video = self._upsample(video, grid)
        clock.lap("upsample")
        video = self.sample_stage_2(video, audio, references, prompt, generator, stage_2_sigmas, device)
        clock.lap("stage_2")
        frames = self._decode_video(video, self._latent_grid(references, 2))
        waveform = self._decode_audio(audio, audio.shape[1])
        clock.lap("decode")
        return LipDubResult(frames, waveform, self.output_sample_rate)

    def sample_stage_1(
        self,
        references: ShotReferences,
        prompt: PromptEmbedding,
        generator: torch.Generator,
        sigmas: tuple[float, ...],
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: half size, pure noise (video, then audio), video and voice references.
        Returns the packed video and audio latents ``(1, N, C)``."""
        grid = self._latent_grid(references, 1)
        audio_frames = round(references.num_frames / references.frame_rate * self.audio_latents_per_second)
        audio_channels = self.audio_latent_channels * (self.audio_mel_bins // self.audio_vae_mel_compression_ratio)
        video = self._noise((1, math.prod(grid), self.transformer.config.in_channels), generator, device)
        audio = self._noise((1, audio_frames, audio_channels), generator, device)
        return self._denoise(
            video, grid, references.video_stage_1, audio, references.audio, prompt, sigmas,
            references.frame_rate, device, freeze_audio=False,
        )

    def sample_stage_2(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        references: ShotReferences,
        prompt: PromptEmbedding,
        generator: torch.Generator,
        sigmas: tuple[float, ...],
        device: torch.device,
    ) -> torch.Tensor:
        """Stage 2 from the upsampled video latent: re-noised to ``sigmas[0]``, full size. The audio is
        frozen at its stage-1 value, and that same latent is also the voice reference (upstream DubIt:
        clean tokens at negative time positions). Returns the packed video latent."""
        sigma = sigmas[0]
        video = sigma * self._noise(tuple(video.shape), generator, device) + (1.0 - sigma) * video
        video, _ = self._denoise(
            video, self._latent_grid(references, 2), references.video_stage_2, audio,
            self.audio_reference_tokens(audio), prompt, sigmas, references.frame_rate, device, freeze_audio=True,
        )
        return video

    def _latent_grid(self, references: ShotReferences, stage: int) -> tuple[int, int, int]:
        """(frames, height, width) of the target's video latent at stage 1 (half size) or 2 (full size)."""
        cell = self.vae_spatial_compression_ratio * (2 if stage == 1 else 1)
        latent_frames = (references.num_frames - 1) // self.vae_temporal_compression_ratio + 1
        return latent_frames, references.height // cell, references.width // cell

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
        # Drawn on the generator's device (CPU for dubflow): the same seed gives the same take on any device.
        noise = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32)
        return noise.to(device)

    def _denoise(
        self,
        video: torch.Tensor,
        video_grid: tuple[int, int, int],
        video_reference: Tokens,
        audio: torch.Tensor,
        audio_reference: Tokens | None,
        prompt: PromptEmbedding,
        sigmas: tuple[float, ...],
        frame_rate: float,
        device: torch.device,
        freeze_audio: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler steps on the target tokens; reference tokens ride along clean (timestep 0)."""
        dtype = self.transformer.dtype
        latent_frames, latent_height, latent_width = video_grid
        video_coords = torch.cat(
            [
                self.transformer.rope.prepare_video_coords(
                    1, latent_frames, latent_height, latent_width, device, fps=frame_rate
                ),
                video_reference.coords,
            ],
            dim=2,
        )
        audio_coords = self.transformer.audio_rope.prepare_audio_coords(1, audio.shape[1], device)
        audio_ref_latents = audio.new_zeros((1, 0, audio.shape[2]))
        if audio_reference is not None:
            audio_coords = torch.cat([audio_coords, audio_reference.coords], dim=2)
            audio_ref_latents = audio_reference.latents
        video_zeros = video.new_zeros((1, video_reference.count))
        audio_zeros = audio.new_zeros((1, audio_ref_latents.shape[1]))

        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.full((1,), sigma * TIMESTEP_SCALE, device=device)
            t_audio = torch.zeros_like(t) if freeze_audio else t
            video_timesteps = torch.cat([t.expand(1, video.shape[1]), video_zeros], dim=1)
            audio_timesteps = torch.cat([t_audio.expand(1, audio.shape[1]), audio_zeros], dim=1)
            with own_cross_modulation_timesteps(self.transformer, video_timesteps, audio_timesteps):
                video_pred, audio_pred = self.transformer(
                    hidden_states=torch.cat([video, video_reference.latents], dim=1).to(dtype),
                    audio_hidden_states=torch.cat([audio, audio_ref_latents], dim=1).to(dtype),
                    encoder_hidden_states=prompt.video,
                    audio_encoder_hidden_states=prompt.audio,
                    encoder_attention_mask=prompt.mask,
                    audio_encoder_attention_mask=prompt.mask,
                    timestep=video_timesteps,
                    audio_timestep=audio_timesteps,
                    sigma=t,
                    audio_sigma=t_audio,
                    num_frames=latent_frames,
                    height=latent_height,
                    width=latent_width,
                    fps=frame_rate,
                    audio_num_frames=audio_coords.shape[2],
                    video_coords=video_coords,
                    audio_coords=audio_coords,
                    use_cross_timestep=True,
                    return_dict=False,
                )
            step = sigma_next - sigma
            video = video + step * video_pred[:, : video.shape[1]].float()
            if not freeze_audio:
                audio = audio + step * audio_pred[:, : audio.shape[1]].float()
        return video, audio

    def _upsample(self, video: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        if self.latent_upsampler is None:
            raise ValueError("two-stage LipDub needs the spatial latent upsampler (latent_upsampler component)")
        latents = self._unpack_latents(
            video, *grid, self.transformer_spatial_patch_size, self.transformer_temporal_patch_size
        )
        latents = self._denormalize_latents(latents, self.vae.latents_mean, self.vae.latents_std)
        latents = self.latent_upsampler(latents.to(self.latent_upsampler.dtype)).float()
        latents = self._normalize_latents(latents, self.vae.latents_mean, self.vae.latents_std)
        return self._pack_latents(latents, self.transformer_spatial_patch_size, self.transformer_temporal_patch_size)

    def _decode_video(self, video: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        latents = self._unpack_latents(
            video, *grid, self.transformer_spatial_patch_size, self.transformer_temporal_patch_size
        )
        latents = self._denormalize_latents(latents, self.vae.latents_mean, self.vae.latents_std)
        # Decode at timestep 0 (no decode noise): the VAE sees exactly the sampled latent.
        timestep = torch.zeros(1, device=latents.device, dtype=self.vae.dtype) if self.vae.config.timestep_conditioning else None
        cell = self.vae_spatial_compression_ratio
        with _decode_tiles(self.vae, *decode_tile_size(grid[1] * cell, grid[2] * cell, cell)):
            pixels = self.vae.decode(latents.to(self.vae.dtype), timestep, return_dict=False)[0]
        return ((pixels[0].float().permute(1, 0, 2, 3) + 1.0) / 2.0).clamp(0.0, 1.0)

    def _decode_audio(self, audio: torch.Tensor, audio_frames: int) -> torch.Tensor:
        latents = self._denormalize_audio_latents(audio, self.audio_vae.latents_mean, self.audio_vae.latents_std)
        latents = self._unpack_audio_latents(
            latents, audio_frames, num_mel_bins=self.audio_mel_bins // self.audio_vae_mel_compression_ratio
        )
        mel = self.audio_vae.decode(latents.to(self.audio_vae.dtype), return_dict=False)[0]
        return self.vocoder(mel.to(self.vocoder.dtype))[0].float()


def decode_tile_size(height: int, width: int, cell: int) -> tuple[int, int]:
    """Upstream's decode tile (height, width) in pixels for a ``height`` x ``width`` picture whose latent
    grid has ``cell``-pixel cells: the long side's 768 px scaled to each side in whole cells."""
    long_cells = max(height, width) // cell

    def side(length: int) -> int:
        cells = max(2, DECODE_TILE_OVERLAP // cell + 1, round(DECODE_TILE_LONG_SIDE // cell * (length // cell) / long_cells))
        return max(cells * cell, 2 * cell, DECODE_TILE_OVERLAP + cell)

    return side(height), side(width)


@contextmanager
def _decode_tiles(vae: AutoencoderKLLTX2Video, height: int, width: int) -> Iterator[None]:
    """The VAE's spatial tiles set to ``height`` x ``width`` px with upstream's overlap for one decode; the
    encoder's tiles (the same attributes) are left as they were."""
    names = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height", "tile_sample_stride_width")
    saved = {name: getattr(vae, name) for name in names}
    values = (height, width, height - DECODE_TILE_OVERLAP, width - DECODE_TILE_OVERLAP)
    for name, value in zip(names, values):
        setattr(vae, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(vae, name, value)


def clamp_vocoder_before_bandwidth_extension(vocoder: LTX2VocoderWithBWE) -> None:
    """Clip the 16 kHz vocoder's waveform to [-1, 1] before the bandwidth extension sees it, as upstream does.

    Upstream's ``VocoderWithBWE`` builds its first vocoder with the final activation on
    (``ltx_core/model/audio_vae/model_configurator.py``: ``use_tanh_at_final=False`` means a clamp), and
    only the extension generator without. diffusers' LTX-2.3 conversion writes ``final_act_fn=None``
    for that vocoder (no clamp), so anything louder than full scale reaches the extension's mel and
    skip path unclipped: 2.5 % relative difference in the harness's decoded audio (tests/test_upstream_dubit.py)
    without the clamp, 2.2e-6 with it.
    An explicit ``tanh`` or ``clamp`` in the config is left as it is.
    """
    if isinstance(vocoder, LTX2VocoderWithBWE) and vocoder.vocoder.final_act_fn is None:
        vocoder.vocoder.final_act_fn = "clamp"


@contextmanager
def own_cross_modulation_timesteps(
    transformer: LTX2VideoTransformer3DModel, video_timesteps: torch.Tensor, audio_timesteps: torch.Tensor
) -> Iterator[None]:
    """Within one forward: each modality's audio<->video cross-attention scale/shift from its *own*
    per-token timesteps, as upstream LTX-2 computes it (``ltx_core/model/transformer/transformer_args.py``,
    since 203d484: reference tokens sit at timestep 0).

    diffusers 0.42.1 with ``use_cross_timestep=True`` feeds both the scale/shift and the gate AdaLNs
    the *other* modality's sigma; upstream takes only the gate from it. The forward is called with
    ``use_cross_timestep=True`` (the gates are right) and these hooks replace the timestep argument of
    the two scale/shift AdaLNs. The upstream fix in diffusers would be, in
    ``LTX2VideoTransformer3DModel.forward`` with ``use_cross_timestep=True``:
    ``av_cross_attn_video_scale_shift(timestep.flatten())`` and
    ``av_cross_attn_audio_scale_shift(audio_timestep.flatten())``, keeping ``audio_sigma`` / ``sigma``
    for the ``a2v`` / ``v2a`` gates.
    """
    def replace_timestep(timesteps: torch.Tensor):
        def hook(module, args, kwargs):
            return (timesteps.flatten(), *args[1:]), kwargs
        return hook

    handles = [
        transformer.av_cross_attn_video_scale_shift.register_forward_pre_hook(
            replace_timestep(video_timesteps), with_kwargs=True
        ),
        transformer.av_cross_attn_audio_scale_shift.register_forward_pre_hook(
            replace_timestep(audio_timesteps), with_kwargs=True
        ),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def log_mel(audio: torch.Tensor, sample_rate: int, vae_rate: int, hop_length: int, mel_bins: int) -> torch.Tensor:
    """LTX-2's audio front end (ltx-core ``AudioProcessor``): ``(channels, samples)`` at any rate, resampled
    to ``vae_rate`` -> ``(1, 2, mel_frames, mel_bins)`` log magnitude mel. Mono is duplicated into both
    channels (upstream's encoder takes exactly two)."""
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"reference audio must be (1 or 2 channels, samples), got {tuple(audio.shape)}")
    if audio.shape[0] == 1:
        audio = audio.expand(2, -1)
    audio = resample_sinc(audio, sample_rate, vae_rate)
    window = torch.hann_window(MEL_FFT_SIZE, device=audio.device)
    spectrum = torch.stft(
        audio, MEL_FFT_SIZE, hop_length=hop_length, win_length=MEL_FFT_SIZE, window=window,
        center=True, pad_mode="reflect", return_complex=True,
    ).abs()  # (2, freqs, frames)
    filters = slaney_mel_filterbank(MEL_FFT_SIZE // 2 + 1, mel_bins, vae_rate, device=audio.device)
    mel = torch.einsum("fm,cft->ctm", filters, spectrum)
    return torch.log(mel.clamp(min=MEL_LOG_FLOOR)).unsqueeze(0)


def resample_sinc(audio: torch.Tensor, from_rate: int, to_rate: int) -> torch.Tensor:
    """``(..., samples)`` from ``from_rate`` to ``to_rate`` Hz: the windowed-sinc resampler LTX-2's audio
    front end uses (``torchaudio.functional.resample`` with its defaults: Hann window, 6 zero crossings,
    rolloff 0.99), computed the same way, so dubflow needs no torchaudio (which pins its own torch).

    The rates are reduced by their gcd; each of the ``to`` output phases is one row of a
    ``(to, 1, taps)`` kernel applied with stride ``from`` (a polyphase filter), and the result is cut
    to ``ceil(samples * to / from)``.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
    if from_rate == to_rate:
        return audio
    gcd = math.gcd(int(from_rate), int(to_rate))
    orig, new = int(from_rate) // gcd, int(to_rate) // gcd
    base = min(orig, new) * RESAMPLE_ROLLOFF
    width = math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / base)
    dtype, device = audio.dtype, audio.device
    idx = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + idx
    t = (t * base).clamp_(-RESAMPLE_ZERO_CROSSINGS, RESAMPLE_ZERO_CROSSINGS)
    window = torch.cos(t * math.pi / RESAMPLE_ZERO_CROSSINGS / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t) * (window * (base / orig))
    flat = audio.reshape(-1, audio.shape[-1])
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    resampled = torch.nn.functional.conv1d(padded[:, None], kernel, stride=orig).transpose(1, 2).reshape(flat.shape[0], -1)
    length = math.ceil(new * audio.shape[-1] / orig)
    return resampled[..., :length].reshape(*audio.shape[:-1], -1)


def slaney_mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``(n_freqs, n_mels)`` triangular filters on the Slaney mel scale with Slaney area normalisation.

    The same filters as ``torchaudio.functional.melscale_fbanks(..., norm="slaney", mel_scale="slaney")``
    from 0 Hz to Nyquist, which LTX-2's audio front end uses; written here so torchaudio is not needed.
    """
    def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
        linear = hz / (200.0 / 3)
        log = 15.0 + torch.log(hz.clamp(min=1000.0) / 1000.0) / (math.log(6.4) / 27.0)
        return torch.where(hz < 1000.0, linear, log)

    def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
        linear = mel * (200.0 / 3)
        log = 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0))
        return torch.where(mel < 15.0, linear, log)

    nyquist = torch.tensor(sample_rate / 2.0, dtype=torch.float64)
    freqs = torch.linspace(0.0, float(nyquist), n_freqs, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(0.0, float(hz_to_mel(nyquist)), n_mels + 2, dtype=torch.float64))
    widths = edges[1:] - edges[:-1]
    slopes = edges.unsqueeze(0) - freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters * (2.0 / (edges[2:] - edges[:-2])).unsqueeze(0)
    return filters.to(device=device, dtype=torch.float32)


class _StageClock:
    """Seconds per stage into a dict, synchronising the device so GPU work is counted where it ran."""

    def __init__(self, device: torch.device, sink: dict[str, float] | None) -> None:
        self.device, self.sink = torch.device(device), sink
        self.last = self._now() if sink is not None else 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.sink is None:
            return
        now = self._now()
        self.sink[name] = self.sink.get(name, 0.0) + now - self.last
        self.last = now
