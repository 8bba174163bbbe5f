"""clinsum.resolve: every configuration in config/ (alone over config.yaml, as Snakemake merges it, and in its
documented combinations) resolved into what the rules read, without Snakemake; and each check's message."""

from __future__ import annotations

import json

import pytest
import yaml

from clinsum.io import ClinsumError
from clinsum.resolve import RULE_RESOURCES, Resolved
from clinsum.settings import merge, parse_config
from clinsum.variants import VARIANTS
from conftest import REPO

# every configuration file, and the combinations the docs give
COMBINATIONS = [
    ("config.yaml",), ("tiny.yaml",), ("paper.yaml",), ("paper-rehearsal.yaml",), ("distil-kl.yaml",),
    ("judge.yaml",), ("vllm-cpu.yaml",), ("multiclinsum2.yaml",), ("multiclinsum2026.yaml",),
    ("multiclinsum2-sample.yaml",), ("paper.yaml", "paper-code.yaml"), ("paper.yaml", "multiclinsum2.yaml"),
    ("paper.yaml", "multiclinsum2026.yaml"), ("tiny.yaml", "judge.yaml"),
    ("multiclinsum2.yaml", "multiclinsum2-sample.yaml"), ("tiny.yaml", "multiclinsum2.yaml", "multiclinsum2-sample.yaml"),
    ("paper-rehearsal.yaml", "paper-code.yaml"), ("reward.yaml",), ("tiny.yaml", "reward.yaml"),
    ("paper.yaml", "paper-grpo.yaml"),
]


def configuration(*files: str, **changes) -> dict:
    config: dict = {}
    for name in ("config.yaml", *files):
        config = merge(config, yaml.safe_load((REPO / "config" / name).read_text()) or {})
    return parse_config(merge(config, changes), "test")


def test_every_configuration_file_is_resolved_by_a_combination():
    named = {name for combination in COMBINATIONS for name in combination}
    assert named == {path.name for path in (REPO / "config").glob("*.yaml")}


