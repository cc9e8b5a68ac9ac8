"""Dialogue / bed separation with Demucs 4.1.

Dialogue is the model's ``vocals`` stem; the bed (M&E) is ``mix - dialogue`` at the delivery rate, so
``dialogue + bed`` gives back the mix (to float32 rounding) and nothing of the soundtrack is lost.

Flow of one call to :meth:`Separator.separate_many` (``separate`` is the one-soundtrack case)::

    each soundtrack (C, N) @ any rate ──resample once──► mix48 (C, N48)     N48 = round(N * 48000 / rate)
    per stretch of mix48 (chunk_seconds long, with context margins, crossfaded into the next):
        dialogue channel group ──► model channels ──► 44.1 kHz ──► normalised
        ──► cut into model-length segments at fixed positions (overlap, triangular weights)
    the segments of every stretch of every soundtrack ──► batches of `batch_size` ──► one model call each
    per stretch: overlap-add ──► dialogue source ──► 48 kHz, exactly the stretch's length
    dialogue (C, N48): the group's channels carry the estimate, every other channel is exactly 0
    bed = mix48 - dialogue

Segmentation happens here rather than in ``apply_model(split=True)`` so that several shots can share
a model call without changing each other's result: every segment is cut at fixed positions of its
own soundtrack and zero-padded to full length, whereas ``apply_model`` centres a short last segment
on the audio before it, which then depends on how long the batch's padded tensor is. A soundtrack's
dialogue is therefore the same (to float rounding) alone or batched, and memory stays bounded by the
stretch length and the batch size however long the soundtrack is. ``shifts`` averages the estimates
of time-shifted copies as Demucs does, but with the shifts spread evenly over [0, 0.5 s) instead of
drawn at random, so that it is deterministic too.

The dialogue is the model's first source named ``dialogue``, ``dialog``, ``speech`` or ``vocals``
(in that order): a music-separation model such as ``htdemucs`` gives ``vocals``, a
dialogue/music/effects model gives its dialogue stem.

Channel layouts use FFmpeg/PyAV names. ``mono`` and ``stereo`` are separated as they are (mono is
duplicated to the model's two channels and its stereo estimate averaged back). ``5.1`` and
``5.1(side)`` are separated from the centre channel only (FFmpeg order FL FR FC LFE ..., FC is
index 2), which carries the dialogue; the other five channels go to the bed untouched. Nothing is
dropped: Demucs itself would silently keep only the first two channels of a multichannel input
(``demucs.audio.convert_audio_channels``), which is why channel handling happens here. Any other
layout with more than two channels is refused with a ValueError.

Models load through Demucs' own loader, ``demucs.pretrained.get_model(name, repo)``: a hub name
(``htdemucs``, repo None, online only) or a local model folder in Demucs' repo format (``<sig>.th`` or
``<sig>-<sha256[:8]>.th`` packages plus ``<name>.yaml`` bags). :func:`build_smoke_separator` writes a
tiny random-weight HTDemucs in exactly that format, so the smoke profile goes through the same code
path as real weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import ClassVar

import demucs
import numpy as np
import torch
import yaml
from demucs import states
from demucs.apply import BagOfModels, apply_model
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model

from dubflow.media.audio import delivery_length, resample, resample_to_delivery
from dubflow.models.devices import lease_device
from dubflow.models.residency import forget, resident

__all__ = [
    "DELIVERY_SAMPLE_RATE",
    "DIALOGUE_SOURCES",
    "HTDEMUCS_KWARGS",
    "RANDOM_HTDEMUCS_NAME",
    "SMOKE_MODEL_NAME",
    "SUPPORTED_LAYOUTS",
    "ModelLoadError",
    "Separator",
    "SeparatorSpec",
    "Stems",
    "build_random_htdemucs",
    "build_smoke_separator",
    "clear_resident_separators",
    "delivery_length",
    "get_resident_separator",
    "resample_to_delivery",
    "write_bag",
    "write_model_package",
]

DELIVERY_SAMPLE_RATE = 48000
DIALOGUE_SOURCES = ("dialogue", "dialog", "speech", "vocals")  # in order of preference

# layout name -> (channel count, input channels the dialogue is separated from)
_LAYOUTS: dict[str, tuple[int, tuple[int, ...]]] = {
    "mono": (1, (0,)),
    "stereo": (2, (0, 1)),
    "5.1": (6, (2,)),  # FL FR FC LFE BL BR
    "5.1(side)": (6, (2,)),  # FL FR FC LFE SL SR
}
SUPPORTED_LAYOUTS: tuple[str, ...] = tuple(_LAYOUTS)

# Chunking of long inputs (at 48 kHz): each chunk is separated with this much context on both sides
# (discarded afterwards) and consecutive chunks are crossfaded linearly over _CROSSFADE_SECONDS.
_CONTEXT_SECONDS = 2.0
_CROSSFADE_SECONDS = 1.0
_MAX_SHIFT_SECONDS = 0.5  # as demucs.apply.apply_model

# ---------------------------------------------------------------------------------------------
# Random-weight HTDemucs models in Demucs' own package format: the tiny smoke model, and the
# full-size htdemucs architecture for benchmarks.
# ---------------------------------------------------------------------------------------------

SMOKE_MODEL_NAME = "dubflow_smoke_htdemucs"
_SMOKE_SEED = 0
_SMOKE_FORMAT = 1  # bump when the recipe below changes so that the signature changes with it
_SMOKE_KWARGS: dict = {
    "sources": ["drums", "bass", "other", "vocals"],
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": 4,  # seconds; htdemucs uses 7.8. Short so tests exercise the overlap-add of apply_model.
    "channels": 4,
    "depth": 4,  # keeps nfft=4096 and the frequency/time branch geometry of the real model
    "dconv_comp": 4,
    "t_layers": 1,
    "t_heads": 4,
}

RANDOM_HTDEMUCS_NAME = "dubflow_random_htdemucs"
_RANDOM_HTDEMUCS_SEED = 0
_RANDOM_HTDEMUCS_FORMAT = 1
# The published `htdemucs` (signature 955717e8): Demucs' conf/config.yaml `htdemucs:` defaults (which
# equal HTDemucs' own defaults for everything that shapes the network) with the overrides of its
# training grid (demucs/grids/mmi.py: dconv_mode 3, depth 4, t_layers 5, t_dropout 0.02,
# bottom_channels 512; docs/training.md: "5 layers, 512 channels"), and the segment that
# tools/export.py writes into the package for use_train_segment models: 7.8 s, the length Demucs
# documents as the Hybrid Transformer models' maximum.
HTDEMUCS_KWARGS: dict = {
    "sources": ["drums", "bass", "other", "vocals"],
    "audio_channels": 2,
    "samplerate": 44100,
    "segment": Fraction(39, 5),
    "channels": 48,
    "depth": 4,
    "dconv_mode": 3,
    "bottom_channels": 512,
    "t_layers": 5,
    "t_dropout": 0.02,
}


def _recipe_signature(kwargs: dict, seed: int, recipe_format: int) -> str:
    """8 hex chars like Demucs' own signatures, derived from the recipe (never contains '-')."""
    recipe = {"kwargs": kwargs, "seed": seed, "format": recipe_format}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _model_files(repo_dir: Path, sig: str) -> list[Path]:
    """Package files `demucs.repo.LocalRepo` would map to `sig`."""
    found = []
    for file in repo_dir.iterdir():
        if file.suffix != ".th":
            continue
        file_sig = file.stem.rsplit("-", 1)[0] if "-" in file.stem else file.stem
        if file_sig == sig:
            found.append(file)
    return found


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_model_package(repo_dir: Path, signature: str, model: torch.nn.Module, training_args: dict) -> Path:
    """Save `model` into the Demucs local model folder `repo_dir` as ``<signature>-<sha256[:8]>.th``.

    The package is the dict `demucs.states.serialize_model(model, training_args, half=True)` makes
    (klass, args, kwargs, half-precision state, training_args), written by
    `demucs.states.save_with_checksum`, so `demucs.pretrained.get_model(signature, repo_dir)` loads
    it. An existing package for the signature is kept (idempotent, safe against concurrent writers).
    """
    if not signature or "-" in signature:
        raise ValueError(f"a Demucs model signature must be non-empty and free of '-', got {signature!r}")
    repo_dir = Path(repo_dir)
    repo_dir.mkdir(parents=True, exist_ok=True)
    existing = _model_files(repo_dir, signature)
    if existing:
        return existing[0]
    args, kwargs = model._init_args_kwargs
    # serialize_model itself needs omegaconf (a training-only dependency) just to turn training_args
    # into a plain dict; this is the same dict without it.
    package = {
        "klass": model.__class__,
        "args": args,
        "kwargs": kwargs,
        "state": states.get_state(model, None, half=True),
        "training_args": training_args,
    }
    with tempfile.TemporaryDirectory(dir=repo_dir, prefix=".package-") as tmp:
        states.save_with_checksum(package, Path(tmp) / f"{signature}.th")
        (written,) = Path(tmp).glob("*.th")
        existing = _model_files(repo_dir, signature)
        if existing:  # another process won the race
            return existing[0]
        os.replace(written, repo_dir / written.name)
        return repo_dir / written.name


