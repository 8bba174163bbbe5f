"""The variant table (clinsum.variants): one entry per training variant, read by the rules, the settings, the plan
and the report. A toy variant added as one entry shows up in the DAG, the plan and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clinsum import variants
from clinsum.io import ClinsumError
from conftest import REPO, copy_checkout

TOY = ('        Variant("distil_even", "distil with its two tasks weighed alike by its own gamma", '
       '("summarize", "extract"), True, False, ("gamma",), "distil"),\n')


def test_the_table_drives_the_loss_weights_and_what_a_variant_needs():
    assert [name for name in variants.VARIANTS] == ["standard", "distil", "distil_kl", "grpo"]
    assert variants.trained(["standard", "distil", "grpo"]) == ["standard", "distil"]
    assert variants.trained(["standard", "distil", "grpo"], "reward") == ["grpo"]
    assert variants.variant("standard").loss_weights(0.8, 0.5) == (1.0, 0.0)
    assert variants.variant("distil").loss_weights(0.8, 0.5) == (0.8, 0.0)
    assert variants.variant("distil_kl").loss_weights(0.8, 0.5) == (0.8, 0.5)
    assert not variants.needs_teacher(["standard"]) and variants.needs_teacher(["standard", "distil"])
    assert variants.needs_teacher_topk(["distil_kl"]) and not variants.needs_teacher_topk(["distil"])
    assert not variants.needs_teacher(["standard", "grpo"])  # it samples itself: no teacher output
    with pytest.raises(ClinsumError, match="unknown variant 'other'"):
        variants.variant("other")


def test_the_config_reference_lists_every_variant():
    reference = (REPO / "config" / "README.md").read_text()
    for name in variants.VARIANTS:
        assert f"`{name}`" in reference, name


@pytest.mark.slow
def test_a_toy_variant_is_one_entry_and_reaches_the_dag_the_plan_and_the_report(tmp_path, monkeypatch):
    clone = copy_checkout(tmp_path / "clone")
    table = clone / "workflow" / "clinsum" / "variants.py"
    text = table.read_text()
    anchor = "    )\n}\n"
    assert text.count(anchor) == 1
    table.write_text(text.replace(anchor, TOY + anchor))
    (clone / "config" / "toy.yaml").write_text(json.dumps({"train": {"variants": ["standard", "distil", "distil_even"],
                                                                     "documents_per_step": {"distil_even": 3}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(clone / "workflow")}
    dry = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/tiny.yaml", "config/toy.yaml"],
                         cwd=clone, env=env, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    for target in ("results/models/distil_even", "results/predictions/distil_even/en.jsonl",
                   "results/eval/distil_even/fr.json", "results/submissions/distil_even"):
        assert f"output: {target}" in dry.stdout, target
    plan = subprocess.run([sys.executable, "-m", "clinsum", "plan", "--configfile", "config/tiny.yaml", "config/toy.yaml",
                           "--documents", "30", "--json", "--results", str(tmp_path / "none")],
                          cwd=clone, env=env, capture_output=True, text=True, check=True)
    rows = {row["variant"]: row for row in json.loads(plan.stdout)["variants"]}
    assert rows["distil_even"]["documents_per_step"] == 3 and rows["distil_even"]["optimizer_steps"] == 10
    # the report compares it with the variant its entry names, and with base
    from clinsum import report

    monkeypatch.setitem(variants.VARIANTS, "distil_even",
                        variants.Variant("distil_even", "toy", ("summarize", "extract"), True, False, ("gamma",), "distil"))
    assert report.comparisons(["base", "standard", "distil", "distil_even"]) == [
        ("distil", "standard"), ("distil_even", "distil"), ("standard", "base"), ("distil", "base"), ("distil_even", "base")]
    # a reward-tuned variant is compared with the variant it started from
    assert report.comparisons(["base", "standard", "distil", "grpo"], start="distil") == [
        ("distil", "standard"), ("grpo", "distil"), ("standard", "base"), ("distil", "base"), ("grpo", "base")]
