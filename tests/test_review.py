"""The review loop: the review page of a smoke delivery in a real browser (Debian's chromium through
selenium and the system chromedriver), the review file it exports, and the retake that follows it."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import signal

from dubflow.flows.cli import main
from dubflow.flows.localize import localize
from dubflow.flows.review import ReviewError, plan_retake, read_review_file
from dubflow.media.files import sha256_file
from dubflow.manifests.schema import ManifestError
from dubflow.media.io import PictureFormat, iter_frames, read_audio, read_frames
from dubflow.tasks.review import frame_levels, write_review_proxy
from dubflow.tasks.validate import validate_manifest

ARTIFACTS = Path(__file__).parent / "artifacts" / "review"  # screenshots kept for people to look at
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOT = "sc01_sh010"  # 72 frames at 24000/1001: a fractional rate is where frame arithmetic goes wrong
# Its small sample shot's size (tests/conftest.py): the proxies keep a picture under 960 px as it is,
# and the page draws them at that size; the scaling is proved on its own picture below.
WIDTH, HEIGHT = 214, 120
# --allow-file-access-from-files lets this test read the page's canvases back (a page from file:// draws
# its own videos untainted only then); the page itself never reads pixels.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900", "--allow-file-access-from-files")
PLAY_S = 3.0  # sampled play from frame 39 of 72 (1.63 s in): the loop wraps after 1.4 s


@pytest.fixture(scope="module")
def review_manifest(small_samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One sample shot in two languages, beside a copy of the small samples' pictures (relative sources)."""
    directory = tmp_path_factory.mktemp("review")
    shutil.copytree(small_samples_dir / "shots", directory / "shots")
    table = pd.read_csv(small_samples_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[(table.shot_id == SHOT) & table.language.isin(["fr", "de"])]
    path = directory / "manifest.csv"
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def first_run(prefect_server, review_manifest: Path) -> Path:
    out = review_manifest.parent / "deliveries"
    localize(review_manifest, out, run_id="take1")
    return out / "take1"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.is_file() and CHROMEDRIVER.is_file(), "install chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def _console_problems(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]


def _wait(driver, script: str, timeout_s: float = 15.0):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {script}")


# What each picture shows, read back from the page's two canvases: a fingerprint per canvas (the luma
# of every second pixel on eight rows across the middle of the picture), identified afterwards against
# the review proxies as the ffmpeg CLI decodes them (the same rows: `_reference_prints`).
_PRINT_ROWS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
_FINGERPRINT = """
const reader = document.createElement('canvas').getContext('2d', {willReadFrequently: true});
window.fingerprint = (id) => {
  const canvas = document.getElementById(id), rows = %s;
  reader.canvas.width = canvas.width;
  reader.canvas.height = rows.length;
  rows.forEach((row, i) => reader.drawImage(canvas, 0, Math.floor(row * canvas.height), canvas.width, 1,
                                            0, i, canvas.width, 1));
  const rgba = reader.getImageData(0, 0, canvas.width, rows.length).data, luma = [];
  for (let i = 0; i < rgba.length; i += 8) {
    luma.push(Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]));
  }
  return luma;
};
// The frame each video has presented (this test's own requestVideoFrameCallback): at rest, the page
// has drawn once both videos present the frame they were sought to.
window.presented = new Map();
for (const video of [document.getElementById('original'), document.getElementById('dub')]) {
  const tick = (now, metadata) => {
    window.presented.set(video, metadata.mediaTime);
    video.requestVideoFrameCallback(tick);
  };
  video.requestVideoFrameCallback(tick);
}""" % json.dumps(_PRINT_ROWS)
# Every animation frame for PLAY_S seconds of play: the clock (the audio heard) and both pictures.
# Identical pictures are kept once (a hash keys them); samples point at them.
_SAMPLE_PLAY = """
const clock = document.getElementById('audio-new_mix'), keys = new Map();
window.played = {samples: [], prints: [], done: false};
const keep = (print) => {
  let hash = 2166136261;
  for (const value of print) hash = Math.imul(hash ^ value, 16777619);
  if (!keys.has(hash)) { keys.set(hash, window.played.prints.length); window.played.prints.push(print); }
  return keys.get(hash);
};
let start = null;
const sample = (now) => {
  start = start ?? now;
  window.played.samples.push({ms: now - start, clock: clock.currentTime,
    original: keep(window.fingerprint('original-picture')), dub: keep(window.fingerprint('dub-picture'))});
  if (now - start < %d) requestAnimationFrame(sample); else window.played.done = true;
};
requestAnimationFrame(sample);""" % (PLAY_S * 1000)
_AT_REST = """const videos = [document.getElementById('original'), document.getElementById('dub')];
const fps = 24000 / 1001, frame = (seconds) => Math.floor(seconds * fps);
const drawn = ['original-picture', 'dub-picture'].every(
  (id, i) => document.getElementById(id).width === videos[i].videoWidth);
const settled = videos.every((v) => !v.seeking && window.presented.has(v) &&
  frame(window.presented.get(v) + 0.5 / fps) === frame(v.currentTime));
return {busy: !(drawn && settled), paused: document.getElementById('audio-new_mix').paused,
        original: window.fingerprint('original-picture'), dub: window.fingerprint('dub-picture')}"""
_DECODER_DIFFERENCE = 1.5  # mean luma levels: chromium's and ffmpeg's decodes of one frame differ by ~1


def _at_rest(driver) -> dict:
    """Both canvases once the page has drawn them and stopped changing them: no seek in flight, each
    video presenting the frame it stands on, the same pictures twice in a row."""
    deadline = time.monotonic() + 15
    previous = None
    while time.monotonic() < deadline:
        state = driver.execute_script(_AT_REST)
        if not state["busy"] and previous == (state["original"], state["dub"]):
            return state
        previous = None if state["busy"] else (state["original"], state["dub"])
        time.sleep(0.1)
    raise AssertionError("the pictures did not come to rest")


def _reference_prints(proxy: Path) -> np.ndarray:
    """The fingerprint of every frame of `proxy` as the ffmpeg CLI decodes it (frames × values)."""
    size = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
                           "-of", "csv=p=0", str(proxy)], capture_output=True, check=True, text=True).stdout
    width, height = (int(v) for v in size.split(","))
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(proxy), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    rows = frames[:, [int(np.floor(row * height)) for row in _PRINT_ROWS], ::2].astype(np.float64)
    return np.round(rows @ [0.299, 0.587, 0.114]).reshape(len(frames), -1)


