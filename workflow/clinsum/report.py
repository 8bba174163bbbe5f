"""Report: Table 4 under a scoring protocol, clinical faithfulness, paired bootstrap intervals, figures and
examples.

`clinsum report` reads every `results/eval/{model}/{lang}.json`, the judge's `results/judge/{model}/{lang}.json`
when the judge ran, and each variant's `train_log.csv`, and writes `results/report/`:
- table4.md/.csv: rows language x model; BERTScore P/R/F1 and ROUGE R-1/R-2/R-L/R-Lsum F1, x100 with 2
  decimals, best per column and language in bold; the heading names the scoring protocol, the note says
  which of its parts the configuration overrode and which metrics the protocol reports; degenerate
  summaries counted per row;
- faithfulness.md/.csv: unsupported-number rate, novel bigrams, compression, degenerate summaries (by
  kind), and the judge's faithfulness and completeness (with its malformed answers) when it ran;
- bootstrap.md/.csv: paired bootstrap 95% CI of per-document differences of the scores, the
  faithfulness measures and the judge's scores;
- bars/{lang}.png, training_curves.png, and a self-contained index.html that also shows, per model and
  language, the best and the worst scored summary beside its reference.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

from .fidelity import mode as fidelity_mode
from .io import ClinsumError, atomic_path, pairs_option, read_json
from .languages import language_name
from .variants import variant
from .settings import parse_settings
from .trainlog import plot_curves, read_log

log = logging.getLogger(__name__)

# (eval key, column label): the paper's Table 4 columns, in its order.
BERTSCORE_COLUMNS = [("bertscore_p", "Precision"), ("bertscore_r", "Recall"), ("bertscore_f", "F1")]
ROUGE_COLUMNS = [("rouge1_f", "R-1"), ("rouge2_f", "R-2"), ("rougeL_f", "R-L"), ("rougeLsum_f", "R-Lsum")]
TABLE_COLUMNS = BERTSCORE_COLUMNS + ROUGE_COLUMNS
COLUMN_NAMES = {key: f"BERTScore {label}" for key, label in BERTSCORE_COLUMNS} | dict(ROUGE_COLUMNS)
# The faithfulness table: (means key, label, scale); the judge's columns only when the judge ran.
FAITHFULNESS_COLUMNS = [
    ("n_numbers", "numbers per summary", 1),
    ("unsupported_number_rate", "unsupported numbers (%)", 100),
    ("n_unsupported_numbers", "unsupported numbers per summary", 1),
    ("novel_bigram_rate", "novel bigrams (%)", 100),
    ("compression", "compression (% of report)", 100),
]
JUDGE_COLUMNS = [("judge_faithfulness", "judge faithfulness", 100), ("judge_completeness", "judge completeness", 100),
                 ("judge_fluency", "judge fluency", 100)]
# The per-document values the bootstrap compares: (key, label, scale), those present in the evaluations.
# The shared task ranked ROUGE-Lsum and BERTScore; the others are the faithfulness checks and the judge.
BOOTSTRAP_METRICS = [
    ("rougeL_f", "ROUGE-L F1", 100),
    ("rougeLsum_f", "ROUGE-Lsum F1", 100),
    ("bertscore_f", "BERTScore F1", 100),
    ("n_unsupported_numbers", "unsupported numbers per summary", 1),
    ("novel_bigram_rate", "novel bigrams (%)", 100),
    ("compression", "compression (%)", 100),
    ("degenerate", "degenerate summaries (%)", 100),
    ("judge_faithfulness", "judge faithfulness", 100),
    ("judge_completeness", "judge completeness", 100),
    ("judge_fluency", "judge fluency", 100),
]
# Below this many documents a percentile bootstrap interval is too coarse to call (n = 2 has 3 distinct means).
MIN_BOOTSTRAP_DOCS = 10
COUNT_KEYS = ["n", "n_unscored", "n_empty_predictions", "n_input_truncated", "n_fp32_fallback", "n_degenerate"]
COUNT_LABELS = [
    "scored", "unscored (no reference)", "empty predictions", "inputs truncated", "fp32 fallbacks", "degenerate",
]


def lang_name(lang: str) -> str:
    return language_name(lang)


# ---------------------------------------------------------------- inputs

EVAL_KEYS = ("model", "lang", "documents", "means", "rouge", "bertscore", "protocol", "n_degenerate")


def load_evals(paths: list[str | Path]) -> dict[tuple[str, str], dict]:
    """(model, lang) -> eval json; all share one protocol and ROUGE tokenizer, each language one encoder."""
    evals = {}
    for path in paths:
        data = read_json(path)
        for key in EVAL_KEYS:
            if key not in data:
                raise ClinsumError(f"{path}: not an evaluation file of this version (no {key!r}); rerun evaluate")
        pair = (data["model"], data["lang"])
        if pair in evals:
            raise ClinsumError(f"{path}: a second evaluation of model {pair[0]} for {pair[1]}")
        data["path"] = str(path)
        evals[pair] = data
    checks = [
        ("scoring protocol", lambda d: d["protocol"]["name"], list(evals.values())),
        ("ROUGE tokenizer", lambda d: d["rouge"]["tokenizer"], list(evals.values())),
    ]
    for lang in dict.fromkeys(data["lang"] for data in evals.values()):
        group = [data for data in evals.values() if data["lang"] == lang]
        checks.append((f"BERTScore model for {lang}", bertscore_label, group))
    for what, get, group in checks:
        seen = {get(data): data["path"] for data in group}
        if len(seen) > 1:
            raise ClinsumError(f"evaluations disagree on the {what}: " + "; ".join(f"{k} in {v}" for k, v in seen.items()))
    return evals


def merge_judgements(evals: dict, paths: list[str | Path]) -> None:
    """Add the judge's scores to the evaluated documents (None where its answer was malformed) and its
    counts to each evaluation (`judge`); the judge must have judged exactly the evaluated documents."""
    for path in paths:
        data = read_json(path)
        for key in ("model", "lang", "documents", "n_malformed", "means"):
            if key not in data:
                raise ClinsumError(f"{path}: not a judge file (no {key!r})")
        pair = (data["model"], data["lang"])
        if pair not in evals:
            raise ClinsumError(f"{path}: judges model {pair[0]} for {pair[1]}, which has no evaluation")
        judged = {doc["id"]: doc for doc in data["documents"]}
        documents = evals[pair]["documents"]
        if judged.keys() != {doc["id"] for doc in documents}:
            raise ClinsumError(f"{path} and {evals[pair]['path']} hold different documents: rerun the judge")
        for doc in documents:
            verdict_doc = judged[doc["id"]]
            for key in ("judge_faithfulness", "judge_completeness", "judge_fluency"):
                if not verdict_doc["malformed"] and key not in verdict_doc:
                    raise ClinsumError(f"{path}: a judge file of an earlier version (no {key}): rerun the judge")
                doc[key] = None if verdict_doc["malformed"] else verdict_doc[key]
        evals[pair]["judge"] = {key: data[key] for key in ("n", "n_judged", "n_malformed", "n_retried") if key in data}
        evals[pair]["means"].update(data["means"])


def consistency_markdown(paths: list[str | Path]) -> str:
    """The judge's consistency across languages, one row per model (results/judge/{model}/consistency.json)."""
    if not paths:
        return ""
    lines = ["## Consistency across languages (the judge)", "",
             "| Model | pairs judged | consistency | malformed | by languages | candidates not confirmed |",
             "|---|---:|---:|---:|---|---:|"]
    for path in paths:
        data = read_json(path)
        for key in ("model", "n_judged", "n_malformed", "n_unconfirmed", "means"):
            if key not in data:
                raise ClinsumError(f"{path}: not a consistency file (no {key!r})")
        mean = data["means"].get("judge_consistency")
        by = ", ".join(f"{pair} {100 * value:.1f}" for pair, value in data["means"]["by_languages"].items()) or "–"
        lines.append(f"| {data['model']} | {data['n_judged']} | {fmt(None if mean is None else 100 * mean)} "
                     f"| {data['n_malformed']} | {by} | {data['n_unconfirmed']} |")
    return "\n".join(lines) + "\n\n" + CONSISTENCY_NOTE + "\n"


