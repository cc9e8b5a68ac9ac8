"""LTX-2.3 LipDub weights on disk: check a directory before a run, download one from the hub.

The layout dubflow loads (``LipDubModel.load``)::

    <weights>/model_index.json                       diffusers pipeline index
    <weights>/{transformer,vae,audio_vae,connectors,vocoder,text_encoder,tokenizer,scheduler}/
    <weights>/latent_upsampler/                      the x2 spatial upscaler (two-stage)
    <weights>/ltx-2.3-22b-ic-lora-dubit-0.9.safetensors  (or its first name, ...-lipdub-0.9.safetensors)

``check_weights`` reads only configs and safetensors headers (no tensor data), builds every
diffusers component on the ``meta`` device and compares names and shapes, then maps every LoRA key
through diffusers' own conversion onto the transformer: a 22B model is checked in seconds and with
no GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dubflow.media.files import FileMemo, atomic_write_bytes, sha256_file

from dubflow.models.ltx_files import BASE_REPO, DUBIT_LORA_FILE, LORA_FILES, LORA_REPO, lora_file

# The diffusers components the pipeline needs; the base repo also holds single-file checkpoints we skip.
DIFFUSERS_COMPONENTS = (
    "transformer", "vae", "audio_vae", "connectors", "vocoder", "latent_upsampler", "text_encoder", "tokenizer",
    "scheduler",
)
_WEIGHTED = ("transformer", "vae", "audio_vae", "connectors", "vocoder", "latent_upsampler")
_EXAMPLES = 3


class WeightsDownloadError(Exception):
    """The weights could not be fetched; the message says why and what to do."""


@dataclass
class WeightsReport:
    weights_dir: Path
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # one line per thing found in order

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        lines = [f"weights {self.weights_dir}", *(f"  ok      {line}" for line in self.checked)]
        lines += [f"  PROBLEM {line}" for line in self.problems]
        lines.append("all checks passed" if self.ok else f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


def check_weights(
    weights_dir: Path, lora_path: Path | None = None, checkpoint: Path | None = None, upsampler: Path | None = None
) -> WeightsReport:
    """Files present, every tensor's name and shape as the configs say, every LoRA key on a module.

    ``checkpoint``, an official single-file checkpoint, is checked as the components it bundles
    (transformer, video VAE, audio VAE, vocoder) against the directory's configs; ``upsampler``,
    upstream's spatial upscaler file, against the configuration in its metadata.
    """
    weights_dir = Path(weights_dir)
    lora_path = Path(lora_path) if lora_path is not None else lora_file(weights_dir)
    report = WeightsReport(weights_dir)
    if not (weights_dir / "model_index.json").is_file():
        report.problems.append(f"{weights_dir}/model_index.json missing: not a diffusers-format directory "
                               f"(fetch one with `dubflow models download {weights_dir}`)")
        return report
    replaced = _replaced_components(checkpoint, upsampler)
    for name in DIFFUSERS_COMPONENTS:
        if not (weights_dir / name).is_dir() and not (name == "latent_upsampler" and upsampler is not None):
            report.problems.append(f"{name}/ missing")
    text_encoder = weights_dir / "text_encoder"
    if text_encoder.is_dir():
        # Gemma's checkpoint layout is transformers' business: presence here, transformers checks on load.
        if (text_encoder / "config.json").is_file() and any(text_encoder.glob("*.safetensors")):
            report.checked.append("text_encoder: config and safetensors present (shapes checked by transformers on load)")
        else:
            report.problems.append("text_encoder/: needs config.json and *.safetensors")
    modules = {name: _check_component(weights_dir / name, name, report, replaced.get(name))
               for name in _WEIGHTED if (weights_dir / name).is_dir()}
    transformer = modules.get("transformer")
    if checkpoint is not None and transformer is not None:
        _check_checkpoint(Path(checkpoint), modules, report)
    if upsampler is not None:
        _check_upsampler_file(Path(upsampler), report)
    if not lora_path.is_file():
        report.problems.append(f"IC-LoRA missing: none of {', '.join(LORA_FILES)} in {lora_path.parent} "
                               f"(gated on the hub: {LORA_REPO})")
    elif transformer is not None:
        _check_lora(lora_path, transformer, report)
    return report


def _component_class(name: str, weights_dir: Path):
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel, LTX2TextConnectors, LTX2Vocoder, LTX2VocoderWithBWE

    if name == "vocoder":
        config = json.loads((weights_dir / "config.json").read_text())
        return LTX2VocoderWithBWE if config.get("_class_name") == "LTX2VocoderWithBWE" else LTX2Vocoder
    return {
        "transformer": LTX2VideoTransformer3DModel,
        "vae": AutoencoderKLLTX2Video,
        "audio_vae": AutoencoderKLLTX2Audio,
        "connectors": LTX2TextConnectors,
        "latent_upsampler": LTX2LatentUpsamplerModel,
    }[name]


def _replaced_components(checkpoint: Path | None, upsampler: Path | None) -> dict[str, str]:
    """Components whose weights come from upstream's files rather than the directory, with the file's name."""
    from dubflow.models.lipdub import CHECKPOINT_PREFIXES

    replaced = {"latent_upsampler": Path(upsampler).name} if upsampler is not None else {}
    if checkpoint is not None and Path(checkpoint).is_file():
        keys = _header_shapes([Path(checkpoint)])
        replaced |= {name: Path(checkpoint).name for name, prefix in CHECKPOINT_PREFIXES.items()
                     if any(key.startswith(prefix) for key in keys)}
    return replaced


def _check_component(
    directory: Path, name: str, report: WeightsReport, weights_from: str | None = None
) -> torch.nn.Module | None:
    """``weights_from``: the file that provides this component's weights instead (its config stays here)."""
    config_file = directory / "config.json"
    files = sorted(directory.glob("*.safetensors"))
    if not config_file.is_file() or not (files or weights_from):
        report.problems.append(f"{name}/: needs config.json and *.safetensors, found {sorted(p.name for p in directory.iterdir())}")
        return None
    cls = _component_class(name, directory)
    with torch.device("meta"):
        module = cls.from_config(cls.load_config(directory))
    if files:
        _compare(name, _meta_shapes(module), _header_shapes(files), report)
    else:
        report.checked.append(f"{name}: config here, weights from {weights_from}")
    return module


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(tensor.shape) for key, tensor in module.state_dict().items()}