def _identify(fingerprint: list[int], reference: np.ndarray) -> set[int]:
    """The frames a fingerprint shows: the closest frame of `reference` and any other frame as close
    to it within what two decoders differ by (frames that look the same)."""
    distances = np.abs(reference - np.asarray(fingerprint, np.float64)).mean(axis=1)
    return set(np.flatnonzero(distances <= distances.min() + _DECODER_DIFFERENCE).tolist())


@pytest.fixture(scope="module")
def browser_review(browser, first_run: Path) -> dict:
    """Drive the page as a reviewer does; record what the test then asserts."""
    from selenium.webdriver.common.by import By

    record: dict = {"fps": 24000 / 1001}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.get((first_run / "review" / "index.html").as_uri())
    _wait(browser, "document.querySelectorAll('#pairs tr.pair').length")
    record["index_rows"] = browser.execute_script(
        "return [...document.querySelectorAll('#pairs tr.pair')].map(r => r.innerText)")
    record["banner"] = browser.find_element(By.ID, "noise-banner").text
    record["thumbnails_loaded"] = browser.execute_script(
        "return [...document.querySelectorAll('#pairs img')].map(i => i.complete && i.naturalWidth > 0)")
    browser.save_screenshot(str(ARTIFACTS / "index.png"))

    browser.execute_script(_FINGERPRINT)
    browser.find_element(By.CSS_SELECTOR, f"tr.pair[data-pair='{SHOT}/fr']").click()
    record["first"] = _at_rest(browser)
    record["codecs"] = browser.execute_script(
        "return document.getElementById('dub').canPlayType('video/mp4; codecs=\"avc1.64001f\"')")
    record["canvas_sizes"] = browser.execute_script(
        "return ['original-picture', 'dub-picture'].map(id => [document.getElementById(id).width, "
        "document.getElementById(id).height])")

    browser.execute_script("const s = document.getElementById('scrub'); s.value = 40;"
                           "s.dispatchEvent(new Event('input'));")
    record["after_seek"] = _at_rest(browser)
    browser.find_element(By.ID, "step-forward").click()
    record["after_step_forward"] = _at_rest(browser)
    browser.find_element(By.ID, "step-back").click()
    browser.find_element(By.ID, "step-back").click()
    record["after_step_back"] = _at_rest(browser)
    record["readout"] = browser.find_element(By.ID, "frame-readout").text
    record["subtitle"] = browser.execute_script("return document.getElementById('subtitle').textContent")
    browser.save_screenshot(str(ARTIFACTS / "pair.png"))

    browser.find_element(By.ID, "play").click()
    browser.execute_script(_SAMPLE_PLAY)
    _wait(browser, "window.played.done", timeout_s=PLAY_S + 15)
    record["played"] = browser.execute_script("return window.played")
    browser.find_element(By.ID, "play").click()  # pause
    record["after_play"] = _at_rest(browser)
    record["clock_after_play"] = browser.execute_script("return document.getElementById('audio-new_mix').currentTime")

    browser.find_element(By.ID, "note").send_keys("good sync")
    browser.find_element(By.ID, "approve").click()
    browser.execute_script(f"location.hash = '#pair/{SHOT}/de'")
    _wait(browser, "document.getElementById('pair-title').textContent.includes(' de ')")
    browser.find_element(By.ID, "note").send_keys("lips late on the second phrase")
    browser.find_element(By.ID, "reject").click()
    browser.execute_script("location.hash = ''")
    _wait(browser, "document.querySelectorAll('#pairs tr.pair').length")
    record["review_column"] = browser.execute_script(
        "return [...document.querySelectorAll('#pairs tr.pair')].map(r => r.lastChild.textContent)")
    browser.find_element(By.ID, "export").click()
    review_file = browser.downloads / "review_take1.json"
    deadline = time.monotonic() + 10
    while not review_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    record["review_file"] = review_file
    record["console"] = _console_problems(browser)
    return record


