"""The reward-tuned variant in the DAG: config/reward.yaml over the tiny configuration runs end to end (the grpo
model is inferred, scored, submitted and reported beside the model it started from), then reruns only when its
inputs change."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_checkout
from test_workflow import LANGS, downstream_of_models, planned_jobs, snakemake

pytestmark = pytest.mark.slow

# the tiny student has 2 layers: it tunes them all (reward.yaml tunes the embedded default's top 6 of 30)
CONFIGS = ["config/tiny.yaml", "config/reward.yaml", "config/tiny-reward.yaml"]
REWARD = yaml.safe_load((REPO / "config" / "reward.yaml").read_text())


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory) -> Path:
    workdir = copy_checkout(tmp_path_factory.mktemp("reward-workflow"))
    (workdir / CONFIGS[2]).write_text(yaml.safe_dump({"reward": {"trainable_layers": None}}))
    result = snakemake(workdir, "--configfile", *CONFIGS)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return workdir


def layered(workdir: Path, change) -> str:
    """The run's configuration files merged into one, changed by `change`."""
    from clinsum.settings import merge

    config: dict = {}
    for name in CONFIGS:
        config = merge(config, yaml.safe_load((workdir / name).read_text()))
    change(config)
    (workdir / "config" / "changed.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    return "config/changed.yaml"


def test_the_tuned_model_is_a_row_beside_its_start(reward_run):
    results = reward_run / "results"
    tuned = results / "models" / "grpo"
    summary = json.loads((tuned / "reward.json").read_text())
    assert summary["steps"] == REWARD["reward"]["steps"] and summary["reports"] > 0
    log = (tuned / "train_log.csv").read_text().splitlines()
    assert len(log) == 1 + REWARD["reward"]["steps"] and "reward_faithfulness" in log[0].split(",")
    assert not (results / "checkpoints" / "grpo").exists()  # resume state removed once published
    for lang in LANGS:
        split = json.loads((results / "split" / f"{lang}.json").read_text())
        predictions = [json.loads(line) for line in (results / "predictions" / "grpo" / f"{lang}.jsonl").open()]
        assert [p["id"] for p in predictions] == split["test"]
        evaluation = json.loads((results / "eval" / "grpo" / f"{lang}.json").read_text())
        assert evaluation["n"] == len(json.loads((results / "eval" / "distil" / f"{lang}.json").read_text())["documents"])
        assert "unsupported_number_rate" in evaluation["means"]
    table = (results / "report" / "table4.md").read_text()
    assert "| grpo |" in table and "| distil |" in table
    with (results / "report" / "bootstrap.csv").open() as handle:
        pairs = {(row["model"], row["reference"]) for row in csv.DictReader(handle)}
    assert ("grpo", "distil") in pairs and ("grpo", "base") in pairs and ("grpo", "standard") not in pairs
    assert (results / "submissions" / "grpo").is_dir()


def test_nothing_changed_nothing_runs(reward_run):
    assert planned_jobs(reward_run, layered(reward_run, lambda c: None)) == set()


def test_a_reward_setting_reruns_only_the_tuned_model(reward_run):
    jobs = planned_jobs(reward_run, layered(reward_run, lambda c: c["reward"]["weights"].update(length=0.25)))
    assert jobs == {("reward", "variant=grpo")} | downstream_of_models(["grpo"])


def test_its_resources_rerun_nothing(reward_run):
    def more(config):
        config["reward"]["resources"] = {**config["reward"]["resources"], "cpus": 1, "mem_mb": 3000}

    assert planned_jobs(reward_run, layered(reward_run, more)) == set()


def test_a_new_starting_model_reruns_the_tuning(reward_run):
    """A change to the model it starts from (distil's gamma) retrains distil and retunes grpo."""
    jobs = planned_jobs(reward_run, layered(reward_run, lambda c: c["train"].update(gamma=0.7)))
    assert jobs == ({("train", "variant=distil"), ("reward", "variant=grpo")}
                    | downstream_of_models(["distil", "grpo"]))


def test_the_summarization_prompt_retunes_it(reward_run):
    """GRPO samples with the inference prompt: a new one retunes (and reinfers) the model."""
    def prompt(config):
        config["prompts"]["summarize"]["en"] = "Summarize this clinical case report"

    rules = {rule for rule, _ in planned_jobs(reward_run, layered(reward_run, prompt))}
    assert "reward" in rules and "infer" in rules


def test_editing_the_rewards_reruns_only_the_tuned_model(reward_run):
    path = reward_run / "workflow" / "clinsum" / "rewards.py"
    original = path.read_text()
    try:
        path.write_text(original + "\n# edited\n")
        jobs = planned_jobs(reward_run, layered(reward_run, lambda c: None))
    finally:
        path.write_text(original)
    assert jobs == {("reward", "variant=grpo")} | downstream_of_models(["grpo"])


def test_a_start_that_is_not_trained_is_named_before_any_job(reward_run):
    configfile = layered(reward_run, lambda c: c["reward"].update(start="distil_kl"))
    result = snakemake(reward_run, "-n", "--configfile", configfile)
    assert result.returncode != 0
    assert "reward.start: distil_kl is not a trained variant of train.variants (standard, distil)" in result.stdout + result.stderr


def test_the_benchmark_scores_both_models_with_the_stages_rewards(reward_run, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "reward_stage.json"
    result = subprocess.run([sys.executable, "benchmarks/reward_stage.py", "--configfile", *CONFIGS, "--json", str(out)],
                            cwd=reward_run, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["variant"] == "grpo" and data["start"] == "distil" and set(data["languages"]) == set(LANGS)
    for lang, row in data["languages"].items():
        evaluation = json.loads((reward_run / "results" / "eval" / "distil" / f"{lang}.json").read_text())
        assert row["documents"] == evaluation["n"]
        # the same faithfulness check as the evaluation: the same unsupported numbers before
        assert row["unsupported"][0] == sum(len(doc["unsupported_numbers"]) for doc in evaluation["documents"])
        assert all(0 <= value <= 1 for term in ("rouge", "faithfulness", "length") for value in row[term])
        low, high = row["reward_change"]["ci95"]
        assert low <= row["reward_change"]["mean"] <= high
    assert f"| {LANGS[0]} |" in result.stdout and "verdict:" in result.stdout


def test_a_weighted_bertscore_reads_each_languages_encoder_and_settings(reward_run):
    configfile = layered(reward_run, lambda c: c["reward"]["weights"].update(bertscore=0.5))
    result = snakemake(reward_run, "-n", "-p", "--configfile", configfile)
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if "clinsum reward" in line)
    for lang in LANGS:
        assert f"{lang}=" in command.split("--bertscore-model", 1)[1]
    settings = json.loads(command.split("--bertscore-settings '", 1)[1].split("'", 1)[0])
    assert set(settings) == set(LANGS) and all(s["model"] == "all-minilm-l6-v2" for s in settings.values())
