"""Synthetic: a MultiClinSum-shaped corpus with the paper's Table 1 lengths, built from sample sentences.

`clinsum synthetic --sentences resources/sample --out DIR --gold 592 --test 20 --large-scale 26000`
writes, per language, in MultiClinSum's own layout (what `clinsum ingest` reads):

- gold pairs:  DIR/multiclinsum_gs_train_{lang}/fulltext/multiclinsum_gs_{lang}_{n}.txt
               DIR/multiclinsum_gs_train_{lang}/summaries/multiclinsum_gs_{lang}_{n}_sum.txt
- test:        DIR/multiclinsum_test_{lang}/fulltext/multiclinsum_test_{n}_{lang}.txt (no summaries)
- large scale: DIR/multiclinsum_ls_train_{lang}.zip holding multiclinsum_ls_train_{lang}/fulltext|summaries/,
               streamed member by member (memory stays flat in the number of pairs)
- DIR/synthetic.json: the arguments, and per language and set the count, mean, min and max characters
  of the reports and summaries as written.

Lengths (characters of the file content; files are UTF-8, no BOM, no leading or trailing whitespace, so
ingest reads exactly what was written) follow the paper's Table 1 per language. In every set of n >= 2
documents, document number 1 has Table 1's maximum report and maximum summary length and number 2 the
minimum ones (so the longest report is gold id `multiclinsum_gs_{lang}_1`, which the default split, seed 42,
puts in train for all four languages, and test id `multiclinsum_test_1_{lang}`). A set of one document holds
the maximum. The other n - 2 lengths are log-normal draws, scaled (and clipped to [min, max]) so that the
set's total is round(n x Table 1 mean): the mean is exact to rounding whenever the extremes leave room for
it, which with Table 1's numbers holds from 12 documents on for reports and 7 for summaries, except Portuguese
summaries (a 28,227-character maximum), which need 41. Smaller sets get a mean as close as min and max allow:
every other document at the minimum, so the mean lies above Table 1's.

Texts are whole sentences of the sample corpus of that language (reports from its reports, gold and test;
summaries from its summaries), dealt from a deck shuffled by the seed and reshuffled when used up (a long
document repeats sentences: the sample has about 200 report and 35 summary sentences per language), joined
into paragraphs, and cut to the exact length inside the last sentence. The output is byte-identical for
the same arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .io import ClinsumError, write_json
from .settings import schema_default

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LengthStats:
    mean: float
    min: int
    max: int


# Rusnachenko et al. (CLEF 2025), Table 1: characters of MultiClinSum's 592 gold pairs per language.
TABLE1 = {
    "en": {"report": LengthStats(3785.4, 719, 34071), "summary": LengthStats(725.3, 90, 3883)},
    "es": {"report": LengthStats(4056.1, 825, 17602), "summary": LengthStats(792.6, 125, 4161)},
    "fr": {"report": LengthStats(4783.2, 827, 37138), "summary": LengthStats(832.1, 121, 4542)},
    "pt": {"report": LengthStats(4096.0, 793, 37351), "summary": LengthStats(809.5, 116, 28227)},
}
LOG_SIGMA = 0.6  # spread of the log-normal draws: right-skewed, most documents near the median
PARAGRAPH_BREAK = 0.25  # chance that a sentence starts a new paragraph (about 4 sentences a paragraph)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times keep zips byte-identical across runs

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"«¿¡(\dA-ZÀ-ÖØ-Þ])")
SET_NAMES = ("gold", "test", "large_scale")


# ---------------------------------------------------------------- names (MultiClinSum's layout)


def set_root(set_name: str, lang: str) -> str:
    return {"gold": f"multiclinsum_gs_train_{lang}", "test": f"multiclinsum_test_{lang}",
            "large_scale": f"multiclinsum_ls_train_{lang}"}[set_name]


def report_name(set_name: str, lang: str, number: int) -> str:
    if set_name == "test":
        return f"{set_root(set_name, lang)}/fulltext/multiclinsum_test_{number}_{lang}.txt"
    subset = "gs" if set_name == "gold" else "ls"
    return f"{set_root(set_name, lang)}/fulltext/multiclinsum_{subset}_{lang}_{number}.txt"


def summary_name(set_name: str, lang: str, number: int) -> str:
    subset = "gs" if set_name == "gold" else "ls"
    return f"{set_root(set_name, lang)}/summaries/multiclinsum_{subset}_{lang}_{number}_sum.txt"


# ---------------------------------------------------------------- sentences


def split_sentences(text: str) -> list[str]:
    """Sentences of a text, paragraph by paragraph (a split only before a capital, digit or opening mark)."""
    sentences = []
    for paragraph in text.split("\n"):
        sentences.extend(s.strip() for s in SENTENCE_END.split(paragraph.strip()) if s.strip())
    return sentences


def read_sentences(root: str | Path, lang: str) -> dict[str, list[str]]:
    """Distinct report and summary sentences of one language in a MultiClinSum-layout folder, in file order."""
    root = Path(root)
    if not root.is_dir():
        raise ClinsumError(f"{root}: sentences folder not found (--sentences)")
    report_file = re.compile(rf"^multiclinsum_((gs|ls)_{lang}_\d+|test_\d+_{lang})\.txt$")
    summary_file = re.compile(rf"^multiclinsum_(gs|ls)_{lang}_\d+_sum\.txt$")
    pools: dict[str, dict[str, None]] = {"report": {}, "summary": {}}
    for path in sorted(root.rglob("*.txt")):
        kind = "report" if report_file.match(path.name) else "summary" if summary_file.match(path.name) else None
        if kind:
            for sentence in split_sentences(path.read_text(encoding="utf-8-sig")):
                pools[kind].setdefault(sentence, None)
    for kind, pool in pools.items():
        if not pool:
            raise ClinsumError(f"{root}: no {kind} sentences for language {lang!r} (no multiclinsum_*_{lang} {kind} files)")
    return {kind: list(pool) for kind, pool in pools.items()}


class SentenceDeck:
    """Deals sentences in an order shuffled by `rng`, reshuffling whenever the deck is used up."""

    def __init__(self, sentences: list[str], rng: random.Random):
        self._sentences, self._rng, self._position = list(sentences), rng, len(sentences)

    def deal(self) -> str:
        if self._position == len(self._sentences):
            self._rng.shuffle(self._sentences)
            self._position = 0
        self._position += 1
        return self._sentences[self._position - 1]


def cut_sentence(sentence: str, length: int) -> str | None:
    """The sentence's first `length` characters, or None where it is shorter or the cut ends in whitespace."""
    piece = sentence[:length]
    return piece if len(piece) == length and not piece[-1].isspace() else None