def test_the_review_page_opens_without_console_errors_and_lists_every_pair(browser_review) -> None:
    assert browser_review["console"] == []
    rows = browser_review["index_rows"]
    assert len(rows) == 2 and all(SHOT in row and "delivered" in row and "passed" in row and "LUFS" in row
                                  for row in rows)
    assert "noise" in browser_review["banner"]
    assert browser_review["thumbnails_loaded"] == [True, True]
    assert browser_review["codecs"] == "probably"  # Debian's chromium plays the H.264 review proxies
    assert (ARTIFACTS / "index.png").stat().st_size > 0 and (ARTIFACTS / "pair.png").stat().st_size > 0


def test_the_review_proxies_are_all_intra_at_the_exact_rate_and_frame_count(first_run: Path) -> None:
    """Checked by ffprobe decoding every frame: the page seeks them frame by frame."""
    media = first_run / "review" / "media"
    for proxy in (media / f"{SHOT}_original.mp4", media / f"{SHOT}_fr_dub.mp4", media / f"{SHOT}_de_dub.mp4"):
        probed = json.loads(subprocess.run(
            ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "format=nb_streams:stream=codec_name,width,"
             "height,r_frame_rate,nb_read_frames:packet=flags", "-select_streams", "v:0", "-of", "json", str(proxy)],
            capture_output=True, check=True, text=True).stdout)
        assert probed["format"]["nb_streams"] == 1, proxy  # picture only
        (stream,) = probed["streams"]
        assert (stream["codec_name"], stream["width"], stream["height"], stream["r_frame_rate"],
                stream["nb_read_frames"]) == ("h264", WIDTH, HEIGHT, "24000/1001", "72"), proxy
        flags = [packet["flags"] for packet in probed["packets"]]
        assert len(flags) == 72 and all(flag.startswith("K") for flag in flags), proxy  # every frame a keyframe


