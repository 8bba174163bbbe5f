"""Clinical faithfulness checks of a summary against its source report: offline, in any language.

- `unsupported_numbers`: numbers the summary states (ages, doses, lab values, durations, dates) that the
  report does not state. A number is read as a clinician reads it: a value with its sign and its unit,
  in the document's language (`lang`):

  - Decimal mark: `.` in English, `,` in the 14 other languages; a `.` before anything but a group of
    exactly 3 digits is a decimal point in every language (2.5 mg in a Spanish report is 2.5), and a
    number that has both marks (1,234.56 or 1.234,56) is read by its last mark.
  - Thousands: `,` in English; `.` and the no-break, narrow no-break and thin spaces in es pt it ca da ro
    de el nl; a space of any kind in fr ru cs sv no (and pt), where `.` is a decimal point. A group of
    exactly 3 digits follows each separator, and a number starting with 0 is never grouped (0.500 = 0.5).
    So 1.000 mg is 1000 mg in Spanish and 1 mg in English, and `3,4 and 5` in English is three numbers.
    `.5` is 0.5. With no (or an unknown) `lang`, a number keeps every reading it may have (1,500: 1500 or
    1.5; 1 500: 1500, or 1 and 500) and is supported when one reading is, as before `lang` was known;
    units, signs, ratios and dates are read as in any language (month names of all 15).
  - Sign: `-8`, `−8` (U+2212) and `+3` are signed values; a dash between two numbers is a range.
  - Unit: the symbol or word after the number (`5mg`, `5 mg`, `5-mg`, `62-year-old`, `58 años`, `58-летний`,
    `58enne`, `58 de ani`), normalized: case, µ/μ/u/mc (µg = ug = mcg), ml = mL, Cyrillic symbols (мг = mg),
    the words of each language for years, months, weeks, days, hours, minutes and seconds (años, ans,
    anos, anni, лет, år, Jahre, ετών, jaar, let...) and for per cent; °C = ºC = ℃ = a bare ° (a
    temperature); U (units) only in capitals; "per day" written out (`100 mg daily`, `5 mg al día`) is
    /day. A multiplier ×10^9 (x10⁹, x 10^9) is part of the unit; `mil`, `mille`, `thousand`... multiply the
    value. A word that is not a unit (`5 pacientes`) leaves the number without a unit; one before `/unit`
    is dropped (`12.000 leucocitos/mm3` is 12000 /mm3).
  - Ranges and lists share a unit: `3–5 cm`, `3-5 cm`, `3 to 5 cm`, `entre 3 y 5 cm`, `de 3 à 5 cm`,
    `3, 4 and 5 mm` give every number the unit written after the last one; so do dimensions, `3x5 cm` and
    `3 × 5 × 2 cm`.
  - Ratios, titres, clock times and blood pressures (`1:1024`, `1/40`, `14:30`, `168/112 mmHg`) are one
    number each, compared whole.
  - Dates are dates: `12/03/2020`, `12.03.2020`, `12-03-2020`, `2020-03-12`, `03/2020`, `12 de marzo de
    2020`, `12 mars 2020`, `12. März 2020`, `12 марта 2020`, `12 Μαρτίου 2020`, `March 12, 2020`,
    `marzo de 2020`, `12 de marzo`, with the month names of the 15 languages (genitive and locative forms
    of Russian, Greek and Czech). Numeric dates are day-month-year, except in English (and with no
    `lang`), where both day-month and month-day are accepted; a language's date that cannot be
    day-month (03/15/2020) is read month-day.
  - Not counted: digits inside names (CD4, HbA1c, IL-6, COVID-19, SARS-CoV-2, CA 19-9, CA 125,
    HLA-B*58:01) and list markers ("1." or "2)" at a line start). Numbers written as words ("forty-five") are not read, on
    either side.

  A summary number WITH a unit is supported only when the report states the same signed value in the same
  unit, or in a unit it converts to (below). A summary number WITHOUT a unit is supported by the same value
  with any unit or none, by a component of a ratio, or (a 4-digit number) by the year of a report date. A
  rate in the report states its dose too (the report's "2.5 mg daily" supports the summary's "2.5 mg"), not
  the other way round. A ratio is supported by the same ratio (in the same or a convertible unit when it has one). A date is
  supported only by a report date that states each of its fields (year, month, day) with the same value:
  12/03/2020 is not supported by a report's 12, 3 and 2020 scattered, nor by "12 de marzo" without a year.

  Conversions (exact, powers of ten and the clock): mass pg ng µg mg g kg; volume fL µL mL cL dL L, with
  cc = cm³ = mL and mm³ = µL; length nm µm mm cm m km; area mm² cm² m²; amount of substance pmol nmol µmol
  mmol mol; time ms s min h day week. Compound units convert part by part (9.8 g/dL = 98 g/L = 9800 mg/dL;
  12.000/mm³ = 12 ×10^9/L). Nothing else converts: no mmol ↔ mg (it needs the molar mass), no
  mEq ↔ mmol, no °C ↔ °F, no months or years ↔ days (their length varies); every other unit
  (%, mmHg, U/L, lpm...) equals only itself.
- `novel_bigram_rate`: the share of the summary's word bigrams absent from the report (abstractiveness).
- `compression`: summary characters / report characters.
- `degenerate`: a repetition loop, an empty output, broken characters, or an output cut at the token
  limit (`degeneration.summary_degenerate_reason`).

Words are lowercased runs of Unicode letters and digits, so every script and accent is kept.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Iterable, Iterator

from .degeneration import summary_degenerate_reason

LANGUAGES = ("en", "es", "fr", "pt", "it", "ru", "ca", "no", "da", "ro", "de", "el", "nl", "cs", "sv")

_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space (fr: 1 500)
_FIXED_SPACES = "\u00a0\u202f\u2009"  # the spaces a typesetter puts between thousands
_GAP = f"[{_SPACES}]?"  # at most one space between a number and its unit

# ---------------------------------------------------------------- number conventions per language

_DOT_THOUSANDS = ("es", "pt", "it", "ca", "da", "ro", "de", "el", "nl")
_SPACE_THOUSANDS = ("fr", "ru", "cs", "sv", "no", "pt")  # a plain space groups thousands there too


def _conventions(lang: str) -> tuple[str, str]:
    """(decimal mark, thousands separators) of a known language."""
    if lang == "en":
        return ".", ","
    thousands = ("." if lang in _DOT_THOUSANDS else "") + _FIXED_SPACES + (" " if lang in _SPACE_THOUSANDS else "")
    return ",", thousands


def language(lang: str | None) -> str | None:
    """The language code this module knows ("pt-BR" -> "pt", "nb" -> "no"), or None."""
    if not lang:
        return None
    code = re.split(r"[-_]", lang.strip().lower())[0]
    code = {"nb": "no", "nn": "no"}.get(code, code)
    return code if code in LANGUAGES else None


# a sign only where a number starts a value (after a space or an opening mark), never between two digits
_SIGN = r"(?:(?<![^\s(\[{=:;,/<>≤≥~≈])(?P<sign>[-−+]))?"
# not glued to a word (CD4, HbA1c) nor after letter + hyphen (IL-6); 3x5 is two numbers
_NOT_IN_A_NAME = r"(?:(?<![^\W_])(?<![^\W\d_]-)|(?<=\d[xX]))"
_LEADING_POINT = r"(?P<lead>(?<![\d.,])\.\d+)"  # .5


def _numeral_re(lang: str | None) -> re.Pattern:
    if lang is None:  # every reading is kept (`readings`)
        body = (rf"(?P<legacy>(?:\d{{1,3}}(?:[{_SPACES}]\d{{3}})+(?!\d)|\d+)(?:[.,]\d+)*)|{_LEADING_POINT}")
        return re.compile(_SIGN + _NOT_IN_A_NAME + f"(?:{body})")
    decimal, thousands = _conventions(lang)
    other_thousands, other_decimal = ("." , ",") if decimal == "." else (",", ".")
    separators = "".join(re.escape(c) for c in thousands)
    cross = rf"[1-9]\d{{0,2}}(?:{re.escape(other_thousands)}\d{{3}}(?!\d))+{re.escape(other_decimal)}\d+"
    grouped = (
        rf"[1-9]\d{{0,2}}(?P<separator>[{separators}])\d{{3}}(?!\d)(?:(?P=separator)\d{{3}}(?!\d))*"
        rf"(?:{re.escape(decimal)}\d+)?"
    )
    plain = rf"\d+(?:[{re.escape(decimal)}.]\d+)?"
    body = f"(?P<cross>{cross})|(?P<grouped>{grouped})|(?P<plain>{plain})|{_LEADING_POINT}"
    return re.compile(_SIGN + _NOT_IN_A_NAME + f"(?:{body})")


_NUMERAL_RES = {lang: _numeral_re(lang) for lang in (None, *LANGUAGES)}
_SEPARATOR_RE = re.compile(rf"([.,{_SPACES}])")


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:  # cannot happen for \d runs; kept so a bad case fails loudly
        raise ValueError(f"not a number: {text!r}") from None


def readings(token: str) -> list[tuple[Decimal, ...]]:
    """The values a number written in an unknown language can mean; each reading is a tuple of values that
    must all be present.

    A grouped reading takes one mark ("." or ",", used once, last) as the decimal point and every other
    separator as a thousands separator followed by exactly 3 digits; spaces only group thousands. When no
    grouped reading fits (12.03.2020), or spaces group (1 500), the parts are also read one by one.
    """
    pieces = _SEPARATOR_RE.split(token)
    groups, separators = pieces[0::2], pieces[1::2]
    if not separators:
        return [(_decimal(token),)]
    found: list[tuple[Decimal, ...]] = []
    for point in (None, ".", ","):
        if point is not None and (separators.count(point) != 1 or separators[-1] != point):
            continue
        thousands = separators[:-1] if point else separators
        if any(len(group) != 3 for group in groups[1 : len(thousands) + 1]):
            continue
        if thousands and len(groups[0]) > 3:
            continue
        whole = "".join(groups[: len(thousands) + 1])
        value = _decimal(f"{whole}.{groups[-1]}" if point else whole)
        if (value,) not in found:
            found.append((value,))
    if not found or any(sep in _SPACES for sep in separators):
        found.append(tuple(_decimal(group) for group in groups))
    return found


def _numeral_readings(match: re.Match, lang: str | None) -> list[tuple[Decimal, ...]]:
    """The readings of a numeral the language's pattern matched: one for a known language."""
    text = match.group(0)[1:] if match.group("sign") else match.group(0)
    if match.group("lead"):
        return [(_decimal("0" + text),)]
    if lang is None:
        return readings(text)
    if match.group("cross"):  # both marks: the last one is the decimal point
        point = max(text.rfind(","), text.rfind("."))
        return [(_decimal(re.sub(r"\D", "", text[:point]) + "." + text[point + 1 :]),)]
    if match.group("grouped"):
        decimal, thousands = _conventions(lang)
        whole = "".join(c for c in text if c not in thousands)
        return [(_decimal(whole.replace(decimal, ".")),)]
    return [(_decimal(text.replace(",", ".")),)]


