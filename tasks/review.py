"""The review page written with every delivery: `<run>/review/index.html`, opened by `dubflow review RUN`.

A static, self-contained page (no server, no network): the HTML, script and style ship with dubflow
(`tasks/review_page/`), the run's data is one script file (`review-data.js`: a page opened from
`file://` may not fetch JSON), and every media path is relative to the run folder, so the page works
from the delivery folder, from a downloaded copy of an S3 delivery and from a bucket served over
HTTP alike.

The page shows a pair's two pictures frame-locked: both videos stay paused and are sought together
to the frame the sound has reached, then drawn together (see review.js). So besides the delivered
files it needs review proxies that a browser seeks cheaply and exactly: per shot the locked picture
(`review/media/<shot>_original.mp4`; locked pictures are usually ProRes MOVs that browsers do not
play) and per pair the delivered picture (`review/media/<shot>_<language>_dub.mp4`), both
picture-only, all-intra H.264 (every frame a keyframe: a seek decodes one frame), frame for frame
at the exact rate, at most 960 px on the longer side. The original mix (dialogue + bed, the source soundtrack on
the picture's timeline) is `review/media/<shot>_original_mix.wav`; per pair, a thumbnail of the
dub's middle frame. `review/history.json` carries the verdicts of earlier takes (written by
`dubflow retake`), so the page shows each pair's take history.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from importlib import resources
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.manifests.schema import ManifestRow
from dubflow.media.audio import picture_samples
from dubflow.media.files import atomic_write_bytes
from dubflow.media.io import DELIVERY_SAMPLE_RATE, PictureFormat, iter_frames, read_audio, write_video
from dubflow.tasks.publish import DeliveryFile, PairOutcome
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.separate import SeparatedShot
from dubflow.tasks.subtitles import script_cues
from dubflow.tasks.validate import Shot

REVIEW_FOLDER = "review"
HISTORY_FILE = "history.json"
REVIEW_FORMAT = "dubflow-review/1"  # the review file the page exports and `dubflow retake` reads
PAGE_ASSETS = ("index.html", "review.js", "review.css")
_LEVEL_FLOOR_DB = -90.0  # silence is drawn at the bottom of the level plot, not at -inf
_THUMBNAIL_HEIGHT = 90
PROXY_MAX_SIZE = 960  # review proxies: larger pictures are scaled down (aspect kept) to keep them small
PROXY_CRF = 23  # x264's default quality: every frame is a keyframe, so a lower CRF would grow them fast


@dataclass(frozen=True)
class ReviewedTake:
    """One verdict on one take of a pair, as the review file and the take history record it."""

    shot_id: str
    language: str
    take: int
    verdict: str  # approved | rejected
    note: str = ""
    script: str = ""  # the line the take said
    new_script: str = ""  # for a rejected take: the edited line the next take says ("" keeps the line)
    run_id: str = ""  # the run that delivered the take


def frame_levels(audio: np.ndarray, frame_count: int, fps: Fraction, sample_rate: int) -> list[float]:
    """Level (dBFS of the mean square over channels) per picture frame, on the exact frame boundaries."""
    bounds = [picture_samples(index, fps, sample_rate) for index in range(frame_count + 1)]
    power = np.mean(np.square(audio.astype(np.float64)), axis=0)
    levels = []
    for start, end in zip(bounds, bounds[1:]):
        mean_square = float(power[start:end].mean()) if end > start else 0.0
        levels.append(round(max(10 * np.log10(mean_square), _LEVEL_FLOOR_DB) if mean_square > 0 else _LEVEL_FLOOR_DB, 1))
    return levels


def write_review_proxy(frames: Iterable[np.ndarray], picture: PictureFormat, out: Path) -> Path:
    """A picture-only, all-intra H.264 copy of `frames` at exactly the rate (one frame out per frame
    in) with the SAR and colour tags of `picture`, at a size browsers play (`_proxy_frame`)."""
    return write_video(out, (_proxy_frame(frame) for frame in frames), picture, crf=PROXY_CRF, all_intra=True)


def _proxy_frame(frame: np.ndarray) -> np.ndarray:
    """`frame` no larger than `PROXY_MAX_SIZE` on its longer side and even-sized (an odd size would
    be encoded 4:4:4, which browsers do not decode), the aspect kept to the nearest even size."""
    height, width = frame.shape[:2]
    scale = min(1.0, PROXY_MAX_SIZE / max(width, height))
    size = (max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2))
    if size == (width, height):
        return frame
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS))


def write_thumbnail(picture: Path, frame_index: int, out: Path) -> Path:
    """Frame `frame_index` of `picture`, scaled to a thumbnail's height, as JPEG."""
    frame = next(islice(iter_frames(picture), frame_index, None))
    image = Image.fromarray(frame)
    width = max(1, round(image.width * _THUMBNAIL_HEIGHT / image.height))
    image.resize((width, _THUMBNAIL_HEIGHT)).save(out, "JPEG", quality=85)
    return out


def load_history(run_dir: Path) -> list[ReviewedTake]:
    """The take history a delivery's review page carries (empty when there is none)."""
    path = Path(run_dir) / REVIEW_FOLDER / HISTORY_FILE
    if not path.is_file():
        return []
    return [ReviewedTake(**record) for record in json.loads(path.read_text(encoding="utf-8"))["takes"]]


