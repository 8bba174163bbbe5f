"""The configuration resolved into what each rule reads: its settings (Snakemake's `params`, compared across runs
to decide what reruns), its resources (threads, memory, time, GPUs and their model, the SLURM partition and extra
flags), the models it needs, and the workflow's targets. Every check of a configuration that the schema cannot
express lives here too, each naming its config key.

`workflow/rules/common.smk` builds one `Resolved` from the validated configuration and its input functions only
read it; tests/test_resolve.py resolves every configuration in config/ without Snakemake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import fidelity, models, protocols, submission
from .io import ClinsumError
from .settings import merge
from .variants import needs_teacher, needs_teacher_topk, trained, variant

# Keys of a section that say how its jobs run, not what they compute: changing them reruns nothing.
JOB_KEYS = ("resources", "python")

# What a rule's job asks for when its config section does not say (the schema gives `resources` no defaults:
# they differ by rule). Rules without a section get their memory only.
RULE_RESOURCES = {
    "teacher": {"gpu": 1, "cpus": 2, "mem_mb": 16000, "runtime": 240},
    "infer": {"gpu": 1, "cpus": 2, "mem_mb": 16000, "runtime": 240},
    "judge": {"gpu": 1, "cpus": 2, "mem_mb": 16000, "runtime": 240},
    "train": {"gpu": 1, "cpus": 2, "mem_mb": 32000, "runtime": 720},
    "reward": {"gpu": 1, "cpus": 2, "mem_mb": 32000, "runtime": 720},
    "crop": {"cpus": 1, "mem_mb": 4000, "runtime": 60},
    "evaluate": {"cpus": 1, "mem_mb": 4000},
    "synthetic_corpus": {"mem_mb": 1000},
    "ingest": {"mem_mb": 2000},
    "split": {"mem_mb": 1000},
    "build_model": {"mem_mb": 4000},
    "download_model": {"mem_mb": 2000},
    "teacher_gather": {"mem_mb": 2000},
    "teacher_summary": {"mem_mb": 1000},
    "report": {"mem_mb": 2000},
    "submission": {"mem_mb": 1000},
    "submission_runs": {"mem_mb": 1000},
}
# rules that run a config section's jobs, and so take its `resources`
SECTION_OF = {"judge_consistency": "judge"}


def as_json(obj) -> str:
    """A params value that Snakemake compares across runs (its `params` rerun trigger)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def without_job_keys(section: dict, also: tuple = ()) -> dict:
    """A config section less how its jobs run (and the keys in `also`): what a job's output depends on."""
    return {key: value for key, value in section.items() if key not in JOB_KEYS + also}


@dataclass(frozen=True)
class ModelCheck:
    """A model directory the workflow checks at start: its config key, reference and purpose."""

    key: str
    ref: str
    purpose: str  # generate | encode


