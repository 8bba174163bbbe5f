"""Clinical faithfulness checks on hand-made cases in English, Spanish, French and Portuguese: numbers
(decimal comma or point, units attached or not, thousands, ranges, dates), novel bigrams, compression, and
the degenerate-summary detector (the embedded default's Spanish loops)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from clinsum import degeneration, faithfulness
from clinsum.faithfulness import (
    compression,
    document_faithfulness,
    faithfulness_means,
    novel_bigram_rate,
    readings,
    unsupported_numbers,
)

D = Decimal


@pytest.mark.parametrize(
    "token, expected",
    [
        ("45", [(D(45),)]),
        ("2,5", [(D("2.5"),)]),
        ("2.5", [(D("2.5"),)]),
        ("1,500", [(D(1500),), (D("1.5"),)]),  # English thousands or a Spanish decimal
        ("1.500", [(D(1500),), (D("1.5"),)]),
        ("1.234,56", [(D("1234.56"),)]),
        ("1,234.56", [(D("1234.56"),)]),
        ("1,234,567", [(D(1234567),)]),
        ("12.03.2020", [(D(12), D(3), D(2020))]),  # a date: its parts
        ("1\u202f500", [(D(1500),), (D(1), D(500))]),  # French thousands with a narrow no-break space
        ("03", [(D(3),)]),
    ],
)
def test_readings(token, expected):
    assert readings(token) == expected


@pytest.mark.parametrize(
    "lang, summary, report, numbers, unsupported",
    [
        # English: a planted dose; the age and the duration are in the report
        ("en", "A 62-year-old woman received 750 mg of amoxicillin for 7 days.",
         "A 62-year-old woman with pneumonia was given amoxicillin 500 mg three times a day for 7 days.", 3, ["750 mg"]),
        # Spanish: decimal comma in the summary, point in the report; unit attached in one, not the other
        ("es", "Varón de 58 años tratado con 2,5 mg de warfarina; INR 3,1.",
         "Paciente varón, 58 años. Warfarina 2.5mg diaria. El INR fue de 3.1.", 3, []),
        ("es", "Recibió 10 mg de enalapril y 40mg de furosemida.",
         "Se pautó enalapril 10 mg y furosemida 20 mg.", 2, ["40mg"]),
        # French: thousands with a no-break space, a date against the month written out, a range
        ("fr", "Plaquettes à 150\u00a0000/mm3 le 12/03/2020; fièvre pendant 5 à 7 jours.",
         "Le 12 mars 2020, les plaquettes étaient à 150000/mm3. Fièvre de 5-7 jours.", 6, []),
        ("fr", "Hémoglobine à 9,8 g/dL et CRP à 120 mg/L.", "Hémoglobine 9,8 g/dL, CRP 85 mg/L.", 2, ["120 mg/L"]),
        # Portuguese: temperature with a decimal comma against a point, a range, a percentage
        ("pt", "Febre de 38,5 °C durante 5-10 dias; saturação de 92%.",
         "Temperatura de 38.5°C por 5 a 10 dias, saturação de oxigénio 92 %.", 4, []),
        ("pt", "Doente de 34 anos com creatinina de 2,1 mg/dL.", "Mulher de 34 anos, creatinina 1,2 mg/dL.", 2, ["2,1 mg/dL"]),
    ],
)
def test_unsupported_numbers_in_four_languages(lang, summary, report, numbers, unsupported):
    assert unsupported_numbers(summary, report) == (numbers, unsupported)


def test_names_with_digits_and_list_markers_are_not_numbers():
    summary = "1. Diagnóstico: COVID-19 (SARS-CoV-2), IL-6 elevada, linfocitos CD4 bajos.\n2) Tratamiento: HbA1c."
    assert unsupported_numbers(summary, "Informe sin números.") == (0, [])
    # a number inside a sentence is one, even after a period
    assert unsupported_numbers("Alta al día 9. Control a los 30 días.", "Alta al noveno día.") == (2, ["9", "30 días"])


def test_a_number_not_in_the_report_in_any_reading_is_unsupported():
    # "1,5" is only 1.5; the report's "15" and "5" do not support it
    assert unsupported_numbers("Lactato 1,5 mmol/L.", "Lactato 15 mmol/L a las 5 horas.") == (1, ["1,5 mmol/L"])
    # "1,500" may be 1500 (the report's "1500") or 1.5
    assert unsupported_numbers("Volume 1,500 mL.", "Volumen de 1500 mL.") == (1, [])
    # the parts of a date must all be in the report
    assert unsupported_numbers("Ingreso el 12.03.2021.", "Ingresó el 12 de marzo de 2020.") == (1, ["12.03.2021"])


def test_novel_bigram_rate_and_compression():
    report = "the patient had fever and cough for two days"
    assert novel_bigram_rate("the patient had fever", report) == 0.0
    # "patient had", "had a", "a rash": "patient had" is in the report, the other two are not
    assert novel_bigram_rate("Patient had a rash", report) == pytest.approx(2 / 3)
    # accents are letters: "fièvre élevée" is one bigram, not in "fièvre modérée"
    assert novel_bigram_rate("Fièvre élevée", "Une fièvre modérée") == 1.0
    assert novel_bigram_rate("Fiebre", report) == 0.0  # no bigram at all
    assert compression("abcde", " " + "x" * 20 + "\n") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="empty source"):
        compression("abc", "   ")


def test_document_fields_and_model_means():
    docs = [
        document_faithfulness("Mujer de 45 años; 750 mg de paracetamol.", "Mujer de 45 años. Paracetamol 1 g.", "stop"),
        document_faithfulness("Sin cifras.", "Un informe.", "stop"),
        document_faithfulness("", "Un informe.", "length"),
    ]
    assert set(docs[0]) == set(faithfulness.FIELDS)
    assert docs[0]["n_numbers"] == 2 and docs[0]["unsupported_numbers"] == ["750 mg"]
    assert [d["degenerate"] for d in docs] == [False, False, True]
    assert docs[2]["degenerate_reason"] == "empty output at the token limit"
    means = faithfulness_means(docs)
    assert means["unsupported_number_rate"] == pytest.approx(1 / 2)  # pooled: 1 of the 2 numbers
    assert means["n_unsupported_numbers"] == pytest.approx(1 / 3)
    assert means["degenerate"] == pytest.approx(1 / 3)
    assert faithfulness_means([]) == {}
    assert faithfulness_means(docs[1:])["unsupported_number_rate"] == 0.0  # no numbers at all


# ---------------------------------------------------------------- degenerate summaries


SPANISH_LOOP = (
    "Paciente de 34 años con dolor abdominal. La necesidad de la necesidad de la necesidad de la necesidad "
    "de la necesidad de la necesidad de la necesidad de la necesidad de la necesidad de la"
)


@pytest.mark.parametrize(
    "text, finish, kind, detail",
    [
        (SPANISH_LOOP, "length", "loop", "'la necesidad de' (3 words) repeated"),
        (SPANISH_LOOP, None, "loop", "repeated"),
        ("The patient was admitted. " * 5, "stop", "loop", "'the patient was admitted' (4 words)"),
        ("Le patient a été hospitalisé. " * 4, "length", "loop", "(5 words) repeated 4 times"),
        ("Sem alterações " * 7, "length", "loop", "(2 words) repeated 7 times"),
        ("", "stop", "empty", "empty output"),
        ("  \n ", "length", "empty", "at the token limit"),
        ("Résumé: " + "!" * 40, "length", "characters", "run of 40"),
        ("\ufffd" * 9, "stop", "characters", "U+FFFD"),
        ("A 45-year-old man with chest pain; troponin was", "length", "cut", "cut at the token limit"),
    ],
)
def test_degenerate_summaries(text, finish, kind, detail):
    reason = degeneration.summary_degenerate_reason(text, finish)
    assert reason is not None and detail in reason
    assert degeneration.reason_kind(reason) == kind


@pytest.mark.parametrize(
    "text",
    [
        "A 45-year-old man with chest pain; troponin was raised and the ECG showed ST elevation.",
        "Mujer de 45 años con dolor torácico de dos horas. El ECG fue normal y la troponina negativa.",
        "Femme de 30 ans, fièvre à 39 °C pendant 3 jours, toux et dyspnée; la radiographie montre une pneumonie.",
        "Doente do sexo masculino, 62 anos, com dor lombar. A dor melhorou com analgesia e foi dada alta.",
        "no no no",  # a short repeat is not a loop
        "de la de la de la de la",  # 4 copies but only 8 words
    ],
)
def test_ordinary_summaries_are_not_degenerate(text):
    assert degeneration.summary_degenerate_reason(text, "stop") is None


def test_word_loop_prefers_the_shortest_unit():
    words = ("a b c " * 10).split()
    assert degeneration.word_loop(words) == (0, 3, 10)
    assert degeneration.word_loop("one two three four five six".split()) is None
    with pytest.raises(ValueError, match="not a degenerate reason"):
        degeneration.reason_kind("fine")
