"""The unsupported-number check against planted faults: what it catches and what it flags wrongly, before
and after numbers were read with their unit, sign and language.

Every reference summary of a corpus (each `*_sum.txt` with its report beside it, or in the `fulltext/`
folder beside its `summaries/` folder; the language from the file name: multiclinsum_gs_en_3_sum.txt,
multiclinsum2_train_3_it_sum.txt) gets, in copies, one fault of each kind, planted with regular
expressions of this file (not the checker's reading):

- unit swapped: a mass, volume or length unit to its neighbour (mg -> g, mL -> L, cm -> mm, мг -> г);
- digit changed: a number's last digit + 1;
- sign added: a minus before a number;
- decimal shifted: a decimal mark removed (2,5 -> 25) or put before the last digit (750 -> 75,0);
- date changed: a date's day + 1 (a date of the summary, else the report's date added to the summary;
  a report with no date gets one, and so does the summary, with the next day);
- date, day from the report: the same, with a day the report states elsewhere (as a number);
- unit moved: a number the report states with a unit, written with another unit (7 days -> 7 weeks,
  3 years -> 3 months, 512 mg/dL -> 512 mmol/L);
- value from report: a number with a unit replaced by another value the report states with that unit
  (750 mg -> the report's 500 mg): wrong, but stated, so no value check sees it (the row shows a miss).

A fault is planted only where its new value is not stated by the report in any reading (so a planted
fault is a real one), at the first place where that holds, in an order fixed by `--seed` and the summary.
A fault is caught when the checker flags a number in the faulty copy that it does not flag in the
untouched summary. On the untouched references,
every flagged number is a false positive (the references are written from their reports); they are listed.

"before" is the checker as committed before units (git `--before-ref`, or a file `--before-file`),
called without the language it did not take; "after" is workflow/clinsum/faithfulness.py.

    python benchmarks/faithfulness_check.py
    python benchmarks/faithfulness_check.py --corpus resources/sample resources/sample-multiclinsum2
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import platform
import random
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

# the commit that added the checker, which read bare values (no unit, sign or language)
BEFORE_REF = "54aa79d31988ae6ac7abf43a3c4abecda992bda0"
LANGS = ("en", "es", "fr", "pt", "it", "ru", "ca", "no", "da", "ro", "de", "el", "nl", "cs", "sv")
DECIMAL_MARK = {lang: "." if lang == "en" else "," for lang in LANGS}
NUMERIC_DATE_FORMAT = {lang: "{d:02d}.{m:02d}.{y}" if lang in ("de", "ru", "cs", "no", "da", "ro") else
                       "{d:02d}/{m:02d}/{y}" for lang in LANGS}


# ---------------------------------------------------------------- the corpus


@dataclass
class Pair:
    id: str
    lang: str
    summary: str
    report: str


def language_of(name: str) -> str | None:
    return next((part for part in name.split("_") if part in LANGS), None)


def corpus_pairs(root: Path) -> list[Pair]:
    """Every summary with its report, in path order."""
    pairs = []
    for summary_path in sorted(root.rglob("*_sum.txt")):
        stem = summary_path.name[: -len("_sum.txt")]
        beside = [summary_path.with_name(stem + ".txt"), summary_path.parent.parent / "fulltext" / (stem + ".txt")]
        report_path = next((path for path in beside if path.is_file()), None)
        lang = language_of(stem)
        if report_path is None or lang is None:
            continue
        summary, report = (path.read_text(encoding="utf-8") for path in (summary_path, report_path))
        pairs.append(Pair(stem, lang, summary, report))
    return pairs


# ---------------------------------------------------------------- reading numbers loosely (ground truth)

# a plain number: no thousands, no ratio or date around it, not glued to a word
NOT_INSIDE_A_NUMBER = r"(?<![\w.,/:+−-])(?<!\d[ \u00a0\u202f\u2009])"  # nor after a thousands space (1 180 g)
PLAIN_NUMBER = NOT_INSIDE_A_NUMBER + r"(?P<number>\d+(?:[.,]\d{1,2}|[.,]\d{4,})?)(?![\d\w])(?![.,/:]\d)"


def loose_values(text: str) -> set[Decimal]:
    """Every value the text's digits could mean, however read: each part, joined, with either mark as the
    decimal point, grouped by spaces. A planted value outside this set is stated nowhere in the report."""
    values: set[Decimal] = set()
    for token in re.findall(r"\d+(?:[.,]\d+)*", text):
        parts = re.split(r"[.,]", token)
        values.update(Decimal(part) for part in parts)
        values.add(Decimal("".join(parts)))
        if len(parts) > 1:
            values.add(Decimal("".join(parts[:-1]) + "." + parts[-1]))
    for token in re.findall(r"\d{1,3}(?:[ \u00a0\u202f\u2009]\d{3})+", text):
        values.add(Decimal(re.sub(r"\D", "", token)))
    return values


def value_of(token: str) -> Decimal:
    return Decimal(token.replace(",", "."))


def is_name(text: str, start: int) -> bool:
    """A marker's digits (CA 19-9, CA 125), not a quantity."""
    return bool(re.search(r"CA[ \u00a0-]?$", text[:start])) or bool(re.match(r"\d+-\d", text[start:]))