def build_review(
    run_id: str,
    rows: list[ManifestRow],
    shots: dict[str, Shot],
    separated: dict[str, SeparatedShot],
    outcomes: list[PairOutcome],
    files: list[DeliveryFile],
    profile: dict,
    history: list[ReviewedTake],
    out_dir: Path,
) -> list[DeliveryFile]:
    """Write the review page of a run into `out_dir` and return its files as the delivery lists them
    (under `review/`). `files` are the run's delivered files; `profile` is the run info's profile
    (name, random_weights, notice); `history` the verdicts on earlier takes."""
    out_dir = Path(out_dir)
    (out_dir / "media").mkdir(parents=True, exist_ok=True)
    delivered = {(item.shot_id, item.language, item.role): item for item in files}
    outcome_of = {(o.shot_id, o.language): o for o in outcomes}
    written: list[tuple[Path, str, str, str | None]] = []  # (file, path under review/, shot, language)
    originals: dict[str, tuple[str, str]] = {}  # shot -> its picture proxy and original mix, under review/
    pairs = []
    for row in rows:
        outcome = outcome_of[(row.shot_id, row.language)]
        pair = {
            "shot_id": row.shot_id, "language": row.language, "take": row.take, "script": row.script,
            "dialogue_supplied": bool(row.dialogue), "status": outcome.status, "reason": outcome.reason,
            "history": [vars(t) for t in history if (t.shot_id, t.language) == (row.shot_id, row.language)],
        }
        if outcome.status == "delivered":
            shot = shots[row.shot_id]
            if row.shot_id not in originals:
                originals[row.shot_id] = (f"media/{row.shot_id}_original.mp4", f"media/{row.shot_id}_original_mix.wav")
                picture, mix = originals[row.shot_id]
                # Upright and tagged as the delivered picture is, so the two show alike side by side.
                write_review_proxy(iter_frames(shot.source, shot.media.rotation), shot.media.picture_format,
                                   out_dir / picture)
                shutil.copyfile(separated[row.shot_id].mix, out_dir / mix)  # dialogue + bed, exactly
                written += [(out_dir / name, name, row.shot_id, None) for name in (picture, mix)]
            review_copy = delivered[(row.shot_id, row.language, "review_mp4")]
            dub = f"media/{row.shot_id}_{row.language}_dub.mp4"
            write_review_proxy(iter_frames(review_copy.source), shot.media.picture_format, out_dir / dub)
            thumbnail = f"media/{row.shot_id}_{row.language}_thumb.jpg"
            write_thumbnail(out_dir / dub, shot.media.frame_count // 2, out_dir / thumbnail)
            written += [(out_dir / name, name, row.shot_id, row.language) for name in (dub, thumbnail)]
            pair.update(_pair_media(row, shot, separated[row.shot_id], delivered, originals[row.shot_id], dub,
                                    thumbnail))
        pairs.append(pair)

    data = {"format": REVIEW_FORMAT, "run_id": run_id, "profile": profile, "pairs": pairs}
    script = f"window.DUBFLOW_REVIEW = {json.dumps(data, ensure_ascii=False, allow_nan=False)};\n"
    atomic_write_bytes(out_dir / "review-data.js", script.encode("utf-8"))
    history_document = {"format": REVIEW_FORMAT, "run_id": run_id, "takes": [vars(t) for t in history]}
    atomic_write_bytes(out_dir / HISTORY_FILE, json.dumps(history_document, indent=1, ensure_ascii=False).encode())
    assets = resources.files("dubflow.tasks") / "review_page"
    for name in PAGE_ASSETS:
        with resources.as_file(assets / name) as asset:
            shutil.copyfile(asset, out_dir / name)
    for name in ("review-data.js", HISTORY_FILE, *PAGE_ASSETS):
        written.append((out_dir / name, name, "", None))
    return [DeliveryFile(path, f"{REVIEW_FOLDER}/{name}", "review", shot_id, language)
            for path, name, shot_id, language in written]


def _pair_media(row: ManifestRow, shot: Shot, separated: SeparatedShot,
                delivered: dict[tuple[str, str | None, str], DeliveryFile], original: tuple[str, str], dub: str,
                thumbnail: str) -> dict:
    """What the pair view plays and draws: paths relative to `review/`, the picture's exact rate,
    frame levels of the original and new dialogue, the subtitle cues and the QC report."""
    media = shot.media

    def relative(role: str, language: str | None = row.language) -> str:
        return f"../{delivered[(row.shot_id, language, role)].path}"

    new_dialogue, _ = read_audio(delivered[(row.shot_id, row.language, "dx")].source)
    original_dialogue, _ = read_audio(separated.dialogue)
    qc = json.loads(delivered[(row.shot_id, row.language, "qc")].source.read_text(encoding="utf-8"))
    duration = Fraction(media.frame_count) / media.fps
    cues = script_cues(row.script, new_dialogue, DELIVERY_SAMPLE_RATE, duration)
    generated = delivered.get((row.shot_id, row.language, "dx_generated"))
    return {
        "fps": [media.fps.numerator, media.fps.denominator],
        "frame_count": media.frame_count,
        "thumbnail": thumbnail,
        "original": original[0],
        "dub": dub,
        "audio": {
            "new_mix": relative("mix"),
            "original_mix": original[1],
            "new_dialogue": relative("dx"),
            "me": relative("me", None),
            **({"generated_dialogue": f"../{generated.path}"} if generated else {}),
        },
        "qc_summary": relative("qc_summary"),
        "levels": {
            "original_dialogue": frame_levels(original_dialogue, media.frame_count, media.fps, DELIVERY_SAMPLE_RATE),
            "new_dialogue": frame_levels(new_dialogue, media.frame_count, media.fps, DELIVERY_SAMPLE_RATE),
        },
        "cues": [{"start_ms": cue.start_ms, "end_ms": cue.end_ms, "text": "\n".join(cue.lines)} for cue in cues],
        "qc": {"passed": qc["passed"], "status": qc["status"], "checks": qc["checks"], "levels": qc["levels"]},
    }


review_page_task = task(name="review page", cache_policy=NO_CACHE, **STAGE_RETRIES)(build_review)