CONSISTENCY_NOTE = (
    "A case in several languages is paired from the first configured language it has to each other one when "
    "its ids name the same case (multiclinsum2_test_12_ca and multiclinsum2_test_12_es) and the two reports share "
    "their numbers (at least 3 distinct, half of both together); candidates whose reports do not are listed as not "
    "confirmed and not judged. Consistency: 1 when both summaries state the same clinical facts, x100."
)


def bertscore_label(data: dict) -> str:
    return f"{data['bertscore']['model']} (layer {data['bertscore']['num_layers']})"


# ---------------------------------------------------------------- Table 4


def corpus_notes(manifest: dict | None) -> list[str]:
    """What ingest warned about and skipped (results/corpus/manifest.json), for the report's header: a run that
    lost documents says so where its scores are read."""
    if not manifest:
        return []
    notes = [f"Corpus warning: {warning}" for warning in manifest.get("warnings", [])]
    skipped = [
        f"{lang} {counts['skipped']} of {counts['read']} ("
        + ", ".join(f"{reason} {n}" for reason, n in counts["skipped_by_reason"].items()) + ")"
        for lang, counts in manifest.get("languages", {}).items() if counts["skipped"]
    ]
    if skipped:
        notes.append("Documents skipped at ingest: " + "; ".join(skipped) + " (results/corpus/manifest.json).")
    duplicates = manifest.get("totals", {}).get("duplicate_files", 0)
    if duplicates:
        notes.append(f"{duplicates} duplicate file(s) of documents read elsewhere, not read (results/corpus/manifest.json).")
    return notes