def test_a_review_proxy_is_scaled_to_960_px_even_sized_and_frame_exact(tmp_path: Path) -> None:
    """An odd-sized 1279×719 picture at 30000/1001 (made by the ffmpeg CLI) becomes 960×540 4:2:0,
    which browsers decode, frame for frame, every frame a keyframe (ffprobe)."""
    source = tmp_path / "odd.mov"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1279x719:rate=30000/1001",
                    "-frames:v", "5", "-c:v", "libx264", "-pix_fmt", "yuv444p", str(source)], check=True)
    proxy = write_review_proxy(iter_frames(source), PictureFormat(Fraction(30000, 1001)), tmp_path / "proxy.mp4")
    probed = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-show_entries", "stream=width,height,pix_fmt,r_frame_rate,"
         "nb_read_frames:packet=flags", "-select_streams", "v:0", "-of", "json", str(proxy)],
        capture_output=True, check=True, text=True).stdout)
    (stream,) = probed["streams"]
    assert (stream["width"], stream["height"], stream["pix_fmt"], stream["r_frame_rate"], stream["nb_read_frames"]) == (
        960, 540, "yuv420p", "30000/1001", "5")
    assert [packet["flags"][0] for packet in probed["packets"]] == ["K"] * 5


@pytest.fixture(scope="module")
def references(first_run: Path) -> dict[str, np.ndarray]:
    media = first_run / "review" / "media"
    return {"original": _reference_prints(media / f"{SHOT}_original.mp4"),
            "dub": _reference_prints(media / f"{SHOT}_fr_dub.mp4")}


def _shown(state: dict, references: dict[str, np.ndarray]) -> tuple[set[int], int]:
    """The frames the original picture may be (frames that look the same) and the dub's frame (one:
    every frame of the smoke take is different noise)."""
    (dub,) = _identify(state["dub"], references["dub"])
    return _identify(state["original"], references["original"]), dub


def test_both_pictures_play_frame_locked_with_the_sound(browser_review, references, capsys) -> None:
    """Every animation frame of PLAY_S seconds of play, the loop's wrap included: both pictures show
    the same frame (or the original one that looks the same), and the picture follows the sound."""
    fps = browser_review["fps"]
    prints, samples = browser_review["played"]["prints"], browser_review["played"]["samples"]
    assert browser_review["canvas_sizes"] == [[WIDTH, HEIGHT], [WIDTH, HEIGHT]]
    shown = [_shown({"original": prints[s["original"]], "dub": prints[s["dub"]]}, references) for s in samples]
    apart = [min(abs(original - dub) for original in originals) for originals, dub in shown]
    assert max(apart) == 0, [(s["ms"], pictures) for s, pictures, a in zip(samples, shown, apart) if a]

    dub_frames = [dub for _, dub in shown]
    wraps = sum(1 for a, b in zip(dub_frames, dub_frames[1:]) if b < a)
    # It played through and looped once; a starved machine skips frames (both pictures alike): 34
    # of the 72 frames the sound passed were shown at worst in six plays at load average 9.
    assert wraps == 1 and len(set(dub_frames)) >= 24, dub_frames
    assert samples[-1]["ms"] >= PLAY_S * 1000 - 50 and len(samples) >= PLAY_S * 20
    # How far the picture is behind the sound heard, in frames (the clock's frame less the picture's,
    # across the wrap): never ahead by more than a sample's own turn; it follows the sound, never a
    # second behind even on a starved CPU (measured up to 7 frames with two CPU burners beside it).
    lags = [(int(s["clock"] * fps) - dub + 36) % 72 - 36 for s, dub in zip(samples, dub_frames) if s["clock"] > 0]
    assert min(lags) >= -1 and max(lags) < 24, lags
    with capsys.disabled():
        print(f"\nreview sync: {len(samples)} samples over {samples[-1]['ms'] / 1000:.2f} s of play, "
              f"{len(set(dub_frames))} of 72 frames shown, pictures apart by at most {max(apart)} frames; "
              f"picture behind the sound by {np.percentile(lags, 50):.0f} (median), "
              f"{np.percentile(lags, 95):.0f} (95 %), {max(lags)} (max) frames")
    state = browser_review["after_play"]
    originals, dub = _shown(state, references)
    assert state["paused"] and dub in originals and dub == int(browser_review["clock_after_play"] * fps)
    assert _shown(browser_review["first"], references)[1] == 0  # the pair opens on its first frame