@dataclass
class Fault:
    summary: str
    report: str
    planted: str  # the new text, as written in the summary
    note: str = ""


def replace(text: str, start: int, end: int, new: str) -> str:
    return text[:start] + new + text[end:]


SEED = 0  # --seed


def shuffled(items, pair: Pair, fault: str) -> list:
    """The candidate places of a fault in an order fixed by the seed, the summary and the fault kind, so that
    faults fall on doses and lab values as well as on the age that opens most summaries."""
    items = list(items)
    random.Random(f"{SEED}:{pair.id}:{fault}").shuffle(items)
    return items


def plain_numbers(pair: Pair, fault: str) -> list[re.Match]:
    matches = [match for match in re.finditer(PLAIN_NUMBER, pair.summary) if not is_name(pair.summary, match.start())]
    return shuffled(matches, pair, fault)


# ---------------------------------------------------------------- the faults


UNIT_SWAPS = {"mg": "g", "g": "mg", "µg": "mg", "mcg": "mg", "kg": "g", "mL": "L", "ml": "l", "L": "mL", "l": "ml",
              "dL": "L", "cm": "mm", "mm": "cm", "mmol": "µmol", "µmol": "mmol", "мг": "г", "г": "мг", "мл": "л",
              "л": "мл", "см": "мм", "мм": "см"}
UNIT_SWAP_RE = re.compile(
    rf"(?<![\w.,])(?<!\d[ \u00a0\u202f\u2009])(?P<number>\d+(?:[.,]\d+)?)(?P<space>[ \u00a0]?)"
    rf"(?P<unit>{'|'.join(sorted(map(re.escape, UNIT_SWAPS), key=len, reverse=True))})(?![^\W\d_])"
)


def stated_with_unit(report: str, value: Decimal, unit: str) -> bool:
    """Whether the report writes `value unit` (either decimal mark, with or without a space)."""
    for match in re.finditer(rf"(\d+(?:[.,]\d+)*)[ \u00a0-]?{re.escape(unit)}(?![^\W\d_])", report, re.IGNORECASE):
        if value in loose_values(match.group(1)):
            return True
    return False


def unit_swapped(pair: Pair) -> Fault | None:
    for match in shuffled(UNIT_SWAP_RE.finditer(pair.summary), pair, "unit swapped"):
        new_unit = UNIT_SWAPS[match.group("unit")]
        value = value_of(match.group("number"))
        if stated_with_unit(pair.report, value, new_unit):
            continue
        new = match.group("number") + match.group("space") + new_unit
        return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    return None


def digit_changed(pair: Pair) -> Fault | None:
    for match in plain_numbers(pair, "digit changed"):
        token = match.group("number")
        new = token[:-1] + str((int(token[-1]) + 1) % 10)
        if value_of(new) in loose_values(pair.report):
            continue
        return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    return None


def sign_added(pair: Pair) -> Fault | None:
    for match in plain_numbers(pair, "sign added"):
        token, before = match.group("number"), pair.summary[: match.start()]
        if not re.search(r"(?:^|[\s(])$", before) or re.search(r"\d[\s]*$", before):  # "5 -8" reads as a range
            continue
        if re.search(rf"[-−][ ]?{re.escape(token)}(?!\d)", pair.report):
            continue
        new = "-" + token
        return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    return None


def decimal_shifted(pair: Pair) -> Fault | None:
    mark = DECIMAL_MARK[pair.lang]
    for match in plain_numbers(pair, "decimal shifted"):
        token = match.group("number")
        if re.search(r"[.,]", token):
            new = re.sub(r"[.,]", "", token).lstrip("0") or "0"
        else:
            new = (token[:-1] or "0") + mark + token[-1]
        if value_of(new) in loose_values(pair.report) or value_of(new) == value_of(token):
            continue
        return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    return None


