"""`dubflow models check` / `download`: a weights directory is verified from configs and headers alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dubflow.flows.cli import main
from dubflow.models.lipdub import build_smoke_weights
from dubflow.models.ltx_files import DUBIT_LORA_FILE, LIPDUB_LORA_FILE, LORA_REPO
from dubflow.models.weights import WeightsDownloadError, check_weights, download_weights, weights_identity


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_smoke_weights(tmp_path_factory.mktemp("weights") / "ltx-2")


@pytest.fixture
def copy(weights: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(weights, tmp_path / "copy"))


def _rewrite(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def test_smoke_weights_pass_every_check(weights: Path, capsys) -> None:
    report = check_weights(weights)
    assert report.ok, report.render()
    checked = "\n".join(report.checked)
    for name in ("transformer", "vae", "audio_vae", "connectors", "vocoder", "latent_upsampler", "IC-LoRA"):
        assert name in checked
    assert main(["models", "check", str(weights)]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_a_tensor_of_the_wrong_shape_is_named(copy: Path, capsys) -> None:
    file = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    _rewrite(file, lambda t: t.__setitem__("proj_in.weight", torch.zeros(3, 3)))
    report = check_weights(copy)
    assert not report.ok
    assert any("proj_in.weight has shape (3, 3)" in p for p in report.problems), report.problems
    assert main(["models", "check", str(copy)]) == 1
    assert "proj_in.weight" in capsys.readouterr().err


def test_missing_tensors_components_and_lora_are_reported(copy: Path) -> None:
    _rewrite(copy / "vae" / "diffusion_pytorch_model.safetensors", lambda t: t.pop(next(iter(t))))
    shutil.rmtree(copy / "latent_upsampler")
    (copy / LIPDUB_LORA_FILE).unlink()
    problems = "\n".join(check_weights(copy).problems)
    assert "vae: 1 tensor(s) missing from the files" in problems
    assert "latent_upsampler/ missing" in problems
    assert "IC-LoRA" in problems and "gated" in problems


def test_lora_keys_that_match_no_module_are_reported(copy: Path) -> None:
    extra = {
        "diffusion_model.transformer_blocks.0.attn1.to_nowhere.lora_A.weight": torch.ones(2, 16),
        "diffusion_model.transformer_blocks.0.attn1.to_nowhere.lora_B.weight": torch.ones(16, 2),
    }
    _rewrite(copy / LIPDUB_LORA_FILE, lambda t: t.update(extra))
    problems = check_weights(copy).problems
    assert any("match no transformer module" in p and "to_nowhere" in p for p in problems), problems


def test_a_lora_of_the_wrong_rank_width_is_reported(copy: Path) -> None:
    def widen(tensors: dict) -> None:
        key = next(k for k in tensors if k.endswith("attn1.to_q.lora_A.weight"))
        tensors[key] = torch.ones(2, tensors[key].shape[1] + 1)

    _rewrite(copy / LIPDUB_LORA_FILE, widen)
    assert any("in_features" in p for p in check_weights(copy).problems)


def test_not_a_weights_directory(tmp_path: Path) -> None:
    report = check_weights(tmp_path)
    assert not report.ok and "model_index.json" in report.problems[0] and "download" in report.problems[0]


def test_download_without_network_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no route to the hub: fail fast, not on a timeout
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # past the token check, to the network
    with pytest.raises(WeightsDownloadError, match="network access to huggingface.co") as refused:
        download_weights(tmp_path / "w")
    assert f"to {tmp_path / 'w'}" in str(refused.value) and "dubflow models check" in str(refused.value)
    assert main(["models", "download", str(tmp_path / "w")]) == 1


# Official (ltx-core) names of the transformer tensors: the inverse of diffusers' single-file conversion,
# so the test can write a checkpoint in the layout Lightricks publishes.
_OFFICIAL_NAMES = (
    ("proj_in", "patchify_proj"),
    ("av_cross_attn_video_scale_shift", "av_ca_video_scale_shift_adaln_single"),
    ("av_cross_attn_video_a2v_gate", "av_ca_a2v_gate_adaln_single"),
    ("av_cross_attn_audio_scale_shift", "av_ca_audio_scale_shift_adaln_single"),
    ("av_cross_attn_audio_v2a_gate", "av_ca_v2a_gate_adaln_single"),
    ("video_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_video"),
    ("audio_a2v_cross_attn_scale_shift_table", "scale_shift_table_a2v_ca_audio"),
    ("norm_q", "q_norm"),
    ("norm_k", "k_norm"),
    ("prompt_adaln.", "prompt_adaln_single."),  # also audio_prompt_adaln -> audio_prompt_adaln_single
)


def _official_key(key: str) -> str:
    for diffusers_name, official in _OFFICIAL_NAMES:
        key = key.replace(diffusers_name, official)
    for diffusers_prefix, official in (("time_embed.", "adaln_single."), ("audio_time_embed.", "audio_adaln_single.")):
        if key.startswith(diffusers_prefix):
            key = official + key[len(diffusers_prefix):]
    return f"model.diffusion_model.{key}"


def _single_file(weights: Path, target: Path, scale: float = 1.0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A bundled checkpoint: the (scaled) smoke transformer in the official layout plus the audio VAE."""
    from diffusers import AutoencoderKLLTX2Audio, LTX2VideoTransformer3DModel

    transformer = LTX2VideoTransformer3DModel.from_pretrained(weights, subfolder="transformer").state_dict()
    transformer = {k: (v * scale).contiguous() for k, v in transformer.items()}
    tensors = {_official_key(k): v for k, v in transformer.items()}
    audio_vae = AutoencoderKLLTX2Audio.from_pretrained(weights, subfolder="audio_vae").state_dict()
    tensors.update({f"audio_vae.{k}": v.contiguous() for k, v in audio_vae.items()})
    save_file(tensors, str(target))
    return target, transformer


