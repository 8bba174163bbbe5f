"""`clinsum plan`: the paper's optimizer steps from its own configuration, and the plan the training loop follows."""

from __future__ import annotations

import json

import pytest

from clinsum.batching import document_steps, epoch_seed, optimizer_plan, training_plan
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
    assert optimizer_plan(10, 4, 1.5, 2, 0.0)["optimizer_steps"] == 3 + 2  # 1.5 epochs of 3 steps
    with pytest.raises(ValueError, match="no training documents"):
        optimizer_plan(0, 1, 3, 250, 0.03)


def test_plan_without_split_or_documents_says_what_to_give(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    assert main(["plan", "--configfile", "config/paper.yaml", "--results", str(tmp_path)]) == 1
    assert "--documents" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {documents_per_step: {distil: 0}}\n")
    assert main(["plan", "--configfile", str(bad), "--documents", "3", "--results", str(tmp_path)]) == 1
    assert "not valid" in capsys.readouterr().err