def write_bag(repo_dir: Path, name: str, signatures: list[str], weights: list[list[float]] | None = None) -> Path:
    """Write the bag ``<name>.yaml`` (``models:``, optional per-source ``weights:``) that
    `demucs.pretrained.get_model(name, repo_dir)` reads; rewritten only when its content changes."""
    bag: dict = {"models": list(signatures)}
    if weights is not None:
        bag["weights"] = weights
    data = yaml.safe_dump(bag).encode()
    path = Path(repo_dir) / f"{name}.yaml"
    if not path.exists() or path.read_bytes() != data:
        _write_atomic(path, data)
    return path


def _build_random_htdemucs(repo_dir: Path, name: str, kwargs: dict, seed: int, recipe_format: int,
                           marker: str) -> tuple[str, Path]:
    """Write a random-weight `HTDemucs(**kwargs)` into `repo_dir` as a Demucs local model repo: one
    package (`write_model_package`) and the bag ``<name>.yaml`` (``models: [sig]``). Deterministic
    (fixed seed) and idempotent; `marker` goes into the package's training_args, flagging it random."""
    repo_dir = Path(repo_dir)
    sig = _recipe_signature(kwargs, seed, recipe_format)
    if not (repo_dir.is_dir() and _model_files(repo_dir, sig)):
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            model = HTDemucs(**kwargs)
        training_args = {marker: True, "seed": seed, "format": recipe_format}
        write_model_package(repo_dir, sig, model, training_args)
    write_bag(repo_dir, name, [sig])
    return name, repo_dir


