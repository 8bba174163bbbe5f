"""`clinsum plan`: the paper's optimizer steps from its own configuration, and the plan the training loop follows."""

from __future__ import annotations

import json

import pytest

from clinsum.batching import document_steps, epoch_seed
from clinsum.steps import step_plan, training_plan
from clinsum.cli import main
from conftest import REPO


def test_paper_config_plans_the_papers_steps(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["plan", "--configfile", "config/paper.yaml", "--documents", "1892", "--results", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| standard") or line.startswith("| distil")}
    # documents, documents/step, steps/epoch, optimizer steps, evaluations (every 250 and the last), warm-up
    assert rows["distil"][:6] == ["1892", "1", "1892", "5676", "23", "171"]
    assert rows["standard"][:6] == ["1892", "2", "946", "2838", "12", "86"]
    assert "teacher prompts over max_prompt_tokens (15360): not measured" in table


def test_plan_json_and_the_loops_own_steps_agree(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["plan", "--configfile", "config/paper.yaml", "--documents", "37", "--json", "--results", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    for row in plan["variants"]:
        per_step = row["documents_per_step"]
        # what the training loop runs: document_steps per epoch, then training_plan over the epochs
        epochs = [len(document_steps([1] * 37, per_step, epoch_seed(42, e))) for e in range(3)]
        assert row["optimizer_steps"] == sum(training_plan(epochs, 3)) == 3 * -(-37 // per_step)
    assert step_plan(10, 4, 1.5, 2, 0.0).total_steps == 3 + 2  # 1.5 epochs of 3 steps
    with pytest.raises(ValueError, match="no training documents"):
        step_plan(0, 1, 3, 250, 0.03)


def test_plan_without_split_or_documents_says_what_to_give(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["plan", "--configfile", "config/paper.yaml", "--results", str(tmp_path)]) == 1
    assert "--documents" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {documents_per_step: {distil: 0}}\n")
    assert main(["plan", "--configfile", str(bad), "--documents", "3", "--results", str(tmp_path)]) == 1
    assert "not valid" in capsys.readouterr().err


@pytest.mark.parametrize("configfiles", [["config/config.yaml"], ["config/tiny.yaml"], ["config/paper.yaml"],
                                         ["config/paper.yaml", "config/paper-code.yaml"], ["config/paper-rehearsal.yaml"],
                                         ["config/distil-kl.yaml"], ["config/multiclinsum2.yaml", "config/multiclinsum2-sample.yaml"]])
def test_the_plan_and_the_trainers_plan_agree_for_every_configuration(capsys, monkeypatch, tmp_path, configfiles):
    """`clinsum plan` and the training loop's own plan (plan_steps over the documents it trains on) give the same
    steps, evaluations and warm-up, for each configuration and each of its variants."""
    from clinsum.train.loop import plan_steps
    from clinsum.train.settings import TrainSettings
    from clinsum.plan import load_config

    monkeypatch.chdir(REPO)
    documents = 211
    assert main(["plan", "--configfile", *configfiles, "--documents", str(documents), "--json", "--results", str(tmp_path)]) == 0
    printed = {row["variant"]: row for row in json.loads(capsys.readouterr().out)["variants"]}
    config = load_config(configfiles, "config/config.yaml")
    for variant in config["train"]["variants"]:
        settings = TrainSettings.from_section(config["train"], variant)
        rows = len(set(__import__("clinsum.variants", fromlist=["x"]).variant(variant).tasks))
        dataset = {"lang": ["en"] * documents * rows, "id": [f"d{i}" for i in range(documents) for _ in range(rows)]}
        units, epochs_steps, plan = plan_steps(dataset, [100] * documents * rows, settings)
        assert len(units) == documents
        assert plan.as_row() == {key: printed[variant][key] for key in plan.as_row()}, variant
        assert [len(steps) for steps in epochs_steps][: len(plan.epoch_steps)] >= list(plan.epoch_steps)
        assert plan.evaluation_steps[-1] <= plan.total_steps and len(plan.evaluation_steps) == printed[variant]["evaluations"]
