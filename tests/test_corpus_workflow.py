"""The corpus as an input of the workflow, through Snakemake itself (issue 16): after a real ingest, a dry
run shows what an edit, an addition, a removal or a mere touch of a source file would rerun; bad
sources, prompts and model directories stop the run at start; MultiClinSum-2's 15-language DAG."""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from conftest import REPO, SAMPLE, copy_checkout
from test_workflow import snakemake

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TARGETS = ["results/split/en.json", "results/split/fr.json"]
MCS2_LANGS = ["en", "es", "fr", "pt", "it", "ru", "ca", "no", "da", "ro", "de", "el", "nl", "cs", "sv"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))


def merged(*configs: dict) -> dict:
    """Snakemake's merge of config files: key by key, later files win."""
    result: dict = {}
    for config in configs:
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def test_the_multiclinsum2_preset_validates_with_a_prompt_for_each_of_its_15_languages():
    config = merged(load("config.yaml"), load("multiclinsum2.yaml"))
    validate(config, str(SCHEMA))
    assert config["languages"] == MCS2_LANGS  # 'no' stays a string
    assert sorted(config["prompts"]["summarize"]) == sorted(MCS2_LANGS)
    assert len(set(config["prompts"]["summarize"].values())) == 15
    assert config["corpus"]["layouts"]["multiclinsum"]["unpaired_sets"] == ["test"]  # the schema's preset


def job_counts(workdir: Path, configfile: str, *targets: str) -> dict[str, int]:
    """rule -> jobs of a dry run (empty when nothing is to be done)."""
    result = snakemake(workdir, "-n", "--configfile", configfile, "--", *targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", result.stdout, re.S)
    if table is None:
        assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]
        return {}
    counts = dict(line.split() for line in table.group(1).strip().splitlines())
    return {rule: int(count) for rule, count in counts.items() if rule != "all"}


def start_error(workdir: Path, configfile: str, *targets: str) -> str:
    result = snakemake(workdir, "-n", "--configfile", configfile, "--", *targets)
    assert result.returncode != 0, result.stdout[-3000:]
    return result.stdout + result.stderr


def write_config(workdir: Path, name: str, config: dict) -> str:
    (workdir / "config" / name).write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return f"config/{name}"


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory) -> Path:
    """A copy of the checkout that has ingested a corpus of its own (English as a folder, French as a zip)
    and split it: config/corpus.yaml."""
    workdir = copy_checkout(tmp_path_factory.mktemp("corpus-workflow"))
    corpus = workdir / "corpus"
    shutil.copytree(SAMPLE / "multiclinsum_gs_train_en", corpus / "multiclinsum_gs_train_en")
    with zipfile.ZipFile(corpus / "multiclinsum_gs_train_fr.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted((SAMPLE / "multiclinsum_gs_train_fr").rglob("*.txt")):
            archive.write(path, f"multiclinsum_gs_train_fr/{path.relative_to(SAMPLE / 'multiclinsum_gs_train_fr')}")
    config = merged(load("tiny.yaml"), {"corpus": {"sources": [{"path": "corpus", "layout": "multiclinsum"}]}})
    configfile = write_config(workdir, "corpus.yaml", config)
    result = snakemake(workdir, "--configfile", configfile, "--", *TARGETS)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def later(path: Path, seconds: int = 10):
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + seconds * 1_000_000_000))


RERUN = {"ingest": 1, "split": 2}


@pytest.mark.slow
def test_an_unchanged_or_merely_touched_corpus_reruns_nothing(corpus_run):
    assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == {}
    summary = next((corpus_run / "corpus" / "multiclinsum_gs_train_en" / "summaries").glob("*_sum.txt"))
    for path in (summary, summary.parent, corpus_run / "corpus" / "multiclinsum_gs_train_fr.zip"):
        later(path)
    assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == {}


@pytest.mark.slow
def test_an_edited_summary_reruns_ingest_and_what_follows_and_its_undo_reruns_nothing(corpus_run):
    """Editing a summary inside a folder source used to give "Nothing to be done"."""
    summary = sorted((corpus_run / "corpus" / "multiclinsum_gs_train_en" / "summaries").glob("*_sum.txt"))[0]
    original = summary.read_bytes()
    try:
        summary.write_bytes(original + b" Edited.")
        assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == RERUN
    finally:
        summary.write_bytes(original)
    later(summary)
    assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == {}