# ---------------------------------------------------------------- units

# canonical unit -> (base, exponent, factor to the base): the documented conversions
_SCALED = {
    **{unit: ("g", 1, Fraction(10) ** power) for unit, power in
       (("pg", -12), ("ng", -9), ("µg", -6), ("mg", -3), ("g", 0), ("kg", 3))},
    **{unit: ("l", 1, Fraction(10) ** power) for unit, power in
       (("fl", -15), ("µl", -6), ("ml", -3), ("cl", -2), ("dl", -1), ("l", 0))},
    **{unit: ("m", 1, Fraction(10) ** power) for unit, power in
       (("nm", -9), ("µm", -6), ("mm", -3), ("cm", -2), ("m", 0), ("km", 3))},
    **{unit: ("m", 2, Fraction(10) ** power) for unit, power in (("mm²", -6), ("cm²", -4), ("m²", 0))},
    **{unit: ("mol", 1, Fraction(10) ** power) for unit, power in
       (("pmol", -12), ("nmol", -9), ("µmol", -6), ("mmol", -3), ("mol", 0))},
    **{unit: ("s", 1, Fraction(seconds)) for unit, seconds in
       (("ms", Fraction(1, 1000)), ("s", 1), ("min", 60), ("h", 3600), ("day", 86400), ("week", 604800))},
}

