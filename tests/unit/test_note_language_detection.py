"""Which language a note is in, and whether an English-only model understands it: the table
of notes a clinic writes (Russian, Russian with Latin abbreviations, other Latin-script
languages, English prose, English shorthand that no detector can place)."""

from __future__ import annotations

import pytest

from svc_infer.language import UNDETERMINED, detect_note_language
from svc_infer.models.card import ModelCard


@pytest.mark.parametrize(
    ("note", "language", "outside"),
    [
        ("Кашель, температура 39 °C, хрипы справа — подозрение на пневмонию", "ru", True),
        ("Пациент жалуется на боль в груди. ЭКГ: подъём ST.", "ru", True),
        # Mostly Latin letters, but a Russian note: flagged by its Cyrillic share.
        ("Кашель 3 дня, t 38.5, SpO2 95%. Rx: amoxicillin.", UNDETERMINED, True),
        ("Кашель", UNDETERMINED, True),
        ("Fièvre à 39 °C, toux, râles crépitants à droite, dyspnée depuis deux jours.", "fr", True),
        ("Husten, Fieber 39 °C, Rasselgeräusche rechts, Verdacht auf Pneumonie.", "de", True),
        (
            "Patient presents with fever, productive cough and crackles at the right base.",
            "en",
            False,
        ),
        ("Fell from a ladder, pain and swelling of the left wrist.", "en", False),
        # English shorthand: no detector is confident, and an unsure guess must not flag it.
        ("CXR: RLL consolidation. Abx started.", UNDETERMINED, False),
        ("Pt c/o SOB, CP x2d. Hx HTN, DM2.", UNDETERMINED, False),
        ("BP 120/80, HR 88, SpO2 94%", UNDETERMINED, False),
        ("Sudden chest pain, troponin 2.3 µg/L, ST elevation: STEMI.", UNDETERMINED, False),
        ("5 µg — № 7 ± 2 °C", UNDETERMINED, False),
        ("", UNDETERMINED, False),
    ],
)
def test_a_notes_language_and_whether_an_english_model_understands_it(
    note: str, language: str, outside: bool
) -> None:
    verdict = detect_note_language(note, ["en"])

    assert (verdict.language, verdict.outside_model_languages) == (language, outside)
    assert verdict.model_languages == ("en",)


def test_a_model_that_declares_russian_does_not_flag_a_russian_note() -> None:
    verdict = detect_note_language("Пациент жалуется на боль в груди и одышку.", ["EN", "ru"])

    assert (verdict.language, verdict.outside_model_languages) == ("ru", False)
    assert verdict.model_languages == ("en", "ru")


def test_a_model_that_declares_no_languages_flags_nothing() -> None:
    verdict = detect_note_language("Пациент жалуется на боль в груди и одышку.", [])

    assert (verdict.language, verdict.outside_model_languages) == ("ru", False)


def test_the_model_card_carries_its_languages_through_json() -> None:
    card = ModelCard(
        model="minilm",
        version=1,
        task="text-embedding",
        trained=True,
        source="test",
        inputs={},
        outputs={},
        languages=("en",),
    )

    assert ModelCard.from_json(card.to_json()).languages == ("en",)
    older = card.to_json().replace(',"languages":["en"]', "")
    assert "languages" not in older
    assert ModelCard.from_json(older).languages == ()
