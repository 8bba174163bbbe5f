"""Clinical faithfulness checks of a summary against its source report: offline, in any language.

- `unsupported_numbers`: numbers the summary states (ages, doses, lab values, durations, dates) that the
  report does not contain. Numbers are compared by value: "2,5 mg" and "2.5 mg" are the same number, "5mg"
  and "5 mg" too, "1,500" may be 1500 or 1.5 and "1 500" 1500 (or 1 and 500); a date "12.03.2020" is its
  parts 12, 3 and 2020, and a month name in the report ("12 de marzo") supports the month's number.
  A summary number is supported when one of its readings has all its values among the report's.
  Not counted: digits inside names (CD4, HbA1c, IL-6, COVID-19) and list markers ("1." at a line start).
  Numbers written as words ("forty-five") are not read, on either side.
- `novel_bigram_rate`: the share of the summary's word bigrams absent from the report (abstractiveness).
- `compression`: summary characters / report characters.
- `degenerate`: a repetition loop, an empty output, broken characters, or an output cut at the token
  limit (`degeneration.summary_degenerate_reason`).

Words are lowercased runs of Unicode letters and digits, so every script and accent is kept.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Iterable

from .degeneration import summary_degenerate_reason

_SPACES = " \u00a0\u202f\u2009"  # space, no-break space, narrow no-break space, thin space (fr: 1 500)
_NUMBER_RE = re.compile(
    r"(?<![^\W_])(?<![^\W\d_]-)"  # not glued to a word (CD4, HbA1c) nor after letter + hyphen (IL-6)
    rf"(?:\d{{1,3}}(?:[{_SPACES}]\d{{3}})+(?!\d)|\d+)"  # digits, or thousands grouped by spaces
    r"(?:[.,]\d+)*"  # decimal or thousands marks: 2,5  1.500  1,234.56  12.03.2020
)
# a unit after a number, for display only: %, or a short word (mg, mL, mg/dL, años, jours)
_UNIT_RE = re.compile(rf"[{_SPACES}]?(?:%|‰|[^\W\d_]{{1,6}}(?:/[^\W\d_]{{1,6}})?(?![^\W\d_]))")
_SEPARATOR_RE = re.compile(rf"([.,{_SPACES}])")
_LIST_MARKER_BEFORE = re.compile(r"(?:^|\n)[ \t>*#-]*$")
_WORD_RE = re.compile(r"\w+", re.UNICODE)

# Month names (en, es, fr, pt): a report's "12 March 2020" supports a summary's "12/03/2020".
MONTHS = {
    1: "january enero janvier janeiro",
    2: "february febrero février fevereiro",
    3: "march marzo mars março",
    4: "april abril avril",
    5: "may mayo mai maio",
    6: "june junio juin junho",
    7: "july julio juillet julho",
    8: "august agosto août",
    9: "september septiembre setiembre septembre setembro",
    10: "october octubre octobre outubro",
    11: "november noviembre novembre novembro",
    12: "december diciembre décembre dezembro",
}
_MONTH_NUMBER = {name: number for number, names in MONTHS.items() for name in names.split()}


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:  # cannot happen for \d runs; kept so a bad case fails loudly
        raise ValueError(f"not a number: {text!r}") from None


def readings(token: str) -> list[tuple[Decimal, ...]]:
    """The values a written number can mean; each reading is a tuple of values that must all be present.

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


def _is_list_marker(text: str, start: int, end: int) -> bool:
    """"1." or "2)" opening a line (an enumerated list), not a quantity."""
    return text[end : end + 2] in (". ", ") ", ".\t", ")\t") and bool(_LIST_MARKER_BEFORE.search(text[:start]))


def number_mentions(text: str) -> list[dict]:
    """Every number the text states: {"text": as written, with a unit when one follows, "readings": [...]}."""
    mentions = []
    for match in _NUMBER_RE.finditer(text):
        if _is_list_marker(text, match.start(), match.end()):
            continue
        unit = _UNIT_RE.match(text, match.end())
        surface = text[match.start() : unit.end()] if unit else match.group(0)
        mentions.append({"text": surface.strip(), "readings": readings(match.group(0))})
    return mentions


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def source_values(text: str) -> set[Decimal]:
    """Every value a report's numbers can mean, and the numbers of the months it names."""
    values = {value for mention in number_mentions(text) for reading in mention["readings"] for value in reading}
    values.update(Decimal(_MONTH_NUMBER[word]) for word in words(text) if word in _MONTH_NUMBER)
    return values


def unsupported_numbers(summary: str, source: str) -> tuple[int, list[str]]:
    """(numbers in the summary, those of them the source does not contain, as written in the summary)."""
    mentions = number_mentions(summary)
    if not mentions:
        return 0, []
    available = source_values(source)
    missing = [
        mention["text"]
        for mention in mentions
        if not any(all(value in available for value in reading) for reading in mention["readings"])
    ]
    return len(mentions), missing


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


def document_faithfulness(summary: str, source: str, finish_reason: str | None = None) -> dict:
    n_numbers, missing = unsupported_numbers(summary, source)
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