# unit symbols, the same in every language (keys folded: lowercase, no accents) -> canonical unit
_SYMBOLS = {
    **dict.fromkeys(("pg",), "pg"), **dict.fromkeys(("ng", "нг"), "ng"),
    **dict.fromkeys(("µg", "mcg", "ug", "мкг"), "µg"), **dict.fromkeys(("mg", "мг"), "mg"),
    **dict.fromkeys(("g", "gr", "grs", "г"), "g"), **dict.fromkeys(("kg", "кг", "kgs"), "kg"),
    **dict.fromkeys(("fl",), "fl"), **dict.fromkeys(("µl", "ul", "mcl", "мкл", "mm3", "mm³"), "µl"),
    **dict.fromkeys(("ml", "мл", "cc", "cm3", "cm³"), "ml"), "cl": "cl", **dict.fromkeys(("dl", "дл"), "dl"),
    **dict.fromkeys(("l", "л", "lt"), "l"),
    "nm": "nm", **dict.fromkeys(("µm", "мкм"), "µm"), **dict.fromkeys(("mm", "мм"), "mm"),
    **dict.fromkeys(("cm", "см"), "cm"), **dict.fromkeys(("m", "м"), "m"), **dict.fromkeys(("km", "км"), "km"),
    **dict.fromkeys(("mm2", "mm²"), "mm²"), **dict.fromkeys(("cm2", "cm²"), "cm²"),
    **dict.fromkeys(("m2", "m²"), "m²"), "pmol": "pmol", **dict.fromkeys(("nmol", "нмоль"), "nmol"),
    **dict.fromkeys(("µmol", "umol", "мкмоль"), "µmol"),
    **dict.fromkeys(("mmol", "ммоль"), "mmol"), **dict.fromkeys(("mol", "моль"), "mol"),
    "ms": "ms", **dict.fromkeys(("s", "sec", "seg"), "s"), **dict.fromkeys(("min", "мин"), "min"),
    **dict.fromkeys(("h", "hr", "hrs", "hs", "ч"), "h"), **dict.fromkeys(("d", "сут"), "day"),
    **dict.fromkeys(("wk", "wks", "нед"), "week"), **dict.fromkeys(("mo", "мес"), "month"),
    **dict.fromkeys(("ui", "iu", "ме"), "iu"), **dict.fromkeys(("mui", "miu"), "miu"), "ед": "u",
    **dict.fromkeys(("meq", "мэкв"), "meq"), "mosm": "mosm", "kcal": "kcal", "kpa": "kpa", "mmhg": "mmhg",
    "cmh2o": "cmh2o", "gy": "gy", "cgy": "cgy", "msv": "msv", "mbq": "mbq", "mci": "mci", "hz": "hz", "mv": "mv",
    "µv": "µv", "bpm": "bpm", "lpm": "lpm", "rpm": "rpm", "ppm": "ppm", "ufc": "cfu", "cfu": "cfu",
}
_CASED_SYMBOLS = {"U": "u", "mU": "mu"}  # U (units) only in capitals: Spanish "7 u 8" is "7 or 8"

