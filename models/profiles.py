"""Model profiles: which weights a run uses, where they live, and how they run.

- `smoke`: tiny random-weight LTX-2 components and a tiny HTDemucs, built on first use into the
  cache and then loaded through exactly the code path real weights take. Runs on CPU in seconds.
  Its pictures and voices are noise: it checks the plumbing, never the quality.
- `ltx-2.3`: the real LTX-2.3 base + LipDub IC-LoRA from a local diffusers-format directory, and
  Demucs `htdemucs` (hub cache, or a local demucs model folder).
- `ltx-2.3-random`: the full-size LTX-2.3 architecture (and a random IC-LoRA in the official key
  format) with random weights, built directly on the GPU: for speed and memory measurements. Its
  separator is the smoke HTDemucs. Noise, like the smoke profile.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from dubflow.models.kernels import FP8_ATTENTION, Kernels
from dubflow.models.ltx_files import LIPDUB_LORA_FILE, LORA_FILES, lora_file

PROFILE_NAMES = ("smoke", "ltx-2.3", "ltx-2.3-random")
RANDOM_WEIGHTS_SEED = 20_260_101
SMOKE_NOTICE = (
    "SMOKE PROFILE: tiny random-weight models — the dubbed pictures and voices are noise. "
    "This run checks the plumbing, not the quality."
)
RANDOM_NOTICE = (
    "LTX-2.3-RANDOM PROFILE: full-size architecture with random weights — the dubbed pictures and voices "
    "are noise. This run measures speed and memory, not quality."
)


class ProfileError(Exception):
    """A profile cannot be used as asked (unknown name, weights missing)."""


@dataclass(frozen=True)
class ModelProfile:
    name: str
    random_weights: bool
    device: str
    separator_name: str
    separator_repo: Path | None  # a local demucs model folder; None = demucs' own hub cache
    lipdub_weights: Path | None  # diffusers-format directory of the LTX-2 base; None = built at random
    lipdub_lora: Path | None  # IC-LoRA safetensors in the official key format; None = built at random
    max_height: int | None  # generation height cap (smoke only); None = the shot's own size
    kernels: Kernels = Kernels()  # GPU profiles: read from the environment by `gpu_kernels`
    lipdub_checkpoint: Path | None = None  # official single-file checkpoint ($DUBFLOW_LTX_CHECKPOINT)
    lipdub_upsampler: Path | None = None  # upstream's spatial upscaler file ($DUBFLOW_LTX_UPSAMPLER)

    @property
    def notice(self) -> str | None:
        if not self.random_weights:
            return None
        return RANDOM_NOTICE if self.lipdub_weights is None else SMOKE_NOTICE


def cache_dir() -> Path:
    return Path(os.environ.get("DUBFLOW_CACHE", Path.home() / ".cache" / "dubflow"))


def gpu_kernels() -> Kernels:
    """The GPU profiles' kernels: $DUBFLOW_KERNELS (``fp8`` or ``bf16``) picks the defaults, and
    $DUBFLOW_FP8_LINEARS, $DUBFLOW_ATTENTION, $DUBFLOW_COMPILE, $DUBFLOW_FP8_WEIGHTS override each.

    ``fp8`` is float8 linears, cuDNN float8 video self-attention and the compiled block; ``bf16``
    the plain bf16 model (no float8 anywhere). The default is ``bf16`` until the float8 kernels'
    speed and drift are measured on a GPU (BENCHMARKS.md, "Float8 compute"). Float8 kernels asked of
    a GPU without float8 units, or without the `gpu` extra installed, are refused when the model
    loads (the workers that load it may not be this process)."""
    choice = os.environ.get("DUBFLOW_KERNELS", DEFAULT_KERNELS)
    if choice not in KERNEL_CHOICES:
        raise ProfileError(f"DUBFLOW_KERNELS={choice!r}: use one of {', '.join(KERNEL_CHOICES)}")
    defaults = KERNEL_CHOICES[choice]
    attention = os.environ.get("DUBFLOW_ATTENTION", defaults.attention)
    from diffusers.models.attention_dispatch import AttentionBackendName

    backends = [FP8_ATTENTION] + [backend.value for backend in AttentionBackendName]
    if attention not in backends:
        raise ProfileError(f"DUBFLOW_ATTENTION={attention!r} is not an attention choice; "
                           f"unset it or use one of {', '.join(backends)}")
    try:
        return Kernels(
            fp8_weights=_env_flag("DUBFLOW_FP8_WEIGHTS", defaults.fp8_weights),
            attention=attention,
            compile_blocks=_env_flag("DUBFLOW_COMPILE", defaults.compile_blocks),
            fp8_linears=_env_flag("DUBFLOW_FP8_LINEARS", defaults.fp8_linears),
        )
    except ValueError as error:
        raise ProfileError(f"{error} (DUBFLOW_FP8_WEIGHTS, DUBFLOW_FP8_LINEARS)") from None


DEFAULT_KERNELS = "bf16"  # float8 kernels not yet measured on a GPU: they are asked for, not defaulted to
KERNEL_CHOICES = {
    "fp8": Kernels(fp8_linears=True, attention=FP8_ATTENTION, compile_blocks=True),
    "bf16": Kernels(),
}


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value not in ("0", "1"):
        raise ProfileError(f"{name}={value!r}: use 1 (on) or 0 (off)")
    return value == "1"


def ltx_weights_dir() -> Path:
    return Path(os.environ.get("DUBFLOW_LTX_WEIGHTS", cache_dir() / "ltx-2.3"))


_build_lock = threading.Lock()


def resolve_profile(name: str, remote_gpus: bool = False) -> ModelProfile:
    """Resolve a profile by name, building the smoke models into the cache on first use.

    ``remote_gpus``: the model stages run on a cluster's GPU workers, not in this process, so the
    GPU profiles run on ``cuda`` whether or not this process sees a GPU."""
    if name == "smoke":
        from dubflow.models.lipdub import build_smoke_weights
        from dubflow.models.separator import build_smoke_separator

        root = cache_dir() / "smoke"
        with _build_lock:
            separator_name, separator_repo = build_smoke_separator(root / "demucs")
            weights = build_smoke_weights(root / "ltx-2")
        return ModelProfile(
            name="smoke",
            random_weights=True,
            device="cpu",
            separator_name=separator_name,
            separator_repo=separator_repo,
            lipdub_weights=weights,
            lipdub_lora=weights / LIPDUB_LORA_FILE,
            max_height=128,
        )
    if name == "ltx-2.3":
        weights = ltx_weights_dir()
        lora = lora_file(weights)
        checkpoint = os.environ.get("DUBFLOW_LTX_CHECKPOINT")
        upsampler = os.environ.get("DUBFLOW_LTX_UPSAMPLER")
        for variable, path, what in (("DUBFLOW_LTX_CHECKPOINT", checkpoint, "single-file LTX-2.3 checkpoint"),
                                     ("DUBFLOW_LTX_UPSAMPLER", upsampler, "LTX-2.3 spatial upscaler file")):
            if path and not Path(path).is_file():
                raise ProfileError(f"{variable}={path} is not a file; unset it or point it at the {what}")
        if not (weights / "model_index.json").is_file() or not lora.is_file():
            raise ProfileError(
                f"ltx-2.3 weights not found in {weights} (need model_index.json and {' or '.join(LORA_FILES)}); "
                "set DUBFLOW_LTX_WEIGHTS to a diffusers-format LTX-2.3 directory holding the DubIt IC-LoRA, or "
                f"fetch one: `dubflow models download {weights}` (needs HF_TOKEN), then `dubflow models check {weights}`"
            )
        demucs_repo = os.environ.get("DUBFLOW_DEMUCS_REPO")
        return ModelProfile(
            name="ltx-2.3",
            random_weights=False,
            device="cuda" if remote_gpus or torch.cuda.is_available() else "cpu",
            separator_name=os.environ.get("DUBFLOW_DEMUCS_MODEL", "htdemucs"),
            separator_repo=Path(demucs_repo) if demucs_repo else None,
            lipdub_weights=weights,
            lipdub_lora=lora,
            max_height=None,
            kernels=gpu_kernels(),
            lipdub_checkpoint=Path(checkpoint) if checkpoint else None,
            lipdub_upsampler=Path(upsampler) if upsampler else None,
        )
    if name == "ltx-2.3-random":
        from dubflow.models.separator import build_smoke_separator

        if not (remote_gpus or torch.cuda.is_available()):
            raise ProfileError("ltx-2.3-random builds the full-size model on a GPU; no CUDA device is visible "
                               "(run it on a GPU machine, or on a Dask cluster of GPU workers with --cluster)")
        with _build_lock:
            separator_name, separator_repo = build_smoke_separator(cache_dir() / "smoke" / "demucs")
        return ModelProfile(
            name="ltx-2.3-random",
            random_weights=True,
            device="cuda",
            separator_name=separator_name,
            separator_repo=separator_repo,
            lipdub_weights=None,
            lipdub_lora=None,
            max_height=None,
            kernels=gpu_kernels(),
        )
    raise ProfileError(f"unknown model profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}")


def load_lipdub(profile: ModelProfile, device: str | None = None):  # -> LipDubModel (diffusers imported late)
    """The process's resident LipDub model for ``profile`` on ``device`` (a leased one, e.g. ``cuda:1``;
    default: the profile's device), loaded on first use."""
    from dubflow.models.lipdub import get_resident_model, get_resident_random_model
    from dubflow.models.ltx2_architectures import LTX_2_3

    device = device or profile.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if profile.lipdub_weights is None:
        return get_resident_random_model(LTX_2_3, device, dtype, RANDOM_WEIGHTS_SEED, profile.kernels)
    return get_resident_model(profile.lipdub_weights, profile.lipdub_lora, device, dtype, profile.kernels,
                              profile.lipdub_checkpoint, profile.lipdub_upsampler)