def build_smoke_separator(repo_dir: Path) -> tuple[str, Path]:
    """Write the tiny random HTDemucs into `repo_dir` as a Demucs local model repo.

    Returns ``(model_name, repo_dir)`` for `Separator` / `get_model(name, repo=)`.
    """
    return _build_random_htdemucs(repo_dir, SMOKE_MODEL_NAME, _SMOKE_KWARGS, _SMOKE_SEED, _SMOKE_FORMAT,
                                  "dubflow_smoke")


def build_random_htdemucs(repo_dir: Path) -> tuple[str, Path]:
    """Write the full-size `htdemucs` architecture (`HTDEMUCS_KWARGS`) with random weights into
    `repo_dir` as a Demucs local model repo, for speed and memory measurement: its output is noise.

    Returns ``(model_name, repo_dir)``; ``demucs.separate --repo repo_dir -n model_name`` loads the
    same file.
    """
    return _build_random_htdemucs(repo_dir, RANDOM_HTDEMUCS_NAME, HTDEMUCS_KWARGS, _RANDOM_HTDEMUCS_SEED,
                                  _RANDOM_HTDEMUCS_FORMAT, "dubflow_random_htdemucs")


# Resampling lives in dubflow.media.audio (the conform resamples each soundtrack once, the same way).


# ---------------------------------------------------------------------------------------------
# Separation
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: element-wise array __eq__ cannot make a bool
class Stems:
    dialogue: np.ndarray  # (channels, samples) float32 at 48 kHz, same channel count as the input
    bed: np.ndarray  # mix48 - dialogue, so dialogue + bed == mix48 to float32 precision
    sample_rate: int  # 48000
    dialogue_channels: tuple[int, ...]  # input channels the dialogue was separated from