# words for the same unit, per language (folded at import)
_UNIT_WORDS = {
    "year": {
        "en": "year years yr yrs", "es": "año años", "fr": "an ans année années", "pt": "ano anos",
        "it": "anno anni", "ru": "год года годов лет", "ca": "any anys", "no": "år", "da": "år",
        "ro": "an ani anul anului", "de": "jahr jahre jahren jahres", "nl": "jaar jaren", "sv": "år",
        "el": "έτος έτη ετών χρόνος χρόνια χρόνων χρονών", "cs": "rok roky roků roku let letech",
    },
    "month": {
        "en": "month months", "es": "mes meses", "fr": "mois", "pt": "mês meses", "it": "mese mesi",
        "ru": "месяц месяца месяцев", "ca": "mes mesos", "no": "måned måneder mnd", "da": "måned måneder mdr",
        "ro": "lună luni luna", "de": "monat monate monaten", "el": "μήνας μήνες μηνών μήνα",
        "nl": "maand maanden", "cs": "měsíc měsíce měsíců měsíci měsících", "sv": "månad månader mån",
    },
    "week": {
        "en": "week weeks", "es": "semana semanas sem", "fr": "semaine semaines sem", "pt": "semana semanas sem",
        "it": "settimana settimane sett", "ru": "неделя недели недель неделю", "ca": "setmana setmanes",
        "no": "uke uker", "da": "uge uger", "ro": "săptămână săptămâni", "de": "woche wochen",
        "el": "εβδομάδα εβδομάδες εβδομάδων", "nl": "week weken", "cs": "týden týdny týdnů týdne týdnech",
        "sv": "vecka veckor",
    },
    "day": {
        "en": "day days", "es": "día días", "fr": "jour jours j", "pt": "dia dias", "it": "giorno giorni gg die",
        "ru": "день дня дней сутки суток дн", "ca": "dia dies", "no": "dag dager døgn", "da": "dag dage døgn",
        "ro": "zi zile zilei", "de": "tag tage tagen", "el": "ημέρα ημέρες ημερών μέρα μέρες μερών",
        "nl": "dag dagen", "cs": "den dny dní dnů dnech dne", "sv": "dag dagar dygn",
    },
    "h": {
        "en": "hour hours", "es": "hora horas", "fr": "heure heures", "pt": "hora horas", "it": "ora ore",
        "ru": "час часа часов", "ca": "hora hores", "no": "time timer t", "da": "time timer t",
        "ro": "oră ore ora", "de": "stunde stunden std", "el": "ώρα ώρες ωρών", "nl": "uur uren",
        "cs": "hodina hodiny hodin hod", "sv": "timme timmar tim",
    },
    "min": {
        "en": "minute minutes", "es": "minuto minutos", "fr": "minute minutes", "pt": "minuto minutos",
        "it": "minuto minuti", "ru": "минута минуты минут", "ca": "minut minuts", "no": "minutt minutter",
        "da": "minut minutter", "ro": "minut minute", "de": "minute minuten", "el": "λεπτό λεπτά λεπτών",
        "nl": "minuut minuten", "cs": "minuta minuty minut", "sv": "minut minuter",
    },
    "s": {
        "en": "second seconds", "es": "segundo segundos", "fr": "seconde secondes", "pt": "segundo segundos",
        "it": "secondo secondi", "ru": "секунда секунды секунд сек", "ca": "segon segons", "no": "sekund sekunder",
        "da": "sekund sekunder", "ro": "secundă secunde", "de": "sekunde sekunden", "el": "δευτερόλεπτα",
        "nl": "seconde seconden", "cs": "sekunda sekundy sekund", "sv": "sekund sekunder",
    },
    "g": {
        "en": "gram grams gramme grammes", "es": "gramo gramos", "fr": "gramme grammes", "pt": "grama gramas",
        "it": "grammo grammi", "ru": "грамм грамма граммов", "ca": "gram grams", "de": "gramm",
        "nl": "gram", "ro": "gram grame", "cs": "gram gramů gramy",
    },
    "kg": {
        "en": "kilogram kilograms kilo kilos", "es": "kilogramo kilogramos kilo kilos",
        "fr": "kilogramme kilogrammes kilos", "pt": "quilograma quilogramas quilo quilos",
        "it": "chilogrammo chilogrammi chili", "de": "kilogramm kilo", "nl": "kilogram kilo", "ru": "килограмм килограммов", "ca": "quilogram quilograms quilos",
    },
    "cm": {
        "en": "centimetre centimetres centimeter centimeters", "es": "centímetro centímetros",
        "fr": "centimètre centimètres", "pt": "centímetro centímetros", "it": "centimetro centimetri",
        "ca": "centímetre centímetres", "de": "zentimeter", "ro": "centimetri", "nl": "centimeter",
    },
    "mm": {
        "en": "millimetre millimetres millimeter millimeters", "es": "milímetro milímetros",
        "fr": "millimètre millimètres", "pt": "milímetro milímetros", "it": "millimetro millimetri",
        "ca": "mil·límetre mil·límetres", "de": "millimeter", "ro": "milimetri", "nl": "millimeter",
    },
}
# glued or adjectival age forms: 58-летний, 58-jährige, 58-årig, 58-jarige, 58letý, 58enne, 58χρονος
_UNIT_STEMS = {
    "ru": (("летн", "year"), ("месячн", "month")), "de": (("jährig", "year"), ("monatig", "month")),
    "no": (("årig", "year"), ("åring", "year")), "da": (("årig", "year"),),
    "sv": (("årig", "year"), ("åring", "year")), "nl": (("jarig", "year"),), "cs": (("let", "year"),),
    "it": (("enne", "year"),), "el": (("χρον", "year"),),
}
_PER_CENT_RE = re.compile(
    rf"{_GAP}(?:%|‰|por{_GAP}ciento|pour{_GAP}cent|per{_GAP}cento?|percent|por{_GAP}cento|prozent|procent[ao]?"
    rf"|процент(?:а|ов)?|τοις{_GAP}εκατό)(?![^\W\d_])",
    re.IGNORECASE,
)
_PHRASE_UNITS = (
    (re.compile(rf"{_GAP}[°º]{_GAP}([CF])(?![^\W\d_])|{_GAP}℃", re.IGNORECASE), None),  # °C, ° C, ºC
    # a bare ° (not the ordinal º) is a temperature: "Tª 39°" is the summary's 39 °C
    (re.compile(rf"{_GAP}°(?![^\W\d_])"), "°c"),
    (re.compile(rf"{_GAP}mm{_GAP}(?:de{_GAP})?hg(?![^\W\d_])", re.IGNORECASE), "mmhg"),
    (re.compile(rf"{_GAP}мм{_GAP}рт\.?{_GAP}ст\.?", re.IGNORECASE), "mmhg"),
    (re.compile(rf"{_GAP}cm{_GAP}(?:de{_GAP})?h(?:2|₂)o(?![^\W\d_])", re.IGNORECASE), "cmh2o"),
)
# "×10^9", "x10⁹", "x 10E9": the power of ten belongs to the unit (12 ×10^9/L = 12 000/µL)
_POWER_OF_TEN_RE = re.compile(
    rf"{_GAP}[x×*·]{_GAP}10"
    rf"(?:(?:\^|\*\*|[eE]){_GAP}(?P<exponent>[-−]?\d{{1,2}})|(?P<superscript>⁻?[⁰¹²³⁴⁵⁶⁷⁸⁹]{{1,2}}))"
)
_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻", "0123456789-")
# a word that multiplies the number: 150 mil plaquetas = 150 000
_MULTIPLIER_WORDS = {
    **dict.fromkeys(("mil", "mila", "mille", "thousand", "tausend", "duizend", "mii", "tusen", "tusind", "tisíc",
                     "тысяч", "тыс", "χιλιάδες"), 1000),
    **dict.fromkeys(("million", "millions", "millón", "millones", "milhão", "milhões", "milione", "milioni",
                     "millionen", "miljoen", "milioane", "miljoner", "millioner", "milionů", "млн", "миллионов",
                     "εκατομμύρια"), 1_000_000),
}
_ATOM = r"[^\W\d_]+(?:[23](?![\w]))?"
# not a unit when an apostrophe glues it to a word (5 d'entre eux); "32 weeks' gestation" is weeks
_UNIT_RE = re.compile(rf"(?:-|{_GAP})(?P<first>{_ATOM})?(?P<rest>(?:/{_ATOM})*)(?!\w|['’][^\W\d_])")
# "per day" written out after a unit, in the 15 languages
_PER_DAY_RE = re.compile(
    rf"[{_SPACES}]+(?:(?:al|por|per|a|par|pro|ao|in|в|om|pe|ανά|na|za|i) "
    rf"(?:día|day|jour|dia|giorno|tag|сутки|день|dagen|dag|døgnet|zi|ημέρα|den|dne)"
    rf"|daily|diari[oa]s?|diári[oa]s?|quotidien(?:ne)?s?|täglich|giornalier[oi]|dagelijks|dagligen|daglig"
    rf"|zilnic|ημερησίως|denně|ежедневно)(?![^\W\d_])",
    re.IGNORECASE,
)
_OLD_RE = re.compile(r"[- ]old(?![^\W\d_])")
_ROMANIAN_DE_RE = re.compile(r"[ \u00a0]de[ \u00a0](?=[^\W\d_])")  # 58 de ani
_MULTIPLIER_RE = re.compile(rf"[{_SPACES}]([^\W\d_]+)\.?(?![\w'’·])")  # not the "mil" of mil·límetre


def fold(word: str) -> str:
    """Lowercase, without accents (años = anos, ετών = ετων), µ and μ the same: how unit and month words
    are looked up."""
    decomposed = unicodedata.normalize("NFD", word.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).replace("µ", "μ")


def _folded_table(table: dict[str, str]) -> dict[str, str]:
    return {fold(key): value for key, value in table.items()}


_SYMBOL_TABLE = _folded_table(_SYMBOLS)
_WORD_TABLES = {
    lang: {fold(word): unit for unit, by_lang in _UNIT_WORDS.items() for word in by_lang.get(lang, "").split()}
    for lang in LANGUAGES
}
_WORD_TABLES[None] = {word: unit for table in _WORD_TABLES.values() for word, unit in table.items()}
_STEMS = {lang: tuple((fold(stem), unit) for stem, unit in stems) for lang, stems in _UNIT_STEMS.items()}
_STEMS[None] = tuple(stem for stems in _STEMS.values() for stem in stems)
_MULTIPLIERS = {fold(word): value for word, value in _MULTIPLIER_WORDS.items()}


