"""MultiClinSum-2's fifteen languages through the whole DAG: the shipped sample corpus
(resources/sample-multiclinsum2/, the 2026 layout) on the tiny models, as config/multiclinsum2-sample.yaml
documents it. Every language goes through the teacher, training, inference, evaluation, the report and the
2026 submission zip, Cyrillic and Greek included."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_checkout
from test_workflow import snakemake

pytestmark = pytest.mark.slow

CONFIGS = ["config/tiny.yaml", "config/multiclinsum2.yaml", "config/multiclinsum2-sample.yaml"]
LANGS = yaml.safe_load((REPO / "config" / "multiclinsum2.yaml").read_text())["languages"]
SAMPLE = REPO / "resources" / "sample-multiclinsum2"
MODELS = ["base", "standard", "distil"]


def with_reference(split: dict) -> list[str]:
    """The test split's documents that have a reference: all but the 2026 test set's third report, shipped without."""
    return sorted(d for d in split["test"] if not d.startswith("multiclinsum2_test_3_"))


def test_the_sample_holds_every_language_in_the_2026_layout():
    assert len(LANGS) == 15
    for lang in LANGS:
        train = sorted(p.name for p in (SAMPLE / "multiclinsum2_train_set" / lang).iterdir())
        assert train == sorted([f"multiclinsum2_train_{n}_{lang}.txt" for n in range(1, 9)]
                               + [f"multiclinsum2_train_{n}_{lang}_sum.txt" for n in range(1, 9)]), lang
        test = sorted(p.name for p in (SAMPLE / "multiclinsum2_test_set" / lang).iterdir())
        assert test == sorted([f"multiclinsum2_test_{n}_{lang}.txt" for n in (1, 2, 3)]
                              + [f"multiclinsum2_test_{n}_{lang}_sum.txt" for n in (1, 2)]), lang
    ru = (SAMPLE / "multiclinsum2_test_set" / "ru" / "multiclinsum2_test_1_ru.txt").read_text(encoding="utf-8")
    el = (SAMPLE / "multiclinsum2_test_set" / "el" / "multiclinsum2_test_1_el.txt").read_text(encoding="utf-8")
    assert any("\u0400" <= c <= "\u04ff" for c in ru) and any("\u0370" <= c <= "\u03ff" for c in el)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    workdir = copy_checkout(tmp_path_factory.mktemp("multiclinsum2-sample"))
    result = snakemake(workdir, "--configfile", *CONFIGS, timeout=3600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_every_language_runs_through_every_stage(sample_run):
    results = sample_run / "results"
    manifest = json.loads((results / "corpus" / "manifest.json").read_text())
    for lang in LANGS:
        counts = manifest["languages"][lang]
        assert counts["written"] == 11 and counts["skipped"] == 0, (lang, counts)
        split = json.loads((results / "split" / f"{lang}.json").read_text())
        # the test set's three reports always go to the test split; the training pairs fill the other splits
        assert {f"multiclinsum2_test_{n}_{lang}" for n in (1, 2, 3)} <= set(split["test"])
        teacher = [json.loads(line) for line in (results / "teacher" / f"{lang}.jsonl").open(encoding="utf-8")]
        assert sorted(r["id"] for r in teacher) == sorted(split["train"] + split["valid"])
        for model in MODELS:
            predictions = [json.loads(line) for line in
                           (results / "predictions" / model / f"{lang}.jsonl").open(encoding="utf-8")]
            assert [p["id"] for p in predictions] == split["test"] and all(p["lang"] == lang for p in predictions)
            evaluation = json.loads((results / "eval" / model / f"{lang}.json").read_text(encoding="utf-8"))
            assert evaluation["n"] == len(with_reference(split)) and evaluation["n_unscored"] == 1
    data = [json.loads(line) for line in (results / "data" / "train.jsonl").open(encoding="utf-8")]
    assert {row["lang"] for row in data} == set(LANGS)


def test_the_report_has_a_row_per_language_and_model(sample_run):
    with (sample_run / "results" / "report" / "table4.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {(row["lang"], row["model"]) for row in rows} >= {(lang, model) for lang in LANGS for model in MODELS}


def test_the_2026_zip_holds_each_languages_test_set(sample_run):
    for model in MODELS:
        folder = sample_run / "results" / "submissions" / model
        with zipfile.ZipFile(folder / "clinsum.zip") as archive:
            names = set(archive.namelist())
            expected = {f"clinsum/{lang}/run1/multiclinsum2_test_{n}_{lang}_sum.txt" for lang in LANGS for n in (1, 2, 3)}
            assert expected <= names and not {n for n in names if n.endswith(".txt")} - expected
            greek = archive.read("clinsum/el/run1/multiclinsum2_test_1_el_sum.txt").decode("utf-8")
        predictions = {row["id"]: row["prediction"] for row in map(json.loads,
                       (sample_run / "results" / "predictions" / model / "el.jsonl").open(encoding="utf-8"))}
        assert greek.strip() == predictions["multiclinsum2_test_1_el"].strip()
        for lang in LANGS:  # the scorer's input: every test-split document with a reference, as evaluated
            split = json.loads((sample_run / "results" / "split" / f"{lang}.json").read_text())
            with_gold = with_reference(split)
            rows = [json.loads(line) for line in
                    (folder / "scorer" / "clinsum" / lang / "run1" / "results.jsonl").open(encoding="utf-8")]
            assert sorted(row["case_id"] for row in rows) == with_gold, lang
            assert {f"multiclinsum2_test_{n}_{lang}" for n in (1, 2)} <= set(with_gold)
            assert all(row["language"] == lang and row["reference_summary"].strip() for row in rows), lang
            if lang == "el":
                assert {row["case_id"]: row["generated_summary"].strip() for row in rows}[
                    "multiclinsum2_test_1_el"] == predictions["multiclinsum2_test_1_el"].strip()
