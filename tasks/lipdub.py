"""Stage 2, per (shot, language): re-lip the picture and generate the new line in the speaker's voice."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.timeout import timeout

from dubflow.manifests.schema import ManifestRow, language_name
from dubflow.models.devices import lease_device
from dubflow.models.lipdub import LipDubOutput, SourceShot, build_prompt
from dubflow.models.ltx2_architectures import LTX_2_3
from dubflow.models.profiles import RANDOM_WEIGHTS_SEED, ModelProfile, cache_dir, load_lipdub
from dubflow.models.weights import weights_identity
from dubflow.media.io import AudioTrack, MediaError, audio_layout_name, read_frames, write_video, write_wav
from dubflow.tasks.conform import ConformedShot, conform_key
from dubflow.tasks.retries import LIPDUB_TIMEOUT_ENV, STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.validate import Shot

logger = logging.getLogger(__name__)

LIPDUB_VERSION = 6  # bump when the stage's output changes for the same inputs (3: upstream DubIt's algorithm; 4: the soundtrack conformed to the picture; 5: the vocoder clamps before bandwidth extension, as upstream; 6: GPU decode tiles as upstream's)
WEIGHT_HASHES_FILE = "weight-hashes.json"  # per-file content hashes of the LTX weights, in the cache folder
# After a GPU out-of-memory error the take is tried once more in windows of this many frames
# (8k+1; about 5 s at 24 fps): each pass holds fewer tokens, so its activations need less memory.
LOW_MEMORY_WINDOW_FRAMES = 121

# FFmpeg channel order puts the front centre third (FL FR FC ...): where film dialogue lives.
_CENTRE_CHANNEL = 2


@dataclass(frozen=True)
class DubbedTake:
    shot_id: str
    language: str
    prompt: str
    seed: int
    picture: Path  # lossless picture master (PNG in MOV): the source's frame count, rate and size
    audio: Path  # the model's generated audio at the model's rate
    memory_mode: str = "standard"  # or "low-memory": the take was redone after running out of GPU memory


def pair_seed(shot: Shot, language: str, take: int = 1) -> int:
    """Stable per (picture content, language, take): a re-run regenerates the same take, the next
    take number draws another. Take 1 keeps the seed dubflow always used, so stored takes stay valid."""
    name = f"{shot.sha256}/{language}" if take == 1 else f"{shot.sha256}/{language}/take{take}"
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def row_prompt(row: ManifestRow) -> str:
    return build_prompt(row.speaker, language_name(row.language), row.script)


def voice_reference(audio: np.ndarray, layout: str) -> np.ndarray:
    """The shot's sound as LipDub's voice reference: mono or stereo as it is, the centre of a 5.1."""
    if audio.shape[0] <= 2:
        return audio
    if layout.startswith("5.1"):
        return audio[_CENTRE_CHANNEL : _CENTRE_CHANNEL + 1]
    raise MediaError(f"no voice reference rule for a {layout} soundtrack; deliver stereo or 5.1")


def lipdub_identity(profile: ModelProfile) -> dict:
    """The LipDub model by what makes it what it is, read from the profile without loading the model:
    every weight file, the single-file checkpoint and the LoRA by content (``weights_identity``: hashes
    kept per file version in the cache folder, so only a replaced file is hashed again), or the random
    architecture and its seed. No names or paths: a file replaced under the same name changes the key."""
    if profile.lipdub_weights is None:
        return {"architecture": LTX_2_3.name, "random_seed": RANDOM_WEIGHTS_SEED}
    return weights_identity(profile.lipdub_weights, profile.lipdub_lora, profile.lipdub_checkpoint,
                            cache_dir() / WEIGHT_HASHES_FILE, profile.lipdub_upsampler)


def lipdub_key(shot: Shot, row: ManifestRow, profile: ModelProfile, model_identity: dict) -> str:
    """`model_identity`: `lipdub_identity(profile)`, computed once per run (it hashes the weights)."""
    return stage_key(
        # The shot id too: it is in the result and in every downstream file name.
        "lipdub", LIPDUB_VERSION, shot_id=shot.shot_id, picture=shot.sha256, conform=conform_key(shot),
        script=row.script, speaker=row.speaker, language=row.language, seed=pair_seed(shot, row.language, row.take),
        model=model_identity,
        # How the model runs changes its numbers: device (and with it the dtype), kernels, height cap.
        device=profile.device, kernels=asdict(profile.kernels), max_height=profile.max_height,
    )


class LipDubTimeoutError(TimeoutError):
    """A take ran past its time limit: the call is taken to be hung, and its pair fails."""


def lipdub_pair(
    shot: Shot,
    conformed: ConformedShot,
    row: ManifestRow,
    shot_rows: list[ManifestRow],
    profile: ModelProfile,
    out_dir: Path,
    timeout_s: float | None = None,
) -> DubbedTake:
    """``conformed``: the shot's soundtrack, whose voice is the reference. ``shot_rows`` are all of the
    shot's rows: their prompts are text-encoded in one batch, once.
    ``timeout_s`` bounds the model's work on the leased device (not the wait for the lease, nor the
    model's first load): past it the take is interrupted and the device given back."""
    soundtrack = conformed.read()
    source = SourceShot(read_frames(shot.source, shot.media.rotation), shot.media.fps,
                        voice_reference(soundtrack.samples, soundtrack.layout), soundtrack.sample_rate)
    prompt, seed = row_prompt(row), pair_seed(shot, row.language, row.take)
    # The device is held only for the model's work: reading and writing media leave it to the next take.
    with lease_device(profile.device, affinity=shot.sha256) as device:
        model = load_lipdub(profile, device)

        def dub(window_frames: int | None) -> LipDubOutput:
            # Keyed by picture content and model: every language of the shot reuses one reference encoding.
            prepared = model.prepare_shot(source, key=f"{shot.sha256}:{model.identity}",
                                          max_height=profile.max_height, window_frames=window_frames)
            model.embed_prompts([row_prompt(r) for r in shot_rows])
            return model.dub(prepared, prompt, seed)

        try:
            # Interrupts the take between two Python steps (every sampling step is many): a call
            # stuck inside the driver is beyond any in-process bound (see deploy/README.md).
            with timeout(timeout_s):
                try:
                    output, memory_mode = dub(None), "standard"
                except torch.OutOfMemoryError:
                    logger.warning("%s/%s: out of GPU memory on %s; retrying once with the text encoder off the GPU "
                                   "and %d-frame windows", shot.shot_id, row.language, device, LOW_MEMORY_WINDOW_FRAMES)
                    model.release_memory()
                    output, memory_mode = dub(LOW_MEMORY_WINDOW_FRAMES), "low-memory"
        except TimeoutError:
            raise LipDubTimeoutError(
                f"the take did not finish within {timeout_s:g} s on {device} and was stopped; if takes this long "
                f"are expected, raise {LIPDUB_TIMEOUT_ENV}"
            ) from None

    pair_dir = Path(out_dir)
    pair_dir.mkdir(parents=True, exist_ok=True)
    # Lossless, so the review copy and the ProRes mezzanine are each one generation from the model.
    picture = write_video(pair_dir / "picture.mov", output.frames, shot.media.fps, codec="png")
    generated = write_wav(
        pair_dir / "generated.wav",
        AudioTrack(output.audio, output.sample_rate, audio_layout_name(output.audio.shape[0])),
    )
    return DubbedTake(shot.shot_id, row.language, prompt, seed, picture, generated, memory_mode)


@task(name="lipdub", cache_policy=NO_CACHE, task_run_name="lipdub {row.shot_id} {row.language}",
      **STAGE_RETRIES)
def lipdub_pair_task(
    shot: Shot, conformed: ConformedShot, row: ManifestRow, shot_rows: list[ManifestRow], profile: ModelProfile,
    cache: StageCache, key: str, timeout_s: float,
) -> DubbedTake:
    return cache.result("lipdub", key, DubbedTake,
                        lambda out_dir: lipdub_pair(shot, conformed, row, shot_rows, profile, out_dir, timeout_s))