def unit_of_word(word: str, lang: str | None) -> str | None:
    """The canonical unit a written unit word or symbol stands for in `lang`, or None."""
    if word in _CASED_SYMBOLS:
        return _CASED_SYMBOLS[word]
    folded = fold(word)
    if folded in _SYMBOL_TABLE:
        return _SYMBOL_TABLE[folded]
    if folded in _WORD_TABLES[lang]:
        return _WORD_TABLES[lang][folded]
    return next((unit for stem, unit in _STEMS.get(lang, ()) if folded.startswith(stem)), None)


@dataclass(frozen=True)
class Unit:
    """A normalized unit: its name as shown ("mg/dl", "year", "×10^9/l") and what it compares as: the
    signature (base units with exponents) and the factor that turns a value into the base units."""

    name: str
    signature: tuple[tuple[str, int], ...]
    factor: Fraction
    dose: "Unit | None" = None  # a rate's unit without its time (mg/day -> mg), see `ReportNumbers`


_TIMES = ("ms", "s", "min", "h", "day", "week")


def make_unit(numerator: list[str], denominator: list[str], power_of_ten: int = 0) -> Unit:
    """A compound unit from canonical parts; a part without a conversion is its own base."""
    exponents: dict[str, int] = {}
    factor = Fraction(10) ** power_of_ten
    for parts, sign in ((numerator, 1), (denominator, -1)):
        for part in parts:
            base, exponent, scale = _SCALED.get(part, (part, 1, Fraction(1)))
            exponents[base] = exponents.get(base, 0) + sign * exponent
            factor = factor * scale if sign > 0 else factor / scale
    name = "/".join(numerator) + "".join(f"/{part}" for part in denominator)
    if power_of_ten:
        name = f"×10^{power_of_ten}" + ("" if name.startswith("/") or not name else " ") + name
    signature = tuple(sorted((base, exponent) for base, exponent in exponents.items() if exponent))
    dose = None
    if numerator and denominator and denominator[-1] in _TIMES:
        dose = make_unit(numerator, [part for part in denominator if part not in _TIMES], power_of_ten)
    return Unit(name, signature, factor, dose)


@dataclass
class _UnitRead:
    unit: Unit | None
    end: int
    multiplier: int = 1


def _read_unit(text: str, pos: int, lang: str | None) -> _UnitRead:
    """The unit written at `pos`, right after a number, and where it ends."""
    multiplier = 1
    word = _MULTIPLIER_RE.match(text, pos)
    if word and fold(word.group(1)) in _MULTIPLIERS:
        multiplier, pos = _MULTIPLIERS[fold(word.group(1))], word.end()
    power = _POWER_OF_TEN_RE.match(text, pos)
    power_of_ten = 0
    if power:
        written = power.group("exponent") or power.group("superscript").translate(_SUPERSCRIPTS)
        power_of_ten, pos = int(written.replace("−", "-")), power.end()
    per_cent = _PER_CENT_RE.match(text, pos)
    if per_cent:
        symbol = "‰" if "‰" in per_cent.group(0) else "%"
        return _UnitRead(make_unit([symbol], [], power_of_ten), per_cent.end(), multiplier)
    for pattern, name in _PHRASE_UNITS:
        phrase = pattern.match(text, pos)
        if phrase:
            name = name or ("°f" if (phrase.group(1) or "").upper() == "F" else "°c")
            return _UnitRead(make_unit([name], [], power_of_ten), phrase.end(), multiplier)
    romanian_de = _ROMANIAN_DE_RE.match(text, pos) if lang in ("ro", None) else None
    if romanian_de:  # 58 de ani, 3 de luni
        after = _UNIT_RE.match(text, romanian_de.end())
        time = unit_of_word(after.group("first"), "ro") if after and after.group("first") else None
        if time in ("year", "month", "week", "day", "h"):
            return _UnitRead(make_unit([time], []), after.end(), multiplier)
    match = _UNIT_RE.match(text, pos)
    first = match.group("first") if match else None
    rest = (match.group("rest") if match else "").split("/")[1:]
    numerator = [unit_of_word(first, lang)] if first else []
    denominator = [unit_of_word(part, lang) or fold(part) for part in rest]
    if first and numerator[0] is None:
        # "12.000 leucocitos/mm3": the count noun goes when a known unit follows the slash
        if not any(unit_of_word(part, lang) for part in rest):
            return _UnitRead(make_unit([], [], power_of_ten) if power_of_ten else None, pos, multiplier)
        numerator = []
    if not numerator and not denominator:  # no unit; a multiplier or a power of ten may have been read
        return _UnitRead(make_unit([], [], power_of_ten) if power_of_ten else None, pos, multiplier)
    end = match.end()
    if numerator and numerator[0] in ("year", "month", "week", "day") and not denominator:
        old = _OLD_RE.match(text, end)  # 62-year-old, 3 months old
        end = old.end() if old else end
    per_day = _PER_DAY_RE.match(text, end) if numerator and not denominator else None
    if per_day:  # "100 mg daily", "5 mg al día": mg/day, as "5 mg/día" is
        denominator, end = ["day"], per_day.end()
    return _UnitRead(make_unit(numerator, denominator, power_of_ten), end, multiplier)


# ---------------------------------------------------------------- dates

MONTH_NAMES = {
    "en": ("january february march april may june july august september october november december",
           "jan feb mar apr - jun jul aug sep|sept oct nov dec"),
    "es": ("enero febrero marzo abril mayo junio julio agosto septiembre|setiembre octubre noviembre "
           "diciembre",),
    "fr": ("janvier février mars avril mai juin juillet août septembre octobre novembre décembre",),
    "pt": ("janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro dezembro",),
    "it": ("gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre",),
    "ru": ("январь февраль март апрель май июнь июль август сентябрь октябрь ноябрь декабрь",
           "января февраля марта апреля мая июня июля августа сентября октября ноября декабря",
           "январе феврале марте апреле мае июне июле августе сентябре октябре ноябре декабре"),
    "ca": ("gener febrer març abril maig juny juliol agost setembre octubre novembre desembre",),
    "no": ("januar februar mars april mai juni juli august september oktober november desember",),
    "da": ("januar februar marts april maj juni juli august september oktober november december",),
    "ro": ("ianuarie februarie martie aprilie mai iunie iulie august septembrie octombrie noiembrie "
           "decembrie",),
    "de": ("januar|jänner februar|feber märz april mai juni juli august september oktober november "
           "dezember",),
    "el": ("ιανουάριος φεβρουάριος μάρτιος απρίλιος μάιος ιούνιος ιούλιος αύγουστος σεπτέμβριος οκτώβριος "
           "νοέμβριος δεκέμβριος",
           "ιανουαρίου φεβρουαρίου μαρτίου απριλίου μαΐου ιουνίου ιουλίου αυγούστου σεπτεμβρίου οκτωβρίου "
           "νοεμβρίου δεκεμβρίου",
           "ιανουάριο φεβρουάριο μάρτιο απρίλιο μάιο ιούνιο ιούλιο αύγουστο σεπτέμβριο οκτώβριο νοέμβριο "
           "δεκέμβριο"),
    "nl": ("januari februari maart april mei juni juli augustus september oktober november december",),
    "cs": ("leden únor březen duben květen červen červenec srpen září říjen listopad prosinec",
           "ledna února března dubna května června července srpna září října listopadu prosince",
           "lednu únoru březnu dubnu květnu červnu červenci srpnu září říjnu listopadu prosinci"),
    "sv": ("januari februari mars april maj juni juli augusti september oktober november december",),
}
_MONTHS = {
    lang: {fold(name): number for row in rows for number, names in enumerate(row.split(), start=1)
           for name in names.split("|") if name != "-"}
    for lang, rows in MONTH_NAMES.items()
}
_ALL_MONTHS = {name: number for table in _MONTHS.values() for name, number in table.items()}
_ONLY_ENGLISH = set(_MONTHS["en"]) - {name for lang, table in _MONTHS.items() if lang != "en" for name in table}