@pytest.mark.parametrize("moment, frame", [("after_seek", 40), ("after_step_forward", 41), ("after_step_back", 39)])
def test_seek_and_frame_step_show_the_same_exact_frame_in_both_players(browser_review, references, moment: str,
                                                                      frame: int) -> None:
    originals, dub = _shown(browser_review[moment], references)
    assert dub == frame and frame in originals, (originals, dub)
    if moment == "after_step_back":
        assert browser_review["readout"].startswith(f"frame {frame + 1} / 72")


def test_approve_and_reject_export_a_review_file(browser_review) -> None:
    assert sorted(browser_review["review_column"]) == ["approved: good sync", "rejected: lips late on the second phrase"]
    run_id, reviews = read_review_file(browser_review["review_file"])
    assert run_id == "take1"
    verdicts = {(r.shot_id, r.language, r.take): (r.verdict, r.note) for r in reviews}
    assert verdicts == {(SHOT, "fr", 1): ("approved", "good sync"),
                        (SHOT, "de", 1): ("rejected", "lips late on the second phrase")}


def test_a_retake_recomputes_only_the_rejected_pair_and_its_take_differs(
        browser_review, first_run: Path, review_manifest: Path, capsys, caplog) -> None:
    plan = plan_retake(first_run, browser_review["review_file"], review_manifest)
    assert plan.run_id == "take1-retake1" and plan.retakes == ((SHOT, "de", 2),)
    written = pd.read_csv(plan.manifest, dtype=str, keep_default_na=False).set_index("language")
    assert written.loc["de", "take"] == "2" and written.loc["fr", "take"] == ""

    capsys.readouterr()
    caplog.set_level(logging.INFO)
    assert main(["retake", str(first_run), str(browser_review["review_file"]), "--manifest",
                 str(review_manifest)]) == 0
    printed = capsys.readouterr()
    assert ("computed: lipdub 1, remix 1, mux 1, subtitles 1, qc 1; "
            "reused: conform 1, separate 1, lipdub 1, remix 1, mux 1, subtitles 1, qc 1") in printed.out + printed.err + caplog.text

    retake_dir = first_run.parent / plan.run_id
    for language, same in (("fr", True), ("de", False)):
        old, new = (run / SHOT / language / f"{SHOT}_{language}.mp4" for run in (first_run, retake_dir))
        assert (sha256_file(old) == sha256_file(new)) is same
    old_frames, new_frames = (read_frames(run / SHOT / "de" / f"{SHOT}_de.mp4") for run in (first_run, retake_dir))
    assert old_frames.shape == new_frames.shape and np.abs(old_frames.astype(int) - new_frames).mean() > 1

    page_data = (retake_dir / "review" / "review-data.js").read_text(encoding="utf-8")
    pairs = {p["language"]: p for p in json.loads(page_data.split("=", 1)[1].rstrip().rstrip(";"))["pairs"]}
    assert pairs["de"]["take"] == 2 and pairs["fr"]["take"] == 1
    assert [(h["take"], h["verdict"], h["note"], h["run_id"]) for h in pairs["de"]["history"]] == [
        (1, "rejected", "lips late on the second phrase", "take1")]


