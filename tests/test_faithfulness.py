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
    number_mentions,
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
        # French: thousands with a no-break space, a date against the month written out, a range. The date is
        # one number now (it was its 3 parts, 6 numbers in all), supported by the same date written out
        ("fr", "Plaquettes à 150\u00a0000/mm3 le 12/03/2020; fièvre pendant 5 à 7 jours.",
         "Le 12 mars 2020, les plaquettes étaient à 150000/mm3. Fièvre de 5-7 jours.", 4, []),
        ("fr", "Hémoglobine à 9,8 g/dL et CRP à 120 mg/L.", "Hémoglobine 9,8 g/dL, CRP 85 mg/L.", 2, ["120 mg/L"]),
        # Portuguese: temperature with a decimal comma against a point, a range, a percentage
        ("pt", "Febre de 38,5 °C durante 5-10 dias; saturação de 92%.",
         "Temperatura de 38.5°C por 5 a 10 dias, saturação de oxigénio 92 %.", 4, []),
        ("pt", "Doente de 34 anos com creatinina de 2,1 mg/dL.", "Mulher de 34 anos, creatinina 1,2 mg/dL.", 2, ["2,1 mg/dL"]),
    ],
)
@pytest.mark.parametrize("given_lang", [False, True], ids=["no lang", "lang"])
def test_unsupported_numbers_in_four_languages(lang, summary, report, numbers, unsupported, given_lang):
    # the same answers whether the language is known or every reading is kept
    assert unsupported_numbers(summary, report, lang=lang if given_lang else None) == (numbers, unsupported)


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


# ---------------------------------------------------------------- numbers as a clinician reads them, per language
#
# Each test below fails on the checker that read bare values (no unit, no sign, dates as their parts, one
# set of readings for every language); `lang` is the document's language.


def checked(summary: str, report: str, lang: str | None) -> tuple[list[str], list[str]]:
    """(supported, unsupported) numbers of the summary, as written, in the summary's order."""
    n, unsupported = unsupported_numbers(summary, report, lang=lang)
    mentions = [mention["text"] for mention in number_mentions(summary, lang=lang)]
    assert len(mentions) == n
    supported = list(mentions)
    for text in unsupported:
        supported.remove(text)
    return supported, unsupported


LANGS = ("en", "es", "fr", "pt", "it", "ru", "ca", "no", "da", "ro", "de", "el", "nl", "cs", "sv")
DECIMAL = {lang: "." if lang == "en" else "," for lang in LANGS}
# (a 40-year-old, as the language writes an age; 3 years; 3 months)
AGES = {
    "en": ("40-year-old", "3 years", "3 months"),
    "es": ("40 años", "3 años", "3 meses"),
    "fr": ("40 ans", "3 ans", "3 mois"),
    "pt": ("40 anos", "3 anos", "3 meses"),
    "it": ("40enne", "3 anni", "3 mesi"),
    "ru": ("40-летняя", "3 года", "3 месяца"),
    "ca": ("40 anys", "3 anys", "3 mesos"),
    "no": ("40-årig", "3 år", "3 måneder"),
    "da": ("40-årig", "3 år", "3 måneder"),
    "ro": ("40 de ani", "3 ani", "3 luni"),
    "de": ("40-jährige", "3 Jahre", "3 Monate"),
    "el": ("40χρονη", "3 ετών", "3 μηνών"),
    "nl": ("40-jarige", "3 jaar", "3 maanden"),
    "cs": ("40letá", "3 roky", "3 měsíce"),
    "sv": ("40-årig", "3 år", "3 månader"),
}
YEARS_WORD = {"en": "40 years", "es": "40 años", "fr": "40 ans", "pt": "40 anos", "it": "40 anni", "ru": "40 лет",
              "ca": "40 anys", "no": "40 år", "da": "40 år", "ro": "40 de ani", "de": "40 Jahre", "el": "40 ετών",
              "nl": "40 jaar", "cs": "40 let", "sv": "40 år"}


@pytest.mark.parametrize("lang", LANGS)
def test_a_unit_is_part_of_the_number(lang):
    # 5 mg is not the report's 5 g; the age is the report's
    age = YEARS_WORD[lang]
    assert checked(f"{age}; 5 mg.", f"{age}; 5 g.", lang) == ([age], ["5 mg"])


@pytest.mark.parametrize("lang", LANGS)
def test_the_languages_words_for_years_and_months_are_units(lang):
    # "40-jährige" is the report's "40 Jahre"; "3 Jahre" is not the report's "3 Monate"
    adjective, years, months = AGES[lang]
    assert checked(f"{adjective}, {years}.", f"{YEARS_WORD[lang]}, {months}.", lang) == ([adjective], [years])


