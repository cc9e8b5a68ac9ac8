"""How many different files x264 makes of the same frames, per x264 option, in one process.

    python bench/x264_reproducible.py [--encodes 6] [--threads 1] [PARAMS ...]

Frames: 50 frames of ffmpeg's ``testsrc2`` with temporal noise at 320x180 (the ffmpeg CLI makes them).
Each encode is PyAV's libx264 at CRF 18, preset ``fast`` (the review copy's settings in
``media/io.py``) plus one ``x264-params`` string (``-`` for none), to memory; before each, the heap is
refilled with noise (buffers allocated and freed), so memory x264 reads without initialising holds
other bytes each time. Printed per option: the number of distinct outputs and their sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess

import av
import numpy as np

WIDTH, HEIGHT, FRAMES = 320, 180, 50


def source_frames() -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={WIDTH}x{HEIGHT}:rate=25,noise=alls=40:allf=t",
         "-frames:v", str(FRAMES), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(FRAMES, HEIGHT, WIDTH, 3)


def refill_heap(rng: np.random.Generator) -> None:
    buffers = [bytearray(rng.bytes(size)) for size in rng.integers(1 << 10, 1 << 20, 48)]
    del buffers


def encode(frames: np.ndarray, params: str, threads: int) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=25)
        video.pix_fmt, video.width, video.height = "yuv420p", WIDTH, HEIGHT
        video.options = {"crf": "18", "preset": "fast", **({"x264-params": params} if params != "-" else {})}
        video.codec_context.thread_count = threads
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            container.mux(video.encode(frame))
        container.mux(video.encode())
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("params", nargs="*", default=["-", "mbtree=0"])
    parser.add_argument("--encodes", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="0: x264's automatic count")
    args = parser.parse_args()
    frames, rng = source_frames(), np.random.default_rng(0)
    for params in args.params:
        outputs = []
        for _ in range(args.encodes):
            refill_heap(rng)
            outputs.append(encode(frames, params, args.threads))
        sizes = sorted({len(o) for o in outputs})
        digests = {hashlib.sha256(o).hexdigest()[:12] for o in outputs}
        print(f"{params}: {len(digests)} distinct of {args.encodes}; sizes {sizes}", flush=True)


if __name__ == "__main__":
    main()
