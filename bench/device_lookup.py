"""The cost of asking diffusers for a model's device, once per text-encoder tensor, on the full-size LTX-2.3;
and of asking the pipeline for its execution device, which a take's sampling did six times.

No GPU needed: the components are built on the ``meta`` device (shapes only), so the figure is pure
Python. ``LipDubModel.onload_text_encoder`` checks each of Gemma's tensors against the model's device
before moving it to the GPU. diffusers' ``ModelMixin.device`` walks every submodule of the model it
is asked about (looking for a group-offloading hook) before reading a parameter's device; LTX-2.3's
transformer has about 4,000 submodules. Timed: the check loop as dubflow runs it (device read once,
at construction) and the same loop asking the transformer for its device at every tensor (how it
ran before).

    python bench/device_lookup.py
"""

from __future__ import annotations

import time

from diffusers import FlowMatchEulerDiscreteScheduler

from dubflow.models.lipdub import LipDubModel, _named_tensors
from dubflow.models.lipdub_pipeline import LTX2LipDubPipeline
from dubflow.models.ltx2_architectures import LTX_2_3, build_components_on_meta, build_tokenizer


def main() -> None:
    components = build_components_on_meta(LTX_2_3)
    pipe = LTX2LipDubPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), tokenizer=build_tokenizer(1024),
                              **components)
    model = LipDubModel(pipe, reference_downscale_factor=1, identity="meta")
    tensors = _named_tensors(pipe.text_encoder)
    start = time.perf_counter()
    model.onload_text_encoder()  # meta tensors on a meta model: the checks run, nothing moves
    now = time.perf_counter() - start
    start = time.perf_counter()
    for _, tensor in tensors:
        tensor.device != pipe.transformer.device  # noqa: B015 - the lookup is what is timed
    before = time.perf_counter() - start
    repeats = 20
    start = time.perf_counter()
    for _ in range(repeats):
        pipe._execution_device  # noqa: B018 - the lookup is what is timed
    execution_device = (time.perf_counter() - start) / repeats
    modules = sum(1 for _ in pipe.transformer.modules())
    print(f"transformer submodules {modules:,}; text encoder tensors {len(tensors):,}")
    print(f"check loop, device read once: {now * 1e3:.1f} ms; asking the transformer per tensor: {before:.2f} s "
          f"({before / len(tensors) * 1e3:.1f} ms a lookup)")
    # A take's sampling asked for it 6 times (its clock, 3 noise draws, 2 denoising loops); now once.
    print(f"pipeline._execution_device: {execution_device * 1e3:.1f} ms a lookup; a take's 6 lookups "
          f"{6 * execution_device * 1e3:.0f} ms, now 1: {execution_device * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