@pytest.mark.slow
def test_an_added_or_removed_document_reruns_ingest(corpus_run):
    folder = corpus_run / "corpus" / "multiclinsum_gs_train_en"
    added = [folder / "fulltext" / "multiclinsum_gs_en_900.txt", folder / "summaries" / "multiclinsum_gs_en_900_sum.txt"]
    try:
        for path in added:
            path.write_text("A new document.", encoding="utf-8")
        assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == RERUN
    finally:
        for path in added:
            path.unlink()
    assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == {}
    removed = sorted((folder / "fulltext").glob("*.txt"))[0]
    kept = removed.read_bytes()
    removed.unlink()
    try:
        assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == RERUN
    finally:
        removed.write_bytes(kept)


@pytest.mark.slow
def test_a_changed_zip_reruns_ingest(corpus_run):
    zip_path = corpus_run / "corpus" / "multiclinsum_gs_train_fr.zip"
    original = zip_path.read_bytes()
    try:
        with zipfile.ZipFile(zip_path, "a") as archive:
            archive.writestr("multiclinsum_gs_train_fr/fulltext/multiclinsum_gs_fr_900.txt", "Nouveau.")
        assert job_counts(corpus_run, "config/corpus.yaml", *TARGETS) == RERUN
    finally:
        zip_path.write_bytes(original)


@pytest.mark.slow
def test_a_source_that_no_longer_exists_stops_at_start(corpus_run):
    """A corpus path that no longer existed gave exit 0 on the old corpus."""
    (corpus_run / "corpus").rename(corpus_run / "corpus-moved")
    try:
        message = start_error(corpus_run, "config/corpus.yaml", *TARGETS)
    finally:
        (corpus_run / "corpus-moved").rename(corpus_run / "corpus")
    assert "config corpus.sources[0]: corpus does not exist" in message


@pytest.mark.slow
def test_a_student_directory_without_its_tokenizer_stops_at_start(corpus_run, tiny_student_dir):
    """It failed deep in the crop job with chained tracebacks ending in an unrelated protobuf error."""
    broken = corpus_run / "broken-student"
    broken.mkdir(exist_ok=True)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy2(tiny_student_dir / name, broken / name)
    config = merged(load("tiny.yaml"), {"student": {"model": str(broken)}})
    message = start_error(corpus_run, write_config(corpus_run, "broken.yaml", config))
    assert f"config student.model: the model directory {broken} lacks a tokenizer (tokenizer.json" in message
    assert "a chat template (chat_template.jinja" in message


@pytest.mark.slow
def test_a_language_without_a_summarization_prompt_stops_at_start(corpus_run):
    config = merged(load("tiny.yaml"), {"languages": ["en", "fr", "it"]})
    message = start_error(corpus_run, write_config(corpus_run, "italian.yaml", config), "results/corpus/manifest.json")
    assert "config prompts.summarize has no prompt for it (languages: en, fr, it)" in message


def synthetic_corpus(root: Path, languages: list[str]) -> None:
    for lang in languages:
        for n in (1, 2, 3):
            for kind, name in (("fulltext", f"multiclinsum_gs_{lang}_{n}.txt"), ("summaries", f"multiclinsum_gs_{lang}_{n}_sum.txt")):
                path = root / f"multiclinsum_gs_train_{lang}" / kind / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"{kind} {lang} {n}", encoding="utf-8")
        test = root / f"multiclinsum_test_{lang}" / "fulltext" / f"multiclinsum_test_1_{lang}.txt"
        test.parent.mkdir(parents=True, exist_ok=True)
        test.write_text(f"test {lang}", encoding="utf-8")


@pytest.mark.slow
def test_the_multiclinsum2_dag_has_15_languages_and_32_teacher_shards_each(corpus_run):
    synthetic_corpus(corpus_run / "mcs2", MCS2_LANGS)
    config = merged(load("multiclinsum2.yaml"), {"corpus": {"sources": [{"path": "mcs2", "layout": "multiclinsum"}]}})
    counts = job_counts(corpus_run, write_config(corpus_run, "mcs2.yaml", config))
    models = 1 + len(load("config.yaml")["train"]["variants"])  # base and each variant
    assert counts["ingest"] == 1 and counts["split"] == 15
    assert counts["teacher"] == 15 * 32 and counts["teacher_gather"] == 15
    assert counts["infer"] == counts["evaluate"] == 15 * models
