"""Report (Table 4 under a protocol, faithfulness, judge scores, paired bootstrap, figures, examples, HTML),
submission files, and the rules in evaluate.smk."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from clinsum import report, trainlog
from clinsum.settings import merge
from clinsum.io import ClinsumError, read_json, write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = [f"{k}_{p}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum") for p in "prf"]
METRIC_KEYS += ["bertscore_p", "bertscore_r", "bertscore_f"]
FAITH_KEYS = ["n_numbers", "n_unsupported_numbers", "novel_bigram_rate", "compression"]


# ---------------------------------------------------------------- paired bootstrap


def test_constant_difference_gives_a_point_interval():
    a = [0.5, 0.75, 0.25, 1.0, 0.0]
    b = [x - 0.125 for x in a]
    mean, low, high = report.paired_bootstrap(a, b, samples=200, seed=1)
    assert mean == pytest.approx(0.125) and low == pytest.approx(0.125) and high == pytest.approx(0.125)


def test_symmetric_zero_mean_difference_contains_zero():
    a = [0.1, 0.9] * 20
    b = [0.9, 0.1] * 20
    mean, low, high = report.paired_bootstrap(a, b, samples=2000, seed=0)
    assert mean == pytest.approx(0.0, abs=1e-12)
    assert low < 0 < high
    assert low == pytest.approx(-high, abs=0.05)


def test_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    diff = rng.normal(0.02, 0.3, size=400)
    mean, low, high = report.paired_bootstrap(diff.tolist(), [0.0] * 400, samples=4000, seed=7)
    half = 1.96 * diff.std() / np.sqrt(400)
    assert mean == pytest.approx(diff.mean())
    # A 90% interval would be 0.005 narrower on each side.
    assert low == pytest.approx(diff.mean() - half, abs=0.0015)
    assert high == pytest.approx(diff.mean() + half, abs=0.0015)


def test_bootstrap_is_reproducible_with_a_seed():
    rng = np.random.default_rng(5)
    a, b = rng.random(30).tolist(), rng.random(30).tolist()
    assert report.paired_bootstrap(a, b, 500, 42) == report.paired_bootstrap(a, b, 500, 42)
    assert report.paired_bootstrap(a, b, 500, 42) != report.paired_bootstrap(a, b, 500, 43)


def test_bootstrap_rejects_unpaired_input():
    with pytest.raises(ValueError, match="differ in length"):
        report.paired_bootstrap([1.0, 2.0], [1.0], 100, 0)
    with pytest.raises(ValueError, match="no documents"):
        report.paired_bootstrap([], [], 100, 0)


def test_comparisons():
    assert report.comparisons(["base", "standard", "distil", "distil_kl"]) == [
        ("distil", "standard"), ("distil_kl", "standard"),
        ("standard", "base"), ("distil", "base"), ("distil_kl", "base"),
    ]
    assert report.comparisons(["base", "distil"]) == [("distil", "base")]
    assert report.comparisons(["base"]) == []


# ---------------------------------------------------------------- Table 4 from synthetic evaluations


def eval_json(model, lang, scores: dict[str, list[float]], ids=None, unscored=0, tokenizer="default",
              degenerate=(), overrides=None):
    """An evaluation file as `clinsum evaluate` writes it, from per-document scores of some metrics; the
    documents at the indices in `degenerate` are loops."""
    n = len(next(iter(scores.values())))
    ids = ids or [f"multiclinsum_gs_{lang}_{i}" for i in range(n)]
    documents = []
    for i in range(n):
        doc = {"id": ids[i], **{key: scores.get(key, [0.5] * n)[i] for key in METRIC_KEYS + FAITH_KEYS}}
        reason = "loop: 'de la necesidad' (3 words) repeated 9 times" if i in degenerate else None
        doc.update(unsupported_numbers=["750 mg"] * int(doc["n_unsupported_numbers"]), degenerate=reason is not None,
                   degenerate_reason=reason)
        documents.append(doc)
    means = {key: float(np.mean([doc[key] for doc in documents])) for key in METRIC_KEYS + FAITH_KEYS}
    means["unsupported_number_rate"] = sum(d["n_unsupported_numbers"] for d in documents) / max(
        1, sum(d["n_numbers"] for d in documents))
    means["degenerate"] = len(degenerate) / n
    example = {"id": ids[0], "score": documents[0]["rougeLsum_f"], "prediction": "Dosis de 750 mg.",
               "reference": "Dosis de 500 mg.", "degenerate_reason": documents[0]["degenerate_reason"],
               "unsupported_numbers": ["750 mg"]}
    return {
        "model": model, "lang": lang, "n": n, "n_unscored": unscored, "n_empty_predictions": 0,
        "n_input_truncated": 0, "n_fp32_fallback": 0, "n_degenerate": len(degenerate),
        "degenerate_kinds": {"empty": 0, "characters": 0, "loop": len(degenerate), "cut": 0},
        "protocol": {"name": "paper", "description": "the paper's Table 4 code", "official": ["rougeLsum_f"],
                     "headline": "rougeLsum_f", "overrides": overrides if overrides is not None else [
                         {"part": "bertscore.model", "value": "all-minilm-l6-v2",
                          "protocol": "distilbert/distilbert-base-uncased"}]},
        "rouge": {"tokenizer": tokenizer, "use_stemmer": False, "lsum_sentences": "newline-separated lines"},
        "bertscore": {"model": "all-minilm-l6-v2", "path": "/x", "num_layers": 6, "max_tokens": None,
                      "clamp_f1": False, "idf": False, "rescale_with_baseline": False},
        "means": means, "documents": documents, "unscored_ids": [],
        "examples": {"metric": "rougeLsum_f", "best": example, "worst": {**example, "id": ids[-1]}},
    }


# Per language, the model that should win each column: en has base best on recall (as in the paper),
# es a tie on R-1 between standard and distil.
SCORES = {
    ("base", "en"): {"bertscore_p": [0.80, 0.78], "bertscore_r": [0.84, 0.82], "rouge1_f": [0.30, 0.34]},
    ("standard", "en"): {"bertscore_p": [0.82, 0.80], "bertscore_r": [0.82, 0.82], "rouge1_f": [0.38, 0.36]},
    ("distil", "en"): {"bertscore_p": [0.83, 0.81], "bertscore_r": [0.81, 0.82], "rouge1_f": [0.40, 0.37]},
    ("base", "es"): {"bertscore_p": [0.80, 0.80], "bertscore_r": [0.85, 0.85], "rouge1_f": [0.30, 0.30]},
    ("standard", "es"): {"bertscore_p": [0.84, 0.84], "bertscore_r": [0.83, 0.83], "rouge1_f": [0.40, 0.41]},
    ("distil", "es"): {"bertscore_p": [0.83, 0.85], "bertscore_r": [0.83, 0.84], "rouge1_f": [0.41, 0.40]},
}
MODELS, LANGS = ["base", "standard", "distil"], ["en", "es"]
# Faithfulness per document: numbers and unsupported numbers per summary; distil's second Spanish summary loops.
FAITH = {
    "base": {"n_numbers": [2, 2], "n_unsupported_numbers": [1, 0], "novel_bigram_rate": [0.5, 0.3], "compression": [0.2, 0.1]},
    "standard": {"n_numbers": [2, 2], "n_unsupported_numbers": [0, 0], "novel_bigram_rate": [0.2, 0.2], "compression": [0.2, 0.2]},
    "distil": {"n_numbers": [1, 3], "n_unsupported_numbers": [1, 2], "novel_bigram_rate": [0.1, 0.1], "compression": [0.3, 0.1]},
}
DEGENERATE = {("distil", "es"): (1,)}


def judge_json(model, lang, ids, faithfulness, completeness, malformed=()):
    documents = []
    for i, doc_id in enumerate(ids):
        if i in malformed:
            documents.append({"id": doc_id, "attempts": 2, "input_truncated": False, "malformed": True,
                              "error": "the answer is not one JSON object", "answer": "Sure! Here"})
        else:
            documents.append({"id": doc_id, "attempts": 1, "input_truncated": False, "malformed": False, "error": None,
                              "judge_faithfulness": faithfulness[i], "judge_completeness": completeness[i],
                              "judge_fluency": 0.9, "completeness_items": {}})
    judged = [d for d in documents if not d["malformed"]]
    means = {key: float(np.mean([d[key] for d in judged]))
             for key in ("judge_faithfulness", "judge_completeness", "judge_fluency")}
    return {"model": model, "lang": lang, "n": len(ids), "n_judged": len(judged), "n_malformed": len(malformed),
            "n_retried": len(malformed), "n_input_truncated": 0, "means": means, "documents": documents}


def write_train_log(path: Path, with_eval=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        # train.py's columns: evaluation rows fill the valid_* cells, loss_kl stays empty without KL.
        writer.writerow(["step", "epoch", "loss", "loss_sum", "loss_ext", "loss_kl", "lr", "tokens_per_s", "valid_rougeL"])
        for step in range(1, 21):
            valid = 0.1 + step / 100 if with_eval and step % 5 == 0 else ""
            writer.writerow([step, step // 10, 3 / step, 2 / step, 4 / step, "", 1e-4, 900.0, valid])


def test_curve_panels_group_the_training_log_columns(tmp_path):
    write_train_log(tmp_path / "train_log.csv")
    panels = trainlog.curve_panels(trainlog.read_log(tmp_path / "train_log.csv"))
    assert panels == {"loss": ["loss", "loss_sum", "loss_ext"], "validation score": ["valid_rougeL"], "learning rate": ["lr"]}


@pytest.fixture(scope="module")
def built_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    paths, judged = [], []
    for (model, lang), scores in SCORES.items():
        path = tmp / "eval" / model / f"{lang}.json"
        data = eval_json(model, lang, {**scores, **FAITH[model]}, unscored=3, degenerate=DEGENERATE.get((model, lang), ()))
        write_json(path, data)
        paths.append(path)
        ids = [doc["id"] for doc in data["documents"]]
        judge_path = tmp / "judge" / model / f"{lang}.json"
        score = {"base": 0.5, "standard": 0.7, "distil": 0.8}[model]
        malformed = (0,) if (model, lang) == ("distil", "es") else ()
        write_json(judge_path, judge_json(model, lang, ids, [score, score + 0.1], [score - 0.1, score], malformed))
        judged.append(judge_path)
    logs = {}
    for variant in ("standard", "distil"):
        logs[variant] = tmp / "models" / variant / "train_log.csv"
        write_train_log(logs[variant])
    result = report.build_report(paths, logs, MODELS, LANGS, tmp / "out", samples=300, seed=42, judge_paths=judged)
    return tmp / "out", result


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table4_layout_values_and_bold(built_report):
    out, _ = built_report
    text = (out / "table4.md").read_text()
    assert text.startswith("# Table 4 (protocol paper)\n")
    rows = table_rows(text.split("## Documents")[0])
    assert rows[0] == [
        "Language", "Model", "BERTScore Precision", "BERTScore Recall", "BERTScore F1", "R-1", "R-2", "R-L", "R-Lsum",
        "degenerate",
    ]
    body = rows[1:]
    assert [row[:2] for row in body] == [
        ["English", "base"], ["", "standard"], ["", "distil"], ["Spanish", "base"], ["", "standard"], ["", "distil"],
    ]
    cell = {(lang, row[1]): row for lang, row in zip(["en"] * 3 + ["es"] * 3, body)}
    # x100 with 2 decimals.
    assert cell[("en", "base")][2] == "79.00"
    assert cell[("en", "distil")][2] == "**82.00**"  # best precision in English
    assert cell[("en", "base")][3] == "**83.00**"  # best recall in English: the untuned model
    assert cell[("en", "distil")][5] == "**38.50**"
    assert cell[("es", "standard")][5] == "**40.50**" and cell[("es", "distil")][5] == "**40.50**"  # a tie: both bold
    assert cell[("es", "base")][5] == "30.00"
    # Each column has a bold cell in each language, and identical columns (all 0.5) are bold everywhere.
    for lang in LANGS:
        group = [cell[(lang, model)] for model in MODELS]
        for column in range(2, 9):
            assert any(row[column].startswith("**") for row in group)
        assert all(row[8] == "**50.00**" for row in group)
    assert "default tokenizer" in text and "all-minilm-l6-v2 (layer 6)" in text
    # the protocol, what it reports, and the override of its encoder
    assert "Scoring protocol paper: the paper's Table 4 code; it reports R-Lsum." in text
    assert "Overridden in this run: bertscore.model = all-minilm-l6-v2 (the protocol's: distilbert/distilbert-base-uncased)." in text
    # degenerate summaries counted where the scores are
    assert cell[("es", "distil")][9] == "1 of 2: loop 1" and cell[("es", "base")][9] == "0 of 2"
    counts = table_rows(text.split("## Documents")[1])
    assert counts[0][-1] == "degenerate"
    assert counts[1] == ["English", "base", "2", "3", "0", "0", "0", "0"]
    assert counts[-1] == ["Spanish", "distil", "2", "3", "0", "0", "0", "1"]


def test_faithfulness_table_with_judge_scores(built_report):
    out, result = built_report
    rows = table_rows((out / "faithfulness.md").read_text())
    assert rows[0] == [
        "Language", "Model", "n", "numbers per summary", "unsupported numbers (%)", "unsupported numbers per summary",
        "novel bigrams (%)", "compression (% of report)", "judge faithfulness", "judge completeness", "judge fluency",
        "degenerate", "judge: malformed answers",
    ]
    by_model = {(row[0], row[1]): row for row in rows[1:]}
    # distil: 3 unsupported of 4 numbers = 75%, 1.5 per summary
    assert by_model[("Spanish", "distil")][3:8] == ["2.00", "75.00", "1.50", "10.00", "20.00"]
    assert by_model[("English", "base")][4] == "25.00"
    # the judge's means are over its well-formed answers: distil/es has one malformed, which is counted
    assert by_model[("Spanish", "distil")][8:] == ["90.00", "80.00", "90.00", "1 of 2: loop 1", "1 of 2"]
    assert by_model[("English", "standard")][8:] == ["75.00", "65.00", "90.00", "0 of 2", "0 of 2"]
    with open(out / "faithfulness.csv") as handle:
        csv_rows = list(csv.DictReader(handle))
    assert float(csv_rows[-1]["unsupported_number_rate"]) == pytest.approx(75.0)
    assert csv_rows[-1]["degenerate_loop"] == "1" and csv_rows[-1]["judge_malformed"] == "1"


def test_table4_csv(built_report):
    out, _ = built_report
    with open(out / "table4.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["lang"], r["model"]) for r in rows] == [(lang, model) for lang in LANGS for model in MODELS]
    assert float(rows[0]["bertscore_p"]) == pytest.approx(79.0)
    assert rows[0]["n"] == "2" and rows[0]["n_unscored"] == "3"


def test_bootstrap_outputs(built_report):
    out, result = built_report
    with open(out / "bootstrap.csv") as handle:
        rows = list(csv.DictReader(handle))
    metrics = [key for key, _, _ in report.BOOTSTRAP_METRICS]
    assert len(metrics) == 10  # 3 scores, 4 faithfulness measures, 3 judge scores
    # (2 languages + both pooled) x 3 comparisons x 10 metrics.
    assert len(rows) == 90
    assert [r["lang"] for r in rows[::30]] == ["en", "es", "all"]
    assert [r["metric"] for r in rows[:10]] == metrics
    assert {(r["model"], r["reference"]) for r in rows} == {("distil", "standard"), ("standard", "base"), ("distil", "base")}
    # Pooled rows hold every language's documents; their mean difference is the document-weighted mean.
    for pooled in rows[60:]:
        parts = [r for r in rows[:60] if (r["model"], r["reference"], r["metric"]) == (pooled["model"], pooled["reference"], pooled["metric"])]
        assert int(pooled["n"]) == sum(int(r["n"]) for r in parts)
        assert float(pooled["diff"]) == pytest.approx(sum(float(r["diff"]) * int(r["n"]) for r in parts) / int(pooled["n"]), abs=1e-3)
    # Identical per-document ROUGE-L (0.5 everywhere): a point interval at 0.
    rouge_l = [r for r in rows if r["metric"] == "rougeL_f"]
    assert all(float(r["diff"]) == 0 and float(r["low"]) == 0 and float(r["high"]) == 0 for r in rouge_l)
    cell = {(r["lang"], r["model"], r["reference"], r["metric"]): r for r in rows}
    # counts are compared as they are: distil has 1.5 unsupported numbers per Spanish summary, standard none
    assert float(cell[("es", "distil", "standard", "n_unsupported_numbers")]["diff"]) == pytest.approx(1.5)
    # rates x100: one of distil's two Spanish summaries is degenerate
    assert float(cell[("es", "distil", "standard", "degenerate")]["diff"]) == pytest.approx(50.0)
    # a malformed judge answer leaves its document out of the judge's pairs only
    assert cell[("es", "distil", "standard", "judge_faithfulness")]["n"] == "1"
    assert cell[("es", "distil", "standard", "rougeL_f")]["n"] == "2"
    assert float(cell[("es", "distil", "standard", "judge_faithfulness")]["diff"]) == pytest.approx(100 * (0.9 - 0.8))
    markdown = (out / "bootstrap.md").read_text()
    assert "ROUGE-Lsum F1" in markdown and "| All languages | distil − standard |" in markdown
    assert "| Spanish | distil − standard | judge faithfulness | 1 |" in markdown
    # 2 (or 4) documents: the interval is shown, the call is not made.
    assert all(line.endswith("| n < 10 |") for line in markdown.splitlines() if line.startswith("| English"))


def test_bootstrap_without_faithfulness_or_judge_fields_compares_the_scores_only(tmp_path):
    paths = []
    for model in ("base", "standard"):
        data = eval_json(model, "en", {"rouge1_f": [0.1, 0.2]})
        for doc in data["documents"]:
            for key in FAITH_KEYS + ["degenerate"]:
                del doc[key]
        paths.append(tmp_path / f"{model}.json")
        write_json(paths[-1], data)
    rows = report.bootstrap_rows(report.load_evals(paths), ["base", "standard"], ["en"], 100, 0)
    assert [row["metric"] for row in rows] == ["rougeL_f", "rougeLsum_f", "bertscore_f"]


def test_bootstrap_calls_the_interval_from_ten_documents():
    row = {"n": 10, "excludes_zero": True}
    assert report.verdict(row) == "yes"
    assert report.verdict({**row, "excludes_zero": False}) == "no"
    assert report.verdict({**row, "n": 9}) == "n < 10"
    assert report.verdict({"n": 0, "excludes_zero": None}) == "–"


def test_figures_and_self_contained_html(built_report):
    out, _ = built_report
    for name in ("bars/en.png", "bars/es.png", "training_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'(src|href)="(?!data:)', page), "index.html must not link to other files"
    assert "<style>" in page and "<b>82.00</b>" in page and "distil − standard" in page
    assert "(protocol paper)" in page and "Overridden in this run: bertscore.model = all-minilm-l6-v2" in page
    # the faithfulness table right after Table 4, then the examples: best and worst beside their reference
    assert page.index("<h2>Table 4") < page.index("<h2>Clinical faithfulness") < page.index("<h2>Documents")
    examples = page.split("<h2>Best and worst scored summaries</h2>")[1].split("<h2>")[0]
    assert examples.count("<h4>") == 2 * len(MODELS) * len(LANGS)
    assert "<h4>distil, worst: multiclinsum_gs_es_1</h4>" in examples
    assert "Dosis de <mark>750 mg</mark>." in examples and "<td><div class=\"text\">Dosis de 500 mg.</div></td>" in examples
    # degenerate summaries flagged in Table 4 and in the examples
    assert '<td class="flag">1 of 2: loop 1</td>' in page
    assert examples.count('<span class="flag">degenerate: ') == 0  # the examples' first summaries are not loops


def test_examples_flag_degenerate_summaries_and_single_documents():
    item = {"id": "d1", "score": 0.1, "prediction": "La necesidad de la necesidad", "reference": "Ref <b>",
            "degenerate_reason": "loop: 'necesidad de la' (3 words) repeated 9 times", "unsupported_numbers": []}
    evals = {("distil", "es"): {"examples": {"metric": "rougeLsum_f", "best": item, "worst": item}},
             ("base", "es"): {"examples": None}}
    page = report.examples_html(evals, ["base", "distil"], ["es"])
    assert "base: no scored summary." in page
    assert "<h4>distil, best and worst (one scored summary): d1</h4>" in page
    assert '<span class="flag">degenerate: loop: &#x27;necesidad de la&#x27; (3 words) repeated 9 times</span>' in page
    assert "Ref &lt;b&gt;" in page and "R-Lsum 10.00" in page


def test_mismatched_documents_between_models(tmp_path):
    a = eval_json("base", "en", {"rouge1_f": [0.1, 0.2]}, ids=["d1", "d2"])
    b = eval_json("standard", "en", {"rouge1_f": [0.1, 0.2]}, ids=["d1", "d3"])
    write_json(tmp_path / "a.json", a)
    write_json(tmp_path / "b.json", b)
    evals = report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])
    with pytest.raises(ClinsumError, match="score different documents"):
        report.bootstrap_rows(evals, ["base", "standard"], ["en"], 100, 0)


def test_evaluations_must_agree_on_the_tokenizer_protocol_and_encoder(tmp_path):
    write_json(tmp_path / "a.json", eval_json("base", "en", {"rouge1_f": [0.1]}))
    write_json(tmp_path / "b.json", eval_json("standard", "en", {"rouge1_f": [0.1]}, tokenizer="multilingual"))
    with pytest.raises(ClinsumError, match="disagree on the ROUGE tokenizer"):
        report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])
    other = eval_json("standard", "en", {"rouge1_f": [0.1]})
    other["protocol"]["name"] = "multiclinsum2026"
    write_json(tmp_path / "b.json", other)
    with pytest.raises(ClinsumError, match="disagree on the scoring protocol"):
        report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])
    other = eval_json("standard", "en", {"rouge1_f": [0.1]})
    other["bertscore"]["model"] = "FacebookAI/roberta-large"
    write_json(tmp_path / "b.json", other)
    with pytest.raises(ClinsumError, match="disagree on the BERTScore model for en"):
        report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])
    # one encoder per language is fine (multiclinsum2025): the note names each
    spanish = eval_json("base", "es", {"rouge1_f": [0.1]})
    spanish["bertscore"]["model"] = "google-bert/bert-base-multilingual-cased"
    write_json(tmp_path / "b.json", spanish)
    evals = report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])
    assert "en: all-minilm-l6-v2 (layer 6); es: google-bert/bert-base-multilingual-cased (layer 6)" in report.bertscore_note(evals)


def test_an_old_evaluation_file_asks_for_a_rerun(tmp_path):
    old = eval_json("base", "en", {"rouge1_f": [0.1]})
    del old["protocol"]
    write_json(tmp_path / "a.json", old)
    with pytest.raises(ClinsumError, match="a.json: not an evaluation file of this version \\(no 'protocol'\\); rerun evaluate"):
        report.load_evals([tmp_path / "a.json"])


def test_judge_files_must_match_the_evaluations(tmp_path):
    write_json(tmp_path / "a.json", eval_json("base", "en", {"rouge1_f": [0.1, 0.2]}, ids=["d1", "d2"]))
    evals = report.load_evals([tmp_path / "a.json"])
    write_json(tmp_path / "j.json", judge_json("base", "en", ["d1"], [0.5], [0.5]))
    with pytest.raises(ClinsumError, match="hold different documents: rerun the judge"):
        report.merge_judgements(evals, [tmp_path / "j.json"])
    write_json(tmp_path / "j.json", judge_json("distil", "en", ["d1", "d2"], [0.5, 0.5], [0.5, 0.5]))
    with pytest.raises(ClinsumError, match="judges model distil for en, which has no evaluation"):
        report.merge_judgements(evals, [tmp_path / "j.json"])


def test_missing_evaluation_and_bad_train_log(tmp_path):
    write_json(tmp_path / "a.json", eval_json("base", "en", {"rouge1_f": [0.1]}))
    with pytest.raises(ClinsumError, match="no evaluation of model standard for en"):
        report.build_report([tmp_path / "a.json"], {}, ["base", "standard"], ["en"], tmp_path / "out")
    (tmp_path / "log.csv").write_text("epoch,loss\n1,2.0\n")
    with pytest.raises(ClinsumError, match="log.csv: no 'step' column"):
        trainlog.read_log(tmp_path / "log.csv")


# ---------------------------------------------------------------- submission


# ---------------------------------------------------------------- the rules, through Snakemake


SNAKEFILE = """\
from snakemake.utils import validate


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        R.evaluation_targets(),
    default_target: True