def table4_rows(evals: dict, models: list[str], languages: list[str]) -> list[dict]:
    """One row per (language, model), values x100 (None where a language has no scored document)."""
    rows = []
    for lang in languages:
        for model in models:
            if (model, lang) not in evals:
                raise ClinsumError(f"no evaluation of model {model} for {lang}")
            data = evals[(model, lang)]
            row = {"lang": lang, "model": model, **{key: data.get(key, 0) for key in COUNT_KEYS}}
            row["degenerate_kinds"] = data.get("degenerate_kinds", {})
            for key, _ in TABLE_COLUMNS:
                value = data["means"].get(key)
                row[key] = None if value is None else 100.0 * value
            rows.append(row)
    return rows


def best_cells(rows: list[dict]) -> set[tuple[str, str, str]]:
    """(lang, model, column) of the best value per column within each language, compared as shown
    (2 decimals), so that ties in the table are all bold."""
    best = set()
    for lang in dict.fromkeys(row["lang"] for row in rows):
        group = [row for row in rows if row["lang"] == lang]
        for key, _ in TABLE_COLUMNS:
            shown = {row["model"]: round(row[key], 2) for row in group if row[key] is not None}
            if shown:
                top = max(shown.values())
                best.update((lang, model, key) for model, value in shown.items() if value == top)
    return best


def fmt(value: float | None) -> str:
    if value is None:
        return "–"
    text = f"{value:.2f}"
    return "0.00" if text == "-0.00" else text


def degenerate_cell(row: dict) -> str:
    """"k of n", with the kinds when any (e.g. "2 of 4: loop 1, cut 1")."""
    text = f"{row['n_degenerate']} of {row['n']}"
    kinds = [f"{kind} {count}" for kind, count in row.get("degenerate_kinds", {}).items() if count]
    return text + (f": {', '.join(kinds)}" if kinds else "")


def bertscore_note(evals: dict) -> str:
    """The encoder of each language ("all languages" when one serves all), its truncation and clamping."""
    by_label: dict[str, list[str]] = {}
    for data in evals.values():
        langs = by_label.setdefault(bertscore_label(data), [])
        if data["lang"] not in langs:
            langs.append(data["lang"])
    if len(by_label) == 1:
        encoders = next(iter(by_label))
    else:
        encoders = "; ".join(f"{', '.join(langs)}: {label}" for label, langs in by_label.items())
    any_eval = next(iter(evals.values()))["bertscore"]
    extra = [f"inputs truncated to {any_eval['max_tokens']} tokens"] if any_eval.get("max_tokens") else []
    extra += ["F1 clamped to [0, 1]"] if any_eval.get("clamp_f1") else []
    return f"BERTScore: {encoders}, no baseline rescaling" + "".join(f", {part}" for part in extra) + "."


def tokenizer_note(evals: dict) -> str:
    any_eval = next(iter(evals.values()))
    tokenizer = any_eval["rouge"]["tokenizer"]
    if tokenizer == "default":
        rouge = "rouge-score's default tokenizer (ASCII letters and digits only, as the paper; accented letters split words)"
    else:
        rouge = f"the {tokenizer} tokenizer (Unicode letters kept; not comparable with the paper's ROUGE)"
    stem = "with" if any_eval["rouge"].get("use_stemmer") else "no"
    rouge_note = f"ROUGE F1 with {rouge}, {stem} stemming, ROUGE-Lsum on newline-split lines."
    return f"{rouge_note} {bertscore_note(evals)} Values x100."


def protocol_name(evals: dict) -> str:
    return next(iter(evals.values()))["protocol"]["name"]


def protocol_note(evals: dict) -> str:
    """The protocol, the metrics it reports, and every part this run overrode (with the languages, when
    not all)."""
    protocol = next(iter(evals.values()))["protocol"]
    languages = list(dict.fromkeys(data["lang"] for data in evals.values()))
    overridden: dict[str, list[str]] = {}
    for data in evals.values():
        for item in data["protocol"]["overrides"]:
            text = f"{item['part']} = {item['value']} (the protocol's: {item['protocol']})"
            langs = overridden.setdefault(text, [])
            if data["lang"] not in langs:
                langs.append(data["lang"])
    official = ", ".join(COLUMN_NAMES.get(key, key) for key in protocol["official"])
    note = f"Scoring protocol {protocol['name']}: {protocol['description']}; it reports {official}."
    if overridden:
        parts = [text + ("" if langs == languages else f" for {', '.join(langs)}") for text, langs in overridden.items()]
        note += " Overridden in this run: " + "; ".join(parts) + "."
    else:
        note += " No part of it is overridden in this run."
    return note