class ModelLoadError(RuntimeError):
    """A Demucs model could not be loaded (unknown name, bad package, hub unreachable...)."""


def _dialogue_group(channel_layout: str, channels: int) -> tuple[int, ...]:
    known = _LAYOUTS.get(channel_layout)
    if known is not None:
        expected, group = known
        if channels != expected:
            raise ValueError(
                f"channel layout {channel_layout!r} has {expected} channel(s) but the audio has {channels}"
            )
        return group
    if channels <= 2:  # e.g. PyAV's "downmix" or "2 channels": separate the channels as they are
        return tuple(range(channels))
    raise ValueError(
        f"unsupported channel layout {channel_layout!r} ({channels} channels): dubflow separates "
        f"dialogue from {', '.join(SUPPORTED_LAYOUTS)} (5.1 layouts from the centre channel FC); "
        "it will not drop or downmix other multichannel layouts silently"
    )


def _load_demucs(model_name: str, repo: Path | None) -> BagOfModels | torch.nn.Module:
    if repo is not None and not repo.is_dir():
        # demucs' get_model would call sys.exit() through demucs.utils.fatal here.
        raise FileNotFoundError(f"Demucs model folder {repo} does not exist or is not a directory")
    where = f"local repo {repo}" if repo is not None else "the HuggingFace hub / Demucs remote repo"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_model(model_name, repo=repo)
    except SystemExit as exc:  # demucs.utils.fatal, e.g. a diffq-quantized model without diffq
        raise ModelLoadError(f"could not load Demucs model {model_name!r} from {where}") from exc
    except Exception as exc:
        hint = "" if repo is not None else " (offline? pass repo=<folder with .th packages and .yaml bags>)"
        raise ModelLoadError(f"could not load Demucs model {model_name!r} from {where}: {exc}{hint}") from exc


def _repo_fingerprint(repo: Path, model_name: str) -> str:
    """Content identity of the files `model_name` loads from a local repo."""
    digest = hashlib.sha256()
    bag = repo / f"{model_name}.yaml"
    if bag.is_file():
        data = bag.read_bytes()
        digest.update(data)
        sigs = list(yaml.safe_load(data).get("models", []))
    else:
        sigs = [model_name]
    for sig in sigs:
        for file in sorted(_model_files(repo, sig)):
            digest.update(file.name.encode())
            if "-" not in file.stem:  # no checksum in the name: hash the content
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def _segment_seconds(model: BagOfModels | torch.nn.Module) -> float:
    """The longest segment every model of a bag accepts (transformers are fixed to their training length)."""
    models = model.models if isinstance(model, BagOfModels) else [model]
    return min(float(m.segment) for m in models)


@dataclass(eq=False)
class _Stretch:
    """One stretch of one soundtrack's dialogue channels on its way through the model."""

    x: torch.Tensor  # (model channels, n): normalised, at the model rate
    out: torch.Tensor  # (shifts, model channels, n): weighted sum of the segment estimates
    weight: torch.Tensor  # (shifts, n): sum of the segment weights
    pending: int  # segments not estimated yet
    finish: Callable[[torch.Tensor], None]  # takes the (model channels, n) estimate when pending hits 0


@dataclass(eq=False)
class _Job:
    """One soundtrack of a `separate_many` call."""

    mix48: np.ndarray
    private: bool  # mix48 is our own copy: the bed may be computed in place
    group: tuple[int, ...]
    dialogue: np.ndarray