class Resolved:
    """The validated configuration (Snakemake's `config`, schema defaults filled in) as the rules read it."""

    def __init__(self, config: dict):
        self.config = config
        self.languages: list[str] = config["languages"]
        self.named_models: dict = config["models"]
        self.variants: list[str] = config["train"]["variants"]
        for name in self.variants:
            variant(name)  # a known variant, or an error naming the known ones
        # base: the untuned student; every trained variant after it
        self.models: list[str] = ["base", *self.variants]
        self.train_variants = trained(self.variants, "train")
        self.reward_variants = trained(self.variants, "reward")
        self.uses_teacher = needs_teacher(self.variants)
        self.teacher_topk = config["teacher"]["top_logprobs"] > 0
        self.judge_on: bool = config["judge"]["enabled"]
        self.synthetic: dict | None = config["corpus"].get("synthetic")
        self.submission_format = submission.resolve_format(config["submission"]["format"], config["evaluate"]["protocol"])
        self.submission_runs: list[str] = config["submission"]["runs"]
        self.check()

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        """What the schema cannot say, each error naming its config key."""
        config = self.config
        missing = [lang for lang in self.languages if lang not in config["prompts"]["summarize"]]
        if missing:
            hint = " (a key read as false is a bare no: write 'no' in quotes)" if False in config["prompts"]["summarize"] else ""
            raise ClinsumError(f"config prompts.summarize has no prompt for {', '.join(missing)} "
                               f"(languages: {', '.join(self.languages)}){hint}")
        if needs_teacher_topk(self.variants) and not self.teacher_topk:
            named = [name for name in self.variants if variant(name).teacher_topk]
            raise ClinsumError(f"config train.variants has {', '.join(named)}, which learns from the teacher's top-k "
                               "log-probabilities, but teacher.top_logprobs is 0: set it above 0 (config/distil-kl.yaml sets 8)")
        unpaced = [name for name in self.train_variants if name not in config["train"]["documents_per_step"]]
        if unpaced:
            raise ClinsumError(f"config train.documents_per_step has no value for {', '.join(unpaced)}")
        for section in ("teacher", "judge") if self.judge_on else ("teacher",):
            self._check_tensor_parallel(section)
        if self.synthetic and self.synthetic["path"] not in [s["path"] for s in config["corpus"]["sources"]]:
            raise ClinsumError(f"config corpus.synthetic.path {self.synthetic['path']} is not one of corpus.sources "
                               f"({', '.join(s['path'] for s in config['corpus']['sources'])})")
        if self.reward_variants and config["reward"]["start"] not in self.train_variants:
            raise ClinsumError(f"config reward.start: {config['reward']['start']} is not a trained variant of train.variants "
                               f"({', '.join(self.train_variants) or 'none'}): GRPO starts from one")
        reward = config["reward"]
        if self.reward_variants and (reward["prompts_per_step"] * reward["group_size"]) % reward["summaries_per_batch"]:
            raise ClinsumError(f"config reward.summaries_per_batch: {reward['summaries_per_batch']} does not divide a step's "
                               f"{reward['prompts_per_step']} x {reward['group_size']} summaries (prompts_per_step x group_size)")
        unknown = [model for model in self.submission_runs if model not in self.models]
        if unknown:
            raise ClinsumError(f"config submission.runs: {', '.join(unknown)} is not one of the models ({', '.join(self.models)})")
        if self.submission_runs and self.submission_format != "multiclinsum2026":
            raise ClinsumError("config submission.runs: runs are MultiClinSum-2's (submission.format multiclinsum2026)")
        for lang in self.languages:
            self.evaluate_settings(lang)  # a bad protocol part stops here, before any job

    def _check_tensor_parallel(self, section: str) -> None:
        """On GPUs, vLLM's tensor parallelism must use exactly the GPUs a section's jobs are given."""
        settings = self.config[section]
        gpus = self.resources(section)["gpu"]
        tp = settings["vllm"]["tensor_parallel_size"]
        if settings["backend"] == "vllm" and gpus > 0 and gpus != tp:
            raise ClinsumError(f"config {section}.resources.gpu ({gpus}) must equal {section}.vllm.tensor_parallel_size ({tp})")

    # ---------------------------------------------------------------- models

    def model_path(self, ref: str) -> str:
        return models.model_path(ref, self.named_models)

    @property
    def teacher_dir(self) -> str:
        return self.model_path(self.config["teacher"]["model"])

    @property
    def student_dir(self) -> str:
        return self.model_path(self.config["student"]["model"])

    @property
    def built_models(self) -> list[str]:
        return [name for name, spec in self.named_models.items() if spec["build"] != "package"]

    def model_dir(self, model: str) -> str:
        """The directory an inference job reads: the untuned student, or a trained variant's best checkpoint."""
        return self.student_dir if model == "base" else f"results/models/{model}"

    def bertscore_encoder(self, lang: str) -> str:
        """The BERTScore encoder's directory for one language (a protocol may name one per language)."""
        return self.model_path(self.evaluate_settings(lang)["evaluate"]["bertscore"]["model"])

    def hub_model_users(self, repo_dirname: str) -> str:
        """The config keys that name the hub model downloaded into resources/models/hub/{repo_dirname}."""
        target = f"resources/models/hub/{repo_dirname}"
        keys = [key for key, ref in models.model_references(self.config).items()
                if models.model_kind(ref, self.named_models) == "hub" and self.model_path(ref) == target]
        if not keys and target in {self.bertscore_encoder(lang) for lang in self.languages}:
            keys.append(f"evaluate.protocol {self.config['evaluate']['protocol']}")
        return ", ".join(keys)

    def model_checks(self) -> list[ModelCheck]:
        """The model directories to check at start, when they exist then (a local path or a package's): built and
        downloaded ones are checked by their rule."""
        found = [ModelCheck("student.model", self.config["student"]["model"], "generate")]
        if self.uses_teacher:
            found.append(ModelCheck("teacher.model", self.config["teacher"]["model"], "generate"))
        if self.judge_on:
            found.append(ModelCheck("judge.model", self.config["judge"]["model"], "generate"))
        # the encoders as the protocol resolves them per language (a null part is the protocol's own)
        encoders = {self.evaluate_settings(lang)["evaluate"]["bertscore"]["model"] for lang in self.languages}
        found += [ModelCheck("evaluate.bertscore.model", ref, "encode") for ref in sorted(encoders)]
        existing = []
        for check in found:
            kind = models.model_kind(check.ref, self.named_models)
            if kind == "local" or (kind == "named" and self.named_models[check.ref]["build"] == "package"):
                existing.append(check)
        return existing

    # ---------------------------------------------------------------- resources

    def resources(self, rule: str) -> dict:
        """The rule's job resources: its config section's `resources` over the rule's own defaults (cpus become the
        job's threads), the GPU model and the SLURM partition and flags only when given."""
        section = SECTION_OF.get(rule, rule)
        given = self.config[section].get("resources", {}) if section in self.config else {}
        return {**RULE_RESOURCES[section], **given}

    def threads(self, rule: str) -> int:
        return self.resources(rule).get("cpus", 1)

    def job_resources(self, rule: str) -> dict:
        """Snakemake's `resources:` of the rule (its `threads:` are `threads(rule)`)."""
        return {key: value for key, value in self.resources(rule).items() if key != "cpus"}

    def python(self, section: str) -> str:
        """The interpreter that runs a section's jobs: `python` on PATH, or the section's `python` (a path must exist)."""
        python = self.config[section]["python"]
        if "/" in python and not Path(python).exists():
            raise ClinsumError(f"config {section}.python: {python} does not exist")
        return python

    # ---------------------------------------------------------------- settings (the rules' params)

    def split_settings(self) -> dict:
        return {key: self.config["split"][key] for key in ("train", "valid", "test", "seed", "method", "order")}

    def crop_settings(self) -> dict:
        """What changes the cropped examples: the crop budgets of its unit (not how the job runs) and the prompts."""
        crop = without_job_keys(self.config["crop"])
        unused = ("report_characters", "answer_characters") if crop["unit"] == "tokens" else ()
        prompts = self.config["prompts"]
        return {"crop": {k: v for k, v in crop.items() if k not in unused},
                "prompts": {key: prompts[key] for key in ("role", "extract", "summarize", "train_summarize")}}

    def teacher_settings(self) -> dict:
        """What changes the teacher's output: its section (not how its jobs run) and the extraction prompt."""
        prompts = self.config["prompts"]
        return {"teacher": without_job_keys(self.config["teacher"]),
                "prompts": {"extract": prompts["extract"], "role": prompts["role"]}}

    def train_settings(self, name: str) -> dict:
        """What changes a variant's model: only the loss keys its table entry reads (gamma, kl) and its own
        documents_per_step, so changing another variant's rerun nothing here."""
        train = self.config["train"]
        unused = {"gamma", "kl"} - set(variant(name).loss_keys)
        section = {key: value for key, value in train.items()
                   if key not in ("variants", "resources", "documents_per_step", *unused)}
        section["documents_per_step"] = {name: train["documents_per_step"][name]}
        return {"train": section}

    def reward_settings(self) -> dict:
        """What changes the reward-tuned model: the reward section (not how its jobs run) and the inference prompts
        it samples with."""
        prompts = self.config["prompts"]
        return {"reward": without_job_keys(self.config["reward"]),
                "prompts": {"summarize": {lang: prompts["summarize"][lang] for lang in self.languages},
                            "role": prompts["role"]}}

    def reward_bertscore_settings(self) -> dict:
        """The evaluation's BERTScore settings of each language, which the reward's BERTScore term uses (when weighted)."""
        if not self.reward_bertscore():
            return {}
        return {lang: self.evaluate_settings(lang)["evaluate"]["bertscore"] for lang in self.languages}

    def reward_bertscore(self) -> bool:
        return bool(self.config["reward"]["weights"].get("bertscore"))

    def infer_settings(self) -> dict:
        return {"infer": without_job_keys(self.config["infer"])}

    def summarize_prompt(self, lang: str) -> str:
        return self.config["prompts"]["summarize"][lang]

    def evaluate_settings(self, lang: str) -> dict:
        """What changes one language's scores (not the bootstrap, which only the report uses): the protocol's parts
        with the configuration's overrides, resolved for that language."""
        section = {key: value for key, value in self.config["evaluate"].items() if key not in ("bootstrap", "resources")}
        return {"evaluate": protocols.resolve(section, lang)}

    def judge_settings(self, unused_prompt: str) -> dict:
        """What changes the judge's scores (not how its jobs run, nor the prompt of its other kind of job: `user` or
        `consistency`)."""
        section = without_job_keys(self.config["judge"], also=("enabled", "model"))
        prompts = {key: value for key, value in section["prompts"].items() if key != unused_prompt}
        return {"judge": {**section, "prompts": prompts}}

    def report_settings(self) -> dict:
        """What the report reads: languages, variants, the bootstrap, and the keys of its paper fidelity mode."""
        settings = merge(fidelity.config_subset(self.config), {
            "languages": self.languages,
            "train": {"variants": self.variants},
            "evaluate": {"bootstrap": self.config["evaluate"]["bootstrap"]},
        })
        if self.reward_variants:  # the report compares the tuned model with the one it started from
            settings["reward"] = {"start": self.config["reward"]["start"]}
        return settings

    # ---------------------------------------------------------------- targets

    def teacher_targets(self) -> list[str]:
        return ["results/teacher/summary.json"] if self.uses_teacher else []

    def prediction_targets(self) -> list[str]:
        return [f"results/predictions/{model}/{lang}.jsonl" for model in self.models for lang in self.languages]

    def judge_targets(self) -> list[str]:
        if not self.judge_on:
            return []
        return [f"results/judge/{model}/{lang}.json" for model in self.models for lang in self.languages]

    def consistency_targets(self) -> list[str]:
        """The judge's consistency across languages, when it is on and there are languages to pair."""
        if not self.judge_on or len(self.languages) < 2:
            return []
        return [f"results/judge/{model}/consistency.json" for model in self.models]

    def evaluation_targets(self) -> list[str]:
        targets = ["results/report/index.html", *(f"results/submissions/{model}" for model in self.models)]
        if self.submission_runs:
            targets.append(f"results/submissions/{self.config['submission']['team']}.zip")
        return targets

    def targets(self) -> list[str]:
        """Every final artifact (rule all)."""
        return ["results/corpus/manifest.json", "results/data/stats.md", *self.teacher_targets(),
                *self.prediction_targets(), *self.evaluation_targets()]


def resolve(config: dict) -> Resolved:
    return Resolved(config)