@pytest.mark.parametrize("files", COMBINATIONS, ids="+".join)
def test_every_configuration_resolves(files, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = configuration(*files)
    resolved = Resolved(config)
    assert resolved.models == ["base", *config["train"]["variants"]]
    assert resolved.uses_teacher == any(VARIANTS[v].teacher_output for v in config["train"]["variants"])
    # every rule's resources: the section's own over the rule's defaults, threads from cpus
    for rule in RULE_RESOURCES:
        resources = resolved.resources(rule)
        assert resources["mem_mb"] >= 100
        assert "cpus" not in resolved.job_resources(rule)
    given = config["infer"].get("resources", {})
    assert resolved.threads("infer") == given.get("cpus", RULE_RESOURCES["infer"]["cpus"])
    # the params each rule compares across runs: JSON-able, and without how its jobs run
    settings = [resolved.crop_settings(), resolved.teacher_settings(), resolved.infer_settings(), resolved.report_settings(),
                *(resolved.train_settings(v) for v in resolved.train_variants),
                *([resolved.reward_settings()] if resolved.reward_variants else []),
                *(resolved.evaluate_settings(lang) for lang in config["languages"])]
    for value in settings:
        text = json.dumps(value)
        assert '"resources"' not in text and '"python"' not in text
    targets = resolved.targets()
    assert len(targets) == len(set(targets)) and "results/report/index.html" in targets
    assert len([t for t in targets if t.startswith("results/predictions/")]) == len(resolved.models) * len(config["languages"])


def test_paper_resources_reach_the_rules_with_the_gpu_model_partition_and_flags():
    config = configuration("paper.yaml", infer={"resources": {"gpu": 1, "gpu_model": "t4", "cpus": 4, "mem_mb": 32000,
                                                              "runtime": 240, "slurm_partition": "gpu-t4",
                                                              "slurm_extra": "--qos=short"}})
    resolved = Resolved(config)
    assert resolved.job_resources("infer") == {"gpu": 1, "gpu_model": "t4", "mem_mb": 32000, "runtime": 240,
                                               "slurm_partition": "gpu-t4", "slurm_extra": "--qos=short"}
    assert resolved.threads("infer") == 4
    assert resolved.job_resources("teacher") == {"gpu": 4, "mem_mb": 256000, "runtime": 720}
    assert resolved.job_resources("judge_consistency") == resolved.job_resources("judge")
    assert resolved.job_resources("ingest") == {"mem_mb": 2000}


def test_each_variant_reads_only_its_own_settings():
    resolved = Resolved(configuration("tiny.yaml"))
    standard, distil, kl = (resolved.train_settings(v)["train"] for v in ("standard", "distil", "distil_kl"))
    assert "gamma" not in standard and "kl" not in standard and "kl" not in distil and "gamma" in distil
    assert "kl" in kl and kl["documents_per_step"] == {"distil_kl": 2}  # config.yaml's, under tiny.yaml
    # crop's unused unit settings stay out of its params (changing them reruns nothing)
    assert "report_characters" not in resolved.crop_settings()["crop"]
    code = Resolved(configuration("paper.yaml", "paper-code.yaml")).crop_settings()["crop"]
    assert code["unit"] == "characters" and code["report_characters"] == 2560


@pytest.mark.parametrize("changes, message", [
    ({"languages": ["en", "it"]}, "config prompts.summarize has no prompt for it"),
    ({"train": {"variants": ["standard", "distilled"]}}, "unknown variant 'distilled'"),
    ({"train": {"variants": ["distil_kl"]}, "teacher": {"top_logprobs": 0}}, "teacher.top_logprobs is 0"),
    ({"teacher": {"backend": "vllm", "resources": {"gpu": 2}, "vllm": {"tensor_parallel_size": 4}}},
     "config teacher.resources.gpu (2) must equal teacher.vllm.tensor_parallel_size (4)"),
    ({"corpus": {"synthetic": {"path": "elsewhere"}}}, "config corpus.synthetic.path elsewhere is not one of corpus.sources"),
    ({"submission": {"runs": ["distil", "other"]}}, "config submission.runs: other is not one of the models"),
    ({"submission": {"runs": ["distil"]}}, "runs are MultiClinSum-2's"),
    ({"evaluate": {"bertscore": {"model": {"xx": "m"}}}}, "bertscore"),
    ({"train": {"variants": ["standard", "grpo"]}},
     "config reward.start: distil is not a trained variant of train.variants (standard): GRPO starts from one"),
    ({"train": {"variants": ["distil", "grpo"]}, "reward": {"prompts_per_step": 3, "group_size": 2, "summaries_per_batch": 4}},
     "config reward.summaries_per_batch: 4 does not divide a step's 3 x 2 summaries"),
])
def test_a_configuration_that_cannot_run_is_named(changes, message):
    with pytest.raises(ClinsumError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        Resolved(configuration("tiny.yaml", **changes))


def test_a_missing_interpreter_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = Resolved(configuration("vllm-cpu.yaml", teacher={"python": ".venv-other/bin/python"}))
    with pytest.raises(ClinsumError, match=r"config teacher.python: .venv-other/bin/python does not exist"):
        resolved.python("teacher")
    assert resolved.python("infer") == "python"


def test_hub_models_are_named_by_the_keys_that_use_them():
    resolved = Resolved(configuration("paper.yaml", "multiclinsum2026.yaml"))
    assert resolved.hub_model_users("Qwen--Qwen2.5-72B-Instruct") == "teacher.model, judge.model"
    assert resolved.hub_model_users("microsoft--mdeberta-v3-base") == "evaluate.protocol multiclinsum2026"
    assert [check.key for check in resolved.model_checks()] == []  # all downloaded: checked by their rule
    tiny = Resolved(configuration("tiny.yaml"))
    assert [(c.key, c.ref) for c in tiny.model_checks()] == [("evaluate.bertscore.model", "all-minilm-l6-v2")]