def _header_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from safetensors headers: no tensor data is read."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _compare(
    name: str, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], report: WeightsReport
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    for label, keys in (("missing from the files", missing), ("not in the model", unexpected)):
        if keys:
            report.problems.append(f"{name}: {len(keys)} tensor(s) {label}, e.g. {', '.join(keys[:_EXAMPLES])}")
    for key in wrong[:_EXAMPLES]:
        report.problems.append(f"{name}: {key} has shape {found[key]}, the config says {expected[key]}")
    if len(wrong) > _EXAMPLES:
        report.problems.append(f"{name}: {len(wrong) - _EXAMPLES} more tensor(s) with the wrong shape")
    if not (missing or unexpected or wrong):
        report.checked.append(f"{name}: {len(found)} tensors ({sum(_numel(s) for s in found.values()):,} values) as configured")


def _check_checkpoint(checkpoint: Path, modules: dict[str, torch.nn.Module | None], report: WeightsReport) -> None:
    """Each component the single file bundles, keyed as dubflow loads it (diffusers' own conversion plus
    the renames it lacks), against the directory's config for it."""
    from dubflow.models.lipdub import CHECKPOINT_PREFIXES, checkpoint_component_keys

    if not checkpoint.is_file():
        report.problems.append(f"single-file checkpoint {checkpoint} not found")
        return
    shapes = _header_shapes([checkpoint])
    if not any(key.startswith(CHECKPOINT_PREFIXES["transformer"]) for key in shapes):
        report.problems.append(f"{checkpoint.name}: no model.diffusion_model.* tensors: not an LTX-2 checkpoint")
        return
    for name, prefix in CHECKPOINT_PREFIXES.items():
        if modules.get(name) is not None and any(key.startswith(prefix) for key in shapes):
            converted = checkpoint_component_keys(name, shapes)
            _compare(f"{checkpoint.name} ({name})", _meta_shapes(modules[name]), converted, report)


def _check_upsampler_file(upsampler: Path, report: WeightsReport) -> None:
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel

    from dubflow.models.lipdub import LipDubLoadError, upsampler_file_config

    if not upsampler.is_file():
        report.problems.append(f"spatial upscaler file {upsampler} not found")
        return
    try:
        config = upsampler_file_config(upsampler)
        with torch.device("meta"):
            module = LTX2LatentUpsamplerModel.from_config(config)
    except (LipDubLoadError, TypeError, ValueError) as error:
        report.problems.append(f"{upsampler.name}: {error}")
        return
    _compare(f"{upsampler.name} (latent_upsampler)", _meta_shapes(module), _header_shapes([upsampler]), report)