_D = rf"[{_SPACES}]"
_YEAR = r"(?P<year>(?:1[89]|20)\d\d)(?!\d)"
_DAY_MONTH_RE = re.compile(  # 12 de marzo de 2020, 12 mars 2020, 12. März 2020, 1st of March, 12 d'abril
    rf"(?<![\w.,/-])(?P<day>[0-3]?\d)(?:st|nd|rd|th|er|re|ère|º|ª|\.)?{_D}*"
    rf"(?:(?:de|of|di|del){_D}+|d['’]{_D}?)?(?P<month>[^\W\d_]{{3,}})\.?(?:,?{_D}*(?:(?:de|del|of|din){_D}+)?{_YEAR})?"
)
_MONTH_DAY_RE = re.compile(  # March 12, 2020 (English)
    rf"(?<![^\W_])(?P<month>[^\W\d_]{{3,}})\.?{_D}+(?P<day>[0-3]?\d)(?:st|nd|rd|th)?(?![\d\w])"
    rf"(?:,?{_D}*{_YEAR})?"
)
_MONTH_YEAR_RE = re.compile(  # marzo de 2020, March 2020, im März 2020
    rf"(?<![^\W_])(?P<month>[^\W\d_]{{3,}})\.?,?{_D}+(?:(?:de|del|of|din|του){_D}+)?{_YEAR}"
)
_NUMERIC_DATE_RE = re.compile(  # 12/03/2020, 12.03.20, 12-03-2020
    r"(?<![\w.,/-])(?P<a>\d{1,2})(?P<sep>[./-])(?P<b>\d{1,2})(?P=sep)(?P<year>\d{4}|\d{2})(?!\d|[.,/-]\d)"
)
_ISO_DATE_RE = re.compile(  # 2020-03-12
    r"(?<![\w.,/-])(?P<year>\d{4})(?P<sep>[-/.])(?P<b>\d{1,2})(?P=sep)(?P<a>\d{1,2})(?!\d|[.,/-]\d)"
)
_MONTH_SLASH_YEAR_RE = re.compile(  # 03/2020
    r"(?<![\w.,/-])(?P<b>0?[1-9]|1[0-2])(?P<sep>[/.])(?P<year>(?:19|20)\d\d)(?!\d|[.,/-]\d)"
)

Date = tuple  # (year or None, month, day or None)


def _month_number(word: str, lang: str | None) -> int | None:
    folded = fold(word.rstrip("."))
    number = (_MONTHS.get(lang) if lang else _ALL_MONTHS).get(folded)
    english = lang == "en" or (lang is None and folded in _ONLY_ENGLISH)
    if number and english and not word[0].isupper():  # "5 may" is not a date; "5 May" is
        return None
    return number


def _valid(month: int, day: int | None) -> bool:
    return 1 <= month <= 12 and (day is None or 1 <= day <= 31)


def _written_date(match: re.Match, lang: str | None) -> list[Date]:
    month = _month_number(match.group("month"), lang)
    day = int(match.group("day")) if "day" in match.groupdict() else None
    year = int(match.group("year")) if match.group("year") else None
    return [(year, month, day)] if month and _valid(month, day) else []


def _numeric_date(match: re.Match, lang: str | None) -> list[Date]:
    if match.group("sep") == "-" and len(match.group("year")) == 2:
        return []
    first, second, year = int(match.group("a")), int(match.group("b")), int(match.group("year"))
    day_first = [(year, second, first)] if _valid(second, first) else []
    month_first = [(year, first, second)] if _valid(first, second) and first != second else []
    if lang in ("en", None):  # English writes both orders: accept both
        return day_first + month_first
    return day_first or month_first


def _iso_date(match: re.Match, lang: str | None) -> list[Date]:
    year, month, day = int(match.group("year")), int(match.group("b")), int(match.group("a"))
    return [(year, month, day)] if _valid(month, day) else []


def _month_year(match: re.Match, lang: str | None) -> list[Date]:
    return [(int(match.group("year")), int(match.group("b")), None)]


_DATE_READERS = (
    (_DAY_MONTH_RE, _written_date, False), (_MONTH_DAY_RE, _written_date, True), (_MONTH_YEAR_RE, _written_date, False),
    (_NUMERIC_DATE_RE, _numeric_date, False), (_ISO_DATE_RE, _iso_date, False),
    (_MONTH_SLASH_YEAR_RE, _month_year, False),
)


def _candidates(pattern: re.Pattern, text: str) -> Iterator[re.Match]:
    """Every match of `pattern`, overlapping ones included (a rejected "5 de los" must not hide "los 12 de marzo")."""
    pos = 0
    while (match := pattern.search(text, pos)) is not None:
        yield match
        pos = match.start() + 1


def date_spans(text: str, lang: str | None) -> list[tuple[int, int, list[Date]]]:
    """(start, end, readings) of every date; of overlapping readings the longest wins."""
    found = []
    for pattern, reader, month_first in _DATE_READERS:
        if month_first and lang not in ("en", None):
            continue
        for match in _candidates(pattern, text):
            dates = reader(match, lang)
            if dates:
                found.append((match.start(), match.end(), dates))
    chosen: list[tuple[int, int, list[Date]]] = []
    for start, end, dates in sorted(found, key=lambda span: (span[0] - span[1], span[0])):
        if all(end <= other_start or start >= other_end for other_start, other_end, _ in chosen):
            chosen.append((start, end, dates))
    return sorted(chosen)


