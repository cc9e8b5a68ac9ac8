"""Demucs dialogue/bed separation with the tiny random-weight smoke model (CPU, seconds)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from demucs.apply import BagOfModels
from demucs.demucs import Demucs
from demucs.htdemucs import HTDemucs
from demucs.pretrained import get_model
from demucs.repo import check_checksum

from dubflow.models.separator import (
    DELIVERY_SAMPLE_RATE,
    ModelLoadError,
    Separator,
    build_smoke_separator,
    clear_resident_separators,
    delivery_length,
    get_resident_separator,
    resample_to_delivery,
    write_bag,
    write_model_package,
)

LAYOUT_CHANNELS = {"mono": 1, "stereo": 2, "5.1": 6, "5.1(side)": 6}


@pytest.fixture(scope="session")
def smoke_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return build_smoke_separator(tmp_path_factory.mktemp("demucs_repo"))


@pytest.fixture(scope="session")
def separator(smoke_model: tuple[str, Path]) -> Separator:
    name, repo = smoke_model
    return Separator(name, repo)


def soundtrack(channels: int, sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A 'voice' (harmonic tone with a syllable envelope) over noise, different on every channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    voice = 0.3 * np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    out = 0.05 * rng.standard_normal((channels, t.size)) + voice
    return out.astype(np.float32)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the model package on disk -----------------------------------------------------------------


def test_smoke_package_is_a_demucs_local_repo(smoke_model):
    name, repo = smoke_model
    packages = sorted(repo.glob("*.th"))
    assert len(packages) == 1, packages
    sig, checksum = packages[0].stem.rsplit("-", 1)
    assert len(checksum) == 8
    check_checksum(packages[0], checksum)  # what demucs.repo.LocalRepo checks on load
    assert yaml.safe_load((repo / f"{name}.yaml").read_text()) == {"models": [sig]}

    package = torch.load(packages[0], map_location="cpu", weights_only=False)
    assert set(package) >= {"klass", "args", "kwargs", "state"}
    assert package["klass"] is HTDemucs
    assert all(t.dtype == torch.float16 for t in package["state"].values())

    model = get_model(name, repo=repo)  # demucs' own loader, as for a real local model folder
    assert isinstance(model, BagOfModels) and len(model.models) == 1
    (inner,) = model.models
    assert isinstance(inner, HTDemucs)
    assert model.sources == ["drums", "bass", "other", "vocals"]
    assert model.samplerate == 44100 and model.audio_channels == 2
    for key, value in inner.state_dict().items():
        assert torch.equal(value, package["state"][key].float()), key
    assert sum(p.numel() for p in inner.parameters()) < 500_000  # tiny

    single = get_model(sig, repo=repo)  # a bare signature loads the single model too
    assert isinstance(single, HTDemucs)


def test_smoke_build_is_deterministic_and_idempotent(smoke_model, tmp_path):
    name, repo = smoke_model
    (package,) = repo.glob("*.th")
    before = (package.name, _sha(package), package.stat().st_mtime_ns)
    assert build_smoke_separator(repo) == (name, repo)
    (again,) = repo.glob("*.th")
    assert (again.name, _sha(again), again.stat().st_mtime_ns) == before
    assert sorted(p.name for p in repo.iterdir()) == sorted([package.name, f"{name}.yaml"])

    other_name, other = build_smoke_separator(tmp_path / "elsewhere")
    (other_package,) = other.glob("*.th")
    assert other_name == name
    assert (other_package.name, _sha(other_package)) == before[:2]


def test_loader_errors_are_clear(smoke_model, tmp_path):
    name, repo = smoke_model
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Separator(name, tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="no_such_model"):
        Separator("no_such_model", repo)
    with pytest.raises(ValueError, match="segment"):
        Separator(name, repo, segment=60.0)  # longer than the transformer was built for


# -- separation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [48000, 44100])
@pytest.mark.parametrize("layout", ["mono", "stereo", "5.1", "5.1(side)"])
def test_dialogue_plus_bed_is_the_mix(separator, layout, sample_rate):
    channels = LAYOUT_CHANNELS[layout]
    audio = soundtrack(channels, sample_rate, 2.5, seed=channels)[:, :-3]  # odd length on purpose
    original = audio.copy()
    stems = separator.separate(audio, sample_rate, layout)
    np.testing.assert_array_equal(audio, original)  # the caller's array is left alone

    expected_length = round(audio.shape[1] * 48000 / sample_rate)
    assert stems.sample_rate == DELIVERY_SAMPLE_RATE
    for stem in (stems.dialogue, stems.bed):
        assert stem.dtype == np.float32
        assert stem.shape == (channels, expected_length)
        assert np.isfinite(stem).all()

    mix48 = resample_to_delivery(audio, sample_rate)
    assert mix48.shape == (channels, expected_length)
    if sample_rate == 48000:
        np.testing.assert_array_equal(mix48, audio)
    assert np.allclose(stems.dialogue + stems.bed, mix48, rtol=0, atol=1e-6)

    # the model really produced something, and it is not the whole mix
    active = list(stems.dialogue_channels)
    assert np.abs(stems.dialogue[active]).max() > 1e-4
    assert not np.allclose(stems.dialogue[active], mix48[active], atol=1e-3)


@pytest.mark.parametrize("layout", ["5.1", "5.1(side)"])
def test_surround_keeps_every_channel_and_separates_the_centre(separator, layout):
    audio = soundtrack(6, 48000, 2.0, seed=6)
    stems = separator.separate(audio, 48000, layout)
    assert stems.dialogue_channels == (2,)
    assert stems.dialogue.shape == stems.bed.shape == (6, audio.shape[1])
    others = [0, 1, 3, 4, 5]
    assert not stems.dialogue[others].any()  # exactly zero outside FC
    assert np.abs(stems.dialogue[2]).max() > 1e-4
    np.testing.assert_array_equal(stems.bed[others], audio[others])  # L R LFE surrounds untouched
    assert np.allclose(stems.dialogue[2] + stems.bed[2], audio[2], rtol=0, atol=1e-6)


def test_channel_groups(separator):
    assert separator.separate(soundtrack(1, 48000, 0.5), 48000, "mono").dialogue_channels == (0,)
    assert separator.separate(soundtrack(2, 48000, 0.5), 48000, "stereo").dialogue_channels == (0, 1)


def test_mono_is_separated_as_mono(separator):
    mono = soundtrack(1, 48000, 1.0)
    stems = separator.separate(mono, 48000, "mono")
    assert stems.dialogue.shape == mono.shape
    # the mono path is the stereo path on L = R, averaged back to one channel
    stereo = separator.separate(np.repeat(mono, 2, axis=0), 48000, "stereo")
    np.testing.assert_allclose(stems.dialogue[0], stereo.dialogue.mean(axis=0), atol=1e-6)


@pytest.mark.parametrize(
    "layout, channels",
    [("7.1", 8), ("quad", 4), ("5.0", 5), ("6 channels", 6)],
)
def test_unsupported_layouts_are_refused(separator, layout, channels):
    with pytest.raises(ValueError) as info:
        separator.separate(np.zeros((channels, 4800), np.float32), 48000, layout)
    message = str(info.value)
    assert repr(layout) in message and "5.1" in message and "stereo" in message


def test_bad_input_is_refused(separator):
    with pytest.raises(ValueError, match="2 channel"):
        separator.separate(np.zeros((6, 4800), np.float32), 48000, "stereo")
    with pytest.raises(ValueError, match="channels, samples"):
        separator.separate(np.zeros(4800, np.float32), 48000, "mono")
    with pytest.raises(ValueError, match="floating point"):
        separator.separate(np.zeros((2, 4800), np.int16), 48000, "stereo")
    bad = np.zeros((2, 4800), np.float32)
    bad[1, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        separator.separate(bad, 48000, "stereo")


def test_deterministic(separator):
    audio = soundtrack(2, 44100, 3.0, seed=3)
    first = separator.separate(audio, 44100, "stereo")
    second = separator.separate(audio.copy(), 44100, "stereo")
    np.testing.assert_array_equal(first.dialogue, second.dialogue)
    np.testing.assert_array_equal(first.bed, second.bed)


def test_short_and_empty_inputs(separator):
    tiny = separator.separate(soundtrack(2, 44100, 0.001), 44100, "stereo")  # 44 samples
    assert tiny.dialogue.shape == (2, delivery_length(44, 44100)) == (2, 48)
    empty = separator.separate(np.zeros((6, 0), np.float32), 48000, "5.1")
    assert empty.dialogue.shape == empty.bed.shape == (6, 0)


def test_long_input_is_chunked_without_losing_anything(smoke_model):
    name, repo = smoke_model
    chunked = Separator(name, repo, chunk_seconds=4.0)  # 10 s -> 3 chunks, crossfaded
    audio = soundtrack(2, 44100, 10.0, seed=10)
    stems = chunked.separate(audio, 44100, "stereo")
    mix48 = resample_to_delivery(audio, 44100)
    assert stems.dialogue.shape == mix48.shape == (2, 480000)
    assert np.allclose(stems.dialogue + stems.bed, mix48, rtol=0, atol=1e-6)
    # every chunk contributed (no gap of zeros around the chunk boundaries at 4 s and 8 s)
    for boundary in (4, 8):
        around = stems.dialogue[:, (boundary - 1) * 48000:(boundary + 1) * 48000]
        assert np.abs(around).max() > 1e-4
        assert (np.abs(around).max(axis=0) > 0).mean() > 0.99
    # and the crossfades add up to one estimate: close to the single-pass result everywhere (the
    # random model is not segmentation-invariant, so "close" is loose; a doubled or missing
    # chunk would be off by ~100%)
    whole = Separator(name, repo).separate(audio, 44100, "stereo").dialogue
    np.testing.assert_allclose(stems.dialogue[:, :3 * 48000], whole[:, :3 * 48000], atol=1e-6)
    for second in range(10):
        part = slice(second * 48000, (second + 1) * 48000)
        error = np.sqrt(np.mean((stems.dialogue[:, part] - whole[:, part]) ** 2))
        assert error < 0.5 * np.sqrt(np.mean(whole[:, part] ** 2)), second


def test_resampling_is_a_proper_resampler():
    t44 = np.arange(44100) / 44100
    t48 = np.arange(48000) / 48000
    tone = np.sin(2 * np.pi * 1000 * t44)[None].astype(np.float32)
    out = resample_to_delivery(tone, 44100)
    assert out.shape == (1, 48000)
    expected = np.sin(2 * np.pi * 1000 * t48)
    np.testing.assert_allclose(out[0, 2000:-2000], expected[2000:-2000], atol=2e-3)
    # exact delivery lengths, rounding to the nearest sample
    assert delivery_length(44101, 44100) == 48001  # 48001.088...
    assert delivery_length(1, 96000) == 0 and delivery_length(3, 96000) == 2  # halves to even
    assert resample_to_delivery(np.zeros((2, 22051), np.float32), 22050).shape == (2, 48002)


def test_resident_separator_loads_once(smoke_model):
    name, repo = smoke_model
    clear_resident_separators()
    before = Separator.load_count
    first = get_resident_separator(name, repo, "cpu")
    audio = soundtrack(2, 48000, 0.5)
    first.separate(audio, 48000, "stereo")
    second = get_resident_separator(name, Path(str(repo)), "cpu")
    second.separate(audio, 48000, "stereo")
    assert second is first
    assert Separator.load_count == before + 1
    clear_resident_separators()
    assert get_resident_separator(name, repo, "cpu") is not first
    assert Separator.load_count == before + 2
    clear_resident_separators()


def test_identity_names_the_model_files(smoke_model, separator):
    name, repo = smoke_model
    assert separator.model_identity.startswith(f"demucs==4.1.0:{name}@")
    assert separator.params["shifts"] == 0
    assert Separator(name, repo).model_identity == separator.model_identity


# -- model choice, batching, shifts, memory --------------------------------------------------------


def test_several_shots_share_model_calls_and_get_their_own_result(smoke_model):
    name, repo = smoke_model
    separator = Separator(name, repo, batch_size=3)
    soundtracks = [
        (soundtrack(1, 44100, 1.3, seed=1), 44100, "mono"),
        (soundtrack(6, 48000, 2.7, seed=2), 48000, "5.1"),
        (soundtrack(2, 48000, 3.5, seed=3), 48000, "stereo"),
    ]
    calls = []
    (inner,) = separator.model.models
    hook = inner.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        batched = separator.separate_many(soundtracks)
    finally:
        hook.remove()
    # one 4 s segment per short shot (the 3.5 s one needs a second): two calls, the first holds
    # a segment of each of the three shots
    assert calls == [(3, 2, 4 * 44100), (1, 2, 4 * 44100)]
    for (audio, rate, layout), stems in zip(soundtracks, batched):
        alone = separator.separate(audio, rate, layout)
        np.testing.assert_allclose(stems.dialogue, alone.dialogue, rtol=0, atol=1e-7)
        assert np.allclose(stems.dialogue + stems.bed, resample_to_delivery(audio, rate), rtol=0, atol=1e-6)
    assert batched[1].dialogue_channels == (2,) and not batched[1].dialogue[[0, 1, 3, 4, 5]].any()


def test_a_bad_soundtrack_in_a_batch_is_named(separator):
    good = (soundtrack(2, 48000, 0.5), 48000, "stereo")
    with pytest.raises(ValueError, match="soundtrack 2 of 2: .*'7.1'"):
        separator.separate_many([good, (np.zeros((8, 4800), np.float32), 48000, "7.1")])


def test_shifts_are_deterministic_and_change_the_estimate(smoke_model, separator):
    name, repo = smoke_model
    shifted = Separator(name, repo, shifts=2)
    audio = soundtrack(2, 48000, 3.0, seed=5)
    first, second = shifted.separate(audio, 48000, "stereo"), shifted.separate(audio, 48000, "stereo")
    np.testing.assert_array_equal(first.dialogue, second.dialogue)
    assert not np.allclose(first.dialogue, separator.separate(audio, 48000, "stereo").dialogue, atol=1e-4)
    assert np.allclose(first.dialogue + first.bed, audio, rtol=0, atol=1e-6)
    assert shifted.params["shifts"] == 2


def _tiny_htdemucs(sources: list[str], seed: int) -> HTDemucs:
    torch.manual_seed(seed)
    return HTDemucs(sources=sources, audio_channels=2, samplerate=44100, segment=4, channels=4, depth=4,
                    dconv_comp=4, t_layers=1, t_heads=4)


def test_a_dialogue_music_effects_bag_from_a_local_folder(tmp_path):
    """Any bag in a Demucs model folder loads; a DME model's dialogue stem is the dialogue."""
    sources = ["dialog", "music", "effects"]
    signatures = ["dme0a1b2", "dme1c3d4"]
    for seed, signature in enumerate(signatures):
        write_model_package(tmp_path, signature, _tiny_htdemucs(sources, seed), {"seed": seed})
    write_bag(tmp_path, "dme_bag", signatures, weights=[[1.0, 1.0, 1.0], [0.5, 1.0, 1.0]])
    dme = Separator("dme_bag", tmp_path)
    assert dme.dialogue_source == "dialog" and len(dme.model.models) == 2
    assert dme.model_identity.startswith("demucs==4.1.0:dme_bag@")
    audio = soundtrack(6, 48000, 2.0, seed=9)
    stems = dme.separate(audio, 48000, "5.1")
    assert np.abs(stems.dialogue[2]).max() > 1e-4
    assert np.allclose(stems.dialogue + stems.bed, audio, rtol=0, atol=1e-6)

    write_model_package(tmp_path, "music0", _tiny_htdemucs(["drums", "bass", "other"], 7), {})
    with pytest.raises(ModelLoadError, match="no dialogue source.*dialogue, dialog, speech, vocals"):
        Separator("music0", tmp_path)
    with pytest.raises(ModelLoadError, match="no source 'speech'"):
        Separator("dme_bag", tmp_path, dialogue_source="speech")


_MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from dubflow.models.separator import Separator

    separator = Separator(sys.argv[1], sys.argv[2], chunk_seconds=float(sys.argv[3]), batch_size=1)
    rng = np.random.default_rng(0)
    short, long = (0.1 * rng.standard_normal((1, seconds * 48000)).astype(np.float32) for seconds in (10, 70))
    separator.separate(short[:, :48000], 48000, "mono")  # warm up the allocator and the model

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    stems = separator.separate(short, 48000, "mono")
    after_short = peak_mb()
    del stems
    stems = separator.separate(long, 48000, "mono")
    print(json.dumps({"short": after_short, "long": peak_mb(), "stems_mb": 2 * stems.bed.nbytes / 2**20}))
""")


def test_long_files_are_separated_in_bounded_memory(tmp_path):
    """Seven times the audio costs its own dialogue and bed arrays more, and nothing that grows with it
    besides: with 5 s stretches the peak for 70 s exceeds the peak for 10 s by about those arrays.
    (In one piece, the model-rate copies and estimates of the whole soundtrack would add ~0.9 MB
    per second, 60 MB here.) A tiny waveform Demucs keeps this fast; the path is the same for any model."""
    torch.manual_seed(0)
    model = Demucs(sources=["other", "vocals"], audio_channels=2, channels=4, depth=2, samplerate=44100,
                   segment=4, lstm_layers=0)
    write_model_package(tmp_path, "tinywave", model, {})
    probe = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "tinywave", str(tmp_path), "5"],
                           capture_output=True, text=True, check=True)
    peaks = json.loads(probe.stdout)
    assert peaks["long"] - peaks["short"] < peaks["stems_mb"] + 40, peaks
