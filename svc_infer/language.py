"""Which language a clinical note is in, and whether the text model understands it.

The text model (all-MiniLM-L6-v2) was trained on English: given a Russian note it still
returns findings with confident-looking scores, and they mean nothing. The model card
declares the languages a version understands (`ModelCard.languages`); a note detected to be
in another language is analysed as before but flagged (`TextAnalysis.outside_model_languages`)
so the report and the web app can say that its findings are unreliable.

How a note is judged, in two steps:

1. Script (Unicode, no model): the note's words are grouped by the script of their letters
   (Latin, Cyrillic, Greek, Arabic, Han, ...). A group that holds at least MIN_SHARE of the
   note's letters and whose script none of the model's languages is written in (Cyrillic for
   an English model) makes the note outside, whatever else it holds. This is the case that
   matters most and it needs no statistics: it also catches a Russian note peppered with
   Latin abbreviations and drug names, which language identifiers call English.
2. Language (lingua-language-detector): each such group is identified among CANDIDATES; a
   confident answer (MIN_CONFIDENCE, at least MIN_LETTERS letters) names the group's
   language, and a group in the model's script but in another language (a German note for
   an English model) makes the note outside too. Short or abbreviation-heavy text ("Pt c/o
   SOB, CP x2d") is not confidently anything: it is `und` and never flagged, so English notes
   do not raise false alarms.

lingua was chosen over langdetect (unmaintained since 2021, random unless seeded, weak on
short text) and fastText-based detectors (they download their model at run time): it is
maintained, deterministic, offline (its n-gram models ship in the wheel) and the most
accurate of them on short text. Its cost: the models of the candidate languages of the
note's script load on first use, once per process (measured on the 2-core development
machine under load: Cyrillic 1.4-4.3 s and +160 MiB, the Latin candidates 5-6.5 s and
+210 MiB; then under 1 ms per note), so detection runs in a worker thread.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

UNDETERMINED = "und"
"""ISO 639-2's code for "undetermined": too short or too mixed to tell."""
MIN_SHARE = 0.2
"""A script or language counts when it holds at least this share of the note's letters."""
MIN_CONFIDENCE = 0.6
"""lingua's confidence (0..1, relative to the other candidates) needed to name a language."""
MIN_LETTERS = 12
"""Fewer letters than this are never confidently any language."""

# The languages a note is identified among: those a clinic is likely to write in, in each
# script. Fewer candidates load faster and confuse less; a language outside this list is
# still caught by its script, or comes out as `und`.
CANDIDATES: tuple[Language, ...] = (
    Language.ENGLISH,
    Language.GERMAN,
    Language.FRENCH,
    Language.SPANISH,
    Language.ITALIAN,
    Language.PORTUGUESE,
    Language.DUTCH,
    Language.POLISH,
    Language.TURKISH,
    Language.RUSSIAN,
    Language.UKRAINIAN,
    Language.BELARUSIAN,
    Language.BULGARIAN,
    Language.KAZAKH,
    Language.GREEK,
    Language.ARABIC,
    Language.HEBREW,
    Language.CHINESE,
    Language.JAPANESE,
    Language.KOREAN,
)

# The script each language is written in (ISO 639-1 → the first word of the Unicode
# character names of its letters). A model language missing here disables step 1 for it.
SCRIPTS: dict[str, str] = {
    **dict.fromkeys(("en", "de", "fr", "es", "it", "pt", "nl", "pl", "tr", "ro", "cs"), "LATIN"),
    **dict.fromkeys(("sv", "da", "no", "fi", "hu", "sk", "sl", "hr", "lt", "lv", "et"), "LATIN"),
    **dict.fromkeys(("ru", "uk", "be", "bg", "kk", "sr", "mk", "mn"), "CYRILLIC"),
    "el": "GREEK",
    "ar": "ARABIC",
    "he": "HEBREW",
    "zh": "CJK",
    "ja": "CJK",
    "ko": "HANGUL",
}

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters (digits and punctuation split words)
# Scripts by the first word of their letters' Unicode names; any other letter (µ is MICRO
# SIGN, º is MASCULINE ORDINAL INDICATOR) is OTHER and never makes a note outside.
_KNOWN_SCRIPTS = frozenset(SCRIPTS.values()) | {"ARMENIAN", "GEORGIAN", "DEVANAGARI", "THAI"}
OTHER = "OTHER"


@dataclass(frozen=True)
class NoteLanguage:
    """The verdict on one note."""

    language: str
    """ISO 639-1 code of the note's language; the outside language when flagged; `und`."""
    model_languages: tuple[str, ...]
    """The model's declared languages (empty: undeclared, and nothing is flagged)."""
    outside_model_languages: bool


def _script(letter: str) -> str:
    """The script of one letter, from its Unicode name: `LATIN`, `CYRILLIC`, `CJK`, ..."""
    first = unicodedata.name(letter, "").split(" ", 1)[0]
    if first in {"HIRAGANA", "KATAKANA"}:
        return "CJK"  # Japanese mixes kana and Han in one sentence
    return first if first in _KNOWN_SCRIPTS else OTHER


def _groups(text: str) -> dict[str, list[str]]:
    """The note's words by script (a word's script is that of most of its letters)."""
    groups: dict[str, list[str]] = {}
    for word in _WORD.findall(text):
        scripts = [_script(letter) for letter in word]
        script = max(sorted(set(scripts)), key=scripts.count)
        groups.setdefault(script, []).append(word)
    return groups


@cache
def _detector() -> LanguageDetector:
    """One detector per process: lingua loads each language's n-gram model on first use."""
    return LanguageDetectorBuilder.from_languages(*CANDIDATES).build()


def identify(text: str) -> str:
    """The ISO 639-1 code of `text`'s language when lingua is confident, else `und`."""
    if sum(len(word) for word in _WORD.findall(text)) < MIN_LETTERS:
        return UNDETERMINED
    values = _detector().compute_language_confidence_values(text)
    if not values or values[0].value < MIN_CONFIDENCE:
        return UNDETERMINED
    return values[0].language.iso_code_639_1.name.lower()


def _normalised(languages: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(code.strip().lower() for code in languages if code.strip()))


def detect_note_language(text: str, model_languages: Sequence[str]) -> NoteLanguage:
    """Judge `text` against the model's declared languages (see the module docstring)."""
    declared = _normalised(model_languages)
    groups = _groups(text)
    letters = {script: sum(len(w) for w in words) for script, words in groups.items()}
    total = sum(letters.values())
    if total == 0:
        return NoteLanguage(UNDETERMINED, declared, outside_model_languages=False)
    model_scripts = {SCRIPTS.get(code) for code in declared}
    script_known = None not in model_scripts
    main_language = UNDETERMINED
    outside_language: str | None = None
    for script in sorted(letters, key=lambda s: -letters[s]):
        if letters[script] / total < MIN_SHARE:
            continue
        language = identify(" ".join(groups[script]))
        if main_language == UNDETERMINED:
            main_language = language
        if not declared or outside_language is not None:
            continue
        foreign_script = script_known and script not in model_scripts and script != OTHER
        foreign_language = language != UNDETERMINED and language not in declared
        if foreign_script or foreign_language:
            outside_language = language
    if outside_language is not None:
        return NoteLanguage(outside_language, declared, outside_model_languages=True)
    return NoteLanguage(main_language, declared, outside_model_languages=False)
