"""Per (shot, language): SRT and WebVTT subtitles of the script, timed to the new dialogue.

The script's line is shown while the new DX stem carries speech (from the first to the last
dialogue region `dubflow.media.audio.dialogue_regions` finds), never outside the shot. Text is
wrapped to at most 42 characters a line and two lines a cue, in as few lines as possible and with
lines of even length (the smallest sum of squared lengths; time linear in the text's length); a
line that needs more than two lines is split into several consecutive cues, each shown for a share
of the dialogue time proportional to its length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from dubflow.manifests.schema import ManifestRow
from dubflow.media.audio import dialogue_regions
from dubflow.media.files import atomic_write_bytes
from dubflow.media.io import read_audio
from dubflow.tasks.remix import RemixedPair
from dubflow.tasks.retries import STAGE_RETRIES
from dubflow.tasks.stage_cache import StageCache, stage_key
from dubflow.tasks.validate import Shot

SUBTITLES_VERSION = 2  # bump when the stage's output changes for the same inputs
MAX_LINE_CHARS = 42
MAX_LINES_PER_CUE = 2
_TIMING = re.compile(r"(\d{2,}):(\d{2}):(\d{2})[,.](\d{3})\s+-->\s+(\d{2,}):(\d{2}):(\d{2})[,.](\d{3})")


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    lines: tuple[str, ...]


@dataclass(frozen=True)
class SubtitleFiles:
    srt: Path
    vtt: Path


def wrap_text(text: str, max_chars: int = MAX_LINE_CHARS, max_lines: int = MAX_LINES_PER_CUE) -> list[tuple[str, ...]]:
    """The text of each cue: the fewest lines of at most `max_chars`, as even in length as possible,
    `max_lines` to a cue. Words break at spaces; a word longer than a line (or text written without
    spaces) is cut at `max_chars`."""
    words = [word[i:i + max_chars] for word in text.split() for i in range(0, len(word), max_chars)]
    lines = _balanced_lines(words, max_chars)
    return [tuple(lines[i:i + max_lines]) for i in range(0, len(lines), max_lines)]


def _balanced_lines(words: list[str], max_chars: int) -> list[str]:
    """`words` in lines of at most `max_chars` (no word is longer): the fewest lines, and among
    those the smallest sum of squared line lengths. With the line count fixed the lengths have a
    fixed sum, so that is the most even split.

    A dynamic programme over word positions: best[j] is the best (lines, sum of squares) for
    words[:j], found from the last line's possible starts. A line holds at most max_chars // 2 + 1
    words (one character and a space each), so each position looks back a bounded number of words
    and the whole is linear in the number of words."""
    n = len(words)
    best: list[tuple[int, int]] = [(0, 0)] + [(n + 1, 0)] * n
    start = [0] * (n + 1)  # start[j]: where the last line of the best split of words[:j] starts
    for j in range(1, n + 1):
        width = -1
        for i in range(j - 1, -1, -1):
            width += len(words[i]) + 1  # words[i:j] joined by single spaces
            if width > max_chars:
                break
            lines, squares = best[i]
            candidate = (lines + 1, squares + width * width)
            if candidate < best[j]:
                best[j], start[j] = candidate, i
    lines, j = [], n
    while j > 0:
        lines.append(" ".join(words[start[j]:j]))
        j = start[j]
    return lines[::-1]


def time_cues(texts: list[tuple[str, ...]], start_ms: int, end_ms: int) -> list[Cue]:
    """Consecutive cues over [start_ms, end_ms], each lasting in proportion to its characters."""
    weights = np.cumsum([sum(len(line) for line in lines) for lines in texts])
    if not texts:
        return []
    bounds = [start_ms] + [start_ms + int((end_ms - start_ms) * w // weights[-1]) for w in weights]
    return [Cue(bounds[i], bounds[i + 1], lines) for i, lines in enumerate(texts)]


def script_cues(script: str, dialogue: np.ndarray, sample_rate: int, duration: Fraction) -> list[Cue]:
    """Cues of `script` spanning the dialogue found in `dialogue`, inside [0, duration]; the whole
    shot when no dialogue is found (QC reports a silent dialogue stem separately)."""
    shot_ms = math.floor(duration * 1000)
    regions = dialogue_regions(dialogue, sample_rate)
    if regions:
        start_ms = regions[0][0] * 1000 // sample_rate
        end_ms = min(-(-regions[-1][1] * 1000 // sample_rate), shot_ms)
    else:
        start_ms, end_ms = 0, shot_ms
    return time_cues(wrap_text(script), start_ms, end_ms)


def _timestamp(ms: int, separator: str) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def format_srt(cues: list[Cue]) -> str:
    blocks = [
        f"{number}\n{_timestamp(cue.start_ms, ',')} --> {_timestamp(cue.end_ms, ',')}\n" + "\n".join(cue.lines)
        for number, cue in enumerate(cues, start=1)
    ]
    return "\n\n".join(blocks) + "\n"


def format_vtt(cues: list[Cue]) -> str:
    def escape(line: str) -> str:  # WebVTT cue text is markup: & < > must be character references
        return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    blocks = [
        f"{number}\n{_timestamp(cue.start_ms, '.')} --> {_timestamp(cue.end_ms, '.')}\n"
        + "\n".join(escape(line) for line in cue.lines)
        for number, cue in enumerate(cues, start=1)
    ]
    return "WEBVTT\n\n" + "\n\n".join(blocks) + "\n"


def read_cue_times(path: Path) -> list[tuple[int, int]]:
    """(start_ms, end_ms) of every cue of an SRT or WebVTT file, in file order."""
    times = []
    for match in _TIMING.finditer(Path(path).read_text(encoding="utf-8")):
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(group) for group in match.groups())
        times.append((((h1 * 60 + m1) * 60 + s1) * 1000 + ms1, ((h2 * 60 + m2) * 60 + s2) * 1000 + ms2))
    return times


def write_subtitles(cues: list[Cue], directory: Path, prefix: str) -> SubtitleFiles:
    return SubtitleFiles(
        srt=atomic_write_bytes(Path(directory) / f"{prefix}.srt", format_srt(cues).encode("utf-8")),
        vtt=atomic_write_bytes(Path(directory) / f"{prefix}.vtt", format_vtt(cues).encode("utf-8")),
    )


def subtitles_key(row: ManifestRow, remix_key: str) -> str:
    """The shot's duration comes in through the remix key (its picture's sha256)."""
    return stage_key("subtitles", SUBTITLES_VERSION, script=row.script, remix=remix_key)


def subtitle_pair(row: ManifestRow, remixed: RemixedPair, shot: Shot, out_dir: Path) -> SubtitleFiles:
    dialogue, rate = read_audio(remixed.dialogue)
    cues = script_cues(row.script, dialogue, rate, shot.media.duration)
    return write_subtitles(cues, out_dir, f"{row.shot_id}_{row.language}")


@task(name="subtitles", cache_policy=NO_CACHE, task_run_name="subtitles {row.shot_id} {row.language}",
      **STAGE_RETRIES)
def subtitle_pair_task(
    row: ManifestRow, remixed: RemixedPair, shot: Shot, cache: StageCache, key: str
) -> SubtitleFiles:
    return cache.result("subtitles", key, SubtitleFiles, lambda out_dir: subtitle_pair(row, remixed, shot, out_dir))
