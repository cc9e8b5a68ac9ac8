"""LipDub for a locked shot: any frame count, any size, any length, exact rate; weights and residency.

:class:`LipDubModel` wraps one :class:`~dubflow.models.lipdub_pipeline.LTX2LipDubPipeline` (the
algorithm: video + voice references, two distilled stages) with the LipDub IC-LoRA loaded through
diffusers/peft (``load_lora_weights`` converts the official ``diffusion_model.`` key layout), checked
key by key, and fused once.

Shapes are never lossy. The VAE needs 8k+1 frames and two-stage sampling a picture in whole latent
cells at half size, so the shot is padded *up* (the last frame repeated; the edges replicated,
centred) and the result trimmed and cropped back to exactly the source's frame count and size. The
rate reaches the model as the exact float of the source's ``Fraction``. A shot longer than one
generation window is cut into overlapping windows (all 8k+1 frames, the last aligned to the shot's
end) whose pictures and sounds are cross-faded linearly over each overlap.

Reuse: :meth:`LipDubModel.prepare_shot` encodes a shot's references (the picture at both stage sizes
per window, the whole shot's audio once) and caches them by the caller's content key, so every
language of the shot reuses them; :meth:`LipDubModel.embed_prompts` encodes all of a shot's prompts in one batch and
caches them by text.

The ``smoke`` profile builds tiny random LTX-2 components (:func:`build_smoke_weights`) with the same
classes, the same compression ratios (8x temporal, 32x spatial, 25 audio latents per second), the
same vocoder output rate (48 kHz stereo), a latent upsampler and an IC-LoRA in the official key
format, saves them with ``save_pretrained`` and loads them through :meth:`LipDubModel.load`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from dubflow.models.lipdub_pipeline import (
    STAGE_1_SIGMAS,
    STAGE_2_SIGMAS,
    LTX2LipDubPipeline,
    PromptEmbedding,
    ShotReferences,
)
from dubflow.models.ltx2_architectures import SMOKE, LTX2Architecture, build_components
from dubflow.models.kernels import (
    FP8_ATTENTION,
    Kernels,
    check_fp8_support,
    use_fp8_attention,
    use_fp8_linears,
)
from dubflow.models.ltx_files import LIPDUB_LORA_FILE
from dubflow.models.residency import resident
from dubflow.media.files import sha256_file

__all__ = [
    "ADAPTER_NAME",
    "LipDubLoadError",
    "LipDubModel",
    "LipDubOutput",
    "NoVoiceReferenceError",
    "PreparedShot",
    "SourceShot",
    "build_prompt",
    "build_random_model",
    "build_smoke_weights",
    "fuse_lora",
    "get_resident_model",
    "get_resident_random_model",
    "checkpoint_component_keys",
    "load_checkpoint_component",
    "load_checkpoint_components",
    "load_upsampler_file",
    "upsampler_file_config",
    "random_ic_lora",
    "read_reference_downscale_factor",
    "rename_checkpoint_key",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

ADAPTER_NAME = "lipdub"
DEFAULT_SPEAKER = "A person"
REFERENCE_DOWNSCALE_KEY = "reference_downscale_factor"
# Upstream pads prompts to 1024 Gemma tokens; a tokenizer may declare a shorter window (the smoke one does).
MAX_PROMPT_TOKENS = 1024
# Generation windows: 257 frames (about 10 s at 25 fps) per pass, a conservative length for the
# distilled two-stage recipe (change it on the model for other trade-offs); the overlap is three
# latent frames, the cross-fade between neighbouring windows.
DEFAULT_WINDOW_FRAMES = 257
DEFAULT_WINDOW_OVERLAP = 24
# Prepared shots (reference encodings) kept per model: a shot's languages usually run back to back.
_PREPARED_CACHE = 4
_PROMPT_CACHE = 256
# Frames per float resize: bounds the float32 working set at full HD to a few hundred MB.
_RESIZE_CHUNK = 16


class LipDubLoadError(Exception):
    """The LTX-2 weights or the LipDub IC-LoRA cannot be used as given."""


class NoVoiceReferenceError(ValueError):
    """LipDub clones the speaker's voice from the shot's own audio; a shot without audio cannot be dubbed."""


@dataclass(frozen=True)
class SourceShot:
    """What LipDub needs of a locked shot: its picture and its own sound (the voice reference)."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    fps: Fraction
    audio: np.ndarray  # (channels, samples) float32, 1 or 2 channels
    sample_rate: int


@dataclass(frozen=True)
class LipDubOutput:
    frames: np.ndarray  # (num_frames, height, width, 3) uint8: exactly the source's frame count and size
    audio: np.ndarray  # (channels, samples) float32: generated speech (and whatever ambience the model makes)
    sample_rate: int