def table4_markdown(rows: list[dict], note: str, protocol: str) -> str:
    best = best_cells(rows)
    header = ["Language", "Model"] + [COLUMN_NAMES[key] for key, _ in TABLE_COLUMNS] + ["degenerate"]
    rule = "|" + "|".join(["---"] * 2 + ["---:"] * len(TABLE_COLUMNS) + ["---"]) + "|"
    lines = ["| " + " | ".join(header) + " |", rule]
    previous = None
    for row in rows:
        cells = [lang_name(row["lang"]) if row["lang"] != previous else "", row["model"]]
        previous = row["lang"]
        for key, _ in TABLE_COLUMNS:
            text = fmt(row[key])
            cells.append(f"**{text}**" if (row["lang"], row["model"], key) in best else text)
        cells.append(degenerate_cell(row))
        lines.append("| " + " | ".join(cells) + " |")
    return (
        f"# Table 4 (protocol {protocol})\n\n" + "\n".join(lines) + "\n\n" + note
        + " Best per column and language in bold. Degenerate summaries (a repetition loop, an empty output,"
        " broken characters, or an output cut at the token limit) are scored like the others.\n"
    )


def counts_markdown(rows: list[dict]) -> str:
    lines = ["| Language | Model | " + " | ".join(COUNT_LABELS) + " |", "|---|---|" + "---:|" * len(COUNT_KEYS)]
    for row in rows:
        lines.append(f"| {lang_name(row['lang'])} | {row['model']} | " + " | ".join(str(row[k]) for k in COUNT_KEYS) + " |")
    return "\n".join(lines) + "\n"