DOT_THOUSANDS = ("es", "pt", "it", "ca", "da", "ro", "de", "el", "nl")


@pytest.mark.parametrize("lang", DOT_THOUSANDS)
def test_a_dot_before_three_digits_groups_thousands(lang):
    # 1.000 mg is a thousand milligrams, not the report's 1 mg; 1.000,5 mg is the report's 1000.5 mg
    assert checked("1.000 mg; 1.000,5 mg.", "1 mg; 1000.5 mg.", lang) == (["1.000,5 mg"], ["1.000 mg"])


def test_english_reads_a_dot_as_the_decimal_point():
    # in English 1.000 mg is 1 mg (the report's), not the report's 1000 mg: "1.000 mg" against "1000 mg" fails
    assert checked("1.000 mg.", "1000 mg.", "en") == ([], ["1.000 mg"])
    assert checked("1.000 mg.", "1 mg.", "en") == (["1.000 mg"], [])


THOUSANDS_1500 = {"fr": "1\u202f500", "ru": "1 500", "cs": "1\u00a0500", "sv": "1 500", "no": "1 500",
                  **{lang: "1.500" for lang in DOT_THOUSANDS}}


@pytest.mark.parametrize("lang", [lang for lang in LANGS if lang != "en"])
def test_decimal_comma_against_thousands(lang):
    # 1,500 g is 1.5 g wherever the comma is the decimal mark: not the report's 1500 g, which the language's
    # own thousands (1.500, 1 500) and 2,5 mg (the report's 2.5 mg) are
    grouped = THOUSANDS_1500[lang]
    summary = f"{grouped} g; 1,500 g; 2,5 mg."
    assert checked(summary, "1500 g; 2.5 mg.", lang) == ([f"{grouped} g", "2,5 mg"], ["1,500 g"])


def test_english_comma_groups_thousands():
    assert checked("1,500 g and 2.5 mg.", "1.5 g and 2.5 mg.", "en") == (["2.5 mg"], ["1,500 g"])


# the date of the report written out, a numeric writing of it, and another day (14) written out
DATES = {
    "en": ("March 12, 2020", "03/12/2020", "March 14, 2020"),
    "es": ("12 de marzo de 2020", "12/03/2020", "14 de marzo de 2020"),
    "fr": ("12 mars 2020", "12/03/2020", "14 mars 2020"),
    "pt": ("12 de março de 2020", "12/03/2020", "14 de março de 2020"),
    "it": ("12 marzo 2020", "12/03/2020", "14 marzo 2020"),
    "ru": ("12 марта 2020", "12.03.2020", "14 марта 2020"),
    "ca": ("12 de març de 2020", "12/03/2020", "14 de març de 2020"),
    "no": ("12. mars 2020", "12.03.2020", "14. mars 2020"),
    "da": ("12. marts 2020", "12.03.2020", "14. marts 2020"),
    "ro": ("12 martie 2020", "12.03.2020", "14 martie 2020"),
    "de": ("12. März 2020", "12.03.2020", "14. März 2020"),
    "el": ("12 Μαρτίου 2020", "12/03/2020", "14 Μαρτίου 2020"),
    "nl": ("12 maart 2020", "12-03-2020", "14 maart 2020"),
    "cs": ("12. března 2020", "12.03.2020", "14. března 2020"),
    "sv": ("12 mars 2020", "2020-03-12", "14 mars 2020"),
}


@pytest.mark.parametrize("lang", LANGS)
def test_a_date_is_supported_by_the_same_date_not_by_its_parts(lang):
    # the numeric date is the report's date written out; the 14th is not, though 14 and 2020 are in the report
    written, numeric, other_day = DATES[lang]
    assert checked(f"{numeric}; {other_day}.", f"{written}: 14 mg.", lang) == ([numeric], [other_day])


def test_a_date_needs_every_field_it_states():
    # a day and month without a year are supported by the full date, not the other way round
    assert checked("el 12 de marzo", "el 12/03/2020", "es") == (["12 de marzo"], [])
    assert checked("el 12/03/2020", "el 12 de marzo; 2020", "es") == ([], ["12/03/2020"])
    # day-month-year outside English: 03/12/2020 is the 3rd of December there
    assert checked("el 03/12/2020", "el 12 de marzo de 2020", "es") == ([], ["03/12/2020"])
    # a year alone is supported by a report date of that year
    assert checked("In 2020.", "On 12/03/2020.", "en") == (["2020"], [])


SIGNED = {lang: (f"BE −8 mmol/L; z +2{DECIMAL[lang]}5", f"BE 8 mmol/L; z 2{DECIMAL[lang]}5") for lang in LANGS}
SIGNED["es"] = ("EB -8 mmol/L; z +2,5", "EB 8 mmol/L; z 2,5")  # an ASCII hyphen-minus is a sign too