def date_supported(summary_date: Date, report_date: Date) -> bool:
    """True when the report's date states every field the summary's does, with the same value (a 2-digit
    year matches its century's 4-digit year)."""
    for index, (stated, given) in enumerate(zip(summary_date, report_date)):
        if stated is None:
            continue
        if given is None:
            return False
        if index == 0 and (stated < 100 or given < 100):
            if stated % 100 != given % 100:
                return False
        elif stated != given:
            return False
    return True


# ---------------------------------------------------------------- mentions

# names whose digits are not quantities: tumour markers, the disease, HLA alleles (HLA-B*58:01)
_NAMES_RE = re.compile(
    r"(?<![^\W_])(?:CA[ \u00a0-]?(?:19[-.]9|15[-.]3|72[-.]4|27[-.]29|125|549)|COVID[ \u00a0]19)(?!\d)"
    r"|(?<=[A-Z]\*)\d+(?::\d+)*|(?<=[A-Z]\d\*)\d+(?::\d+)*"
)
_LIST_MARKER_BEFORE = re.compile(r"(?:^|\n)[ \t>*#-]*$")
# what joins the numbers of a range, a list or a dimension (they share the unit written last)
_JOINING_WORDS = (
    "to and or a à al au até ao e ed y o u ou et und oder bis zu до и или og eller en tot och till til și si sau "
    "la ή και έως ως i do až nebo fino tra by por sur на"
)
_JOIN_RE = re.compile(
    rf"[{_SPACES}]*(?:(?P<mark>[-–—−~]|\.\.\.?|[x×X*])|(?P<comma>,))?[{_SPACES}]*"
    rf"(?:(?P<word>{'|'.join(_JOINING_WORDS.split())})(?:[{_SPACES}]+(?:a|al))?[{_SPACES}]+)?",
    re.IGNORECASE,
)
_RATIO_JOIN_RE = re.compile(r"[/:]")  # glued: "Grupo 1: 25" is two numbers


@dataclass
class Mention:
    """A number the text states. kind "number": `readings` are tuples of values that must all hold (one
    tuple of one value in a known language); "ratio": tuples compared whole; "date": (year, month, day)
    tuples, None for a field not written."""

    text: str
    kind: str
    readings: list[tuple]
    unit: Unit | None
    start: int
    end: int
    sign: str = field(default="", repr=False)
    sign_start: int = field(default=0, repr=False)
    join: str | None = field(default=None, repr=False)  # how it joins the previous number: mark, word, comma
    unit_shared: bool = field(default=False, repr=False)  # its unit is the one written after a later number

    def as_dict(self) -> dict:
        return {"text": self.text, "kind": self.kind, "readings": self.readings,
                "unit": self.unit.name if self.unit else None}


def _is_list_marker(text: str, start: int, end: int) -> bool:
    """"1." or "2)" opening a line (an enumerated list), not a quantity."""
    return text[end : end + 2] in (". ", ") ", ".\t", ")\t") and bool(_LIST_MARKER_BEFORE.search(text[:start]))


def _signed(readings: list[tuple[Decimal, ...]], sign: str, multiplier: int) -> list[tuple[Decimal, ...]]:
    negative = sign in ("-", "−")
    signed = []
    for reading in readings:
        values = [value * multiplier for value in reading]
        if negative:
            values[0] = -values[0]
        signed.append(tuple(values))
    return signed


def _plain_numbers(text: str, lang: str | None, taken: list[tuple[int, int]]) -> list[Mention]:
    """Every number outside `taken` spans, with its own unit (if any), in order."""
    mentions: list[Mention] = []
    for match in _NUMERAL_RES[lang].finditer(text):
        start, number_start, end = match.start(), match.start() + len(match.group("sign") or ""), match.end()
        if any(start < span_end and end > span_start for span_start, span_end in taken):
            continue
        if mentions and start < mentions[-1].end:  # inside the previous number's unit: the 10 and 9 of ×10^9/L
            continue
        sign = match.group("sign") or ""
        if not sign and _is_list_marker(text, number_start, end):
            continue
        unit_read = _read_unit(text, end, lang)
        unit = unit_read.unit
        values = _numeral_readings(match, lang)
        if unit and unit.name in ("g",) and text[end:unit_read.end].strip() in ("г", "гг") and lang in ("ru", None):
            if all(len(r) == 1 and r[0] == r[0].to_integral_value() and 1000 <= r[0] <= 2100 for r in values):
                unit = None  # "2020 г." is the year 2020, not 2020 grams
        mentions.append(Mention(
            text[start:unit_read.end].strip(), "number", _signed(values, sign, unit_read.multiplier),
            unit, number_start, unit_read.end, sign, start,
        ))
    return mentions


def _merge_ratios(text: str, numbers: list[Mention]) -> list[Mention]:
    """168/112 mmHg, 1:1024, 14:30: one mention, compared whole."""
    merged: list[Mention] = []
    for mention in numbers:
        previous = merged[-1] if merged else None
        if (previous is not None and previous.unit is None and not mention.sign
                and _RATIO_JOIN_RE.fullmatch(text[previous.end : mention.start])):
            readings = [left + right for left in previous.readings for right in mention.readings]
            merged[-1] = Mention(text[previous.sign_start : mention.end].strip(), "ratio", readings, mention.unit,
                                 previous.start, mention.end, previous.sign, previous.sign_start)
        else:
            merged.append(mention)
    return merged


def _join(gap: str) -> str | None:
    """How two numbers with `gap` between them are joined: "mark" (3-5, 3x5), "word" (3 to 5, 3 y 5,
    ", and"), "comma" (3, 4), or None (not joined)."""
    match = _JOIN_RE.fullmatch(gap) if gap.strip(_SPACES) else None
    if match is None:
        return None
    return "word" if match.group("word") else "comma" if match.group("comma") else "mark"


def _share_units(text: str, mentions: list[Mention]) -> None:
    """Numbers joined by a range, list or dimension mark take the unit written after the last of them:
    3–5 cm, 3 to 5 cm, 3x5 cm, 3, 4 and 5 mm. A comma joins only inside such a list (in "+3.1, 168/112
    mmHg" and "1:1024, 3x5 cm" it does not). A dash right before a number that follows another is a range,
    not a sign (5 -8)."""
    for left, right in zip(mentions, mentions[1:]):
        if "date" in (left.kind, right.kind):
            continue
        gap = text[left.end : right.sign_start]
        if right.sign in ("-", "−") and not gap.strip(_SPACES):
            right.readings = _signed(right.readings, "-", 1)  # undo the sign
            right.text, right.sign, right.sign_start = text[right.start : right.end].strip(), "", right.start
            gap = text[left.end : right.start]
        right.join = _join(gap)
    for index in reversed(range(1, len(mentions))):
        left, right = mentions[index - 1], mentions[index]
        if right.join is None or left.unit is not None or right.unit is None:
            continue
        if right.join == "comma":
            after = mentions[index + 1].join if index + 1 < len(mentions) else None
            if left.kind == "ratio" or not (right.unit_shared and after in ("comma", "word")):
                continue
        left.unit, left.unit_shared = right.unit, True