NUMERIC_DATE_RE = re.compile(
    r"(?<![\d/.-])(?P<d>\d{1,2})(?P<sep>[/.-])(?P<m>\d{1,2})(?P=sep)(?P<y>(?:19|20)\d\d)(?!\d)"
)
WRITTEN_DATE_RE = re.compile(
    r"(?<![\d.,])(?P<d>[0-3]?\d)(?P<between>\.?[ \u00a0]+(?:de[ \u00a0]+)?)(?P<month>[^\W\d_]{3,})"
    r"(?P<before_year>,?[ \u00a0]+(?:de[ \u00a0]+)?)(?P<y>(?:19|20)\d\d)(?!\d)"
)


def dates_in(text: str) -> list[re.Match]:
    found = [m for m in NUMERIC_DATE_RE.finditer(text) if 1 <= int(m.group("d")) <= 31 and 1 <= int(m.group("m")) <= 12]
    found += [m for m in WRITTEN_DATE_RE.finditer(text) if 1 <= int(m.group("d")) <= 31]
    return sorted(found, key=lambda m: m.start())


def with_day(match: re.Match, day: int) -> str:
    return match.group(0)[: match.start("d") - match.start()] + f"{day:0{len(match.group('d'))}d}" + \
        match.group(0)[match.end("d") - match.start() :]


def _date_fault(pair: Pair, new_day: Callable[[int, str], int | None]) -> Fault | None:
    """A date of the summary with another day; else the report's date, or one added to the report."""
    for match in dates_in(pair.summary):
        day = new_day(int(match.group("d")), pair.report)
        if day is not None and with_day(match, day) not in pair.report:
            new = with_day(match, day)
            return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    report, note = pair.report, "the report's date"
    report_dates = dates_in(report)
    if not report_dates:  # no date on either side: the report gets one
        report = report.rstrip() + " " + NUMERIC_DATE_FORMAT[pair.lang].format(d=12, m=3, y=2020) + ".\n"
        report_dates, note = dates_in(report), "a date added to the report"
    match = report_dates[0]
    day = new_day(int(match.group("d")), report)
    if day is None:
        return None
    new = with_day(match, day)
    if new in report:
        return None
    return Fault(pair.summary.rstrip() + f" ({new})", report, new, note)


def date_changed(pair: Pair) -> Fault | None:
    return _date_fault(pair, lambda day, report: day + 1 if day < 28 else day - 1)


def date_day_from_report(pair: Pair) -> Fault | None:
    """The day changed to a number the report states elsewhere: a date's parts are all in the report."""
    def elsewhere(day: int, report: str) -> int | None:
        numbers = {int(m.group("number")) for m in re.finditer(PLAIN_NUMBER, report) if "." not in m.group("number")
                   and "," not in m.group("number")}
        return min((n for n in numbers if 1 <= n <= 28 and n != day), default=None)
    return _date_fault(pair, elsewhere)


# durations per language: (word, the word it is moved to)
DURATIONS = {
    "en": "years:months year:month months:weeks month:week weeks:days week:day days:weeks day:week hours:days hour:day",
    "es": "años:meses meses:semanas semanas:días días:semanas horas:días",
    "fr": "ans:mois mois:semaines semaines:jours jours:semaines heures:jours",
    "pt": "anos:meses meses:semanas semanas:dias dias:semanas horas:dias",
    "it": "anni:mesi mesi:settimane settimane:giorni giorni:settimane ore:giorni",
    "ru": "лет:месяцев месяцев:недель недель:дней дней:недель часов:дней",
    "ca": "anys:mesos mesos:setmanes setmanes:dies dies:setmanes hores:dies",
    "no": "år:måneder måneder:uker uker:dager dager:uker timer:dager",
    "da": "år:måneder måneder:uger uger:dage dage:uger timer:dage",
    "ro": "ani:luni luni:săptămâni săptămâni:zile zile:săptămâni ore:zile",
    "de": "Jahre:Monate Monate:Wochen Wochen:Tage Tage:Wochen Stunden:Tage",
    "el": "ετών:μηνών μηνών:εβδομάδων εβδομάδων:ημερών ημερών:εβδομάδων ωρών:ημερών",
    "nl": "jaar:maanden maanden:weken weken:dagen dagen:weken uur:dagen",
    "cs": "let:měsíců měsíců:týdnů týdnů:dní dní:týdnů hodin:dní",
    "sv": "år:månader månader:veckor veckor:dagar dagar:veckor timmar:dagar",
}
# units of another kind a lab value can be moved to
OTHER_KIND = {"mg/dL": "mmol/L", "mmol/L": "mg/dL", "g/dL": "mmol/L", "U/L": "mg/dL", "mg/L": "mmol/L",
              "ng/mL": "mmol/L", "mmHg": "cmH2O", "%": "mg/dL", "kg": "cm", "cm": "kg", "mg": "mL", "mL": "mg"}