def test_a_retake_refuses_a_review_of_another_run_or_manifest(browser_review, first_run: Path,
                                                             review_manifest: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text(review_manifest.read_text().replace("aube", "aurore"))
    with pytest.raises(ReviewError, match="is not the manifest run 'take1' was made from"):
        plan_retake(first_run, browser_review["review_file"], other)
    review = json.loads(browser_review["review_file"].read_text())
    (tmp_path / "wrong.json").write_text(json.dumps({**review, "run_id": "elsewhere"}))
    with pytest.raises(ReviewError, match="reviews run 'elsewhere'"):
        plan_retake(first_run, tmp_path / "wrong.json", review_manifest)
    (tmp_path / "bad.json").write_text(json.dumps({**review, "reviews": [{"shot_id": SHOT, "verdict": "maybe"}]}))
    assert main(["retake", str(first_run), str(tmp_path / "bad.json"), "--manifest", str(review_manifest)]) == 2


def test_an_edited_line_goes_into_the_next_manifest(first_run: Path, review_manifest: Path, tmp_path: Path) -> None:
    review = {"format": "dubflow-review/1", "run_id": "take1", "reviews": [
        {"shot_id": SHOT, "language": "fr", "take": 1, "verdict": "rejected", "note": "too long",
         "new_script": "Nous partons à l'aube."}]}
    (tmp_path / "review.json").write_text(json.dumps(review))
    plan = plan_retake(first_run, tmp_path / "review.json", review_manifest, run_id="edited")
    written = pd.read_csv(plan.manifest, dtype=str, keep_default_na=False).set_index("language")
    assert (written.loc["fr", "script"], written.loc["fr", "take"]) == ("Nous partons à l'aube.", "2")
    assert written.loc["de", "script"].startswith("Wir brechen")


def test_dubflow_review_prints_the_page_and_refuses_what_is_not_a_delivery(first_run: Path, tmp_path: Path,
                                                                         capsys) -> None:
    assert main(["review", str(first_run), "--no-open"]) == 0
    assert capsys.readouterr().out.strip() == (first_run / "review" / "index.html").resolve().as_uri()
    assert main(["review", str(tmp_path), "--no-open"]) == 2
    assert "give a run folder that dubflow delivered" in capsys.readouterr().err


def test_frame_levels_follow_the_exact_frame_boundaries() -> None:
    """Three frames at 24000/1001 hold 2002 samples each at 48 kHz: a tone in the second frame only."""
    audio = np.zeros((1, 3 * 2002), np.float32)
    audio[0, 2002:4004] = 0.5
    levels = frame_levels(audio, 3, Fraction(24000, 1001), 48_000)
    assert levels == [-90.0, round(10 * np.log10(0.25), 1), -90.0]


# ---- supplied dialogue ----------------------------------------------------------------------------

MARKER_S = 1.2345  # where the supplied recording's marker chirp starts
MARKER_LENGTH_S = 0.3


def _chirp(t):
    return 0.5 * np.sin(2 * np.pi * (300 * t + 2000 * t**2))


def _write_marker_dialogue(path: Path, seconds: float = 3.0) -> Path:
    """A 44.1 kHz mono recording, silent but for a chirp at `MARKER_S`, made by the ffmpeg CLI."""
    expression = (f"if(between(t,{MARKER_S},{MARKER_S + MARKER_LENGTH_S}),"
                  f"0.5*sin(2*PI*(300*(t-{MARKER_S})+2000*(t-{MARKER_S})^2)),0)")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"aevalsrc=exprs='{expression}':s=44100:d={seconds}", "-c:a", "pcm_s24le", str(path)], check=True)
    return path


