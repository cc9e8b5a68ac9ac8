"""dubflow's LipDub versus the plain diffusers route, side by side in one process: time per clip, agreement.

Expected GPU time (one H100, full-size LTX-2.3, bf16, 1280x768x121, --repeats 3): about 5-6 min — ~1 min
process start and imports, 6 s model build, ~80 s per repeat (both routes), ~20 s for the agreement check.

    python bench/lipdub_plain_route.py [--architecture ltx-2.3|smoke] [--size 1280x768] [--frames 121]
                                       [--repeats 3] [--attention B] [--compile] [--skip-default-route]
                                       [--json out.json]

With --compile add about a minute for compiling, and a minute a repeat for dubflow-default.

One set of random weights (``build_random_model``: the full-size LTX-2.3 architecture built on the GPU,
or the tiny ``smoke`` one, which also runs on a CPU), one synthetic shot (``synthetic_shot`` from
bench/lipdub_gpu.py: random pixels, a voiced-noise stereo track, 24 fps), one French prompt, seed 1.

The routes
----------
dubflow: ``LipDubModel.embed_prompts`` + ``prepare_shot`` + ``dub`` (video and voice references, two
distilled stages; models/lipdub_pipeline.py).

plain: what a user who knows the distilled model writes with diffusers 0.42.1 alone, following the
two-stage "distilled checkpoint" example of diffusers' LTX-2 docs with the in-context (IC-LoRA)
pipeline. Both pipelines are built from the model pipeline's own component objects
(``model.pipe.components``), so no weight exists twice in memory; the IC-LoRA is already fused into
that shared transformer, so the plain route runs fused weights too (unfused peft adapters would cost
it extra time per forward).

1. Text: ``LTX2InContextPipeline.encode_prompt`` once per process, before any clip (Gemma is still
   on the GPU from the build), passed to both stages of every plain clip as ``prompt_embeds`` (the docs
   pass the prompt string to each stage, which runs Gemma twice); before each plain clip Gemma is
   moved to host memory, as its user would drop it (the plain route's take does not fit beside it on
   an 80 GB card); dubflow's clips keep it on the GPU as dubflow does. Under ``torch.inference_mode()``, as diffusers' own ``__call__`` runs it:
   called bare, ``encode_prompt`` records Gemma's activations for autograd and ran out of memory on the
   H100 (77 GiB allocated). Text encoding is the same Gemma call on both routes, so the plain clips
   carry none and the routes are compared on ``generate`` (clip minus text encode).
2. Stage 1: ``LTX2InContextPipeline(reference_conditions=[LTX2ReferenceCondition(frames)], height/2,
   width/2, sigmas=DISTILLED_SIGMA_VALUES, output_type="latent")`` — 8 steps. The reference is the
   shot's frames as PIL images (what ``diffusers.utils.load_video`` returns), which the pipeline
   resizes (PIL bilinear) and VAE-encodes inside every call.
3. ``LTX2LatentUpsamplePipeline(latents=..., output_type="latent")``: the x2 spatial upsampler.
4. Stage 2: the same pipeline at full size with ``latents`` = the upsampled latent, ``audio_latents`` =
   stage 1's, ``sigmas=STAGE_2_DISTILLED_SIGMA_VALUES`` (3 steps), ``noise_scale=0.909375`` (re-noised
   to the first stage-2 sigma, as the docs' example does), the reference again at full size,
   ``output_type="np"`` (decodes video and audio). The sigmas equal dubflow's (asserted below).

No guidance of any kind, every scale passed (``NO_GUIDANCE``): the in-context pipeline defaults to
``guidance_scale=3``, ``audio_guidance_scale=7``, ``stg_scale=1`` and ``modality_scale=3``, so with only
``guidance_scale=1.0`` (all the docs' example sets) it would still run classifier-free guidance (the
batch doubled, kept on by the audio scale), a spatio-temporal-guidance pass and a modality-isolation
pass: 3 transformer calls per step, one at batch 2. An ``audio_*`` scale of 0 falls back to the video
one (``audio or video`` in diffusers), so those are zero too. Without ``sigmas`` it would take its
default 30 steps. The script counts transformer forwards per clip and their largest batch on both
routes: the distilled recipe is 11 forwards (8 + 3) at batch 1.

Differences that remain, on purpose:
- the voice reference: diffusers has no audio reference; dubflow appends the shot's encoded audio in
  stage 1 (126 more audio tokens at 121 frames, 24 fps: a small part of the tokens);
- stage-2 audio: diffusers re-noises stage 1's audio latent and denoises it again with the video;
  dubflow freezes it (timestep 0) and decodes stage 1's audio (the same transformer cost);
- references: dubflow encodes them in ``prepare_shot``, once per shot for all its languages (here
  once per clip, since each clip is timed as a new shot); diffusers re-encodes them inside each call;
- the noise: both draw it from a CPU generator seeded alike, but in different orders and shapes.

Kernels: ``--fp8-weights``/``--attention``/``--compile`` build dubflow's model with those
``Kernels`` (models/kernels.py), as ``$DUBFLOW_*`` set them for the flow. The plain route shares
the transformer, so it always runs under PyTorch's default attention and uncompiled
(``default_kernels``: diffusers' "native" backend, ``torch.compiler.set_stance("force_eager")``);
with kernels other than the defaults, route "dubflow-default" (dubflow on the default kernels) also
runs unless ``--skip-default-route``. fp8 weights would reach the plain route too, so they are refused.

Timing: each route per clip, the device synchronised at every mark. Each repeat runs the routes in
the order above. The first run of each route is reported on its own (the process's very first clip
also makes the text encoder's page-locked host copy; a compiled model compiles in its first runs);
the median of the later runs is the warm figure, and ``plain / <route>`` is the ratio of the warm
medians, for the whole clip and for "generate" (the clip without the text encode, which both routes
do the same way).

Agreement: with the differences above the two full takes are different samples, so they are not
compared. They are compared where the algorithms coincide — stage 1 (8 steps), the x2 upsample and
the decode — given identical inputs:
- dubflow with its voice-reference tokens removed from the prepared shot and stage 2 skipped
  (``stage_2_sigmas=(0.0,)``: no steps, no noise added);
- diffusers given the exact noise dubflow drew (recorded at ``LTX2LipDubPipeline._noise``) as
  ``latents`` / ``audio_latents`` with ``noise_scale=0`` (it adds none of its own), the stage-1
  reference resized as dubflow resizes it (antialiased bilinear, passed as a tensor the pipeline
  leaves at its size), the video decoded by ``LTX2LatentUpsamplePipeline(output_type="np")`` and the
  audio by the audio VAE and vocoder as the pipeline's own decode does.
The relative L2 error of dubflow's frames (uint8) and audio against diffusers' is reported, with the
largest frame difference in 8-bit levels. This checks dubflow's sampling loop, reference tokens,
noise handling, upsampling and decoding against diffusers'. In bf16 expect small non-zero errors:
diffusers' postprocess rescales pixels in the VAE's dtype before they are quantised (about one 8-bit
level), and the two loops round their float32 state to bf16 at slightly different points.

The weights are random: outputs are noise; only time, memory and the agreement mean anything.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, replace
from fractions import Fraction

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import LTX2InContextPipeline
from diffusers.pipelines.ltx2 import LTX2LatentUpsamplePipeline
from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition
from diffusers.pipelines.ltx2.utils import DISTILLED_SIGMA_VALUES, STAGE_2_DISTILLED_SIGMA_VALUES

from dubflow.models.lipdub import LipDubModel, PreparedShot, SourceShot, build_prompt, build_random_model
from dubflow.models.lipdub_pipeline import STAGE_1_SIGMAS, STAGE_2_SIGMAS, LTX2LipDubPipeline, Tokens
from dubflow.models.kernels import Kernels
from dubflow.models.profiles import RANDOM_WEIGHTS_SEED
from lipdub_gpu import ARCHITECTURES, add_kernel_arguments, kernels_from_args, relative_error, synthetic_shot  # bench/lipdub_gpu.py: scripts here run with bench/ on sys.path

FPS = Fraction(24)
SEED = 1
PROMPT = build_prompt("A man in a grey coat", "French", "Bonjour, je suis très heureux de vous revoir ici.")
PROMPT_TOKENS = 1024  # the pipelines' max_sequence_length default (and dubflow's); the smoke tokenizer has 128
# LTX-2, both architectures: two-stage sizes are whole 32-pixel latent cells at half size; frames 8k+1.
SIZE_MULTIPLE, FRAME_MULTIPLE = 64, 8
NO_GUIDANCE = dict(
    guidance_scale=1.0, audio_guidance_scale=1.0, stg_scale=0.0, audio_stg_scale=0.0,
    modality_scale=1.0, audio_modality_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0,
)
# The plain route uses diffusers' own schedule constants; they must be dubflow's steps (final 0 implied).
assert list(STAGE_1_SIGMAS[:-1]) == DISTILLED_SIGMA_VALUES
assert list(STAGE_2_SIGMAS[:-1]) == STAGE_2_DISTILLED_SIGMA_VALUES


class Clock:
    """Seconds between marks, the device synchronised at each so GPU work is counted where it ran."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, timings: dict[str, float], name: str) -> None:
        now = self._now()
        timings[name] = now - self.last
        self.last = now

    def total(self) -> float:
        return self._now() - self.start


