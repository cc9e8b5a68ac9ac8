"""Does a line fit its shot? An estimate of how many syllables a line has, by writing system, and
the speaking rate it needs over the time the shot gives it.

The estimate counts what each writing system shows of its syllables:
- Latin and Greek: vowel groups (a run of vowel letters is one syllable: "beau" 1, "Schlüssel" 2;
  "Morgengrauen" 3 where it is said in 4); for English and French a word-final plain "e" after a
  consonant is silent ("make", "ville").
- Cyrillic: vowel letters (every one is a syllable nucleus: "поэт" 2).
- Devanagari: one syllable per consonant or independent vowel, less a consonant joined to the next
  by a virama (a conjunct), less a word-final bare consonant (Hindi drops that inherent "a":
  "कमल" kamal 2, "नमस्ते" namaste 3).
- Arabic and Hebrew write few vowels, so letters stand in for syllables: 0.6 syllables a letter for
  Arabic ("مرحبا بكم", 8 letters, 5 syllables; "كيف حالك", 7 letters, 4), 0.5 for Hebrew ("שלום
  עולם", 8 letters, 4 syllables; "אני אוהב אותך", 11 letters, 6).
- CJK: characters (a Chinese character and a Hangul block are one syllable, a kana one mora, a
  kanji one or two morae).
- Digits: one syllable each. Other scripts are not estimated (no check).

A speaker says about 4 to 8 syllables a second: the mean syllable rates of read speech measured by
Pellegrino, Coupé & Marsico (2011, "A cross-language perspective on speech information rate",
Language 87(3)) run from 5.2 (Mandarin) to 7.8 (Spanish, Japanese) syllables a second; English
6.2, German 6.0, French 7.2. A line that needs more than MAX_NATURAL_RATE units a second is
beyond what a speaker says naturally; the same bound applies to CJK characters (one syllable or
mora each, a kanji more).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from itertools import groupby

MAX_NATURAL_RATE = 8.0  # syllables (or CJK characters) a second

_SCRIPT_RANGES = (
    ("latin", ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x300, 0x36F), (0x1E00, 0x1EFF))),
    ("greek", ((0x370, 0x3FF), (0x1F00, 0x1FFF))),
    ("cyrillic", ((0x400, 0x52F),)),
    ("hebrew", ((0x590, 0x5FF), (0xFB1D, 0xFB4F))),
    ("arabic", ((0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))),
    ("devanagari", ((0x900, 0x97F), (0xA8E0, 0xA8FF))),
    ("cjk", ((0x1100, 0x11FF), (0x3040, 0x30FF), (0x3130, 0x318F), (0x31F0, 0x31FF), (0x3400, 0x4DBF),
             (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0x20000, 0x2FFFF))),
)
_VOWELS = set("aeiouyæøœı" "αεηιουω")
_CYRILLIC_VOWELS = set("аеёиоуыэюяіїє")
_LETTER_SYLLABLES = {"arabic": 0.6, "hebrew": 0.5}
_SILENT_FINAL_E = ("en", "fr")
_DEVANAGARI_VIRAMA = "\u094d"
_DEVANAGARI_CONSONANTS = ((0x915, 0x939), (0x958, 0x95F), (0x978, 0x97F))
_DEVANAGARI_VOWELS = ((0x904, 0x914), (0x960, 0x961), (0x972, 0x977))
_DEVANAGARI_VOWEL_SIGNS = ((0x93A, 0x93B), (0x93E, 0x94C), (0x94E, 0x94F), (0x955, 0x957), (0x962, 0x963))


@dataclass(frozen=True)
class LineLength:
    """A line's estimated length in `unit`s ("syllables", or "characters" when CJK characters make
    up most of it)."""

    count: float
    unit: str

    def rate(self, seconds: Fraction) -> float:
        return self.count / float(seconds)


def line_length(script: str, language: str) -> LineLength | None:
    """The estimated length of `script` (see the module docstring), or None when no part of it is in
    a script estimated here."""
    silent_e = language.split("-")[0].lower() in _SILENT_FINAL_E
    syllables = 0.0
    characters = 0
    for word in unicodedata.normalize("NFC", script).split():
        for script_name, run in groupby(word, key=_script_of):
            text = "".join(run)
            if script_name == "cjk":
                characters += sum(ch.isalpha() for ch in text)
            elif script_name in ("latin", "greek"):
                syllables += _vowel_groups(text, silent_e and script_name == "latin")
            elif script_name == "cyrillic":
                syllables += sum(ch.lower() in _CYRILLIC_VOWELS for ch in text)
            elif script_name in _LETTER_SYLLABLES:
                syllables += _LETTER_SYLLABLES[script_name] * sum(ch.isalpha() for ch in text)
            elif script_name == "devanagari":
                syllables += _devanagari_syllables(text)
            elif script_name == "digit":
                syllables += len(text)
    if syllables == 0 and characters == 0:
        return None
    unit = "characters" if characters > syllables else "syllables"
    return LineLength(syllables + characters, unit)


@lru_cache(maxsize=4096)  # a manifest's lines use few distinct characters; validate looks at each
def _script_of(ch: str) -> str:
    if ch.isdigit():
        return "digit"
    for name, ranges in _SCRIPT_RANGES:
        if _in(ch, ranges):
            return name
    return "other"


def _vowel_groups(text: str, silent_final_e: bool) -> int:
    """Runs of vowel letters (accents and combining marks do not break a run)."""
    groups, in_vowel, last_letters = 0, False, ""
    for ch in text.lower():
        if unicodedata.combining(ch):
            continue
        vowel = unicodedata.normalize("NFD", ch)[0] in _VOWELS
        groups += vowel and not in_vowel
        in_vowel = vowel
        last_letters = (last_letters + ch)[-2:]
    if silent_final_e and groups > 1 and len(last_letters) == 2 and last_letters[1] == "e" and (
            unicodedata.normalize("NFD", last_letters[0])[0] not in _VOWELS):
        groups -= 1
    return groups


def _in(ch: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= ord(ch) <= high for low, high in ranges)


def _devanagari_syllables(text: str) -> int:
    """Akshara with a vowel: consonants and independent vowels, less conjuncts (virama), less a
    word-final consonant with its inherent vowel dropped."""
    count, bare_consonant = 0, False
    for ch in text:
        if _in(ch, _DEVANAGARI_CONSONANTS):
            count, bare_consonant = count + 1, True
        elif _in(ch, _DEVANAGARI_VOWELS):
            count, bare_consonant = count + 1, False
        elif ch == _DEVANAGARI_VIRAMA and bare_consonant:
            count, bare_consonant = count - 1, False
        elif _in(ch, _DEVANAGARI_VOWEL_SIGNS):
            bare_consonant = False
    return count - 1 if bare_consonant and count > 1 else count
