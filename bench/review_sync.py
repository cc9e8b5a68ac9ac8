"""What the review page's frame-locked pictures cost: encoding the all-intra review proxies, and a
seek in Debian's chromium on them versus on the delivered encoding.

    python bench/review_sync.py RUN [--json bench/results/review_sync_cpu.json]

RUN is a delivery with its review page (any `dubflow localize` or `dubflow demo` run). For the
first delivered pair:

- encode: the pair's delivered review MP4 (on the smoke profile, noise) and the shot's locked
  picture (the original proxy's frames) encoded all-intra at CRF 23 through `write_video`'s H.264
  path at x264's `fast` and `veryfast` presets; median of 3, and the file size.
- seek: the page's pictures are two paused videos sought together to each frame the sound reaches.
  In headless chromium, two videos are sought together to 60 random frame centres, one pair of
  seeks after the other, and the time from setting `currentTime` to both `seeked` events is taken:
  the review proxies (every frame a keyframe) against the delivered review MP4 beside the original
  proxy (the delivered MP4 keeps its delivery encoding: one keyframe per 250 frames).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dubflow.media.io import read_frames
from dubflow.tasks.review import PROXY_CRF

SEEKS = 60
_SEEK_PAIRS = """
const [first, second, fps, frames, count, done] = arguments;
const videos = [first, second].map(
  (src) => Object.assign(document.createElement('video'), {src, muted: true, preload: 'auto'}));
const once = (node, type) => new Promise((resolve) => node.addEventListener(type, resolve, {once: true}));
(async () => {
  await Promise.all(videos.map((video) => once(video, 'loadeddata')));
  const times = [];
  let frame = 0;
  for (let i = 0; i < count; i++) {
    frame = (frame + 1 + Math.floor(Math.random() * (frames - 1))) % frames;  // another frame each time
    const started = performance.now();
    await Promise.all(videos.map((video) => {
      const sought = once(video, 'seeked');
      video.currentTime = (frame + 0.5) / fps;
      return sought;
    }));
    times.push(performance.now() - started);
  }
  done(times);
})();"""


def encode_all_intra(frames: np.ndarray, fps: Fraction, preset: str, out: Path) -> float:
    """Seconds to encode `frames` all-intra at `preset` (write_video's H.264 path, its preset swapped)."""
    started = time.perf_counter()
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.pix_fmt = "yuv420p"
        video.height, video.width = frames.shape[1:3]
        video.options = {"crf": str(PROXY_CRF), "g": "1", "preset": preset}
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return time.perf_counter() - started


def bench_encodes(pair: dict, run: Path, fps: Fraction) -> list[dict]:
    sources = {"delivered review MP4 (smoke take: noise)": run / pair["dub_delivered"],
               "locked picture (original proxy's frames)": run / "review" / pair["original"]}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, source in sources.items():
            frames = read_frames(source)
            for preset in ("fast", "veryfast"):
                out = Path(scratch) / f"{preset}.mp4"
                seconds = statistics.median(encode_all_intra(frames, fps, preset, out) for _ in range(3))
                rows.append({"source": name, "frames": len(frames), "size": f"{frames.shape[2]}x{frames.shape[1]}",
                             "preset": preset, "seconds": round(seconds, 3), "bytes": out.stat().st_size})
                print(rows[-1])
    return rows


def bench_seeks(pair: dict, run: Path, fps: Fraction) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_script_timeout(300)
    review = run / "review"
    rows = []
    try:
        driver.get((review / "index.html").as_uri())
        for name, first, second in (
                ("review proxies (all-intra)", pair["original"], pair["dub"]),
                ("original proxy + delivered review MP4", pair["original"], f"../{pair['dub_delivered']}")):
            times = driver.execute_async_script(_SEEK_PAIRS, first, second, float(fps), pair["frame_count"], SEEKS)
            rows.append({"videos": name, "seeks": len(times), "median_ms": round(statistics.median(times), 1),
                         "p95_ms": round(float(np.percentile(times, 95)), 1), "max_ms": round(max(times), 1)})
            print(rows[-1])
    finally:
        driver.quit()
    return rows


def first_pair(run: Path) -> dict:
    data = (run / "review" / "review-data.js").read_text(encoding="utf-8")
    pairs = json.loads(data.split("=", 1)[1].rstrip().rstrip(";"))["pairs"]
    pair = next(p for p in pairs if p["status"] == "delivered")
    delivered = json.loads((run / "delivery.json").read_text(encoding="utf-8"))
    (review_mp4,) = [f["path"] for f in delivered["files"] if f["role"] == "review_mp4"
                     and (f["shot_id"], f["language"]) == (pair["shot_id"], pair["language"])]
    return {**pair, "dub_delivered": review_mp4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    pair = first_pair(args.run)
    fps = Fraction(*pair["fps"])
    result = {"machine": platform.processor() or platform.machine(), "pair": f"{pair['shot_id']}/{pair['language']}",
              "encodes": bench_encodes(pair, args.run, fps), "seeks": bench_seeks(pair, args.run, fps)}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
