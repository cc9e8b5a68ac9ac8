from __future__ import annotations

import pytest
import torch

from dubflow.models.ltx2_architectures import (
    COMPONENT_NAMES,
    LTX_2_3,
    SMOKE,
    build_components,
    build_tokenizer,
    parameter_counts,
)

SEED = 1234


@pytest.fixture(scope="module")
def smoke() -> dict:
    return build_components(SMOKE, "cpu", torch.float32, SEED)


def _weights(components: dict) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": tensor
        for name in COMPONENT_NAMES
        for key, tensor in components[name].state_dict().items()
    }


def test_smoke_components_make_an_in_context_pipeline(smoke: dict) -> None:
    from diffusers import LTX2InContextPipeline
    from diffusers.pipelines.ltx2 import LTX2LatentUpsamplerModel

    pipe = LTX2InContextPipeline(**{k: v for k, v in smoke.items() if k != "latent_upsampler"})

    assert isinstance(smoke["latent_upsampler"], LTX2LatentUpsamplerModel)
    assert pipe.vae_spatial_compression_ratio == 32 and pipe.vae_temporal_compression_ratio == 8
    assert pipe.tokenizer.model_max_length == SMOKE.tokenizer_window
    assert all(not smoke[name].training for name in COMPONENT_NAMES)


def test_smoke_upsampler_doubles_height_and_width(smoke: dict) -> None:
    latent = torch.randn(1, SMOKE.vae["latent_channels"], 2, 3, 5)
    with torch.no_grad():
        upsampled = smoke["latent_upsampler"](latent)
    assert upsampled.shape == (1, SMOKE.vae["latent_channels"], 2, 6, 10)


def test_build_is_deterministic_per_seed_and_leaves_the_global_rng_alone(smoke: dict) -> None:
    state = torch.random.get_rng_state()
    again = _weights(build_components(SMOKE, "cpu", torch.float32, SEED))
    assert torch.equal(torch.random.get_rng_state(), state)

    first = _weights(smoke)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[key], again[key]) for key in first)
    other = _weights(build_components(SMOKE, "cpu", torch.float32, SEED + 1))
    assert not torch.equal(first["transformer.proj_in.weight"], other["transformer.proj_in.weight"])


def test_build_creates_weights_in_the_requested_dtype() -> None:
    components = build_components(SMOKE, "cpu", torch.bfloat16, SEED)
    assert torch.get_default_dtype() == torch.float32
    for name in COMPONENT_NAMES:
        assert {p.dtype for p in components[name].parameters()} == {torch.bfloat16}, name


def test_tokenizer_covers_any_script_within_both_vocabularies() -> None:
    tokenizer = build_tokenizer(SMOKE.tokenizer_window)
    ids = tokenizer('Un homme dit : « Привет, 世界 »')["input_ids"]

    assert tokenizer.unk_token_id not in ids  # byte fallback, never <unk>
    assert len(tokenizer) == SMOKE.text_encoder["text_config"]["vocab_size"]
    assert max(ids) < LTX_2_3.text_encoder["text_config"]["vocab_size"]
    # Image tokens: Gemma's real ids for LTX-2.3; past the tokenizer's ids for the smoke model.
    for key in ("boi_token_index", "eoi_token_index", "image_token_index"):
        assert LTX_2_3.text_encoder[key] < LTX_2_3.text_encoder["text_config"]["vocab_size"]
        assert SMOKE.text_encoder[key] >= len(tokenizer)


def test_ltx_2_3_parameter_counts_are_those_of_the_22b_model() -> None:
    counts = parameter_counts(LTX_2_3)

    billions = {name: count / 1e9 for name, count in counts.items()}
    assert 18.0 < billions["transformer"] < 20.0
    assert 3.0 < billions["connectors"] < 3.4
    assert 21.5 < billions["transformer"] + billions["connectors"] < 22.5  # "LTX-2.3 22B"
    assert 11.5 < billions["text_encoder"] < 12.5  # Gemma 3 12B, vision tower included
    assert 0.3 < billions["latent_upsampler"] < 0.7
    assert all(count > 0 for count in counts.values())


def test_every_ltx_2_3_component_builds_on_meta() -> None:
    components = build_components(LTX_2_3, "meta", torch.bfloat16, SEED)

    for name in COMPONENT_NAMES:
        tensors = [*components[name].parameters(), *components[name].buffers()]
        assert {t.device.type for t in tensors} == {"meta"}, name
        assert {p.dtype for p in components[name].parameters()} == {torch.bfloat16}, name
    assert components["vocoder"].config.output_sampling_rate == 48_000
    assert components["tokenizer"].model_max_length == 1024