def test_the_official_single_file_checkpoint_provides_the_transformer(weights: Path, tmp_path: Path) -> None:
    from dubflow.models.lipdub import LipDubModel

    checkpoint, expected = _single_file(weights, tmp_path / "ltx-2.3-22b-distilled.safetensors", scale=0.5)
    report = check_weights(weights, checkpoint=checkpoint)
    assert report.ok, report.render()
    assert any("ltx-2.3-22b-distilled.safetensors (transformer)" in line for line in report.checked)

    plain = LipDubModel.load(weights, weights / LIPDUB_LORA_FILE)
    model = LipDubModel.load(weights, weights / LIPDUB_LORA_FILE, checkpoint=checkpoint)
    assert "ltx-2.3-22b-distilled.safetensors" in model.identity
    # The checkpoint's (halved) weights are the base the same LoRA is fused into.
    fused, plain_fused = model.pipe.transformer.state_dict(), plain.pipe.transformer.state_dict()
    untouched = "transformer_blocks.0.attn1.norm_q.weight"  # no LoRA on norms: the checkpoint value as is
    torch.testing.assert_close(fused[untouched], expected[untouched])
    assert not torch.equal(fused[untouched], plain_fused[untouched])


def test_a_checkpoint_that_does_not_fit_is_reported(weights: Path, tmp_path: Path) -> None:
    checkpoint, _ = _single_file(weights, tmp_path / "bad.safetensors")
    _rewrite(checkpoint, lambda t: t.__setitem__("model.diffusion_model.patchify_proj.weight", torch.zeros(2, 2)))
    problems = check_weights(weights, checkpoint=checkpoint).problems
    assert any("proj_in.weight has shape (2, 2)" in p for p in problems), problems
    empty = tmp_path / "empty.safetensors"
    save_file({"something.else": torch.zeros(1)}, str(empty))
    assert any("not an LTX-2 checkpoint" in p for p in check_weights(weights, checkpoint=empty).problems)


@pytest.mark.parametrize("name", [DUBIT_LORA_FILE, LIPDUB_LORA_FILE])
def test_either_published_lora_name_is_accepted(copy: Path, name: str, capsys) -> None:
    """Upstream renamed LipDub to DubIt (LTX-2 v1.2.0); a folder holding the LoRA under either name passes."""
    (copy / LIPDUB_LORA_FILE).rename(copy / name)
    report = check_weights(copy)
    assert report.ok, report.render()
    assert any(name in line for line in report.checked)
    assert main(["models", "check", str(copy)]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_download_asks_for_the_dubit_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **kwargs: asked.append(repo))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **kwargs: asked.append((repo, name)))
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # past the token check
    download_weights(tmp_path / "w")
    assert LORA_REPO == "Lightricks/LTX-2.3-22b-IC-LoRA-DubIt"
    assert asked[1] == (LORA_REPO, DUBIT_LORA_FILE)


def test_replacing_a_weight_file_under_the_same_name_invalidates_its_takes(copy: Path, tmp_path: Path) -> None:
    """Takes are keyed by the weights' content: a new release or a re-download under the same folder
    and file names gives another key, so the old takes are not served."""
    from dataclasses import replace

    from dubflow.manifests.schema import ManifestRow
    from dubflow.models.profiles import resolve_profile
    from dubflow.tasks.lipdub import lipdub_identity, lipdub_key
    from dubflow.tasks.validate import Shot

    profile = replace(resolve_profile("smoke"), lipdub_weights=copy, lipdub_lora=copy / LIPDUB_LORA_FILE)
    shot = Shot("s1", tmp_path / "s1.mov", "ab" * 32, None, "s1.mov")
    row = ManifestRow(1, "s1", "s1.mov", None, "fr", "Bonjour.", "A man")

    def take_key() -> tuple[str, dict]:
        identity = lipdub_identity(profile)
        return lipdub_key(shot, row, profile, identity), identity

    first, identity = take_key()
    assert take_key()[0] == first  # unchanged files: the same key (hashes read from the memo)
    transformer = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    _rewrite(transformer, lambda t: t.__setitem__("proj_in.weight", t["proj_in.weight"] + 1))  # same names and shapes
    second, changed = take_key()
    assert second != first and changed["base"] != identity["base"] and changed["lora"] == identity["lora"]
    _rewrite(copy / LIPDUB_LORA_FILE, lambda t: t.update({k: v * 2 for k, v in t.items()}))
    third, relora = take_key()
    assert third not in (first, second) and relora["lora"] != changed["lora"]
    # The memo only saves time: a fresh one finds the same identity.
    assert weights_identity(copy, copy / LIPDUB_LORA_FILE, None, tmp_path / "memo.json") == relora