def unit_moved(pair: Pair) -> Fault | None:
    moves = dict(pair_.split(":") for pair_ in DURATIONS[pair.lang].split())
    moves.update(OTHER_KIND)
    units = "|".join(sorted(map(re.escape, moves), key=len, reverse=True))
    pattern = re.compile(
        rf"(?<![\w.,])(?<!\d[ \u00a0\u202f\u2009])(?P<number>\d+(?:[.,]\d+)?)(?P<space>[ \u00a0-]?)"
        rf"(?P<unit>{units})(?![^\W\d_])",
        re.IGNORECASE,
    )
    for match in shuffled(pattern.finditer(pair.summary), pair, "unit moved"):
        written = match.group("unit")
        target = next((new for old, new in moves.items() if old.casefold() == written.casefold()), None)
        value = value_of(match.group("number"))
        if target is None or not stated_with_unit(pair.report, value, written):
            continue  # not a number the report states with this unit
        if stated_with_unit(pair.report, value, target):
            continue
        target = target[0].upper() + target[1:] if written[0].isupper() and target[0].islower() else target
        new = match.group("number") + match.group("space") + target
        return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    return None


def value_from_report(pair: Pair) -> Fault | None:
    """A number with a unit replaced by another value the report states in the same unit (750 mg -> the
    report's 500 mg): a wrong number that no value-and-unit check can see."""
    pattern = re.compile(r"(?<![\w.,])(?<!\d[ \u00a0\u202f\u2009])(?P<number>\d+(?:[.,]\d+)?)(?P<space>[ \u00a0-]?)"
                         r"(?P<unit>%|[^\W\d_]+(?:/[^\W\d_]+)*)")
    for match in shuffled(pattern.finditer(pair.summary), pair, "value from report"):
        unit, value = match.group("unit"), value_of(match.group("number"))
        others = [m.group("number") for m in pattern.finditer(pair.report)
                  if m.group("unit") == unit and re.fullmatch(r"\d+(?:[.,]\d{1,2})?", m.group("number"))
                  and value_of(m.group("number")) != value]
        if len(unit) < 1 or not others:
            continue
        new = others[0] + match.group("space") + unit
        return Fault(replace(pair.summary, match.start(), match.end(), new), pair.report, new)
    return None


FAULTS: dict[str, Callable[[Pair], Fault | None]] = {
    "unit swapped": unit_swapped,
    "digit changed": digit_changed,
    "sign added": sign_added,
    "decimal shifted": decimal_shifted,
    "date changed": date_changed,
    "date, day from report": date_day_from_report,
    "unit moved": unit_moved,
    "value from report": value_from_report,  # expected missed: the report states the value, elsewhere
}


# ---------------------------------------------------------------- the checkers


Checker = Callable[[str, str, str], list[str]]


def load_module(path: Path, name: str):
    """A faithfulness module from a file, as part of the clinsum package (it imports .degeneration)."""
    import clinsum  # noqa: F401  (the package its relative imports need)

    spec = importlib.util.spec_from_file_location(f"clinsum.{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def checker_of(module) -> Checker:
    """The module's unsupported-number list for (summary, report, lang); the language is given only to a
    checker that takes it."""
    takes_lang = "lang" in inspect.signature(module.unsupported_numbers).parameters

    def check(summary: str, report: str, lang: str) -> list[str]:
        result = module.unsupported_numbers(summary, report, lang=lang) if takes_lang else \
            module.unsupported_numbers(summary, report)
        return list(result[1])

    def count(summary: str, report: str, lang: str) -> int:
        result = module.unsupported_numbers(summary, report, lang=lang) if takes_lang else \
            module.unsupported_numbers(summary, report)
        return result[0]

    check.count = count  # numbers checked
    return check


def before_checker(args) -> tuple[Checker | None, str]:
    if args.before_file:
        return checker_of(load_module(Path(args.before_file), "faithfulness_before")), str(args.before_file)
    if args.before_ref in ("", "none"):
        return None, "none"
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"{args.before_ref}:workflow/clinsum/faithfulness.py"],
                           capture_output=True, text=True)
    if shown.returncode != 0:
        print(f"no 'before' checker: git show {args.before_ref} failed ({shown.stderr.strip()})", file=sys.stderr)
        return None, "none"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, encoding="utf-8") as handle:
        handle.write(shown.stdout)
    return checker_of(load_module(Path(handle.name), "faithfulness_before")), f"git {args.before_ref}"


# ---------------------------------------------------------------- the run


