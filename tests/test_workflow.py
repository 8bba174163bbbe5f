"""The whole DAG through Snakemake on config/tiny.yaml, then reruns: change one thing, see exactly
which jobs a dry run would rerun (issues 'Localized-prompt inference and evaluation' and 'Cluster
profile ... reruns of only what changed')."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_checkout

pytestmark = pytest.mark.slow

TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
LANGS = TINY["languages"]
VARIANTS = TINY["train"]["variants"]
MODELS = ["base", *VARIANTS]


def snakemake(workdir: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )


def planned_jobs(workdir: Path, configfile: str = "config/tiny.yaml") -> set[tuple[str, str]]:
    """(rule, wildcards) of every job a dry run would run."""
    result = snakemake(workdir, "-n", "--configfile", configfile)
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = set()
    for block in re.split(r"\n(?=\[|localrule |rule )", result.stdout):
        match = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not match or match.group(1) == "all":
            continue
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        jobs.add((match.group(1), wildcards.group(1).strip() if wildcards else ""))
    return jobs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = copy_checkout(tmp_path_factory.mktemp("tiny-workflow"))
    result = snakemake(workdir, "--configfile", "config/tiny.yaml")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def test_full_dag_produces_every_artifact(tiny_run):
    results = tiny_run / "results"
    manifest = json.loads((results / "corpus" / "manifest.json").read_text())
    for lang in LANGS:
        split = json.loads((results / "split" / f"{lang}.json").read_text())
        assert all(split[name] for name in ("train", "valid", "test"))
        counts = manifest["languages"][lang]
        assert counts["read"] == counts["written"] + counts["skipped"]
        teacher = [json.loads(line) for line in (results / "teacher" / f"{lang}.jsonl").open()]
        assert sorted(r["id"] for r in teacher) == sorted(split["train"] + split["valid"])
        for model in MODELS:
            predictions = [json.loads(line) for line in (results / "predictions" / model / f"{lang}.jsonl").open()]
            assert [p["id"] for p in predictions] == split["test"]
            evaluation = json.loads((results / "eval" / model / f"{lang}.json").read_text())
            scored = [doc_id for doc_id in split["test"] if not doc_id.startswith("multiclinsum_test_")]
            assert len(evaluation["documents"]) == len(scored)
            test_layout = [d for d in split["test"] if d.startswith("multiclinsum_test_")]
            written = sorted(p.name for p in (results / "submissions" / model / lang).glob("*_sum.txt"))
            assert written == sorted(f"{d}_sum.txt" for d in test_layout)
    for variant in VARIANTS:
        model_dir = results / "models" / variant
        assert (model_dir / "config.json").exists() and (model_dir / "train_log.csv").exists()
    table = (results / "report" / "table4.md").read_text()
    for model in MODELS:
        assert f"| {model} |" in table
    assert (results / "report" / "index.html").stat().st_size > 1000
    stats = (results / "data" / "stats.md").read_text()
    assert "Table 1" in stats and "Table 2" in stats and "Table 3" in stats


def test_nothing_changed_nothing_runs(tiny_run):
    assert planned_jobs(tiny_run) == set()


def changed_config(workdir: Path, change) -> str:
    config = yaml.safe_load((workdir / "config" / "tiny.yaml").read_text())
    change(config)
    (workdir / "config" / "changed.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return "config/changed.yaml"


def rules_of(jobs) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def downstream_of_models(models: list[str]) -> set[tuple[str, str]]:
    """infer/evaluate of these models in every language, their submissions, and the report."""
    jobs = {("report", "")}
    for model in models:
        jobs.add(("submission", f"model={model}"))
        for lang in LANGS:
            jobs.add(("infer", f"model={model}, lang={lang}"))
            jobs.add(("evaluate", f"model={model}, lang={lang}"))
    return jobs


def test_job_resources_rerun_nothing(tiny_run):
    """How a job runs (its cores, memory, time) does not change what it writes."""
    def more_resources(config):
        for section in ("crop", "teacher", "train", "infer"):
            config[section]["resources"] = {**config[section].get("resources", {}), "cpus": 2, "mem_mb": 3000}

    assert planned_jobs(tiny_run, changed_config(tiny_run, more_resources)) == set()


def test_gamma_reruns_only_the_distil_variants(tiny_run):
    configfile = changed_config(tiny_run, lambda c: c["train"].update(gamma=0.7))
    distil = [v for v in VARIANTS if v != "standard"]
    expected = {("train", f"variant={v}") for v in distil} | downstream_of_models(distil)
    assert planned_jobs(tiny_run, configfile) == expected


def test_teacher_prompt_reruns_teacher_and_everything_after(tiny_run):
    configfile = changed_config(tiny_run, lambda c: c["prompts"].update(extract="List the key clinical facts"))
    jobs = planned_jobs(tiny_run, configfile)
    counts = rules_of(jobs)
    shards = TINY["teacher"]["shards"]
    assert counts["teacher"] == shards * len(LANGS)
    assert counts["teacher_gather"] == len(LANGS) and counts["crop"] == 1
    assert counts["train"] == len(VARIANTS)  # crop output changes for every variant
    # the untuned base student does not depend on the teacher
    assert ("infer", f"model=base, lang={LANGS[0]}") not in jobs
    assert not {"ingest", "split", "build_model"} & set(counts)


def test_bertscore_setting_reruns_only_evaluation_and_report(tiny_run):
    configfile = changed_config(tiny_run, lambda c: c["evaluate"]["bertscore"].update(num_layers=1))
    expected = {("evaluate", f"model={m}, lang={lang}") for m in MODELS for lang in LANGS} | {("report", "")}
    assert planned_jobs(tiny_run, configfile) == expected


def jobs_after_editing(workdir: Path, module_name: str) -> set[tuple[str, str]]:
    """What a dry run would rerun after an edit of the module; the module is then put back as it was."""
    module = workdir / "workflow" / "clinsum" / module_name
    original = module.read_text()
    try:
        module.write_text(original + "\n# a change\n")
        return planned_jobs(workdir)
    finally:
        module.write_text(original)
        stamp = (workdir / "results" / "corpus" / "manifest.json").stat().st_mtime
        os.utime(module, (stamp, stamp))


def test_stage_code_change_reruns_that_stage_and_what_follows(tiny_run):
    assert jobs_after_editing(tiny_run, "infer.py") == downstream_of_models(MODELS)


# the module each rule runs (`python -m clinsum <command>`); clinsum.codegraph gives its import closure
RULE_MODULES = {
    "ingest": "ingest", "split": "split", "build_model": "models", "teacher": "teacher", "teacher_gather": "teacher",
    "teacher_summary": "teacher", "crop": "crop", "train": "train", "infer": "infer", "evaluate": "evaluate",
    "report": "report", "submission": "submission",
}


def test_every_module_reruns_exactly_the_rules_that_import_it(tiny_run):
    """For every module of the package, the rules whose jobs list it among their inputs (what a change to it
    reruns) are the rules whose module imports it, directly or not (or runs it: the entry point)."""
    from clinsum import codegraph

    result = snakemake(tiny_run, "--detailed-summary", "--configfile", "config/tiny.yaml")
    assert result.returncode == 0, result.stderr
    code_dir = tiny_run / "workflow" / "clinsum"
    inputs_of: dict[str, set[str]] = {}
    for line in result.stdout.splitlines()[1:]:
        fields = line.split("\t")
        rule, inputs = fields[2], fields[4]
        modules = {str(Path(f).relative_to(code_dir).with_suffix("")).replace("/", ".").removesuffix(".__init__")
                   for f in inputs.split(",") if f.startswith(str(code_dir))}
        inputs_of.setdefault(rule, set()).update(modules)
    assert set(RULE_MODULES) <= set(inputs_of), sorted(set(RULE_MODULES) - set(inputs_of))
    for module in codegraph.all_modules():
        rerun = {rule for rule in RULE_MODULES if module in inputs_of[rule]}
        importers = {rule for rule, own in RULE_MODULES.items()
                     if module in codegraph.closure(own) or module in codegraph.closure("__main__")}
        assert rerun == importers, module
    # the one floor: a stage's jobs run no other stage's module
    assert "teacher" not in inputs_of["crop"] and "crop" not in inputs_of["infer"] and "evaluate" not in inputs_of["report"]


def test_a_shared_module_change_reruns_every_stage_that_uses_it(tiny_run):
    jobs = jobs_after_editing(tiny_run, "degeneration.py")  # infer's guard and evaluate's flags
    assert {rule for rule, _ in jobs} == {"infer", "evaluate", "submission", "report"}
    assert jobs == downstream_of_models(MODELS)


def test_stage_python_runs_the_teacher_and_infer_jobs(tiny_run):
    """`teacher.python` / `infer.python` (e.g. a separate vLLM environment) run those jobs and no other."""
    env_bin = tiny_run / "vllm env" / "bin"  # a space in the path: the command must quote it
    env_bin.mkdir(parents=True, exist_ok=True)
    if not (env_bin / "python").exists():
        (env_bin / "python").symlink_to(sys.executable)
    interpreter = str(env_bin / "python")

    def change(config):
        config["teacher"]["python"] = interpreter
        config["infer"]["python"] = interpreter

    result = snakemake(tiny_run, "-n", "-p", "--configfile", changed_config(tiny_run, change))
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line.removeprefix("Shell command:").strip() for line in result.stdout.splitlines() if " -m clinsum " in line]
    by_stage = {stage: [c for c in commands if f"-m clinsum {stage} " in c] for stage in ("teacher run", "infer", "train")}
    assert len(by_stage["teacher run"]) == TINY["teacher"]["shards"] * len(LANGS)
    assert len(by_stage["infer"]) == len(MODELS) * len(LANGS)
    for command in by_stage["teacher run"] + by_stage["infer"]:
        assert command.startswith(f"'{interpreter}' -m clinsum"), command
    assert by_stage["train"] and all(c.startswith("python -m clinsum") for c in by_stage["train"])


def test_missing_stage_python_is_named_before_any_job(tiny_run):
    configfile = changed_config(tiny_run, lambda c: c["teacher"].update(python=".venv-other/bin/python"))
    result = snakemake(tiny_run, "-n", "--configfile", configfile)
    assert result.returncode != 0
    assert "teacher.python: .venv-other/bin/python does not exist" in (
        result.stdout + result.stderr
    )


def test_distil_kl_without_teacher_topk_is_named_before_any_job(tiny_run):
    configfile = changed_config(tiny_run, lambda c: c["teacher"].update(top_logprobs=0))
    result = snakemake(tiny_run, "-n", "--configfile", configfile)
    assert result.returncode != 0
    assert "train.variants has distil_kl" in result.stdout + result.stderr
    assert "teacher.top_logprobs is 0" in result.stdout + result.stderr