@dataclass(frozen=True)
class _Window:
    start: int  # first source frame
    frames: int  # source frames covered
    references: ShotReferences  # encoded at the padded length (8k+1) and padded size


@dataclass(frozen=True)
class PreparedShot:
    """A shot's geometry and reference encodings, computed once and reused for all its languages."""

    num_frames: int
    height: int
    width: int
    fps: Fraction
    generation_size: tuple[int, int]  # (h, w) before padding; below the source size on the smoke profile
    padding: tuple[int, int]  # (top, left) offset of the picture inside the padded frame
    windows: tuple[_Window, ...]


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


# Upstream LTX-2's own files. The single-file checkpoint bundles every component but the text encoder
# and the upsampler under these prefixes, with its configuration as `config` metadata; the x2 spatial
# upscaler is a file of its own, its configuration as metadata.
CHECKPOINT_PREFIXES = {
    "transformer": "model.diffusion_model.", "vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder.",
}
# Official (ltx-core) key -> diffusers key, where diffusers 0.42.1's single-file conversion lacks a rename.
# Transformer, before `convert_ltx2_transformer_to_diffusers`: LTX-2.3's prompt AdaLN (`prompt_adaln_single`,
# `audio_prompt_adaln_single`; diffusers: `prompt_adaln`, `audio_prompt_adaln`). Without them the weights
# are reported unused and loading fails with "Cannot copy out of meta tensor". The fix in diffusers: add
# `"prompt_adaln_single": "prompt_adaln"` to LTX_2_0_TRANSFORMER_KEYS_RENAME_DICT and skip
# `prompt_adaln_single` keys in its `adaln_single` special-key handler.
_CHECKPOINT_RENAMES = (("prompt_adaln_single.", "prompt_adaln."),)  # also turns audio_prompt_adaln_single.
# Video VAE, after `convert_ltx2_vae_to_diffusers` (its table is LTX-2.0's: three decoder up blocks, no
# timestep-conditioning renames): LTX-2.3's fourth up block and the conditioned decoder's last AdaLN.
# diffusers' conversion script has them (LTX_2_3_VIDEO_VAE_RENAME_DICT); its single-file loader does not.
_VAE_RENAMES = (
    ("decoder.up_blocks.7.", "decoder.up_blocks.3.upsamplers.0."), ("decoder.up_blocks.8.", "decoder.up_blocks.3."),
    ("decoder.last_time_embedder.", "decoder.time_embedder."), ("decoder.last_scale_shift_table", "decoder.scale_shift_table"),
)
# Vocoder with bandwidth extension: diffusers has no single-file conversion for it; these are its
# conversion script's (LTX_2_3_VOCODER_RENAME_DICT and its `.ups.` special case), on the keys below `vocoder.`.
_VOCODER_RENAMES = (
    (".ups.", ".upsamplers."), ("resblocks", "resnets"), ("conv_pre", "conv_in"), ("conv_post", "conv_out"),
    ("act_post", "act_out"), ("downsample.lowpass", "downsample"),
)
# The upscaler's metadata names -> LTX2LatentUpsamplerModel's arguments (the rest are the same names).
_UPSAMPLER_CONFIG_NAMES = {"spatial_scale": "rational_spatial_scale", "rational_resampler": "use_rational_resampler"}


def rename_checkpoint_key(key: str) -> str:
    """An official transformer key with the renames diffusers' single-file conversion lacks applied."""
    for official, diffusers_name in _CHECKPOINT_RENAMES:
        key = key.replace(official, diffusers_name)
    return key


def checkpoint_component_keys(component: str, official: dict[str, T]) -> dict[str, T]:
    """A component's entries of an official single-file checkpoint (keys with the component's prefix,
    values anything: tensors, shapes) keyed as its diffusers model names them."""
    from diffusers.loaders.single_file_utils import (
        convert_ltx2_audio_vae_to_diffusers,
        convert_ltx2_transformer_to_diffusers,
        convert_ltx2_vae_to_diffusers,
    )

    prefix = CHECKPOINT_PREFIXES[component]
    entries = {key: value for key, value in official.items() if key.startswith(prefix)}
    if component == "transformer":
        return convert_ltx2_transformer_to_diffusers({rename_checkpoint_key(k): v for k, v in entries.items()})
    if component == "vae":
        return {_renamed(k, _VAE_RENAMES): v for k, v in convert_ltx2_vae_to_diffusers(entries).items()}
    if component == "audio_vae":
        return convert_ltx2_audio_vae_to_diffusers(entries)
    return {_renamed(k.removeprefix(prefix), _VOCODER_RENAMES): v for k, v in entries.items()}