class Separator:
    """A loaded Demucs model plus the dialogue/bed logic. Load once, call `separate` many times."""

    load_count: ClassVar[int] = 0  # incremented on every successful model load (residency checks)
    _count_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_name: str,
        repo: Path | None,
        device: str = "cpu",
        shifts: int = 0,
        segment: float | None = None,
        *,
        overlap: float = 0.25,
        chunk_seconds: float = 60.0,
        batch_size: int = 4,
        dialogue_source: str | None = None,
    ) -> None:
        """`batch_size` is the number of model-length segments per model call, drawn from every
        soundtrack of a `separate_many` call; `dialogue_source` overrides the choice among
        `DIALOGUE_SOURCES`."""
        if shifts < 0:
            raise ValueError(f"shifts must be >= 0, got {shifts}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if chunk_seconds < 4 * _CROSSFADE_SECONDS:
            raise ValueError(f"chunk_seconds must be >= {4 * _CROSSFADE_SECONDS}, got {chunk_seconds}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_name = model_name
        self.repo = Path(repo) if repo is not None else None
        self.device = str(device)
        self.shifts = int(shifts)
        self.overlap = float(overlap)
        self.chunk_seconds = float(chunk_seconds)
        self.batch_size = int(batch_size)

        model = _load_demucs(model_name, self.repo)
        if dialogue_source is None:
            dialogue_source = next((name for name in DIALOGUE_SOURCES if name in model.sources), None)
            if dialogue_source is None:
                raise ModelLoadError(
                    f"Demucs model {model_name!r} has no dialogue source: its sources are {model.sources}, "
                    f"dubflow looks for one of {', '.join(DIALOGUE_SOURCES)} (or pass dialogue_source=)"
                )
        elif dialogue_source not in model.sources:
            raise ModelLoadError(f"Demucs model {model_name!r} has no source {dialogue_source!r}: {model.sources}")
        if model.audio_channels not in (1, 2):
            raise ModelLoadError(f"Demucs model {model_name!r} has {model.audio_channels} audio channels")
        max_segment = _segment_seconds(model)
        if segment is not None and not 0 < segment <= max_segment:
            # Transformer models cannot run longer segments than they were trained on.
            raise ValueError(f"segment must be in (0, {max_segment}] s for {model_name!r}, got {segment}")
        self.segment = segment
        self.model = model.to(self.device).eval()
        self.samplerate: int = int(model.samplerate)
        self.sources: list[str] = list(model.sources)
        self.dialogue_source = dialogue_source
        self._dialogue_index = self.sources.index(dialogue_source)

        self._segment_length = int((segment or max_segment) * self.samplerate)
        self._stride = max(1, int((1 - self.overlap) * self._segment_length))
        half = self._segment_length // 2
        # Demucs' own overlap-add weights: a triangle peaking mid-segment, never zero.
        triangle = torch.cat([torch.arange(1, half + 1), torch.arange(self._segment_length - half, 0, -1)]).float()
        self._weight = triangle / triangle.max()
        max_shift = int(_MAX_SHIFT_SECONDS * self.samplerate)
        self._delays = [((2 * i + 1) * max_shift) // (2 * self.shifts) for i in range(self.shifts)] or [0]

        self._lock = threading.Lock()  # one inference at a time per resident model
        fingerprint = f"@{_repo_fingerprint(self.repo, model_name)}" if self.repo is not None else ""
        self.model_identity = f"demucs=={demucs.__version__}:{model_name}{fingerprint}"
        with Separator._count_lock:
            Separator.load_count += 1

    @property
    def params(self) -> dict:
        """Parameters that change the output; part of a content-addressed cache key."""
        return {
            "model": self.model_identity,
            "shifts": self.shifts,
            "segment": self.segment,
            "overlap": self.overlap,
            "chunk_seconds": self.chunk_seconds,
            "dialogue_source": self.dialogue_source,
        }

    def separate(self, audio: np.ndarray, sample_rate: int, channel_layout: str) -> Stems:
        """Split (channels, samples) float audio at any rate into 48 kHz dialogue and bed."""
        return self.separate_many([(audio, sample_rate, channel_layout)])[0]

    def separate_many(self, soundtracks: Sequence[tuple[np.ndarray, int, str]]) -> list[Stems]:
        """`separate` for several (audio, sample_rate, channel_layout) soundtracks, sharing model calls.

        Each result equals what `separate` gives for that soundtrack alone, to float rounding.
        """
        jobs = []
        for number, (audio, sample_rate, channel_layout) in enumerate(soundtracks, start=1):
            try:
                jobs.append(self._job(audio, sample_rate, channel_layout))
            except ValueError as exc:
                if len(soundtracks) == 1:
                    raise
                raise ValueError(f"soundtrack {number} of {len(soundtracks)}: {exc}") from exc
        with self._lock, torch.inference_mode():
            batch: list[tuple[_Stretch, int, int]] = []
            for job in jobs:
                for stretch in self._stretches(job):
                    for segment in self._segments(stretch):
                        batch.append(segment)
                        if len(batch) == self.batch_size:
                            self._estimate(batch)
                            batch = []
            if batch:
                self._estimate(batch)
        stems = []
        for job in jobs:
            if job.private:
                bed = job.mix48
                bed -= job.dialogue
            else:
                bed = job.mix48 - job.dialogue
            stems.append(Stems(job.dialogue, bed, DELIVERY_SAMPLE_RATE, job.group))
        return stems

    # -- internals ------------------------------------------------------------------------------

    def _job(self, audio: np.ndarray, sample_rate: int, channel_layout: str) -> _Job:
        audio = np.asarray(audio)
        if audio.ndim != 2 or audio.shape[0] < 1:
            raise ValueError(f"audio must be (channels, samples), got shape {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise ValueError(f"audio must be floating point (-1..1), got {audio.dtype}")
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"invalid sample rate {sample_rate!r}")
        group = _dialogue_group(channel_layout, audio.shape[0])
        assert list(group) == list(range(group[0], group[-1] + 1)), group
        if not np.isfinite(audio).all():
            raise ValueError("audio contains NaN or infinite samples")
        mix48 = resample_to_delivery(audio, int(sample_rate))
        private = mix48 is not audio and not np.shares_memory(mix48, audio)
        return _Job(mix48, private, group, np.zeros_like(mix48))

    def _stretches(self, job: _Job) -> Iterator[_Stretch]:
        """The stretches of one soundtrack, made lazily so a long one never is all in memory at once;
        each adds its crossfaded estimate into `job.dialogue` when its last segment is done."""
        rows = slice(job.group[0], job.group[-1] + 1)
        source = job.mix48[rows]
        total = source.shape[1]
        if total == 0:
            return
        mean, std = _ref_mean_std(source)
        hop = int(round(self.chunk_seconds * DELIVERY_SAMPLE_RATE))
        fade = int(round(_CROSSFADE_SECONDS * DELIVERY_SAMPLE_RATE))
        context = int(round(_CONTEXT_SECONDS * DELIVERY_SAMPLE_RATE))
        ramp = ((np.arange(fade, dtype=np.float64) + 0.5) / fade).astype(np.float32)

        for start in range(0, total, hop):
            last = start + hop >= total
            end = total if last else min(start + hop + fade, total)
            lo, hi = max(0, start - context), min(total, end + context)

            def finish(estimate: torch.Tensor, start: int = start, end: int = end, lo: int = lo, hi: int = hi,
                       last: bool = last) -> None:
                dialogue = self._to_delivery(estimate, mean, std, hi - lo, source.shape[0])[:, start - lo:end - lo]
                if start > 0:  # fade in over the previous stretch's fade-out
                    n = min(fade, end - start)
                    dialogue[:, :n] *= ramp[:n]
                if not last:  # fade out over [start + hop, end)
                    dialogue[:, hop:] *= 1.0 - ramp[:end - (start + hop)]
                job.dialogue[rows, start:end] += dialogue

            x = self._to_model(source[:, lo:hi], mean, std)
            pending = sum(len(range(-delay, x.shape[-1], self._stride)) for delay in self._delays)
            yield _Stretch(
                x=x,
                out=torch.zeros((len(self._delays), *x.shape)),
                weight=torch.zeros((len(self._delays), x.shape[-1])),
                pending=pending,
                finish=finish,
            )

    def _segments(self, stretch: _Stretch) -> Iterator[tuple[_Stretch, int, int]]:
        """(stretch, shift, start) of every segment; a shift by `delay` starts the cut `delay` samples
        before the stretch, so the first segment of that shift begins with silence."""
        for shift, delay in enumerate(self._delays):
            for start in range(-delay, stretch.x.shape[-1], self._stride):
                yield stretch, shift, start

    def _estimate(self, batch: list[tuple[_Stretch, int, int]]) -> None:
        """Run one model call on a batch of segments and overlap-add each result into its stretch."""
        length = self._segment_length
        segments = []
        for stretch, _, start in batch:
            lo, hi = max(start, 0), min(start + length, stretch.x.shape[-1])
            segments.append(torch.nn.functional.pad(stretch.x[:, lo:hi], (lo - start, start + length - hi)))
        estimates = apply_model(self.model, torch.stack(segments), shifts=0, split=False, device=self.device)
        estimates = estimates[:, self._dialogue_index].cpu()
        for (stretch, shift, start), estimate in zip(batch, estimates):
            lo, hi = max(start, 0), min(start + length, stretch.x.shape[-1])
            weight = self._weight[lo - start:hi - start]
            stretch.out[shift, :, lo:hi] += weight * estimate[:, lo - start:hi - start]
            stretch.weight[shift, lo:hi] += weight
            stretch.pending -= 1
            if stretch.pending == 0:
                stretch.finish((stretch.out / stretch.weight[:, None]).mean(dim=0))

    def _to_model(self, segment48: np.ndarray, mean: float, std: float) -> torch.Tensor:
        """A (k, L) 48 kHz excerpt as the model takes it: its channel count, its rate, normalised."""
        k, length = segment48.shape
        x = torch.from_numpy(np.ascontiguousarray(segment48))
        channels = self.model.audio_channels
        if k == 1 and channels == 2:
            x = x.expand(2, length)
        elif k == 2 and channels == 1:
            x = x.mean(0, keepdim=True)
        # full=True keeps ceil(L * 44100 / 48000) samples, so the way back can return exactly L.
        x = resample(x, DELIVERY_SAMPLE_RATE, self.samplerate, full=True)
        return (x - mean) / std  # the normalisation demucs.api.Separator applies around apply_model

    def _to_delivery(self, estimate: torch.Tensor, mean: float, std: float, length: int, k: int) -> np.ndarray:
        """A model-rate estimate back to (k, length) float32 at 48 kHz, un-normalised."""
        dialogue = resample(estimate * std + mean, self.samplerate, DELIVERY_SAMPLE_RATE, output_length=length)
        if k == 1 and dialogue.shape[0] == 2:
            dialogue = dialogue.mean(0, keepdim=True)
        elif k == 2 and dialogue.shape[0] == 1:
            dialogue = dialogue.expand(2, length)
        return dialogue.numpy().astype(np.float32, copy=True)


def _ref_mean_std(source: np.ndarray, block: int = 1 << 22) -> tuple[float, float]:
    """Mean and (unbiased) std of the channel-mean of `source`, as demucs.api computes its `ref`,
    accumulated blockwise in float64 so that long inputs need no full-length temporaries."""
    total = source.shape[1]
    acc = acc_sq = 0.0
    for s in range(0, total, block):
        ref = source[:, s:s + block].mean(axis=0, dtype=np.float64)
        acc += float(ref.sum())
        acc_sq += float(np.dot(ref, ref))
    mean = acc / total
    var = max(acc_sq - total * mean * mean, 0.0) / max(total - 1, 1)
    return mean, float(np.sqrt(var)) + 1e-8


# ---------------------------------------------------------------------------------------------
# Residency
# ---------------------------------------------------------------------------------------------

def get_resident_separator(model_name: str, repo: Path | None, device: str = "cpu", shifts: int = 0) -> Separator:
    """The process-wide Separator for (model, repo, device, shifts), loaded on first use."""
    key = ("demucs", model_name, str(Path(repo).resolve()) if repo is not None else None, str(device), int(shifts))
    return resident(key, lambda: Separator(model_name, repo, device=device, shifts=shifts))


@dataclass(frozen=True)
class SeparatorSpec:
    """Which Demucs model separates and how it runs; every stage that separates gets the run's one."""

    model_name: str
    repo: Path | None = None  # a local Demucs model folder; None = Demucs' own hub cache
    device: str = "cpu"
    shifts: int = 0

    def resident(self, device: str | None = None) -> Separator:
        """The process's instance on ``device`` (default: the spec's), loaded on first use."""
        return get_resident_separator(self.model_name, self.repo, device or self.device, self.shifts)

    @contextmanager
    def leased(self) -> Iterator[Separator]:
        """The resident instance on a leased device of the spec's kind, held for the block: on a GPU
        it never runs beside another model stage (`dubflow.models.devices`)."""
        with lease_device(self.device) as device:
            yield self.resident(device)


def clear_resident_separators() -> None:
    """Forget every resident Separator (frees their memory once no caller holds them)."""
    forget(lambda key: key[0] == "demucs")