def caught(check: Checker, fault: Fault, pair: Pair) -> bool:
    """The checker flags something in the faulty copy that it does not flag in the untouched summary."""
    untouched = Counter(check(pair.summary, fault.report, pair.lang))
    return bool(Counter(check(fault.summary, fault.report, pair.lang)) - untouched)


def run(pairs: list[Pair], checkers: dict[str, Checker]) -> dict:
    faults = {kind: {"planted": 0, "caught": dict.fromkeys(checkers, 0), "missed": {name: [] for name in checkers},
                     "notes": {}, "by_language": {}} for kind in FAULTS}
    untouched = {name: {"numbers": 0, "flagged": 0, "flagged_numbers": []} for name in checkers}
    for pair in pairs:
        for name, check in checkers.items():
            flagged = check(pair.summary, pair.report, pair.lang)
            untouched[name]["numbers"] += check.count(pair.summary, pair.report, pair.lang)
            untouched[name]["flagged"] += len(flagged)
            if flagged:
                untouched[name]["flagged_numbers"].append({"id": pair.id, "flagged": flagged})
        for kind, plant in FAULTS.items():
            fault = plant(pair)
            if fault is None:
                continue
            row = faults[kind]
            row["planted"] += 1
            if fault.note:
                row["notes"][fault.note] = row["notes"].get(fault.note, 0) + 1
            language = row["by_language"].setdefault(pair.lang, {"planted": 0, **{name: 0 for name in checkers}})
            language["planted"] += 1
            for name, check in checkers.items():
                if caught(check, fault, pair):
                    row["caught"][name] += 1
                    language[name] += 1
                else:
                    row["missed"][name].append({"id": pair.id, "planted": fault.planted, "note": fault.note})
    return {"faults": faults, "untouched": untouched}


def percent(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.0f}%)" if whole else "-"


def print_table(result: dict, names: list[str], n_pairs: int, languages: list[str]) -> None:
    header = f"{'fault':24} {'planted':>8}" + "".join(f" {'caught ' + name:>16}" for name in names)
    print(f"\n{n_pairs} reference summaries ({', '.join(languages)})\n")
    print(header)
    for kind, row in result["faults"].items():
        caught = "".join(f" {percent(row['caught'][name], row['planted']):>16}" for name in names)
        print(f"{kind:24} {row['planted']:>8}{caught}")
    for kind, row in result["faults"].items():
        for note, count in row["notes"].items():
            print(f"  {kind}: {count} of {row['planted']} into {note}")
    untouched = result["untouched"]
    print(f"\n{'untouched references':24} {'':>8}" + "".join(f" {name:>16}" for name in names))
    print(f"{'numbers checked':24} {'':>8}" + "".join(f" {untouched[n]['numbers']:>16}" for n in names))
    print(f"{'flagged (false pos.)':24} {'':>8}" +
          "".join(f" {percent(untouched[n]['flagged'], untouched[n]['numbers']):>16}" for n in names))
    for name in names:
        for item in untouched[name]["flagged_numbers"]:
            print(f"  {name}: {item['id']}: {', '.join(item['flagged'])}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, nargs="+", default=[REPO / "resources" / "sample"],
                        help="folders searched for *_sum.txt with their reports (default: resources/sample)")
    parser.add_argument("--before-ref", default=BEFORE_REF,
                        help="git revision of workflow/clinsum/faithfulness.py to compare with ('none': after only)")
    parser.add_argument("--before-file", type=Path, help="a faithfulness module file to compare with (instead of git)")
    parser.add_argument("--seed", type=int, default=0, help="orders the places a fault may go (default 0)")
    parser.add_argument("--limit", type=int, default=0, help="at most this many summaries per corpus (0: all)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "faithfulness_check.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    global SEED
    SEED = args.seed
    pairs = []
    for root in args.corpus:
        found = corpus_pairs(root)
        pairs += found[: args.limit] if args.limit else found
    if not pairs:
        print(f"no *_sum.txt with a report under {', '.join(map(str, args.corpus))}", file=sys.stderr)
        return 1
    from clinsum import faithfulness

    checkers: dict[str, Checker] = {}
    before, before_source = before_checker(args)
    if before is not None:
        checkers["before"] = before
    checkers["after"] = checker_of(faithfulness)
    result = run(pairs, checkers)
    languages = sorted({pair.lang for pair in pairs}, key=LANGS.index)
    print_table(result, list(checkers), len(pairs), languages)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "corpora": [str(root) for root in args.corpus],
        "summaries": len(pairs),
        "languages": languages,
        "checkers": {"before": before_source, "after": "workflow/clinsum/faithfulness.py"} if before else
                    {"after": "workflow/clinsum/faithfulness.py"},
        **result,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