class ForwardCounter:
    """Transformer forwards and their largest batch since the last ``take``: the guidance setup at work."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.calls = self.max_batch = 0
        transformer.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        self.max_batch = max(self.max_batch, kwargs["hidden_states"].shape[0])

    def take(self) -> dict[str, int]:
        counts = {"transformer_forwards": self.calls, "max_batch": self.max_batch}
        self.calls = self.max_batch = 0
        return counts


def to_uint8(video: np.ndarray) -> np.ndarray:
    """diffusers' float frames in [0, 1] -> uint8, as its docs' example quantises them."""
    return np.round(video * 255.0).clip(0, 255).astype(np.uint8)


class PlainRoute:
    """diffusers' two-stage route on the model's own component objects: no second copy of any weight."""

    def __init__(self, model: LipDubModel) -> None:
        components = dict(model.pipe.components)
        upsampler = components.pop("latent_upsampler")
        self.model = model
        self.pipe = LTX2InContextPipeline(**components)
        self.upsample = LTX2LatentUpsamplePipeline(vae=components["vae"], latent_upsampler=upsampler)
        for pipe in (self.pipe, self.upsample):
            pipe.set_progress_bar_config(disable=True)

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.onload_text_encoder()
        with torch.inference_mode():
            embeds, mask, _, _ = self.pipe.encode_prompt(
                prompt, do_classifier_free_guidance=False,
                max_sequence_length=min(PROMPT_TOKENS, self.pipe.tokenizer_max_length),
            )
        return embeds, mask

    def generate(
        self, prompt: tuple[torch.Tensor, torch.Tensor], reference: list[PIL.Image.Image], shot: SourceShot,
        clock: Clock, timings: dict[str, float],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1, upsample, stage 2 + decode: ``(frames uint8 (F, H, W, 3), audio (channels, samples))``."""
        frames, height, width = shot.frames.shape[:3]
        common = dict(
            prompt_embeds=prompt[0], prompt_attention_mask=prompt[1], num_frames=frames, frame_rate=float(shot.fps),
            # On the CPU like dubflow's generator, so drawing the noise costs both routes the same.
            generator=torch.Generator("cpu").manual_seed(SEED), return_dict=False, **NO_GUIDANCE,
        )
        video, audio = self.pipe(
            reference_conditions=[LTX2ReferenceCondition(reference)], height=height // 2, width=width // 2,
            sigmas=DISTILLED_SIGMA_VALUES, output_type="latent", **common,
        )
        clock.lap(timings, "stage_1")
        video = self.upsample(
            latents=video, height=height // 2, width=width // 2, num_frames=frames, output_type="latent",
            return_dict=False,
        )[0]
        clock.lap(timings, "upsample")
        video, audio = self.pipe(
            reference_conditions=[LTX2ReferenceCondition(reference)], latents=video, audio_latents=audio,
            height=height, width=width, sigmas=STAGE_2_DISTILLED_SIGMA_VALUES,
            noise_scale=STAGE_2_DISTILLED_SIGMA_VALUES[0], output_type="np", **common,
        )
        result = to_uint8(video[0]), audio[0].float().cpu().numpy()
        clock.lap(timings, "stage_2_and_decode")
        return result

    @torch.inference_mode()
    def stage_1_from_noise(
        self, prompt: tuple[torch.Tensor, torch.Tensor], shot: SourceShot, video_noise: torch.Tensor,
        audio_noise: torch.Tensor,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1 -> upsample -> decode from given packed noise, the reference resized as dubflow does."""
        pipe = self.pipe
        frames, height, width = shot.frames.shape[:3]
        half = (height // 2, width // 2)
        pixels = torch.from_numpy(shot.frames).permute(0, 3, 1, 2).to(pipe._execution_device, torch.float32) / 255.0
        reference = F.interpolate(pixels, size=half, mode="bilinear", antialias=True)  # (F, 3, h, w) in [0, 1]
        # `latents` / `audio_latents` are taken unpacked and de-normalised; noise_scale=0 keeps them as they are.
        cell = pipe.vae_spatial_compression_ratio
        grid = ((frames - 1) // pipe.vae_temporal_compression_ratio + 1, half[0] // cell, half[1] // cell)
        latents = pipe._denormalize_latents(
            pipe._unpack_latents(video_noise, *grid, pipe.transformer_spatial_patch_size,
                                 pipe.transformer_temporal_patch_size),
            pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor,
        )
        audio_latents = pipe._unpack_audio_latents(
            pipe._denormalize_audio_latents(audio_noise, pipe.audio_vae.latents_mean, pipe.audio_vae.latents_std),
            audio_noise.shape[1], num_mel_bins=pipe.audio_mel_bins // pipe.audio_vae_mel_compression_ratio,
        )
        video, audio = pipe(
            prompt_embeds=prompt[0], prompt_attention_mask=prompt[1],
            reference_conditions=[LTX2ReferenceCondition(reference)], height=half[0], width=half[1],
            num_frames=frames, frame_rate=float(shot.fps), sigmas=DISTILLED_SIGMA_VALUES,
            latents=latents, audio_latents=audio_latents, noise_scale=0.0,
            generator=torch.Generator("cpu").manual_seed(SEED), output_type="latent", return_dict=False, **NO_GUIDANCE,
        )
        decoded = self.upsample(
            latents=video, height=half[0], width=half[1], num_frames=frames, output_type="np", return_dict=False
        )[0]
        mel = pipe.audio_vae.decode(audio.to(pipe.audio_vae.dtype), return_dict=False)[0]
        return to_uint8(decoded[0]), pipe.vocoder(mel)[0].float().cpu().numpy()


def run_dubflow(
    model: LipDubModel, shot: SourceShot, device: torch.device
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    timings: dict[str, float] = {}
    model._prompts.clear()  # the text encoder runs every clip, as in bench/lipdub_gpu.py
    clock = Clock(device)
    model.embed_prompts([PROMPT])
    clock.lap(timings, "text_encode")
    prepared = model.prepare_shot(shot)  # no key: encoded every clip
    clock.lap(timings, "reference_encode")
    output = model.dub(prepared, PROMPT, SEED, timings=timings)
    timings["clip"] = clock.total()
    return timings, output.frames, output.audio


def run_plain(
    route: PlainRoute, prompt: tuple[torch.Tensor, torch.Tensor], reference: list[PIL.Image.Image],
    shot: SourceShot, device: torch.device,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    timings: dict[str, float] = {"text_encode": 0.0}  # encoded once per process, before the first clip
    # The plain route's user drops the text encoder after encoding (it would not fit beside its take).
    route.model.offload_text_encoder()
    clock = Clock(device)
    frames, audio = route.generate(prompt, reference, shot, clock, timings)
    timings["clip"] = clock.total()
    return timings, frames, audio


@contextmanager
def recorded_noise(pipe: LTX2LipDubPipeline) -> Iterator[list[torch.Tensor]]:
    """Every noise tensor dubflow's pipeline draws inside the block, in order of drawing."""
    drawn: list[torch.Tensor] = []
    draw = pipe._noise

    def record(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
        noise = draw(shape, generator, device)
        drawn.append(noise.clone())
        return noise

    pipe._noise = record  # an instance attribute shadows the method, for this block only
    try:
        yield drawn
    finally:
        del pipe._noise


def without_voice_reference(prepared: PreparedShot) -> PreparedShot:
    """The prepared shot with zero voice-reference tokens: dubflow then conditions on the picture only."""
    def strip(window):
        audio = window.references.audio
        return replace(window, references=replace(
            window.references, audio=Tokens(audio.latents[:, :0], audio.coords[:, :, :0])
        ))

    return replace(prepared, windows=tuple(strip(window) for window in prepared.windows))


@contextmanager
def default_kernels(model: LipDubModel) -> Iterator[None]:
    """The shared transformer on PyTorch's own attention choice, uncompiled, for the block."""
    transformer = model.pipe.transformer
    # A CPU model runs as built: native attention, uncompiled. On "native" nothing is switched: setting
    # a backend adds an attribute to every attention processor, and the compiled block's guards then
    # fail on its next take (a recompile, seen on the H100 and reproduced on CPU).
    switch = model.device.type == "cuda" and model.kernels.attention != "native"
    if switch:
        transformer.set_attention_backend("native")
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        if switch:
            transformer.set_attention_backend(model.kernels.attention)


def compare_stage_1(
    model: LipDubModel, route: PlainRoute, shot: SourceShot, prompt: tuple[torch.Tensor, torch.Tensor],
    kernels: str,
) -> dict[str, float]:
    """Stage 1 -> upsample -> decode on both routes from identical inputs (see the module docstring),
    dubflow on its model's kernels (``kernels="model"``) or the default ones, diffusers on the default."""
    prepared = without_voice_reference(model.prepare_shot(shot))
    with recorded_noise(model.pipe) as noise, (default_kernels(model) if kernels == "default" else nullcontext()):
        ours = model.dub(prepared, PROMPT, SEED, stage_2_sigmas=(0.0,))
    video_noise, audio_noise = noise[0], noise[1]  # stage 1's video and audio noise, as drawn
    with default_kernels(model):
        frames, audio = route.stage_1_from_noise(prompt, shot, video_noise, audio_noise)
    samples = min(audio.shape[-1], ours.audio.shape[-1])
    return {
        "frames_relative_l2": relative_error(ours.frames, frames),
        "frames_max_abs_levels": int(np.abs(ours.frames.astype(np.int16) - frames).max()),
        "audio_relative_l2": relative_error(ours.audio[:, :samples], audio[:, :samples]),
    }


def device_and_dtype(architecture: str) -> tuple[torch.device, torch.dtype]:
    """bf16 on a GPU; the smoke architecture also runs on a CPU, in float32."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    if architecture != "smoke":
        raise SystemExit("the full-size LTX-2.3 architecture needs a CUDA GPU; on a CPU use --architecture smoke")
    return torch.device("cpu"), torch.float32


def summarise(runs: list[dict[str, float]]) -> dict[str, object]:
    warm = runs[1:] or runs  # one repeat: its only run stands for both
    median = {key: statistics.median(run[key] for run in warm) for key in runs[0]}
    return {"runs": runs, "first": runs[0], "median_warm": median, "warm_runs": len(warm)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="ltx-2.3")
    parser.add_argument("--size", default="1280x768", help="WxH; multiples of 64 (both routes then do the same work)")
    parser.add_argument("--frames", type=int, default=121, help="8k+1")
    parser.add_argument("--repeats", type=int, default=3, help="runs per route; the first is reported apart")
    add_kernel_arguments(parser)
    parser.add_argument("--skip-default-route", action="store_true",
                        help="with kernels other than the defaults, do not also run dubflow on the default ones")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    kernels = kernels_from_args(args)
    if kernels.fp8_weights:
        parser.error("--fp8-weights would give the plain route float8 weights too (one shared transformer)")
    width, height = (int(v) for v in args.size.split("x"))
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE or (args.frames - 1) % FRAME_MULTIPLE:
        # dubflow would pad such a shot and diffusers would not: the routes would not do the same work.
        parser.error(f"--size must be multiples of {SIZE_MULTIPLE} and --frames {FRAME_MULTIPLE}k+1 "
                     "(720p: dubflow generates it at 1280x768, so use --size 1280x768)")
    device, dtype = device_and_dtype(args.architecture)

    build = Clock(device)
    model = build_random_model(ARCHITECTURES[args.architecture], str(device), dtype, RANDOM_WEIGHTS_SEED, kernels)
    build_s = build.total()
    route = PlainRoute(model)
    encode = Clock(device)
    prompt = route.encode_prompt(PROMPT)
    plain_text_encode_s = encode.total()
    counter = ForwardCounter(model.pipe.transformer)
    shot = synthetic_shot(args.frames, width, height, FPS, seed=width)
    reference = [PIL.Image.fromarray(frame) for frame in shot.frames]  # what diffusers.utils.load_video returns
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.architecture} on {label} ({dtype}); torch {torch.__version__}; model built in {build_s:.1f} s; "
          f"shot {width}x{height}x{args.frames} at {FPS} fps; plain route's one text encode {plain_text_encode_s:.1f} s",
          flush=True)

    # "dubflow" runs on the kernels asked for; with any but the defaults, "dubflow-default" runs too.
    names = ["dubflow"] + (["dubflow-default"] if kernels != Kernels() and not args.skip_default_route else []) + [
        "plain"]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in runs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            if name == "dubflow":
                timings, frames, audio = run_dubflow(model, shot, device)
            elif name == "dubflow-default":
                with default_kernels(model):
                    timings, frames, audio = run_dubflow(model, shot, device)
            else:
                with default_kernels(model):
                    timings, frames, audio = run_plain(route, prompt, reference, shot, device)
            assert frames.shape == shot.frames.shape and audio.ndim == 2, (name, frames.shape, audio.shape)
            timings["generate"] = timings["clip"] - timings["text_encode"]
            timings.update(counter.take())
            if device.type == "cuda":
                timings["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            runs[name].append(timings)
            print(f"run {repeat + 1} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()), flush=True)

    routes = {name: summarise(route_runs) for name, route_runs in runs.items()}
    plain = routes["plain"]["median_warm"]
    ratios = {name: {key: plain[key] / routes[name]["median_warm"][key] for key in ("clip", "generate")}
              for name in names if name != "plain"}
    print("\nagreement check: stage 1 -> upsample -> decode, same noise, picture reference only ...", flush=True)
    agreement = {"dubflow": compare_stage_1(model, route, shot, prompt, kernels="model")}
    if "dubflow-default" in names:
        agreement["dubflow-default"] = compare_stage_1(model, route, shot, prompt, kernels="default")

    print("\n| route | first clip s | warm clip s | warm generate s | warm stages s | forwards (max batch) "
          "| peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, summary in routes.items():
        m = summary["median_warm"]
        stages = ", ".join(f"{k} {v:.2f}" for k, v in m.items()
                           if k not in ("clip", "generate", "transformer_forwards", "max_batch", "peak_gib"))
        print(f"| {name} | {summary['first']['clip']:.2f} | {m['clip']:.2f} | {m['generate']:.2f} | {stages} | "
              f"{m['transformer_forwards']:.0f} ({m['max_batch']:.0f}) | {m.get('peak_gib', float('nan')):.1f} |")
    print(f"\ndubflow's kernels: {kernels}")
    for name, ratio in ratios.items():
        print(f"plain / {name} (median of {routes['plain']['warm_runs']} warm runs): clip {ratio['clip']:.3f}, "
              f"generate {ratio['generate']:.3f}")
    for name, errors in agreement.items():
        print(f"agreement ({name} vs diffusers, stage 1 -> upsample -> decode, voice reference off): relative L2 "
              f"frames {errors['frames_relative_l2']:.2e} (max {errors['frames_max_abs_levels']} levels), "
              f"audio {errors['audio_relative_l2']:.2e}")
    if args.json:
        results = {
            "device": label, "dtype": str(dtype), "torch": torch.__version__, "architecture": args.architecture,
            "size": args.size, "frames": args.frames, "fps": str(FPS), "build_s": build_s,
            "kernels": asdict(kernels), "plain_text_encode_once_s": plain_text_encode_s,
            "routes": routes, "plain_over": ratios, "agreement_stage_1": agreement,
        }
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