def test_supplied_dialogue_is_in_the_mix_at_its_place_over_the_lipdub_picture(
        prefect_server, first_run: Path, review_manifest: Path) -> None:
    _write_marker_dialogue(review_manifest.parent / "fr_line.wav")
    table = pd.read_csv(review_manifest, dtype=str, keep_default_na=False)
    table["dialogue"] = np.where(table.language == "fr", "fr_line.wav", "")
    manifest = review_manifest.with_name("supplied.csv")
    table.to_csv(manifest, index=False)
    # Allowed QC warnings: the smoke take's speech is noise, so the offset against it is whatever it is.
    summary = localize(manifest, first_run.parent, run_id="supplied", allow_qc_warnings=True)
    assert "lipdub" not in summary.cache.computed  # the take itself is reused: the picture is LipDub's
    # Its mix and what follows from it; QC of both pairs (allowing warnings is part of QC's key).
    assert summary.cache.computed == {"remix": 1, "mux": 1, "subtitles": 1, "qc": 2}

    pair = first_run.parent / "supplied" / SHOT / "fr"
    mix, rate = read_audio(pair / f"{SHOT}_fr_mix.wav")
    bed, _ = read_audio(first_run.parent / "supplied" / SHOT / f"{SHOT}_me.wav")
    qc = json.loads((pair / f"{SHOT}_fr_qc.json").read_text())
    # The recording is level-matched to the shot's original dialogue, which on the smoke profile's
    # random separator is quiet noise: the bed is taken out of the mix (mix = (DX + M&E) × gain) first.
    dialogue_in_mix = mix.astype(np.float64) / 10 ** (qc["levels"]["mix gain (dB)"] / 20) - bed
    marker = _chirp(np.arange(int(MARKER_LENGTH_S * rate)) / rate)
    correlation = signal.correlate(dialogue_in_mix.sum(axis=0), marker, mode="valid", method="fft")
    found_s = int(np.argmax(np.abs(correlation))) / rate
    assert abs(found_s - MARKER_S) <= 0.001, found_s

    # The picture is the fr take's, H.264-encoded again (the smoke take is noise; measured on the small
    # shot: 0.0 levels apart, x264 being reproducible), not the de take's (~25) nor the source's (~53).
    delivered = read_frames(pair / f"{SHOT}_fr.mp4").astype(int)
    take, other_take = (read_frames(first_run / SHOT / lang / f"{SHOT}_{lang}.mp4") for lang in ("fr", "de"))
    source = read_frames(review_manifest.parent / "shots" / f"{SHOT}.mov")
    assert delivered.shape == take.shape == source.shape
    assert np.abs(delivered - take).mean() < 8 < 15 < np.abs(delivered - other_take).mean()
    assert np.abs(delivered - source).mean() > 30

    generated, _ = read_audio(pair / f"{SHOT}_fr_dx_generated.wav")
    dialogue, _ = read_audio(pair / f"{SHOT}_fr_dx.wav")
    assert generated.shape == dialogue.shape and not np.allclose(generated, dialogue)
    (offset,) = [c for c in qc["checks"] if c["name"].startswith("supplied dialogue offset")]
    assert offset["measured"].endswith(("late)", "early)", "aligned)"))
    assert not (first_run.parent / "supplied" / SHOT / "de" / f"{SHOT}_de_dx_generated.wav").exists()