@pytest.mark.parametrize("lang", LANGS)
def test_a_sign_is_part_of_the_value(lang):
    summary, report = SIGNED[lang]
    minus = summary.split()[1] + " mmol/L"
    assert checked(summary, report, lang) == ([summary.split()[-1]], [minus])


def test_a_dash_between_two_numbers_is_a_range_not_a_sign():
    assert checked("5 -8 mg", "5 to 8 mg", "en") == (["5", "8 mg"], [])
    assert checked("from -5 to -8 °C", "between −5 °C and −8 °C", "en") == (["-5", "-8 °C"], [])


def test_an_english_comma_without_three_digits_separates_a_list():
    # "3,4 and 5 mm" is 3, 4 and 5 mm in English (3.4 and 5 mm in Spanish)
    assert checked("Nodules of 3,4 and 5 mm.", "Nodules of 3 mm, 4 mm and 5 mm.", "en") == (["3", "4", "5 mm"], [])
    assert checked("Nódulos de 3,4 y 5 mm.", "Nódulos de 3 mm, 4 mm y 5 mm.", "es") == (["5 mm"], ["3,4"])


@pytest.mark.parametrize("lang, summary, report", [
    ("en", "Dose .5 mg.", "Dose 0.5 mg."),
    ("es", "Dosis de .5 mg.", "Dosis de 0,5 mg."),
    ("fr", "Dose de .5 mg.", "Dose de 0,5 mg."),
])
def test_a_leading_point_is_a_decimal(lang, summary, report):
    assert checked(summary, report, lang) == ([".5 mg"], [])


# (a range of 3 to 5 cm and of 2 to 4 days as the summary writes them, and as the report does)
RANGES = {
    "en": ("3 to 5 cm; 2-4 days", "3-5 mm; 2 to 4 days"),
    "es": ("entre 3 y 5 cm; 2-4 días", "de 3 a 5 mm; de 2 a 4 días"),
    "fr": ("de 3 à 5 cm; 2-4 jours", "3-5 mm; de 2 à 4 jours"),
    "pt": ("de 3 a 5 cm; 2-4 dias", "3-5 mm; entre 2 e 4 dias"),
    "it": ("da 3 a 5 cm; 2-4 giorni", "3-5 mm; tra 2 e 4 giorni"),
    "ru": ("от 3 до 5 см; 2–4 дня", "3–5 мм; от 2 до 4 дней"),
    "ca": ("entre 3 i 5 cm; 2-4 dies", "de 3 a 5 mm; entre 2 i 4 dies"),
    "no": ("3–5 cm; 2 til 4 dager", "3 til 5 mm; 2–4 dager"),
    "da": ("3-5 cm; 2 til 4 dage", "3 til 5 mm; 2-4 dage"),
    "ro": ("între 3 și 5 cm; 2-4 zile", "3-5 mm; între 2 și 4 zile"),
    "de": ("3 bis 5 cm; 2-4 Tage", "3-5 mm; 2 bis 4 Tage"),
    "el": ("3 έως 5 cm; 2-4 ημέρες", "3-5 mm; 2 έως 4 ημέρες"),
    "nl": ("3 tot 5 cm; 2-4 dagen", "3-5 mm; 2 tot 4 dagen"),
    "cs": ("3 až 5 cm; 2-4 dny", "3-5 mm; 2 až 4 dny"),
    "sv": ("3–5 cm; 2 till 4 dagar", "3 till 5 mm; 2–4 dagar"),
}


@pytest.mark.parametrize("lang", LANGS)
def test_a_range_shares_its_unit(lang):
    # 3 to 5 cm is not the report's 3 to 5 mm; 2 to 4 days is the report's, however the range is written
    summary, report = RANGES[lang]
    days = summary.split("; ")[1].split()[-1]
    cm = "см" if lang == "ru" else "cm"
    assert checked(summary, report, lang) == (["2", f"4 {days}"], ["3", f"5 {cm}"])


DIMENSION_WORDS = {"es": "por", "pt": "por", "fr": "sur", "ru": "на", "en": "by"}


@pytest.mark.parametrize("lang", LANGS)
def test_dimensions_share_their_unit(lang):
    # 3x5 cm is 3 cm and 5 cm, not the report's 3x5 mm; 4 × 6 × 2 mm is the report's 4, 6 and 2 mm
    by = DIMENSION_WORDS.get(lang, "x")
    mm = "мм" if lang == "ru" else "mm"
    report = f"3x5 {mm}; 4 {mm} {by} 6 {mm} {by} 2 {mm}."
    assert checked(f"3x5 cm; 4 × 6 × 2 {mm}.", report, lang) == (["4", "6", f"2 {mm}"], ["3", "5 cm"])