def _renamed(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for official, diffusers_name in renames:
        key = key.replace(official, diffusers_name)
    return key


def load_checkpoint_components(checkpoint: Path, config_dir: Path, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The components an official single-file LTX-2 checkpoint bundles (transformer, video VAE, audio
    VAE, vocoder: each one the file holds), configured by ``config_dir/<component>/config.json``.

    The transformer goes through diffusers' single-file loader; the others are loaded strictly from
    their converted keys (:func:`checkpoint_component_keys`).
    """
    from diffusers import LTX2VideoTransformer3DModel
    from safetensors import safe_open

    prefixes = tuple(CHECKPOINT_PREFIXES.values())
    with safe_open(str(checkpoint), framework="pt") as handle:
        official = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefixes)}
    present = [name for name, prefix in CHECKPOINT_PREFIXES.items() if any(k.startswith(prefix) for k in official)]
    if "transformer" not in present:
        raise LipDubLoadError(
            f"{checkpoint}: no {CHECKPOINT_PREFIXES['transformer']}* tensors: not an LTX-2 single-file checkpoint"
        )
    components = {}
    for name in present:
        if name == "transformer":
            components[name] = LTX2VideoTransformer3DModel.from_single_file(
                checkpoint_component_keys(name, official), config=str(config_dir), subfolder="transformer",
                torch_dtype=dtype,
            )
        else:
            config = _bundled_class(name).load_config(config_dir / name)
            components[name] = load_checkpoint_component(name, official, config, dtype, str(checkpoint))
    return components


def load_checkpoint_component(
    name: str, official: dict[str, torch.Tensor], config: dict, dtype: torch.dtype, source: str
) -> torch.nn.Module:
    """The video VAE, audio VAE or vocoder (``name``) of an official single-file checkpoint's tensors
    (``official``, keyed as in the file), built from ``config`` and loaded strictly."""
    state = checkpoint_component_keys(name, official)
    return _load_strictly(_bundled_class(name), config, state, dtype, f"{source} ({name})")


def _bundled_class(name: str) -> type:
    """diffusers' class for a component the single file bundles beside the transformer."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video
    from diffusers.pipelines.ltx2 import LTX2VocoderWithBWE

    return {"vae": AutoencoderKLLTX2Video, "audio_vae": AutoencoderKLLTX2Audio, "vocoder": LTX2VocoderWithBWE}[name]


def load_upsampler_file(path: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Upstream's x2 spatial latent upscaler file (e.g. ``ltx-2.3-spatial-upscaler-x2-1.0.safetensors``),
    configured by its own metadata; its keys are diffusers' ``LTX2LatentUpsamplerModel``'s."""
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel
    from safetensors.torch import load_file

    config = upsampler_file_config(path)
    return _load_strictly(LTX2LatentUpsamplerModel, config, load_file(str(path)), dtype, str(path))


def upsampler_file_config(path: Path) -> dict:
    """``LTX2LatentUpsamplerModel``'s arguments from an upstream upscaler file's ``config`` metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get("config")
    try:
        config = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        config = None
    if not isinstance(config, dict):
        raise LipDubLoadError(f"{path}: no JSON `config` in its metadata: not an LTX-2 spatial upscaler file")
    return {_UPSAMPLER_CONFIG_NAMES.get(key, key): value for key, value in config.items()}


def _load_strictly(cls, config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype, source: str) -> torch.nn.Module:
    """``cls`` built from ``config`` with exactly ``state``'s tensors: any missing, left over or of another
    shape fails, naming them. Parameters are never initialised; buffers no file holds (the vocoder's
    filters and STFT bases) are built by the class."""
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(include_buffers=False):
            module = cls.from_config(config)
    except (TypeError, ValueError) as error:
        raise LipDubLoadError(f"{source}: its configuration does not build a {cls.__name__}: {error}") from None
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # torch names every missing, unexpected and misshapen tensor
        raise LipDubLoadError(f"{source} does not fit {cls.__name__}: {error}") from None
    # torch's own cast: diffusers' `to` adds only a warning about `_keep_in_fp32_modules`, which none of
    # these classes sets (from_pretrained's torch_dtype would cast them whole too).
    return torch.nn.Module.to(module, dtype).eval()


class LipDubModel:
    """A loaded LipDub pipeline (LTX-2 base + fused IC-LoRA) on one device. Thread-safe: calls serialize."""

    load_count: ClassVar[int] = 0  # every successful load, process-wide; lets tests see residency work

    def __init__(
        self,
        pipe: LTX2LipDubPipeline,
        *,
        reference_downscale_factor: int,
        identity: str,
        kernels: Kernels = Kernels(),
        window_frames: int = DEFAULT_WINDOW_FRAMES,
        window_overlap: int = DEFAULT_WINDOW_OVERLAP,
    ) -> None:
        _check_window(window_frames, window_overlap, pipe.frame_multiple)
        # The vocoder runs in float32 whatever the model's dtype, as upstream does (its notes measure
        # bf16 degrading the vocoder's spectral metrics 40-90 %); it is 0.13B parameters.
        if pipe.vocoder.dtype != torch.float32:
            pipe.vocoder.to(torch.float32)
        self.pipe = pipe
        # Read once: diffusers' `ModelMixin.device` walks every submodule (about 4,000 in LTX-2.3's
        # transformer, ~9 ms a call), and moving the text encoder asks it for each of 1,071 tensors.
        self.device: torch.device = pipe.transformer.device
        self.reference_downscale_factor = reference_downscale_factor
        self.identity = identity  # names the weights and LoRA: part of every cache key downstream
        self.kernels = kernels  # as asked of `_use_kernels` (which on a CPU applies only fp8_weights)
        self.window_frames = window_frames
        self.window_overlap = window_overlap
        self.reference_encodings = 0  # prepared shots actually encoded (not served from the cache)
        self._text_encoder_host: dict[str, torch.Tensor] | None = None
        # Take sizes (generation size, longest window) that ran out of GPU memory with the text encoder there.
        self._needs_text_encoder_room: set[tuple[int, int, int]] = set()
        self._prepared: OrderedDict[tuple, PreparedShot] = OrderedDict()
        self._prompts: OrderedDict[str, PromptEmbedding] = OrderedDict()
        # A pipeline holds per-call state and one device; one call at a time.
        self._lock = threading.RLock()

    @classmethod
    def load(
        cls,
        weights_dir: Path,
        lora_path: Path,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        kernels: Kernels = Kernels(),
        checkpoint: Path | None = None,
        upsampler: Path | None = None,
    ) -> LipDubModel:
        """Base from a diffusers-format directory, IC-LoRA fused in.

        ``checkpoint``, an official single-file LTX-2.3 checkpoint (e.g. the distilled
        ``ltx-2.3-22b-distilled-1.1.safetensors``), replaces the directory's transformer, video VAE,
        audio VAE and vocoder with those it bundles (:func:`load_checkpoint_components`: diffusers' own
        key conversion plus the renames it lacks), configured by the directory's configs.
        ``upsampler``, upstream's spatial upscaler file, replaces the directory's ``latent_upsampler/``.
        """
        weights_dir, lora_path = Path(weights_dir), Path(lora_path)
        if not (weights_dir / "model_index.json").is_file():
            raise LipDubLoadError(f"{weights_dir} is not a diffusers-format directory (no model_index.json)")
        if upsampler is None and not (weights_dir / "latent_upsampler" / "config.json").is_file():
            raise LipDubLoadError(
                f"{weights_dir} has no latent_upsampler/ (the x2 spatial upscaler two-stage LipDub needs); "
                "add it, or name upstream's upscaler file (ltx-2.3-spatial-upscaler-x2-*.safetensors)"
            )
        if not lora_path.is_file():
            raise LipDubLoadError(f"LipDub IC-LoRA not found: {lora_path}")
        from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel
        from safetensors.torch import load_file

        for label, path in (("single-file checkpoint", checkpoint), ("spatial upscaler file", upsampler)):
            if path is not None and not Path(path).is_file():
                raise LipDubLoadError(f"{label} not found: {path}")
        factor = read_reference_downscale_factor(lora_path)
        overrides = {
            "latent_upsampler": load_upsampler_file(Path(upsampler), dtype) if upsampler is not None
            else LTX2LatentUpsamplerModel.from_pretrained(weights_dir / "latent_upsampler", torch_dtype=dtype)
        }
        if checkpoint is not None:
            overrides.update(load_checkpoint_components(Path(checkpoint), weights_dir, dtype))
        pipe = LTX2LipDubPipeline.from_pretrained(weights_dir, dtype=dtype, **overrides)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        fuse_lora(pipe, load_file(str(lora_path)), str(lora_path))
        _use_kernels(pipe, kernels)
        base = ":".join([weights_dir.name, *(Path(p).name for p in (checkpoint, upsampler) if p is not None)])
        identity = f"{base}+{lora_path.name}@{sha256_file(lora_path)[:12]}"
        model = cls(pipe, reference_downscale_factor=factor, identity=identity, kernels=kernels)
        cls.load_count += 1
        logger.info(
            "LipDub loaded from %s + %s on %s (%s), reference_downscale_factor=%d",
            weights_dir, lora_path.name, device, dtype, factor,
        )
        return model

    @property
    def sample_rate(self) -> int:
        return self.pipe.output_sample_rate

    @property
    def frame_multiple(self) -> int:
        return self.pipe.frame_multiple

    def spatial_multiple(self) -> int:
        return self.pipe.spatial_multiple(self.reference_downscale_factor)

    # --- the two calls a task makes ----------------------------------------------------------------

    def prepare_shot(
        self, shot: SourceShot, key: str | None = None, max_height: int | None = None, window_frames: int | None = None
    ) -> PreparedShot:
        """Plan the shot's windows and encode their references; cached by ``key`` (a content hash).

        ``max_height`` below the shot's height generates at that height (aspect kept) and scales the
        result back; the smoke profile uses it to stay fast, real profiles pass None.
        ``window_frames`` overrides the model's window length (shorter windows: less memory a pass).
        """
        frames = _check_shot(shot)
        num_frames, height, width, _ = frames.shape
        window_frames = window_frames or self.window_frames
        cache_key = (key, max_height, window_frames) if key is not None else None
        with self._lock:
            if cache_key is not None and cache_key in self._prepared:
                self._prepared.move_to_end(cache_key)
                return self._prepared[cache_key]
            gen_h, gen_w = _generation_size(height, width, max_height)
            multiple = self.spatial_multiple()
            pad_h, pad_w = _round_up(gen_h, multiple), _round_up(gen_w, multiple)
            top, left = (pad_h - gen_h) // 2, (pad_w - gen_w) // 2
            # The whole shot's sound is every window's voice reference, as upstream takes the file's.
            voice = self.pipe.encode_voice(torch.from_numpy(np.ascontiguousarray(shot.audio, np.float32)), shot.sample_rate)
            windows = []
            for start, length in self.plan_windows(num_frames, window_frames):
                picture = _to_float(frames[start : start + length], (gen_h, gen_w), self.device)  # (L, 3, gen_h, gen_w)
                picture = F.pad(picture, (left, pad_w - gen_w - left, top, pad_h - gen_h - top), mode="replicate")
                padded = _round_up(length - 1, self.frame_multiple) + 1
                if padded > length:
                    picture = torch.cat([picture, picture[-1:].expand(padded - length, -1, -1, -1)])
                references = self.pipe.encode_references(
                    picture, voice, float(shot.fps), self.reference_downscale_factor
                )
                windows.append(_Window(start, length, references))
            prepared = PreparedShot(num_frames, height, width, Fraction(shot.fps), (gen_h, gen_w), (top, left),
                                    tuple(windows))
            self.reference_encodings += 1
            if cache_key is not None:
                self._prepared[cache_key] = prepared
                while len(self._prepared) > _PREPARED_CACHE:
                    self._prepared.popitem(last=False)
            return prepared

    def embed_prompts(self, prompts: list[str]) -> dict[str, PromptEmbedding]:
        """Every prompt's embedding; the ones not cached yet are encoded together in one batch."""
        with self._lock:
            missing = list(dict.fromkeys(p for p in prompts if p not in self._prompts))
            if missing:
                self.onload_text_encoder()  # if a take moved it to host memory
                for prompt, embedding in zip(missing, self.pipe.encode_prompts(missing, MAX_PROMPT_TOKENS)):
                    self._prompts[prompt] = embedding
                while len(self._prompts) > _PROMPT_CACHE:
                    self._prompts.popitem(last=False)
            return {p: self._prompts[p] for p in prompts}

    def release_memory(self) -> None:
        """After a GPU out-of-memory error: give back every byte a take can spare (cached reference
        encodings, the text encoder, the allocator's cached blocks) before the take is tried again."""
        if self.device.type != "cuda":
            return
        with self._lock:
            self._prepared.clear()
            self.offload_text_encoder()

    def offload_text_encoder(self) -> None:
        """Move the text encoder (Gemma 3 12B: ~24 GB in bf16) to host memory, freeing its GPU memory.

        Its weights never change, so the first move makes one page-locked host copy and keeps it:
        later moves only drop the GPU copy."""
        if self.device.type != "cuda" or not self._text_encoder_on_device():
            return
        text_encoder = self.pipe.text_encoder
        if self._text_encoder_host is None:
            self._text_encoder_host = {
                name: torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
                for name, t in _named_tensors(text_encoder)
            }
        for name, tensor in _named_tensors(text_encoder):
            tensor.data = self._text_encoder_host[name]
        torch.cuda.empty_cache()

    def onload_text_encoder(self) -> None:
        """Bring the text encoder back to the GPU if a take moved it off (from page-locked memory: fast)."""
        for _, tensor in _named_tensors(self.pipe.text_encoder):
            if tensor.device != self.device:
                tensor.data = tensor.data.to(self.device, non_blocking=True)

    def _text_encoder_on_device(self) -> bool:
        return next(self.pipe.text_encoder.parameters()).device == self.device

    def dub(
        self,
        prepared: PreparedShot,
        prompt: str,
        seed: int,
        stage_1_sigmas: tuple[float, ...] = STAGE_1_SIGMAS,
        stage_2_sigmas: tuple[float, ...] = STAGE_2_SIGMAS,
        timings: dict[str, float] | None = None,
    ) -> LipDubOutput:
        """The dubbed take: exactly the shot's frame count, size and duration.

        The text encoder stays on the GPU between takes while they fit beside it: moving it (24 GB)
        costs far more GPU idle time than encoding prompts. A take size that runs out of memory with
        it there moves it to host memory and runs again; later takes of that size move it first.
        """
        with self._lock:
            embedding = self.embed_prompts([prompt])[prompt]
            size = (*prepared.generation_size, max(window.frames for window in prepared.windows))
            if size in self._needs_text_encoder_room:
                self.offload_text_encoder()
            try:
                return self._dub(prepared, embedding, seed, stage_1_sigmas, stage_2_sigmas, timings)
            except torch.OutOfMemoryError:
                if self.device.type != "cuda" or not self._text_encoder_on_device():
                    raise
            # Outside the except clause, so the failed attempt's tensors are freed with its traceback.
            logger.info("a %dx%dx%d take ran out of GPU memory beside the text encoder on %s; moving the encoder "
                        "to host memory for takes of this size", *size, self.device)
            self._needs_text_encoder_room.add(size)
            self.offload_text_encoder()
            return self._dub(prepared, embedding, seed, stage_1_sigmas, stage_2_sigmas, timings)

    def _dub(
        self,
        prepared: PreparedShot,
        embedding: PromptEmbedding,
        seed: int,
        stage_1_sigmas: tuple[float, ...],
        stage_2_sigmas: tuple[float, ...],
        timings: dict[str, float] | None,
    ) -> LipDubOutput:
        """Every window of the take sampled and joined: frames cross-faded, audio placed in time."""
        gen_h, gen_w = prepared.generation_size
        top, left = prepared.padding
        sample_rate = self.sample_rate
        total_samples = round(Fraction(prepared.num_frames) / prepared.fps * sample_rate)
        frames = np.empty((prepared.num_frames, prepared.height, prepared.width, 3), np.uint8)
        audio = np.zeros((0, total_samples), np.float32)
        sounded_until = 0
        tail: torch.Tensor | None = None  # the previous window's frames that overlap this one
        for index, window in enumerate(prepared.windows):
            # One generator per window, seeded from the take's seed: windows are independent draws.
            generator = torch.Generator(device="cpu").manual_seed(int(seed) + index)
            result = self.pipe(window.references, embedding, generator, stage_1_sigmas, stage_2_sigmas, timings)
            # Stays on the model's device until it is bytes: the host's share of a take is one uint8 copy.
            video = result.video[: window.frames, :, top : top + gen_h, left : left + gen_w].clone()
            if tail is not None:
                video[: tail.shape[0]] = _crossfade(tail, video[: tail.shape[0]])
            following = prepared.windows[index + 1].start if index + 1 < len(prepared.windows) else None
            done = window.frames if following is None else following - window.start
            frames[window.start : window.start + done] = _to_uint8(video[:done], (prepared.height, prepared.width))
            tail = video[done:].clone() if following is not None else None  # not a view: frees the window

            generated = result.audio.cpu().numpy()
            if not audio.shape[0]:
                audio = np.zeros((generated.shape[0], total_samples), np.float32)
            first = round(Fraction(window.start) / prepared.fps * sample_rate)
            window_samples = round(Fraction(window.frames) / prepared.fps * sample_rate)
            sounded_until = _place_audio(audio, generated[:, :window_samples], first, sounded_until)
        return LipDubOutput(frames=frames, audio=audio, sample_rate=sample_rate)

    def generate(self, shot: SourceShot, prompt: str, seed: int, max_height: int | None = None) -> LipDubOutput:
        """``prepare_shot`` + ``dub`` for one prompt, no caching: the simple way in."""
        return self.dub(self.prepare_shot(shot, max_height=max_height), prompt, seed)

    def plan_windows(self, num_frames: int, window_frames: int | None = None) -> list[tuple[int, int]]:
        """``(start, frames)`` per window: one window if the shot fits, else overlapping full windows."""
        window_frames = window_frames or self.window_frames
        _check_window(window_frames, self.window_overlap, self.frame_multiple)
        if num_frames <= window_frames:
            return [(0, num_frames)]
        stride = window_frames - self.window_overlap
        starts = list(range(0, num_frames - window_frames, stride)) + [num_frames - window_frames]
        return [(start, window_frames) for start in starts]


def fuse_lora(pipe: LTX2LipDubPipeline, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load an IC-LoRA (official or diffusers key layout) through diffusers/peft, verify it, fuse it once."""
    expected = pipe.lora_state_dict(dict(state_dict))  # the mixin's conversion of the official layout
    pipe.load_lora_weights(dict(state_dict), adapter_name=ADAPTER_NAME)
    components = _verify_lora_applied(pipe, expected, source)
    pipe.fuse_lora(components=components, lora_scale=1.0, adapter_names=[ADAPTER_NAME])
    # Fused into the base weights; the peft wrappers would only cost time at every forward.
    pipe.unload_lora_weights()


def _named_tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


def _use_kernels(pipe: LTX2LipDubPipeline, kernels: Kernels) -> None:
    """Called once the LoRA is fused (fusing needs the full-precision weights).

    ``fp8_weights`` stores the transformer's weights in float8 (e4m3) and casts each layer to the
    compute dtype as it runs: half the transformer's memory (about 19 GB of 38 for LTX-2.3). On a GPU,
    video is encoded and decoded in tiles (a 1080p clip's VAE activations would not fit whole), and
    the float8 compute (linears, attention: models/kernels.py), the attention backend and the compiled
    block apply: they change only which kernels compute the same arithmetic. Time and output change
    of each: BENCHMARKS.md.
    """
    transformer = pipe.transformer
    if kernels.fp8_weights:
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=transformer.dtype)
    if transformer.device.type != "cuda":
        return
    pipe.vae.enable_tiling()
    check_fp8_support(transformer.device, kernels)
    if kernels.fp8_linears:
        use_fp8_linears(transformer.transformer_blocks)
    if kernels.attention == FP8_ATTENTION:
        use_fp8_attention([block.attn1 for block in transformer.transformer_blocks])
    elif kernels.attention != "native":
        transformer.set_attention_backend(kernels.attention)
    if kernels.compile_blocks:
        # Regional compilation: the 48 blocks share one compiled graph. Stage 2's token count differs
        # from stage 1's, so dynamo recompiles once with the changing sizes symbolic (about a minute
        # of compiling a process in all, measured in BENCHMARKS.md), then reuses it for every shot.
        # fp8 storage's cast hook is one function called with every layer's weight shape, each a
        # recompile of it: the limit is raised to hold them all rather than fall back to eager.
        if kernels.fp8_weights:
            shapes = {tuple(m.weight.shape) for m in transformer.transformer_blocks[0].modules()
                      if isinstance(m, torch.nn.Linear)}
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(shapes) + 8)
        transformer.compile_repeated_blocks()


def _check_window(window_frames: int, window_overlap: int, frame_multiple: int) -> None:
    if (window_frames - 1) % frame_multiple or window_frames <= window_overlap or window_overlap < 1:
        raise ValueError(
            f"window_frames must be {frame_multiple}k+1 and longer than window_overlap >= 1, "
            f"got {window_frames} and {window_overlap}"
        )


def _check_shot(shot: SourceShot) -> np.ndarray:
    frames = np.asarray(shot.frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if min(frames.shape[:3]) < 1:
        raise ValueError(f"frames are empty: {frames.shape}")
    if Fraction(shot.fps) <= 0:
        raise ValueError(f"fps must be positive, got {shot.fps}")
    audio = np.asarray(shot.audio)
    if audio.ndim != 2 or audio.shape[1] == 0 or shot.sample_rate <= 0:
        raise NoVoiceReferenceError(
            "the shot has no audio: LipDub takes the speaker's voice from the shot's own sound"
        )
    if audio.shape[0] not in (1, 2):
        raise ValueError(f"voice reference must be mono or stereo, got {audio.shape[0]} channels (downmix first)")
    return frames


def _crossfade(outgoing: torch.Tensor, incoming: torch.Tensor) -> torch.Tensor:
    """Linear cross-fade along the first axis, excluding both end points (each side keeps one pure frame)."""
    steps = outgoing.shape[0]
    weight = torch.arange(1, steps + 1, dtype=torch.float32, device=outgoing.device) / (steps + 1)
    weight = weight.view(-1, *([1] * (outgoing.ndim - 1)))
    return outgoing * (1 - weight) + incoming * weight


def _place_audio(take: np.ndarray, piece: np.ndarray, first: int, sounded_until: int) -> int:
    """Write a window's audio into ``take`` at sample ``first``, cross-fading over what already sounds there.

    Only samples a window really generated count as sounding (its decoder ends a few ms short of the
    window), so a join never fades into padding. Returns the new end of the sounding part.
    """
    piece = piece[:, : take.shape[1] - first]
    overlap = max(0, min(sounded_until, first + piece.shape[1]) - first)
    if overlap:
        held = torch.from_numpy(take[:, first : first + overlap].T.copy())
        take[:, first : first + overlap] = _crossfade(held, torch.from_numpy(piece[:, :overlap].T.copy())).numpy().T
    take[:, first + overlap : first + piece.shape[1]] = piece[:, overlap:]
    return max(sounded_until, first + piece.shape[1])


def _verify_lora_applied(pipe, expected: dict[str, torch.Tensor], source: str) -> list[str]:
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
        raise LipDubLoadError(f"IC-LoRA {source} does not fit these weights: " + "; ".join(problems))
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


def _to_float(frames: np.ndarray, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (F, 3, h, w) float32 in [0, 1] on ``device``; resized (on the host) while
    still uint8, and only bytes cross to the device: a GPU makes the floats, not the host's cores."""
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2)  # a channels-last view, no copy
    return _resize(pixels, size).to(device).float().div_(255.0)


def _to_uint8(video: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(F, 3, h, w) float in [0, 1] on any device -> (F, H, W, 3) uint8 on the host; quantised on the
    video's device (only bytes cross to the host), then resized as uint8 where the size differs."""
    pixels = video.float().mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = _resize(pixels.cpu().contiguous(memory_format=torch.channels_last), size)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


# ---------------------------------------------------------------------------------------------------
# Residency: one model per (device, weights, LoRA, dtype) per process.

def get_resident_model(
    weights_dir: Path,
    lora_path: Path,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    kernels: Kernels = Kernels(),
    checkpoint: Path | None = None,
    upsampler: Path | None = None,
) -> LipDubModel:
    """The process's LipDub model for these weights on this device, loaded on first use only."""
    paths = [str(Path(p).resolve()) if p is not None else None for p in (weights_dir, lora_path, checkpoint, upsampler)]
    key = ("lipdub", str(torch.device(device)), *paths, str(dtype), kernels)
    return resident(
        key, lambda: LipDubModel.load(Path(weights_dir), Path(lora_path), device, dtype, kernels, checkpoint, upsampler)
    )


def get_resident_random_model(
    arch: LTX2Architecture, device: str, dtype: torch.dtype, seed: int, kernels: Kernels = Kernels()
) -> LipDubModel:
    """The process's random-weight LipDub of ``arch`` (e.g. full-size LTX-2.3), built on ``device`` once."""
    key = ("lipdub-random", arch.name, str(torch.device(device)), str(dtype), seed, kernels)
    return resident(key, lambda: build_random_model(arch, device, dtype, seed, kernels))


def build_random_model(
    arch: LTX2Architecture, device: str, dtype: torch.dtype, seed: int, kernels: Kernels = Kernels()
) -> LipDubModel:
    """Random components built on ``device`` plus a random IC-LoRA in the official layout, fused the real way."""
    pipe = LTX2LipDubPipeline(**build_components(arch, device, dtype, seed))
    pipe.set_progress_bar_config(disable=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = random_ic_lora(pipe.transformer)
    fuse_lora(pipe, lora, f"random IC-LoRA for {arch.name}")
    _use_kernels(pipe, kernels)
    LipDubModel.load_count += 1
    return LipDubModel(pipe, reference_downscale_factor=1, identity=f"{arch.name}-random@{seed}", kernels=kernels)


# ---------------------------------------------------------------------------------------------------
# Smoke weights: tiny random LTX-2 components (ltx2_architectures.SMOKE) in the real on-disk layout.

SMOKE_SEED = 20_260_101
_SMOKE_MARKER = ".dubflow-smoke-complete"
# Bump when the smoke architecture changes, so caches built by an older dubflow are rebuilt.
_SMOKE_VERSION = "ltx2-lipdub-smoke-3"

_LORA_RANK = 2
# Official (ltx-core) module names a random IC-LoRA adapts. Inside the blocks they equal diffusers'
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
    from safetensors.torch import save_file

    components = build_components(SMOKE, "cpu", torch.float32, SMOKE_SEED)
    LTX2LipDubPipeline(**components).save_pretrained(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SMOKE_SEED)
        lora = random_ic_lora(components["transformer"])
    save_file(lora, str(out / LIPDUB_LORA_FILE), metadata={REFERENCE_DOWNSCALE_KEY: "1"})
    (out / _SMOKE_MARKER).write_text(_SMOKE_VERSION + "\n")


def random_ic_lora(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
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
