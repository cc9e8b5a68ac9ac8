"""Subtitles from the script: wrapping rules, timing from the new DX, and files that real parsers read."""

from __future__ import annotations

import random
from datetime import timedelta
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import numpy as np
import srt
import webvtt

from dubflow.manifests.schema import MAX_SCRIPT_CHARS
from dubflow.tasks.subtitles import (
    MAX_LINE_CHARS,
    Cue,
    format_vtt,
    read_cue_times,
    script_cues,
    time_cues,
    wrap_text,
    write_subtitles,
)

RATE = 48_000
LONG_LINE = ("Es regnete an jenem Abend, wie heute, und niemand kam. Und dann, viel später in der Nacht, "
             "klopfte jemand dreimal an die Tür und ging wieder, ohne ein einziges Wort zu sagen.")


def test_short_lines_stay_whole_and_longer_ones_split_evenly() -> None:
    assert wrap_text("Tu as gardé la clé ?") == [("Tu as gardé la clé ?",)]
    (cue,) = wrap_text("Nous partons à l'aube, avant que la ville ne se réveille.")
    assert cue == ("Nous partons à l'aube, avant", "que la ville ne se réveille.")  # 28 + 28, not 42 + 14


def test_long_scripts_become_several_cues_of_two_lines_at_most() -> None:
    cues = wrap_text(LONG_LINE)
    lines = [line for cue in cues for line in cue]
    assert len(cues) == 3 and all(1 <= len(cue) <= 2 for cue in cues)
    assert all(len(line) <= MAX_LINE_CHARS for line in lines)
    assert " ".join(lines) == LONG_LINE  # nothing lost, reordered or added
    assert max(map(len, lines)) - min(map(len, lines)) < 15  # evenly filled


def test_text_without_spaces_is_cut_at_the_line_length() -> None:
    japanese = "私たちは夜明けに出発します。街が目を覚ます前に。" * 3
    lines = [line for cue in wrap_text(japanese) for line in cue]
    assert "".join(lines) == japanese and all(len(line) <= MAX_LINE_CHARS for line in lines)


def _lines(text: str, max_chars: int = MAX_LINE_CHARS) -> list[str]:
    return [line for cue in wrap_text(text, max_chars) for line in cue]


def _cost(lines: list[str]) -> tuple[int, int]:
    """What the wrapping promises: the fewest lines, then the most even (smallest sum of squares)."""
    return len(lines), sum(len(line) ** 2 for line in lines)


def _best_by_trying_every_split(words: list[str], max_chars: int) -> tuple[int, int]:
    candidates = []
    for count in range(len(words)):
        for cuts in combinations(range(1, len(words)), count):
            bounds = (0, *cuts, len(words))
            lines = [" ".join(words[a:b]) for a, b in zip(bounds, bounds[1:])]
            if all(len(line) <= max_chars for line in lines):
                candidates.append(_cost(lines))
    return min(candidates)


def test_the_wrapping_is_the_best_of_every_possible_split() -> None:
    rng = random.Random(7)
    for _ in range(150):
        words = ["x" * rng.randint(1, 9) for _ in range(rng.randint(1, 11))]
        lines = _lines(" ".join(words), max_chars=16)
        assert " ".join(lines).split() == words and all(len(line) <= 16 for line in lines)
        assert _cost(lines) == _best_by_trying_every_split(words, 16)


def _greedy_lines(words: list[str], max_chars: int) -> list[str]:
    """Fill each line as far as it goes: the fewest lines, but not the most even."""
    lines = [words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) <= max_chars:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def test_a_script_at_the_manifest_limit_wraps_in_the_fewest_most_even_lines() -> None:
    """The script-length limit's worst case (the balancer is linear; its time is in BENCHMARKS.md)."""
    script = (LONG_LINE + " ") * (MAX_SCRIPT_CHARS // len(LONG_LINE) + 1)
    script = script[:MAX_SCRIPT_CHARS].rsplit(" ", 1)[0]
    cues = wrap_text(script)
    lines = [line for cue in cues for line in cue]
    greedy = _greedy_lines(script.split(), MAX_LINE_CHARS)
    assert " ".join(lines) == script and all(len(line) <= MAX_LINE_CHARS for line in lines)
    assert all(1 <= len(cue) <= 2 for cue in cues) and len(cues) == (len(lines) + 1) // 2
    assert len(lines) == len(greedy) and _cost(lines)[1] < _cost(greedy)[1]


def test_cues_share_the_dialogue_time_by_length_without_gaps() -> None:
    cues = time_cues([("a" * 30,), ("b" * 10,)], 1000, 3000)
    assert cues == [Cue(1000, 2500, ("a" * 30,)), Cue(2500, 3000, ("b" * 10,))]


def _speech(start: float, end: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    voice = 0.2 * np.sin(2 * np.pi * 180 * t) * ((t >= start) & (t < end))
    return np.stack([voice, voice]).astype(np.float32)


def test_cues_span_the_dialogue_found_in_the_dx(tmp_path: Path) -> None:
    duration = Fraction(72 * 1001, 24000)  # 3.003 s
    cues = script_cues(LONG_LINE, _speech(0.5, 2.5, 3.003), RATE, duration)
    assert abs(cues[0].start_ms - 500) <= 20 and abs(cues[-1].end_ms - 2500) <= 20
    files = write_subtitles(cues, tmp_path, "sh_de")

    parsed = list(srt.parse(files.srt.read_text(encoding="utf-8")))
    assert [p.content.split("\n") for p in parsed] == [list(cue.lines) for cue in cues]
    assert [(p.start, p.end) for p in parsed] == [
        (timedelta(milliseconds=cue.start_ms), timedelta(milliseconds=cue.end_ms)) for cue in cues]
    vtt = webvtt.read(str(files.vtt))
    assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in vtt] == [
        (cue.start_ms, cue.end_ms) for cue in cues]
    assert [c.text.split("\n") for c in vtt] == [list(cue.lines) for cue in cues]
    assert read_cue_times(files.srt) == read_cue_times(files.vtt) == [(c.start_ms, c.end_ms) for c in cues]


def test_dialogue_to_the_last_sample_ends_inside_the_shot() -> None:
    duration = Fraction(3003, 1000)
    cues = script_cues("Hallo.", _speech(0.0, 4.0, 3.003), RATE, duration)
    assert cues == [Cue(0, 3003, ("Hallo.",))]


def test_a_silent_dx_still_gets_the_line_over_the_whole_shot() -> None:
    cues = script_cues("Hallo.", np.zeros((2, 3 * RATE), np.float32), RATE, Fraction(3))
    assert cues == [Cue(0, 3000, ("Hallo.",))]


def test_webvtt_escapes_markup_characters() -> None:
    text = format_vtt([Cue(0, 1000, ("Tom & Jerry <3",))])
    assert text.startswith("WEBVTT\n\n") and "Tom &amp; Jerry &lt;3" in text
