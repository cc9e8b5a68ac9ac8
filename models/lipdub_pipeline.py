"""The LTX-2.3 LipDub algorithm as a diffusers pipeline: video + voice references, two distilled stages.

diffusers' ``LTX2InContextPipeline`` conditions on a reference *video* (the IC-LoRA's clean,
co-located tokens). LipDub also conditions on the shot's own *audio* so the new line keeps the
speaker's voice; that part is not in diffusers, and it is what this class adds. It inherits the
components, loading (``from_pretrained``, ``load_lora_weights``) and the packing helpers of the
in-context pipeline and writes its own sampling, which reads top to bottom as the algorithm:

1. ``encode_prompts``: Gemma 3 + text connectors, one batch for all of a shot's languages.
2. ``encode_references``: once per shot, reused for every language —
   the source frames VAE-encoded at the stage-1 and stage-2 sizes (divided by the LoRA's
   ``reference_downscale_factor``; their spatial coordinates multiplied by it), and the source audio
   (log-mel -> audio VAE) at *negative* time positions that end 0.04 s before t = 0.
3. ``__call__``: stage 1 at half width and height (8 Euler steps, video + audio references), the
   spatial latent upsampler (x2), stage 2 at full size (3 steps from sigma 0.909375, video reference
   at full size, the audio latent frozen at its stage-1 value), then decode: video from stage 2,
   audio from stage 1 (audio VAE -> mel -> vocoder with bandwidth extension).

Distilled sampling: one transformer forward per step, no guidance of any kind. Reference tokens are
clean (timestep 0) and never updated; every step is a plain Euler step of the flow on the target
tokens only. Shapes are exact here (frames 8k+1, sizes in whole latent cells at both stages): the
padding that makes any shot fit lives in ``dubflow.models.lipdub``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import julius
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
TIMESTEP_SCALE = 1000.0  # the transformer takes sigma * 1000, as diffusers' flow-matching scheduler feeds it


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
        audio: torch.Tensor,
        sample_rate: int,
        frame_rate: float,
        reference_downscale_factor: int = 1,
    ) -> ShotReferences:
        """Encode a shot's picture ``(F, 3, H, W)`` in [0, 1] and sound ``(channels, samples)`` once.

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
            audio=self._encode_audio_reference(audio, sample_rate),
            num_frames=num_frames, height=height, width=width, frame_rate=frame_rate,
        )

    def _encode_video_reference(self, frames: torch.Tensor, height: int, width: int, frame_rate: float, factor: int) -> Tokens:
        device = self._execution_device
        pixels = frames.to(device=device, dtype=torch.float32)
        if pixels.shape[-2:] != (height, width):
            pixels = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
        pixels = (pixels * 2.0 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).unsqueeze(0).to(self.vae.dtype)
        latent = self.vae.encode(pixels).latent_dist.mode()
        latent = self._normalize_latents(latent, self.vae.latents_mean, self.vae.latents_std)
        _, _, latent_frames, latent_height, latent_width = latent.shape
        coords = self.transformer.rope.prepare_video_coords(
            1, latent_frames, latent_height, latent_width, device, fps=frame_rate
        )
        # The reference is co-located with the target: at factor f its grid is f times coarser.
        coords[:, 1:3] = coords[:, 1:3] * factor
        packed = self._pack_latents(latent, self.transformer_spatial_patch_size, self.transformer_temporal_patch_size)
        return Tokens(packed.float(), coords)

    def _encode_audio_reference(self, audio: torch.Tensor, sample_rate: int) -> Tokens:
        device = self._execution_device
        mel = self.log_mel(audio.to(device=device, dtype=torch.float32), sample_rate)
        latent = self.audio_vae.encode(mel.to(self.audio_vae.dtype)).latent_dist.mode()
        packed = self._normalize_audio_latents(
            self._pack_audio_latents(latent), self.audio_vae.latents_mean, self.audio_vae.latents_std
        )
        coords = self.transformer.audio_rope.prepare_audio_coords(1, packed.shape[1], device)
        # Context, not output: the whole reference sits before t = 0, ending AUDIO_REFERENCE_GAP_SECONDS early.
        coords = coords - coords[..., 1].max() - AUDIO_REFERENCE_GAP_SECONDS
        return Tokens(packed.float(), coords)

    def log_mel(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """``(channels, samples)`` at any rate -> ``(1, 2, mel_frames, mel_bins)``, the audio VAE's input."""
        if audio.ndim != 2 or audio.shape[0] not in (1, 2):
            raise ValueError(f"reference audio must be (1 or 2 channels, samples), got {tuple(audio.shape)}")
        if audio.shape[0] == 1:
            audio = audio.expand(2, -1)
        if sample_rate != self.audio_sampling_rate:
            audio = julius.resample_frac(audio, sample_rate, self.audio_sampling_rate)
        window = torch.hann_window(MEL_FFT_SIZE, device=audio.device)
        spectrum = torch.stft(
            audio, MEL_FFT_SIZE, hop_length=self.audio_hop_length, win_length=MEL_FFT_SIZE, window=window,
            center=True, pad_mode="reflect", return_complex=True,
        ).abs()  # (2, freqs, frames)
        filters = slaney_mel_filterbank(
            MEL_FFT_SIZE // 2 + 1, self.audio_mel_bins, self.audio_sampling_rate, device=audio.device
        )
        mel = torch.einsum("fm,cft->ctm", filters, spectrum)
        return torch.log(mel.clamp(min=MEL_LOG_FLOOR)).unsqueeze(0)

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
        cell = self.vae_spatial_compression_ratio
        latent_frames = (references.num_frames - 1) // self.vae_temporal_compression_ratio + 1
        half_h, half_w = references.height // 2 // cell, references.width // 2 // cell
        audio_frames = round(references.num_frames / references.frame_rate * self.audio_latents_per_second)
        audio_channels = self.audio_latent_channels * (self.audio_mel_bins // self.audio_vae_mel_compression_ratio)

        # Stage 1: half size, pure noise, video and voice references.
        video = self._noise((1, latent_frames * half_h * half_w, self.transformer.config.in_channels), generator, device)
        audio = self._noise((1, audio_frames, audio_channels), generator, device)
        video, audio = self._denoise(
            video, (latent_frames, half_h, half_w), references.video_stage_1,
            audio, references.audio, prompt, stage_1_sigmas, references.frame_rate, device, freeze_audio=False,
        )
        clock.lap("stage_1")

        # Upsample x2 in the VAE's latent space (de-normalised), then back to the transformer's scale.
        video = self._upsample(video, (latent_frames, half_h, half_w))
        clock.lap("upsample")

        # Stage 2: full size from sigma 0.909375; the audio is frozen and no voice reference is needed.
        sigma = stage_2_sigmas[0]
        video = sigma * self._noise(tuple(video.shape), generator, device) + (1.0 - sigma) * video
        full = (latent_frames, 2 * half_h, 2 * half_w)
        video, _ = self._denoise(
            video, full, references.video_stage_2, audio, None, prompt, stage_2_sigmas, references.frame_rate,
            device, freeze_audio=True,
        )
        clock.lap("stage_2")

        frames = self._decode_video(video, full)
        waveform = self._decode_audio(audio, audio_frames)
        clock.lap("decode")
        return LipDubResult(frames, waveform, self.output_sample_rate)

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
            video_pred, audio_pred = self.transformer(
                hidden_states=torch.cat([video, video_reference.latents], dim=1).to(dtype),
                audio_hidden_states=torch.cat([audio, audio_ref_latents], dim=1).to(dtype),
                encoder_hidden_states=prompt.video,
                audio_encoder_hidden_states=prompt.audio,
                encoder_attention_mask=prompt.mask,
                audio_encoder_attention_mask=prompt.mask,
                timestep=torch.cat([t.expand(1, video.shape[1]), video_zeros], dim=1),
                audio_timestep=torch.cat([t_audio.expand(1, audio.shape[1]), audio_zeros], dim=1),
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
        pixels = self.vae.decode(latents.to(self.vae.dtype), timestep, return_dict=False)[0]
        return ((pixels[0].float().permute(1, 0, 2, 3) + 1.0) / 2.0).clamp(0.0, 1.0)

    def _decode_audio(self, audio: torch.Tensor, audio_frames: int) -> torch.Tensor:
        latents = self._denormalize_audio_latents(audio, self.audio_vae.latents_mean, self.audio_vae.latents_std)
        latents = self._unpack_audio_latents(
            latents, audio_frames, num_mel_bins=self.audio_mel_bins // self.audio_vae_mel_compression_ratio
        )
        mel = self.audio_vae.decode(latents.to(self.audio_vae.dtype), return_dict=False)[0]
        return self.vocoder(mel)[0].float()


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