@pytest.mark.parametrize("delay_ms, passed", [(0, True), (30, True), (-40, True), (80, False), (-120, False)])
def test_the_supplied_dialogue_offset_is_measured_to_a_millisecond(tmp_path: Path, delay_ms: int,
                                                                   passed: bool) -> None:
    """Two different voices (different carriers) on one syllable rhythm, one shifted by `delay_ms`."""
    rate = 48_000
    t = np.arange(3 * rate) / rate
    rng = np.random.default_rng(7)
    starts = np.sort(rng.uniform(0.3, 2.5, 9))

    def voice(carrier_hz: float, shift_s: float) -> np.ndarray:
        envelope = sum(np.exp(-0.5 * ((t - s - shift_s) / 0.04) ** 2) for s in starts)
        return (0.3 * envelope * np.sin(2 * np.pi * carrier_hz * t))[None].astype(np.float32)

    from dubflow.media.io import AudioTrack, write_wav
    from dubflow.tasks.qc import check_supplied_dialogue_offset

    supplied = write_wav(tmp_path / "supplied.wav", AudioTrack(voice(180.0, delay_ms / 1000), rate, "mono"))
    generated = write_wav(tmp_path / "generated.wav", AudioTrack(voice(240.0, 0.0), rate, "mono"))
    check = check_supplied_dialogue_offset(supplied, generated)
    assert check.passed is passed
    assert int(check.measured.split()[0]) == pytest.approx(delay_ms, abs=1)


def test_validation_checks_the_supplied_dialogue_file(review_manifest: Path) -> None:
    directory = review_manifest.parent
    _write_marker_dialogue(directory / "long.wav", seconds=4.0)  # the shot lasts 3.003 s
    (directory / "not_audio.wav").write_text("no audio here")
    table = pd.read_csv(review_manifest, dtype=str, keep_default_na=False)
    table["dialogue"] = ["missing.wav", "long.wav"]
    broken = directory / "broken.csv"
    table.to_csv(broken, index=False)
    with pytest.raises(ManifestError) as error:
        validate_manifest(broken)
    messages = [(p.row, p.column, p.message) for p in error.value.problems]
    assert messages[0][:2] == (2, "dialogue") and "missing.wav does not exist" in messages[0][2]
    assert messages[1][:2] == (3, "dialogue") and "lasts 4.000 s, the shot 3.003 s" in messages[1][2]
    table["dialogue"] = ["not_audio.wav", "shots/sc01_sh010.mov"]  # a picture with sound is audio enough
    table.to_csv(broken, index=False)
    with pytest.raises(ManifestError) as error:
        validate_manifest(broken)
    ((row, column, message),) = [(p.row, p.column, p.message) for p in error.value.problems]
    assert (row, column) == (2, "dialogue") and "is not readable audio" in message


@pytest.mark.parametrize("generated_until_s, original_until_s, passed", [
    (3.0, 2.0, False),  # the new line runs into the cut; the original ended inside the shot
    (2.5, 2.0, True),  # the new line ends inside the shot
    (3.0, 3.0, True),  # the original line runs into the cut as well: the shot was cut mid-line
])
def test_qc_flags_generated_dialogue_cut_off_at_the_end_of_the_shot(generated_until_s: float, original_until_s: float,
                                                                   passed: bool) -> None:
    from dubflow.tasks.qc import check_dialogue_ending

    rate = 48_000
    t = np.arange(3 * rate) / rate

    def line(until_s: float) -> np.ndarray:
        return (0.3 * np.sin(2 * np.pi * 200 * t) * ((t >= 0.5) & (t < until_s)))[None].astype(np.float32)

    check = check_dialogue_ending(line(generated_until_s), line(original_until_s), rate)
    assert check.passed is passed, check
    assert f"generated: speech until {generated_until_s:.3f} s" in check.measured


def test_the_take_column_is_a_whole_number_from_one(tmp_path: Path) -> None:
    from dubflow.manifests.schema import parse_manifest

    picture = "shots/x.mov"
    table = pd.DataFrame({"shot_id": ["a", "b", "c", "d"], "source": picture, "language": "fr", "script": "Oui.",
                          "take": ["", "3", "0", "two"]})
    table.to_csv(tmp_path / "m.csv", index=False)
    rows, problems = parse_manifest(tmp_path / "m.csv")
    assert [(row.shot_id, row.take) for row in rows] == [("a", 1), ("b", 3)]
    assert [(p.row, p.column) for p in problems] == [(4, "take"), (5, "take")]
    assert "'two' is not a take number" in str(problems[1])
