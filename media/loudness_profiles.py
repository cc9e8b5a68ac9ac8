"""Delivery loudness profiles: the named targets and the custom syntax `--loudness` takes.

Plain Python, apart from the meters in `dubflow.media.audio`: the command line checks `--loudness`
while it parses its arguments, and a refused run should not pay for importing torch and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass


class LoudnessProfileError(ValueError):
    """A loudness profile name or custom target that dubflow cannot use."""


@dataclass(frozen=True)
class LoudnessProfile:
    """A delivery loudness: integrated target, tolerance, true-peak ceiling, and what is measured."""

    name: str
    target_lufs: float
    tolerance_lu: float
    max_true_peak_dbtp: float
    dialogue_gated: bool = False  # measured over the dialogue regions (found in the DX stem), not the whole mix

    @property
    def measured_on(self) -> str:
        if self.dialogue_gated:
            return (f"dialogue regions of the mix, found in the DX stem — {DIALOGUE_GATING_NOTE}")
        return "full mix, BS.1770-4 gated"

    def describe(self) -> str:
        return (f"{self.name}: {self.target_lufs:g} LUFS ± {self.tolerance_lu:g} LU, true peak ≤ "
                f"{self.max_true_peak_dbtp:g} dBTP, measured on the {self.measured_on}")


DIALOGUE_GATING_NOTE = (
    "an approximation of Dolby dialogue gating (Dolby Dialogue Intelligence finds speech in the mix; "
    "dubflow takes the speech regions from the DX stem it has)"
)
EBU_R128 = LoudnessProfile("ebu-r128", -23.0, 0.5, -1.0)
NETFLIX = LoudnessProfile("netflix", -27.0, 2.0, -2.0, dialogue_gated=True)
ATSC_A85 = LoudnessProfile("atsc-a85", -24.0, 2.0, -2.0)
STREAMING = LoudnessProfile("streaming", -16.0, 1.0, -1.0)
LOUDNESS_PROFILES: dict[str, LoudnessProfile] = {p.name: p for p in (EBU_R128, NETFLIX, ATSC_A85, STREAMING)}
CUSTOM_SYNTAX = "custom:TARGET_LUFS:TOLERANCE_LU:MAX_TRUE_PEAK_DBTP[:dialogue]"


def parse_loudness_profile(text: str) -> LoudnessProfile:
    """A named profile (`ebu-r128`, `netflix`, `atsc-a85`, `streaming`) or a custom target.

    Custom: ``custom:TARGET_LUFS:TOLERANCE_LU:MAX_TRUE_PEAK_DBTP`` measured on the full mix, e.g.
    ``custom:-20:1:-1``; add ``:dialogue`` to measure dialogue-gated like `netflix`, e.g.
    ``custom:-24:2:-2:dialogue``.
    """
    text = text.strip()
    if text in LOUDNESS_PROFILES:
        return LOUDNESS_PROFILES[text]
    choices = f"use one of {', '.join(LOUDNESS_PROFILES)} or {CUSTOM_SYNTAX} (e.g. custom:-20:1:-1)"
    if not text.startswith("custom:"):
        raise LoudnessProfileError(f"unknown loudness profile {text!r}: {choices}")
    fields = text.split(":")[1:]
    gated = len(fields) == 4 and fields[3] == "dialogue"
    if len(fields) not in (3, 4) or (len(fields) == 4 and not gated):
        raise LoudnessProfileError(f"loudness profile {text!r} is not {CUSTOM_SYNTAX}")
    try:
        target, tolerance, peak = (float(field) for field in fields[:3])
    except ValueError:
        raise LoudnessProfileError(f"loudness profile {text!r}: target, tolerance and peak must be numbers ({CUSTOM_SYNTAX})") from None
    if not -70.0 < target < 0.0:
        raise LoudnessProfileError(f"loudness profile {text!r}: target {target:g} LUFS must lie between -70 and 0")
    if not 0.0 < tolerance <= 10.0:
        raise LoudnessProfileError(f"loudness profile {text!r}: tolerance {tolerance:g} LU must be above 0 and at most 10")
    if not -20.0 <= peak <= 0.0:
        raise LoudnessProfileError(f"loudness profile {text!r}: true-peak ceiling {peak:g} dBTP must lie between -20 and 0")
    return LoudnessProfile(text, target, tolerance, peak, dialogue_gated=gated)