def write_table4_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    columns = ["lang", "model"] + COUNT_KEYS + [key for key, _ in TABLE_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    with atomic_path(path) as handle:
        frame.to_csv(handle, index=False, float_format="%.4f")


# ---------------------------------------------------------------- clinical faithfulness


def faithfulness_rows(evals: dict, models: list[str], languages: list[str]) -> list[dict]:
    """One row per (language, model): the faithfulness means (scaled), degenerate and judge counts."""
    judged = any("judge" in data for data in evals.values())
    columns = FAITHFULNESS_COLUMNS + (JUDGE_COLUMNS if judged else [])
    rows = []
    for lang in languages:
        for model in models:
            data = evals[(model, lang)]
            row = {"lang": lang, "model": model, "n": data["n"], "n_degenerate": data["n_degenerate"]}
            row["degenerate_kinds"] = data.get("degenerate_kinds", {})
            for key, _, scale in columns:
                value = data["means"].get(key)
                row[key] = None if value is None else scale * value
            if judged:
                judge = data.get("judge", {})
                row["judge_malformed"] = judge.get("n_malformed")
            rows.append(row)
    return rows


def faithfulness_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, body) of the faithfulness table, shared by the Markdown and the HTML."""
    judged = bool(rows) and "judge_malformed" in rows[0]
    columns = FAITHFULNESS_COLUMNS + (JUDGE_COLUMNS if judged else [])
    header = ["Language", "Model", "n"] + [label for _, label, _ in columns] + ["degenerate"]
    header += ["judge: malformed answers"] if judged else []
    body = []
    for row in rows:
        cells = [lang_name(row["lang"]), row["model"], str(row["n"])]
        cells += [fmt(row[key]) for key, _, _ in columns] + [degenerate_cell(row)]
        if judged:
            malformed = row["judge_malformed"]
            cells.append("–" if malformed is None else f"{malformed} of {row['n']}")
        body.append(cells)
    return header, body


FAITHFULNESS_NOTE = (
    "Numbers (ages, doses, lab values, durations, dates; decimal comma or point, units attached or not) stated "
    "in a summary and absent from its report are unsupported; the rate pools every number of every summary. "
    "Novel bigrams: the share of the summary's word bigrams absent from the report. Compression: summary "
    "characters over report characters. Degenerate: a repetition loop, an empty output, broken characters or an "
    "output cut at the token limit, by kind. Judge scores (when the judge ran): means over its well-formed "
    "answers, x100; a malformed answer was asked again once, then counted, never guessed."
)


def faithfulness_markdown(rows: list[dict]) -> str:
    header, body = faithfulness_table(rows)
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "# Clinical faithfulness\n\n" + "\n".join(lines) + "\n\n" + FAITHFULNESS_NOTE + "\n"


def write_faithfulness_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    flat = []
    for row in rows:  # one column per degenerate kind
        kinds = {f"degenerate_{kind}": count for kind, count in row["degenerate_kinds"].items()}
        flat.append({key: value for key, value in row.items() if key != "degenerate_kinds"} | kinds)
    with atomic_path(path) as handle:
        pd.DataFrame(flat).to_csv(handle, index=False, float_format="%.4f")


# ---------------------------------------------------------------- paired bootstrap


def paired_bootstrap(a: list[float], b: list[float], samples: int, seed: int) -> tuple[float, float, float]:
    """Mean of a - b over documents and the percentile 95% interval of that mean over `samples`
    resamples of documents with replacement (the same documents for a and b: paired)."""
    import numpy as np

    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.ndim != 1 or len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if diff.size == 0:
        raise ValueError("paired bootstrap of no documents")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // diff.size)  # bounds memory: at most ~2M indices at a time
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        index = rng.integers(0, diff.size, size=(stop - start, diff.size))
        means[start:stop] = diff[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def comparisons(models: list[str], start: str | None = None) -> list[tuple[str, str]]:
    """(variant, reference) pairs: each variant against the one its table entry compares it with (distil against
    standard), or the one it started from (a reward-tuned variant against `start`), when trained, then each
    variant against base."""
    variants = [model for model in models if model != "base"]
    reference = {name: start if variant(name).stage == "reward" else variant(name).compare_with for name in variants}
    pairs = [(name, reference[name]) for name in variants if reference[name] in variants]
    if "base" in models:
        pairs += [(name, "base") for name in variants]
    return pairs


def paired_documents(evals: dict, models: list[str], languages: list[str], start: str | None = None) -> dict:
    """(lang, model, reference) -> [(document of model, document of reference)], the same ids in both."""
    paired = {}
    for lang in languages:
        for model, reference in comparisons(models, start):
            docs_a = {doc["id"]: doc for doc in evals[(model, lang)]["documents"]}
            docs_b = {doc["id"]: doc for doc in evals[(reference, lang)]["documents"]}
            if docs_a.keys() != docs_b.keys():
                raise ClinsumError(
                    f"{evals[(model, lang)]['path']} and {evals[(reference, lang)]['path']} score different "
                    f"documents ({len(docs_a.keys() - docs_b.keys())} and {len(docs_b.keys() - docs_a.keys())} "
                    "not in the other): rerun their evaluation"
                )
            paired[(lang, model, reference)] = [(docs_a[i], docs_b[i]) for i in sorted(docs_a)]
    return paired


def bootstrap_metrics(evals: dict) -> list[tuple[str, str, int]]:
    """The BOOTSTRAP_METRICS the evaluations hold (the judge's only when it ran)."""
    keys = {key for data in evals.values() for doc in data["documents"] for key in doc}
    return [metric for metric in BOOTSTRAP_METRICS if metric[0] in keys]


def bootstrap_rows(evals: dict, models: list[str], languages: list[str], samples: int, seed: int,
                   start: str | None = None) -> list[dict]:
    """Per language, then pooled over languages ("all", when there are several): each comparison and metric.
    A document without a value in either model (a malformed judge answer) leaves that metric's pairs. `start`:
    the variant a reward-tuned one started from, its reference."""
    paired = paired_documents(evals, models, languages, start)
    groups = list(languages) + (["all"] if len(languages) > 1 else [])
    rows = []
    for group in groups:
        for model, reference in comparisons(models, start):
            pairs = [pair for lang in (languages if group == "all" else [group]) for pair in paired[(lang, model, reference)]]
            for key, label, scale in bootstrap_metrics(evals):
                values = [(a.get(key), b.get(key)) for a, b in pairs]
                values = [(float(a), float(b)) for a, b in values if a is not None and b is not None]
                row = {"lang": group, "model": model, "reference": reference, "metric": key, "label": label}
                row["n"] = len(values)
                if values:
                    mean, low, high = paired_bootstrap([a for a, _ in values], [b for _, b in values], samples, seed)
                    row.update(diff=scale * mean, low=scale * low, high=scale * high, excludes_zero=low > 0 or high < 0)
                else:
                    row.update(diff=None, low=None, high=None, excludes_zero=None)
                rows.append(row)
    return rows


def verdict(row: dict) -> str:
    """The "CI excludes 0" cell: yes / no, or why the interval cannot be called."""
    if row["excludes_zero"] is None:
        return "–"
    if row["n"] < MIN_BOOTSTRAP_DOCS:
        return f"n < {MIN_BOOTSTRAP_DOCS}"
    return "yes" if row["excludes_zero"] else "no"


BOOTSTRAP_NOTE = (
    "Differences of per-document values (scores and rates x100, counts as they are), the same documents for both "
    "models; percentile 95% interval over {samples} resamples of the documents (seed {seed}). \"All languages\" "
    "pools the documents of every language. Lower is better for unsupported numbers and degenerate summaries; "
    "compression and novel bigrams describe the summaries rather than rank them. "
    f"With fewer than {MIN_BOOTSTRAP_DOCS} documents the interval is shown but not called."
)


def bootstrap_markdown(rows: list[dict], samples: int, seed: int) -> str:
    lines = [
        "| Language | Comparison | Metric | n | mean difference | 95% CI | CI excludes 0 |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for row in rows:
        interval = "–" if row["low"] is None else f"[{row['low']:.2f}, {row['high']:.2f}]"
        excludes = verdict(row)
        lines.append(
            f"| {lang_name(row['lang'])} | {row['model']} − {row['reference']} | {row['label']} | {row['n']} | "
            f"{fmt(row['diff'])} | {interval} | {excludes} |"
        )
    if not rows:
        lines.append("| – | no trained variant to compare | – | – | – | – | – |")
    return "# Paired bootstrap\n\n" + BOOTSTRAP_NOTE.format(samples=samples, seed=seed) + "\n\n" + "\n".join(lines) + "\n"


def write_bootstrap_csv(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    columns = ["lang", "model", "reference", "metric", "n", "diff", "low", "high", "excludes_zero"]
    with atomic_path(path) as handle:
        pd.DataFrame(rows, columns=columns).to_csv(handle, index=False, float_format="%.4f")


# ---------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_bars(rows: list[dict], lang: str, path: Path) -> None:
    """Grouped bars: one group per Table 4 column, one bar per model."""
    import numpy as np

    plt = _pyplot()
    group = [row for row in rows if row["lang"] == lang]
    labels = [COLUMN_NAMES[key] for key, _ in TABLE_COLUMNS]
    x = np.arange(len(TABLE_COLUMNS))
    width = 0.8 / max(1, len(group))
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, row in enumerate(group):
        values = [row[key] if row[key] is not None else 0.0 for key, _ in TABLE_COLUMNS]
        flag = f" ({row['n_degenerate']} degenerate)" if row.get("n_degenerate") else ""
        ax.bar(x + (i - (len(group) - 1) / 2) * width, values, width, label=row["model"] + flag)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("score x100")
    n = group[0]["n"] if group else 0
    ax.set_title(f"{lang_name(lang)}: test documents scored n = {n}")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eee; }
tr.first td { border-top: 2px solid #555; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
p.note { color: #555; font-size: 0.9em; }
.flag { color: #a00; font-weight: bold; }
table.example { width: 100%; table-layout: fixed; }
div.text { white-space: pre-wrap; max-height: 20em; overflow-y: auto; font-size: 0.9em; }
mark { background: #fbb; }
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table4_html(rows: list[dict]) -> str:
    best = best_cells(rows)
    out = [
        "<table>",
        '<tr><th rowspan="2">Language</th><th rowspan="2">Model</th>'
        f'<th colspan="{len(BERTSCORE_COLUMNS)}">BERTScore</th><th colspan="{len(ROUGE_COLUMNS)}">ROUGE</th>'
        '<th rowspan="2">degenerate</th></tr>',
        "<tr>" + "".join(f"<th>{label}</th>" for _, label in TABLE_COLUMNS) + "</tr>",
    ]
    langs = list(dict.fromkeys(row["lang"] for row in rows))
    for lang in langs:
        group = [row for row in rows if row["lang"] == lang]
        for i, row in enumerate(group):
            cells = []
            if i == 0:
                cells.append(f'<td rowspan="{len(group)}">{html.escape(lang_name(lang))}</td>')
            cells.append(f"<td>{html.escape(row['model'])}</td>")
            for key, _ in TABLE_COLUMNS:
                text = fmt(row[key])
                if (lang, row["model"], key) in best:
                    text = f"<b>{text}</b>"
                cells.append(f'<td class="num">{text}</td>')
            flag = ' class="flag"' if row["n_degenerate"] else ""
            cells.append(f"<td{flag}>{html.escape(degenerate_cell(row))}</td>")
            out.append(f'<tr class="{"first" if i == 0 else ""}">' + "".join(cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def consistency_html(markdown: str) -> str:
    """The consistency table (consistency_markdown) as HTML; nothing when the judge did not pair languages."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]
    if not rows:
        return ""
    return ("<h3>Consistency across languages (the judge)</h3>" + simple_html_table(rows[0], rows[1:])
            + f'<p class="note">{html.escape(CONSISTENCY_NOTE)}</p>')


def simple_html_table(header: list[str], body: list[list[str]]) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for cells in body:
        out.append("<tr>" + "".join(f'<td class="num">{html.escape(str(c))}</td>' for c in cells) + "</tr>")
    return "\n".join(out + ["</table>"])


def marked(text: str, numbers: list[str]) -> str:
    """HTML-escaped text with the unsupported numbers highlighted."""
    escaped = html.escape(text)
    for number in dict.fromkeys(numbers):
        escaped = escaped.replace(html.escape(number), f"<mark>{html.escape(number)}</mark>")
    return escaped


def example_html(model: str, which: str, item: dict, metric: str) -> str:
    """One summary beside its reference, with its score, degenerate flag and unsupported numbers."""
    notes = [f"{html.escape(COLUMN_NAMES.get(metric, metric))} {100 * item['score']:.2f}"]
    if item["degenerate_reason"]:
        notes.append(f'<span class="flag">degenerate: {html.escape(item["degenerate_reason"])}</span>')
    if item["unsupported_numbers"]:
        listed = ", ".join(html.escape(number) for number in item["unsupported_numbers"])
        notes.append(f'<span class="flag">unsupported numbers: {listed}</span>')
    return (
        f"<h4>{html.escape(model)}, {which}: {html.escape(item['id'])}</h4><p>{'; '.join(notes)}</p>"
        '<table class="example"><tr><th>Summary</th><th>Reference</th></tr>'
        f'<tr><td><div class="text">{marked(item["prediction"], item["unsupported_numbers"])}</div></td>'
        f'<td><div class="text">{html.escape(item["reference"])}</div></td></tr></table>'
    )


def examples_html(evals: dict, models: list[str], languages: list[str]) -> str:
    """Per language and model, the best and the worst scored summary beside its reference."""
    parts = []
    for lang in languages:
        parts.append(f"<h3>{html.escape(lang_name(lang))}</h3>")
        for model in models:
            examples = evals[(model, lang)].get("examples")
            if not examples:
                parts.append(f'<p class="note">{html.escape(model)}: no scored summary.</p>')
                continue
            best, worst = examples["best"], examples["worst"]
            if best["id"] == worst["id"]:
                parts.append(example_html(model, "best and worst (one scored summary)", best, examples["metric"]))
                continue
            parts.append(example_html(model, "best", best, examples["metric"]))
            parts.append(example_html(model, "worst", worst, examples["metric"]))
    return "\n".join(parts)


def index_html(page: dict, samples: int, seed: int, bar_paths: dict[str, Path], curves_path: Path) -> str:
    """`page`: rows, faithfulness rows, bootstrap rows, protocol, notes and examples from `build_report`."""
    counts = simple_html_table(
        ["Language", "Model", *COUNT_LABELS],
        [[lang_name(r["lang"]), r["model"]] + [r[k] for k in COUNT_KEYS] for r in page["rows"]],
    )
    boot = simple_html_table(
        ["Language", "Comparison", "Metric", "n", "mean difference", "95% CI", "CI excludes 0"],
        [
            [
                lang_name(r["lang"]), f"{r['model']} − {r['reference']}", r["label"], r["n"], fmt(r["diff"]),
                "–" if r["low"] is None else f"[{r['low']:.2f}, {r['high']:.2f}]",
                verdict(r),
            ]
            for r in page["bootstrap"]
        ],
    )
    faithfulness = simple_html_table(*faithfulness_table(page["faithfulness"]))
    bars = "\n".join(f"<h3>{html.escape(lang_name(lang))}</h3>" + _img(path, f"scores {lang}") for lang, path in bar_paths.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>clinsum evaluation report</title>
<style>{CSS}</style></head><body>
<h1>clinsum evaluation report</h1>
{"".join(f'<p class="note">{html.escape(line)}</p>' for line in page["header"])}
<h2>Table 4: test split, per language and model (protocol {html.escape(page["protocol"])})</h2>
<p class="note">{html.escape(page["protocol_note"])}</p>
{table4_html(page["rows"])}
<p class="note">{html.escape(page["note"])} Best per column and language in bold.</p>
<h2>Clinical faithfulness</h2>
{faithfulness}
<p class="note">{html.escape(FAITHFULNESS_NOTE)}</p>
{consistency_html(page.get("consistency", ""))}
<h2>Documents</h2>
{counts}
<h2>Paired bootstrap</h2>
<p class="note">{html.escape(BOOTSTRAP_NOTE.format(samples=samples, seed=seed))}</p>
{boot}
<h2>Best and worst scored summaries</h2>
<p class="note">Per model and language, the test summaries with the highest and the lowest score (the protocol's
headline metric), beside their reference; unsupported numbers highlighted.</p>
{page["examples"]}
<h2>Scores per language</h2>
{bars}
<h2>Training curves</h2>
{_img(curves_path, "training curves")}
</body></html>
"""


def build_report(
    eval_paths: list[str | Path],
    train_logs: dict[str, Path],
    models: list[str],
    languages: list[str],
    out_dir: str | Path,
    samples: int = 1000,
    seed: int = 42,
    judge_paths: list[str | Path] = (),
    fidelity: str = "",
    consistency_paths: list[str | Path] = (),
    reward_start: str | None = None,
    manifest: dict | None = None,
) -> dict:
    """Every report file in `out_dir`; `fidelity` is the header's sentence on the paper fidelity mode
    (clinsum.fidelity.mode), `manifest` ingest's, whose warnings and skips the header repeats."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evals = load_evals(eval_paths)
    merge_judgements(evals, list(judge_paths))
    rows = table4_rows(evals, models, languages)
    header = [line for line in [fidelity, *corpus_notes(manifest)] if line]
    page = {
        "fidelity": fidelity,
        "header": header,
        "rows": rows,
        "protocol": protocol_name(evals),
        "protocol_note": protocol_note(evals),
        "note": tokenizer_note(evals),
        "faithfulness": faithfulness_rows(evals, models, languages),
        "bootstrap": bootstrap_rows(evals, models, languages, samples, seed, reward_start),
        "examples": examples_html(evals, models, languages),
    }
    with atomic_path(out_dir / "table4.md") as handle:
        handle.write(
            "".join(f"{line}\n\n" for line in header)
            + table4_markdown(rows, page["protocol_note"] + " " + page["note"], page["protocol"])
            + "\n## Documents\n\n" + counts_markdown(rows)
        )
    write_table4_csv(out_dir / "table4.csv", rows)
    consistency = consistency_markdown(list(consistency_paths))
    page["consistency"] = consistency
    with atomic_path(out_dir / "faithfulness.md") as handle:
        handle.write(faithfulness_markdown(page["faithfulness"]) + ("\n" + consistency if consistency else ""))
    write_faithfulness_csv(out_dir / "faithfulness.csv", page["faithfulness"])
    with atomic_path(out_dir / "bootstrap.md") as handle:
        handle.write(bootstrap_markdown(page["bootstrap"], samples, seed))
    write_bootstrap_csv(out_dir / "bootstrap.csv", page["bootstrap"])

    bar_paths = {lang: out_dir / "bars" / f"{lang}.png" for lang in languages}
    for lang, path in bar_paths.items():
        plot_bars(rows, lang, path)
    curves_path = out_dir / "training_curves.png"
    plot_curves({variant: read_log(path) for variant, path in train_logs.items()}, curves_path)

    with atomic_path(out_dir / "index.html") as handle:
        handle.write(index_html(page, samples, seed, bar_paths, curves_path))
    log.info("report (protocol %s): %d rows, %d bootstrap comparisons -> %s",
             page["protocol"], len(rows), len(page["bootstrap"]), out_dir)
    return page


# ---------------------------------------------------------------- CLI


def _run_report(args) -> None:
    settings = parse_settings(args.settings)
    bootstrap = settings["evaluate"]["bootstrap"]
    logs = {name: Path(path) for name, path in pairs_option(args.train_log, "--train-log").items()}
    models = ["base", *settings["train"]["variants"]]
    build_report(
        args.eval, logs, models, settings["languages"], args.out_dir, bootstrap["samples"], bootstrap["seed"], args.judge,
        fidelity=fidelity_mode(settings), manifest=read_json(args.manifest) if args.manifest else None,
        consistency_paths=args.consistency, reward_start=settings["reward"]["start"] if "reward" in settings else None,
    )


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="Table 4 under the scoring protocol, clinical faithfulness, paired bootstrap, figures, examples and "
        "index.html from evaluations (and the judge's scores)",
    )
    parser.add_argument("--eval", nargs="+", required=True, help="results/eval/{model}/{lang}.json files")
    parser.add_argument(
        "--judge", nargs="*", default=[], help="results/judge/{model}/{lang}.json files, when the judge ran"
    )
    parser.add_argument(
        "--consistency", nargs="*", default=[], help="results/judge/{model}/consistency.json files, when the judge ran"
    )
    parser.add_argument("--train-log", nargs="*", default=[], help="VARIANT=results/models/{variant}/train_log.csv")
    parser.add_argument("--manifest", help="results/corpus/manifest.json: its warnings and skips head the report")
    parser.add_argument(
        "--settings",
        required=True,
        help='JSON shaped as config.yaml: {"languages": [...], "train": {"variants": [...], ...}, "evaluate": {"bootstrap": '
        '{"samples": N, "seed": S}}} and the keys of clinsum.fidelity (crop, split, prompts, train, infer)',
    )
    parser.add_argument("--out-dir", required=True, help="results/report")
    parser.set_defaults(func=_run_report)