@pytest.mark.parametrize("lang", LANGS)
def test_documented_conversions(lang):
    # 0.5 g = 500 mg and 0.25 L = 250 mL (mass and volume convert); 5 mmol/L is not 5 mg/dL (no molar mass)
    point = DECIMAL[lang]
    summary = f"0{point}5 g; 0{point}25 L; 5 mmol/L."
    assert checked(summary, "500 mg; 250 mL; 5 mg/dL.", lang) == ([f"0{point}5 g", f"0{point}25 L"], ["5 mmol/L"])


def test_compound_units_and_powers_of_ten_convert():
    report = "Hemoglobina 98 g/L; leucocitos 12.000/mm3; fiebre durante 2 días; dosis 24 mg/día."
    summary = "Hemoglobina 9,8 g/dL; leucocitos 12 × 10^9/L; fiebre 48 h; dosis 1 mg/h."
    assert checked(summary, report, "es") == (["9,8 g/dL", "12 × 10^9/L", "48 h", "1 mg/h"], [])


def test_a_number_with_a_unit_needs_the_unit_and_one_without_takes_any():
    assert checked("Lactato 5 mmol/L.", "Lactato 5.", "es") == ([], ["5 mmol/L"])
    assert checked("Lactato 5.", "Lactato 5 mmol/L.", "es") == (["5"], [])


def test_a_rate_states_its_dose_but_a_dose_is_not_a_rate():
    # "daily", "al día" after a unit make a rate, as "/day" does; the report's rate states the dose too
    assert checked("Aspirin 100 mg/day; 5 mg.", "Aspirin 100 mg daily; 5 mg/day of ramipril.", "en") == (
        ["100 mg/day", "5 mg"], [])
    assert checked("Prednisona 5 mg/día.", "Prednisona 5 mg al día.", "es") == (["5 mg/día"], [])
    # a summary's rate is not the report's single dose
    assert checked("Aspirin 100 mg/day.", "Aspirin 100 mg once.", "en") == ([], ["100 mg/day"])


def test_a_bare_degree_sign_is_a_temperature():
    assert checked("Fiebre de 39 °C y 38,5 ºC.", "Tª 39°; después 38,5 °C.", "es") == (["39 °C", "38,5 ºC"], [])
    assert checked("Fiebre de 39 °C.", "Fiebre de 39 °F.", "es") == ([], ["39 °C"])


def test_ratios_and_blood_pressures_are_compared_whole():
    summary = "BP 168/112 mmHg; ANA titre 1:1024; at 14:30."
    report = "Systolic 168 mmHg, diastolic 112 mmHg; ANA titres 1:512 then 1:2048 (1024 IU); at 14:30."
    assert checked(summary, report, "en") == (["14:30"], ["168/112 mmHg", "1:1024"])
    assert checked("BP 168/112 mmHg.", "BP 168/112 mm Hg.", "en") == (["168/112 mmHg"], [])


def test_tumour_marker_names_are_not_numbers():
    assert checked("CA 19-9 de 842 U/mL y CA 125 normal.", "CA 19-9: 842 U/mL; CA 125 normal.", "es") == (
        ["842 U/mL"], [])


def test_number_mentions_give_value_sign_unit_and_kind():
    mentions = number_mentions("Varón de 58 años, BE −8, 3-5 cm, 1.000 mg, 168/112 mmHg, 12/03/2020.", lang="es")
    assert [(m["text"], m["readings"]) for m in mentions] == [
        ("58 años", [(D(58),)]), ("−8", [(D(-8),)]), ("3", [(D(3),)]), ("5 cm", [(D(5),)]),
        ("1.000 mg", [(D(1000),)]), ("168/112 mmHg", [(D(168), D(112))]), ("12/03/2020", [(2020, 3, 12)]),
    ]
    assert [(m["kind"], m["unit"]) for m in mentions] == [
        ("number", "year"), ("number", None), ("number", "cm"), ("number", "cm"), ("number", "mg"),
        ("ratio", "mmhg"), ("date", None),
    ]


def test_evaluate_checks_each_summary_in_its_documents_language(monkeypatch):
    from clinsum import evaluate

    monkeypatch.setattr(evaluate, "score_documents", lambda scored, *args, **kwargs: [
        {"id": record["id"], "rougeLsum_f": 0.5} for record in scored])
    records = [{"id": "d1", "lang": "es", "prediction": "Recibió 1.000 mg.", "reference": "x", "finish_reason": "stop"}]
    result = evaluate.evaluate_records(records, {"d1": "Recibió 1 mg."}, {"protocol": "paper"}, "unused", "cpu")
    assert result["documents"][0]["unsupported_numbers"] == ["1.000 mg"]  # a thousand milligrams in Spanish


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