def compose(target: int, deck: SentenceDeck, rng: random.Random) -> str:
    """A text of exactly `target` characters: whole sentences in paragraphs, the last one cut.

    A whole sentence is taken only if it ends the text exactly or leaves room for a paragraph break and
    at least one character, so the remaining room is never only a separator (which ingest would strip).
    """
    pieces: list[str] = []
    length, failed = 0, 0
    while length < target:
        sentence = deck.deal()
        separator = "" if not pieces else "\n\n" if rng.random() < PARAGRAPH_BREAK else " "
        room = target - length - len(separator)  # >= 1: see the docstring
        left = room - len(sentence)
        if left == 0 or left > len("\n\n"):
            pieces += [separator, sentence]
            length += len(separator) + len(sentence)
            continue
        piece = cut_sentence(sentence, room)
        if piece is None and failed < 20:  # too short to cut there, or a space at the cut: try another
            failed += 1
            continue
        if piece is None:  # a degenerate pool (e.g. one sentence): repeat the sentence to fill the room
            piece = " ".join([sentence] * (room // len(sentence) + 2))[:room]
            piece = piece[:-1] + "." if piece[-1].isspace() else piece
        pieces += [separator, piece]
        length = target
    return "".join(pieces)


# ---------------------------------------------------------------- lengths


def scale_to_total(draws: np.ndarray, total: int, low: int, high: int) -> np.ndarray:
    """Integers in [low, high], proportional to `draws` (clipped), summing to exactly `total`."""
    if not len(draws):
        return draws.astype(np.int64)

    def clipped_sum(log_scale: float) -> float:
        return float(np.clip(draws * np.exp(log_scale), low, high).sum())

    lower, upper = np.log(low / draws.max()), np.log(high / draws.min())
    for _ in range(100):  # bisection: the clipped sum grows with the scale
        middle = (lower + upper) / 2
        lower, upper = (middle, upper) if clipped_sum(middle) < total else (lower, middle)
    values = np.clip(draws * np.exp(upper), low, high)
    lengths = np.floor(values).astype(np.int64)
    fraction = values - lengths
    while (gap := total - int(lengths.sum())) != 0:
        # settle the rounding on the documents with the largest (or smallest) fractional parts
        movable = np.flatnonzero(lengths < high) if gap > 0 else np.flatnonzero(lengths > low)
        order = movable[np.argsort(-fraction[movable] if gap > 0 else fraction[movable], kind="stable")]
        lengths[order[: abs(gap)]] += 1 if gap > 0 else -1
    return lengths


def target_lengths(count: int, stats: LengthStats, rng: np.random.Generator) -> list[int]:
    """`count` lengths: the maximum first, then the minimum, then log-normal ones scaled to Table 1's mean."""
    if count <= 2:
        return [stats.max, stats.min][:count]
    rest = count - 2
    total = round(count * stats.mean) - stats.max - stats.min
    total = min(max(total, rest * stats.min), rest * stats.max)  # as close as min and max allow
    draws = rng.lognormal(0.0, LOG_SIGMA, rest)
    return [stats.max, stats.min, *scale_to_total(draws, total, stats.min, stats.max).tolist()]


# ---------------------------------------------------------------- documents and writers


def seeded(seed: int, *parts: str) -> int:
    """A 64-bit seed for one stream (language, set, kind), stable across runs, machines and versions."""
    return int.from_bytes(hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()[:8], "big")


def generate_set(set_name: str, lang: str, count: int, sentences: dict, seed: int) -> Iterator[tuple[str, str]]:
    """(file name, text) of one set of one language, one document at a time (reports, then its summary)."""
    kinds = ("report",) if set_name == "test" else ("report", "summary")
    names: dict[str, Callable[[str, str, int], str]] = {"report": report_name, "summary": summary_name}
    streams = {}
    for kind in kinds:
        lengths = target_lengths(count, TABLE1[lang][kind], np.random.default_rng(seeded(seed, lang, set_name, kind, "lengths")))
        text_rng = random.Random(seeded(seed, lang, set_name, kind, "text"))
        streams[kind] = (lengths, SentenceDeck(sentences[kind], text_rng), text_rng)
    for index in range(count):
        for kind in kinds:
            lengths, deck, text_rng = streams[kind]
            text = compose(lengths[index], deck, text_rng)
            if len(text) != lengths[index]:
                raise AssertionError(f"composed {len(text)} characters for a target of {lengths[index]}")
            yield names[kind](set_name, lang, index + 1), text


class LengthTally:
    """Count, mean, min and max characters of reports and summaries as written (running totals, no texts)."""

    def __init__(self):
        self.totals = {kind: {"count": 0, "sum": 0, "min": None, "max": None} for kind in ("report", "summary")}

    def add(self, name: str, text: str) -> None:
        total = self.totals["summary" if name.endswith("_sum.txt") else "report"]
        total["count"] += 1
        total["sum"] += len(text)
        total["min"] = len(text) if total["min"] is None else min(total["min"], len(text))
        total["max"] = len(text) if total["max"] is None else max(total["max"], len(text))

    def to_dict(self) -> dict:
        def describe(total: dict) -> dict | None:
            if not total["count"]:
                return None
            return {"mean": round(total["sum"] / total["count"], 2), "min": total["min"], "max": total["max"]}

        return {"count": self.totals["report"]["count"],
                **{f"{kind}_chars": describe(total) for kind, total in self.totals.items()}}


def write_folder(out: Path, documents: Iterator[tuple[str, str]], tally: LengthTally) -> None:
    for name, text in documents:
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        tally.add(name, text)


def write_zip(zip_path: Path, documents: Iterator[tuple[str, str]], tally: LengthTally) -> None:
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in documents:
            member = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            archive.writestr(member, text.encode("utf-8"))
            tally.add(name, text)


# ---------------------------------------------------------------- the command


def prepare_out(out: Path) -> list[str]:
    """Entries of an earlier synthetic corpus in `out` to replace; refuse a folder that holds anything else."""
    if not out.exists() or not any(out.iterdir()):
        return []
    previous = out / "synthetic.json"
    if not previous.is_file():
        raise ClinsumError(f"{out}: not empty and holds no synthetic.json; give --out an empty or new folder")
    return json.loads(previous.read_text(encoding="utf-8")).get("entries", [])


def synthesize(sentences_dir: str | Path, out: str | Path, languages: list[str], gold: int, test: int = 0,
               large_scale: int = 0, seed: int = 42) -> dict:
    """Write the corpus under `out` (see the module docstring); return what synthetic.json holds."""
    out = Path(out)
    unknown = [lang for lang in languages if lang not in TABLE1]
    if unknown:
        raise ClinsumError(f"no Table 1 lengths for language(s) {unknown} (known: {sorted(TABLE1)})")
    pools = {lang: read_sentences(sentences_dir, lang) for lang in languages}
    stale = prepare_out(out)
    counts = {"gold": gold, "test": test, "large_scale": large_scale}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        languages_stats, entries = {}, []
        for lang in languages:
            languages_stats[lang] = {"sentences": {kind: len(pool) for kind, pool in pools[lang].items()}}
            for set_name in SET_NAMES:
                if not counts[set_name]:
                    continue
                started, tally = time.perf_counter(), LengthTally()
                documents = generate_set(set_name, lang, counts[set_name], pools[lang], seed)
                if set_name == "large_scale":
                    entries.append(f"{set_root(set_name, lang)}.zip")
                    write_zip(staging / entries[-1], documents, tally)
                else:
                    entries.append(set_root(set_name, lang))
                    write_folder(staging, documents, tally)
                languages_stats[lang][set_name] = tally.to_dict()
                log.info("%s %s: %d documents in %.1f s", lang, set_name, counts[set_name], time.perf_counter() - started)
        result = {
            "arguments": {"sentences": str(sentences_dir), "languages": list(languages), **counts, "seed": seed},
            "table1": {lang: {kind: vars(stats) for kind, stats in TABLE1[lang].items()} for lang in languages},
            "languages": languages_stats,
            "entries": entries,
        }
        write_json(staging / "synthetic.json", result)
        out.mkdir(exist_ok=True)
        for name in [*stale, "synthetic.json"]:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for name in [*entries, "synthetic.json"]:
            (staging / name).rename(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {number}")
    return number


def _run(args) -> None:
    synthesize(args.sentences, args.out, args.languages, args.gold, args.test, args.large_scale, args.seed)


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "synthetic",
        help="write a MultiClinSum-shaped corpus (paper's Table 1 lengths) from sample sentences",
        description="Write a synthetic corpus in MultiClinSum's layout whose report and summary lengths follow "
        "the paper's Table 1 per language (exact min and max, mean to rounding), built from the sentences of a "
        "sample corpus. In every set, document 1 has the longest report and summary and document 2 the shortest. "
        "Writes OUT/synthetic.json with the lengths as written. Deterministic: the same arguments give "
        "byte-identical files.",
    )
    parser.add_argument("--sentences", required=True,
                        help="MultiClinSum-layout folder whose report and summary sentences are reused (resources/sample)")
    parser.add_argument("--out", required=True,
                        help="folder to write: new, empty, or an earlier synthetic corpus (whose files are replaced)")
    parser.add_argument("--languages", nargs="+", default=list(TABLE1), help="languages to write, of en es fr pt (default: all four)")
    parser.add_argument("--gold", type=_count, default=schema_default("corpus.synthetic.gold"),
                        help="gold pairs per language, as multiclinsum_gs_train_{lang}/ (default: %(default)s, as in MultiClinSum)")
    parser.add_argument("--test", type=_count, default=schema_default("corpus.synthetic.test"),
                        help="test-layout reports per language, as multiclinsum_test_{lang}/ (no summaries; default: %(default)s)")
    parser.add_argument("--large-scale", type=_count, default=schema_default("corpus.synthetic.large_scale"),
                        help="large-scale pairs per language, as one multiclinsum_ls_train_{lang}.zip each (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=schema_default("corpus.synthetic.seed"),
                        help="seed of lengths and sentence order (default: %(default)s)")
    parser.set_defaults(func=_run)