def _check_lora(lora_path: Path, transformer: torch.nn.Module, report: WeightsReport) -> None:
    from safetensors.torch import load_file

    from dubflow.models.lipdub import read_reference_downscale_factor
    from dubflow.models.lipdub_pipeline import LTX2LipDubPipeline

    converted = LTX2LipDubPipeline.lora_state_dict(load_file(str(lora_path)))
    modules = dict(transformer.named_modules())
    unmatched, wrong = [], []
    for key, tensor in converted.items():
        component, _, rest = key.partition(".")
        target, _, kind = rest.rpartition(".lora_")
        module = modules.get(target) if component == "transformer" else None
        if not isinstance(module, torch.nn.Linear):
            unmatched.append(key)
        elif kind.startswith("A") and tensor.shape[1] != module.in_features:
            wrong.append(f"{key} {tuple(tensor.shape)} vs in_features {module.in_features}")
        elif kind.startswith("B") and tensor.shape[0] != module.out_features:
            wrong.append(f"{key} {tuple(tensor.shape)} vs out_features {module.out_features}")
    if unmatched:
        report.problems.append(f"IC-LoRA: {len(unmatched)} key(s) match no transformer module, "
                               f"e.g. {', '.join(unmatched[:_EXAMPLES])}")
    report.problems += [f"IC-LoRA: {line}" for line in wrong[:_EXAMPLES]]
    if not (unmatched or wrong):
        factor = read_reference_downscale_factor(lora_path)
        report.checked.append(
            f"IC-LoRA {lora_path.name}: {len(converted)} tensors on {len(converted) // 2} transformer modules, "
            f"reference_downscale_factor={factor}"
        )


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def weights_identity(
    weights_dir: Path, lora_path: Path, checkpoint: Path | None, memo: Path, upsampler: Path | None = None
) -> dict[str, str | None]:
    """The LTX-2 weights by content: one digest over every file of the diffusers folder (names relative
    to it, each file's SHA-256), the single-file checkpoint's, the upscaler file's and the LoRA's SHA-256.

    Full-content hashes, not safetensors headers plus sizes: a header holds names, dtypes, shapes and
    offsets, which a new release of the same architecture (LTX-2.3 distilled 1.0 and 1.1) leaves
    identical, so a header key would keep serving takes of the old weights. Hashing ~70 GB costs about
    a minute, so each file's hash is kept in ``memo`` (JSON, a ``FileMemo``) under its path, size, mtime
    and inode and recomputed only when one of those changes: a replaced or re-downloaded file is hashed
    again, an unchanged one costs a ``stat``.
    """
    memo = Path(memo)
    hashes: FileMemo[str] = FileMemo(json.loads(memo.read_text()) if memo.is_file() else {})

    def digest(path: Path) -> str:
        return hashes.get(path, sha256_file)

    weights_dir = Path(weights_dir)
    files = sorted(
        path for name in ("model_index.json", *DIFFUSERS_COMPONENTS)
        for path in ([weights_dir / name] if name.endswith(".json") else (weights_dir / name).rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(weights_dir).parts)
    )
    listing = "".join(f"{path.relative_to(weights_dir).as_posix()}\t{digest(path)}\n" for path in files)
    identity = {
        "base": hashlib.sha256(listing.encode()).hexdigest(),
        "checkpoint": digest(Path(checkpoint)) if checkpoint is not None else None,
        "upsampler": digest(Path(upsampler)) if upsampler is not None else None,
        "lora": digest(Path(lora_path)),
    }
    if hashes.changed:
        atomic_write_bytes(memo, json.dumps(hashes.entries, indent=0, sort_keys=True).encode())
    return identity


def download_weights(weights_dir: Path) -> Path:
    """Fetch the diffusers-format LTX-2.3 base and the gated DubIt (formerly LipDub) IC-LoRA into ``weights_dir``.

    The token comes from ``$HF_TOKEN`` or the ``hf auth login`` cache, never from a command-line
    argument (it would show in process lists and shell history), and is never printed.
    """
    from huggingface_hub import get_token, hf_hub_download, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    weights_dir = Path(weights_dir)
    token = get_token()  # $HF_TOKEN, else the `hf auth login` cache
    if token is None:  # the LoRA is gated: without a token the hub can only refuse, after the base's ~100 GB
        raise WeightsDownloadError(
            f"no Hugging Face token: {LORA_REPO} is gated. Accept its conditions at "
            f"https://huggingface.co/{LORA_REPO}, create a read token at https://huggingface.co/settings/tokens, "
            f"then run `HF_TOKEN=<token> dubflow models download {weights_dir}` (or `hf auth login` first)"
        )
    try:
        snapshot_download(
            BASE_REPO, local_dir=weights_dir, token=token,
            allow_patterns=["model_index.json", *(f"{name}/*" for name in DIFFUSERS_COMPONENTS)],
        )
        hf_hub_download(LORA_REPO, DUBIT_LORA_FILE, local_dir=weights_dir, token=token)
    except GatedRepoError:
        raise WeightsDownloadError(
            f"access refused: {LORA_REPO} is gated — accept its conditions at https://huggingface.co/{LORA_REPO} "
            "with the account your token (HF_TOKEN) belongs to, then run again"
        ) from None
    except RepositoryNotFoundError:
        raise WeightsDownloadError(
            f"{BASE_REPO} or {LORA_REPO} not found or not visible with this token; check HF_TOKEN"
        ) from None
    except HfHubHTTPError as exc:
        raise WeightsDownloadError(f"the hub refused the download: {_status(exc)}") from None
    except OSError as exc:  # no network, DNS, disk
        raise WeightsDownloadError(
            f"could not download the weights into {weights_dir} ({type(exc).__name__}: {exc}); this needs network "
            f"access to huggingface.co — or copy a diffusers-format LTX-2.3 directory with {DUBIT_LORA_FILE} to "
            f"{weights_dir} from a machine that has them, then run `dubflow models check {weights_dir}`"
        ) from None
    return weights_dir


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return f"HTTP {response.status_code}" if response is not None else type(exc).__name__