"""


def workflow_config(tmp: Path, **evaluate_changes) -> None:
    evaluate = {
        "protocol": "paper",
        "bertscore": {"model": "all-minilm-l6-v2", "num_layers": 6, "batch_size": 8},
        "bootstrap": {"samples": 200, "seed": 42},
    }
    for key, value in evaluate_changes.items():
        evaluate[key] = value
    # config/tiny.yaml over config/config.yaml (as the workflow merges them), for one language and variant
    config = merge(*(yaml.safe_load((REPO / "config" / name).read_text()) for name in ("config.yaml", "tiny.yaml")))
    config = merge(config, {"languages": ["es"], "train": {"variants": ["standard"]}, "evaluate": evaluate})
    (tmp / "config.yaml").write_text(json.dumps(config))  # JSON is YAML


def snakemake(tmp: Path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "workflow")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=tmp, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def planned_jobs(log: str) -> dict[str, int]:
    """The job counts of a dry run's 'Job stats' table."""
    table = log.split("Job stats:")[1].split("total")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@pytest.mark.slow
def test_rules_run_report_and_rerun_only_what_a_setting_touches(tmp_path):
    (tmp_path / "workflow").symlink_to(REPO / "workflow")
    (tmp_path / "resources").symlink_to(REPO / "resources")
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    workflow_config(tmp_path)
    for model, shift in (("base", 0), ("standard", 1)):
        records = [
            {"id": f"multiclinsum_gs_es_{i}", "lang": "es", "reference": "El paciente presentó fiebre y tos persistente.",
             "prediction": "El paciente presentó fiebre." if (i + shift) % 2 else "Paciente con tos."}
            for i in range(4)
        ]
        records += [{"id": f"multiclinsum_test_{n}_es", "lang": "es", "prediction": "Resumen.", "reference": None} for n in (1, 2)]
        if model == "standard":
            records[0]["prediction"] += " Recibió 750 mg de amoxicilina."  # a planted unsupported dose
        write_jsonl(tmp_path / "results" / "predictions" / model / "es.jsonl", records)
    reports = [{"id": f"multiclinsum_gs_es_{i}", "lang": "es", "text": "Varón con fiebre y tos; amoxicilina 500 mg."}
               for i in range(4)]
    write_jsonl(tmp_path / "results" / "corpus" / "es.jsonl", reports)
    counts = {"read": 6, "written": 6, "skipped": 0, "skipped_by_reason": {}}
    write_json(tmp_path / "results" / "corpus" / "manifest.json", {"languages": {"es": counts}, "warnings": []})
    write_train_log(tmp_path / "results" / "models" / "standard" / "train_log.csv")

    snakemake(tmp_path, "--cores", "2")
    out = tmp_path / "results"
    assert (out / "report" / "index.html").exists() and (out / "report" / "bars" / "es.png").exists()
    evaluation = read_json(out / "eval" / "standard" / "es.json")
    assert evaluation["n"] == 4 and evaluation["documents"][0]["unsupported_numbers"] == ["750 mg"]
    assert "| Spanish | standard | 4 | 0.25 | 100.00 | 0.25 |" in (out / "report" / "faithfulness.md").read_text()
    assert sorted(p.name for p in (out / "submissions" / "base" / "es").iterdir()) == [
        "multiclinsum_test_1_es_sum.txt", "multiclinsum_test_2_es_sum.txt",
    ]
    assert "Nothing to be done" in snakemake(tmp_path, "-n")

    workflow_config(tmp_path, bootstrap={"samples": 300, "seed": 42})
    assert planned_jobs(snakemake(tmp_path, "-n")) == {"report": 1, "all": 1}
    workflow_config(tmp_path, bertscore={"model": "all-minilm-l6-v2", "num_layers": 5, "batch_size": 8})
    assert planned_jobs(snakemake(tmp_path, "-n")) == {"evaluate": 2, "report": 1, "all": 1}
    workflow_config(tmp_path, protocol="multiclinsum2026")
    # and the submission: its format follows the protocol (MultiClinSum-2's files)
    assert planned_jobs(snakemake(tmp_path, "-n")) == {"evaluate": 2, "report": 1, "submission": 2, "all": 1}

    workflow_config(tmp_path)
    snakemake(tmp_path, "--report", "report.html")
    page = (tmp_path / "report.html").read_text()
    for expected in ("Table 4", "Clinical faithfulness", "Paired bootstrap", "Scores per language", "table4.md",
                     "faithfulness.md", "training_curves.png"):
        assert expected in page


def test_consistency_table_one_row_per_model(tmp_path):
    path = tmp_path / "consistency.json"
    write_json(path, {"model": "distil", "n_judged": 3, "n_malformed": 1, "n_unconfirmed": 2,
                      "means": {"judge_consistency": 0.6, "by_languages": {"en-es": 0.7, "en-ru": 0.4}}})
    table = report.consistency_markdown([path])
    assert "| distil | 3 | 60.00 | 1 | en-es 70.0, en-ru 40.0 | 2 |" in table
    assert report.consistency_markdown([]) == ""
    write_json(path, {"model": "distil"})
    with pytest.raises(ClinsumError, match="not a consistency file"):
        report.consistency_markdown([path])