def number_mentions(text: str, lang: str | None = None) -> list[dict]:
    """Every number the text states, in order: {"text": as written, with its unit; "kind": number, ratio
    or date; "readings"; "unit": the normalized unit or None}."""
    return [mention.as_dict() for mention in mentions_of(text, lang)]


def mentions_of(text: str, lang: str | None = None) -> list[Mention]:
    lang = language(lang)
    dates = date_spans(text, lang)
    names = [(match.start(), match.end()) for match in _NAMES_RE.finditer(text)]
    taken = [(start, end) for start, end, _ in dates] + names
    numbers = _merge_ratios(text, _plain_numbers(text, lang, taken))
    date_mentions = [Mention(text[start:end].strip(), "date", readings, None, start, end, "", start)
                     for start, end, readings in dates]
    mentions = sorted(numbers + date_mentions, key=lambda mention: mention.start)
    _share_units(text, mentions)
    return mentions


# ---------------------------------------------------------------- support


@dataclass
class ReportNumbers:
    """What a report states, indexed for the summary's checks."""

    values: set = field(default_factory=set)  # every value, any unit or none, ratio parts, date years
    by_unit: dict = field(default_factory=dict)  # unit signature -> values in its base units
    ratios: set = field(default_factory=set)  # ratios as written (no unit applied)
    ratios_by_unit: dict = field(default_factory=dict)  # unit signature -> ratios in base units
    dates: list = field(default_factory=list)

    @classmethod
    def of(cls, text: str, lang: str | None = None) -> "ReportNumbers":
        index = cls()
        for mention in mentions_of(text, lang):
            if mention.kind == "date":
                index.dates.extend(mention.readings)
                index.values.update(Decimal(year) for year, _, _ in mention.readings if year and year >= 1000)
                continue
            for reading in mention.readings:
                index.values.update(reading)
                # a rate states its dose too: the report's "2.5 mg daily" supports the summary's "2.5 mg"
                for unit in (mention.unit, mention.unit and mention.unit.dose):
                    if unit:
                        index.by_unit.setdefault(unit.signature, set()).update(
                            Fraction(value) * unit.factor for value in reading)
                if mention.kind == "ratio":
                    index.ratios.add(reading)
                    if mention.unit:
                        index.ratios_by_unit.setdefault(mention.unit.signature, set()).add(
                            tuple(Fraction(value) * mention.unit.factor for value in reading))
        return index

    def value_supported(self, value: Decimal, unit: Unit | None) -> bool:
        if unit is None:
            return value in self.values
        return Fraction(value) * unit.factor in self.by_unit.get(unit.signature, ())

    def supports(self, mention: Mention) -> bool:
        if mention.kind == "date":
            return any(date_supported(date, given) for date in mention.readings for given in self.dates)
        if mention.kind == "ratio":
            if mention.unit is None:
                return any(reading in self.ratios for reading in mention.readings)
            converted = self.ratios_by_unit.get(mention.unit.signature, ())
            return any(tuple(Fraction(v) * mention.unit.factor for v in reading) in converted
                       for reading in mention.readings)
        return any(all(self.value_supported(value, mention.unit) for value in reading) for reading in mention.readings)


def unsupported_numbers(summary: str, source: str, lang: str | None = None) -> tuple[int, list[str]]:
    """(numbers in the summary, those of them the source does not state, as written in the summary)."""
    mentions = mentions_of(summary, lang)
    if not mentions:
        return 0, []
    report = ReportNumbers.of(source, lang)
    return len(mentions), [mention.text for mention in mentions if not report.supports(mention)]


# ---------------------------------------------------------------- words, compression, per document

_WORD_RE = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def bigrams(tokens: list[str]) -> list[tuple[str, str]]:
    return list(zip(tokens, tokens[1:]))


def novel_bigram_rate(summary: str, source: str) -> float:
    """Share of the summary's word bigrams (with repeats) not in the source; 0.0 for fewer than 2 words."""
    summary_bigrams = bigrams(words(summary))
    if not summary_bigrams:
        return 0.0
    source_bigrams = set(bigrams(words(source)))
    return sum(gram not in source_bigrams for gram in summary_bigrams) / len(summary_bigrams)


def compression(summary: str, source: str) -> float:
    """Summary characters / report characters (both stripped)."""
    length = len(source.strip())
    if not length:
        raise ValueError("empty source report")
    return len(summary.strip()) / length


# The per-document fields `document_faithfulness` adds to an evaluation (documents[i]).
FIELDS = (
    "n_numbers", "n_unsupported_numbers", "unsupported_numbers", "novel_bigram_rate", "compression",
    "degenerate", "degenerate_reason",
)


def document_faithfulness(summary: str, source: str, finish_reason: str | None = None, lang: str | None = None) -> dict:
    n_numbers, missing = unsupported_numbers(summary, source, lang)
    reason = summary_degenerate_reason(summary, finish_reason)
    return {
        "n_numbers": n_numbers,
        "n_unsupported_numbers": len(missing),
        "unsupported_numbers": missing,
        "novel_bigram_rate": novel_bigram_rate(summary, source),
        "compression": compression(summary, source),
        "degenerate": reason is not None,
        "degenerate_reason": reason,
    }


def faithfulness_means(documents: Iterable[dict]) -> dict:
    """Model-level values: the unsupported-number rate over every number of every summary (a summary
    without numbers adds none), the share of degenerate summaries, and the mean novel-bigram rate,
    compression and numbers per summary."""
    documents = list(documents)
    if not documents:
        return {}
    numbers = sum(doc["n_numbers"] for doc in documents)
    unsupported = sum(doc["n_unsupported_numbers"] for doc in documents)
    n = len(documents)
    return {
        "n_numbers": numbers / n,
        "n_unsupported_numbers": unsupported / n,
        "unsupported_number_rate": unsupported / numbers if numbers else 0.0,
        "novel_bigram_rate": sum(doc["novel_bigram_rate"] for doc in documents) / n,
        "compression": sum(doc["compression"] for doc in documents) / n,
        "degenerate": sum(doc["degenerate"] for doc in documents) / n,
    }
