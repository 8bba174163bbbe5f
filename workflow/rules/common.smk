import json
import re
import shlex
import sys
from pathlib import Path

CODE = Path(workflow.basedir) / "workflow" / "clinsum"
sys.path.insert(0, str(CODE.parent))  # the checkout's own package, installed or not

from clinsum import fidelity as clinsum_fidelity
from clinsum import model_files as clinsum_model_files
from clinsum import settings as clinsum_settings
from clinsum import submission as clinsum_submission
from clinsum import models as clinsum_models
from clinsum.codegraph import closure_files
from clinsum import sources as clinsum_sources
from clinsum.io import ClinsumError

LANGS = config["languages"]
NAMED_MODELS = config["models"]

# Rules run the stages as `python -m clinsum` with this checkout's code, in whichever environment runs
# the job: the one Snakemake runs in, or a rule's conda environment (`--sdm conda`).
shell.prefix(
    f"export PYTHONPATH={shlex.quote(str(CODE.parent))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


def quoted(paths):
    """Paths as shell words (a path may hold spaces or any letter): the option strings built here."""
    return " ".join(shlex.quote(str(path)) for path in paths)


def check_tensor_parallel_gpus(section):
    """On GPUs, vLLM's tensor parallelism must use exactly the GPUs a section's jobs are given."""
    settings = config[section]
    gpus = rule_resources(section, "gpu", 1)
    tp = settings["vllm"]["tensor_parallel_size"]
    if settings["backend"] == "vllm" and gpus > 0 and gpus != tp:
        raise WorkflowError(
            f"{section}.resources.gpu ({gpus}) must equal {section}.vllm.tensor_parallel_size ({tp})"
        )


def rule_resources(section, key, default):
    """A job resource from the `resources` of a config section (resources have no schema defaults: each
    rule declares its own)."""
    return config[section].get("resources", {}).get(key, default)


check_tensor_parallel_gpus("teacher")


def code(module):
    """The package files a stage's jobs run: its module, every package module that imports (directly or
    not, clinsum.codegraph), and the command-line entry point. As inputs, editing any of them reruns exactly
    the jobs that use it and what follows."""
    return sorted(
        {str(path) for name in (module, "__main__") for path in closure_files(name)}
    )


def as_json(obj):
    """A params value that Snakemake compares across runs (its `params` rerun trigger)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------- corpus


def corpus_layouts():
    """The layouts of config (`corpus.layouts`, the schema presets included), checked: a bad pattern
    or id format stops here, naming its key."""
    try:
        return clinsum_sources.layouts_from_config(config["corpus"]["layouts"])
    except ClinsumError as error:
        raise WorkflowError(f"config {error}")


CORPUS_LAYOUTS = corpus_layouts()


def used_layouts():
    """The layouts the sources use, as ingest's `--layouts`: editing an unused one reruns nothing."""
    names = {s["layout"] for s in config["corpus"]["sources"] if s["layout"] != "jsonl"}
    return {
        name: config["corpus"]["layouts"][name]
        for name in sorted(names & set(CORPUS_LAYOUTS))
    }


SYNTHETIC = config["corpus"].get("synthetic")


def check_synthetic_is_a_source():
    """A generated corpus is read like any other: its path must be one of the sources."""
    if not SYNTHETIC:
        return
    paths = [source["path"] for source in config["corpus"]["sources"]]
    if SYNTHETIC["path"] not in paths:
        raise WorkflowError(
            f"config corpus.synthetic.path {SYNTHETIC['path']} is not one of corpus.sources ({', '.join(paths)})"
        )


check_synthetic_is_a_source()


def read_sources():
    """The sources ingest reads as they are when Snakemake starts (fingerprinted here); a generated one
    (corpus.synthetic) is instead the output of the synthetic_corpus rule, an input of ingest.
    """
    return [
        source
        for source in config["corpus"]["sources"]
        if not SYNTHETIC or source["path"] != SYNTHETIC["path"]
    ]


def generated_source(wildcards):
    return {"synthetic": SYNTHETIC["path"]} if SYNTHETIC else {}


# content hashes of the source folders, kept between runs in Snakemake's own folder
SOURCE_FINGERPRINT_CACHE = Path(".snakemake") / "clinsum" / "source-fingerprints.json"


def corpus_fingerprint():
    """A digest of the content of every source file that can hold documents: ingest's `params`, so
    that an edited, added or removed document reruns ingest and a touched file reruns nothing. A
    missing source or unknown layout stops here. Jobs that Snakemake runs in their own process (a
    cluster job) skip it: only the main process decides what reruns and records params.
    """
    if not workflow.is_main_process:
        return "computed by the main Snakemake process"
    try:
        digest, _ = clinsum_sources.fingerprint_sources(
            read_sources(), CORPUS_LAYOUTS, SOURCE_FINGERPRINT_CACHE
        )
    except ClinsumError as error:
        raise WorkflowError(f"config {error}")
    return digest


CORPUS_FINGERPRINT = corpus_fingerprint()


def check_summarize_prompts():
    """Every configured language has its localized summarization prompt (inference needs it)."""
    prompts = config["prompts"]["summarize"]
    missing = [lang for lang in LANGS if lang not in prompts]
    if missing:
        hint = (
            " (a key read as false is a bare no: write 'no' in quotes)"
            if False in prompts
            else ""
        )
        raise WorkflowError(
            f"config prompts.summarize has no prompt for {', '.join(missing)}"
            f" (languages: {', '.join(LANGS)}){hint}"
        )


check_summarize_prompts()


def model_path(ref):
    """The local directory of a model reference (see clinsum.models.model_path)."""
    try:
        return clinsum_models.model_path(ref, NAMED_MODELS)
    except ClinsumError as error:
        raise WorkflowError(f"config: {error}")


def model_input(ref):
    """A model directory as an input of a job (one Snakemake can build, or an existing one)."""
    return model_path(ref)


def stage_python(section):
    """The interpreter that runs a section's jobs: `python` on PATH (a rule's conda environment under
    `--sdm conda`), or the section's `python`, e.g. a separate vLLM environment (`.venv-vllm/bin/python`).
    """
    python = config[section]["python"]
    if "/" in python and not Path(python).exists():
        raise WorkflowError(
            f"config {section}.python: {python} does not exist"
            + (
                " (`make vllm-cpu-env` builds .venv-vllm)"
                if ".venv-vllm" in python
                else ""
            )
        )
    return python


# keys of a section that say how a job runs, not what it computes
JOB_KEYS = ("resources", "python")


def without_job_keys(section, also=()):
    """A config section less how its jobs run (and the keys in `also`): what a job's output depends on."""
    return {key: value for key, value in section.items() if key not in JOB_KEYS + also}


def gpu_model_resource(section):
    """{"gpu_model": ...} (SLURM: `--gpus=<model>:<n>`), only when the section's resources name one."""
    model = rule_resources(section, "gpu_model", None)
    return {"gpu_model": model} if model else {}


TEACHER = model_path(config["teacher"]["model"])
STUDENT = model_path(config["student"]["model"])


def all_targets():
    """Every final artifact; the functions come from the stage rule files."""
    targets = ["results/corpus/manifest.json", "results/data/stats.md"]
    targets += teacher_targets()
    targets += prediction_targets()
    targets += evaluation_targets()
    return targets


def uses_teacher():
    """The teacher stage runs only when a trained variant learns from it."""
    return any(v in ("distil", "distil_kl") for v in config["train"]["variants"])


def crop_teacher_input(wildcards):
    return (
        {"teacher": expand("results/teacher/{lang}.jsonl", lang=LANGS)}
        if uses_teacher()
        else {}
    )


def crop_teacher_option(wildcards, input):
    """--teacher-dir when the crop job also crops the teacher's key information."""
    return "--teacher-dir results/teacher" if "teacher" in input.keys() else ""


def crop_settings():
    """What changes the cropped examples: the crop budgets (not how the job runs) and the prompts they are
    cropped in."""
    prompts = config["prompts"]
    return {
        "crop": without_job_keys(config["crop"]),
        "prompts": {
            key: prompts[key]
            for key in ("role", "extract", "summarize", "train_summarize")
        },
    }


# ---------------------------------------------------------------- models

BUILT_MODELS = [
    name for name, spec in NAMED_MODELS.items() if spec["build"] != "package"
]


def model_source(wildcards):
    """The model a pruned or random model is made from (nothing for a GGUF build)."""
    spec = NAMED_MODELS[wildcards.model]
    return {"source": model_input(spec["from"])} if "from" in spec else {}


def model_source_option(wildcards, input):
    return f"--source {quoted([input.source])}" if "source" in input.keys() else ""


def model_spec(wildcards):
    return as_json(NAMED_MODELS[wildcards.model])


def hub_repo_id(wildcards):
    """resources/models/hub/{owner}--{name} is the hub's owner/name."""
    return wildcards.repo.replace("--", "/", 1)


def hub_model_users(wildcards):
    """The config keys that name a hub model (for its download's error messages)."""
    target = f"resources/models/hub/{wildcards.repo}"
    keys = [
        key
        for key, ref in clinsum_models.model_references(config).items()
        if clinsum_models.model_kind(ref, NAMED_MODELS) == "hub"
        and model_path(ref) == target
    ]
    if target in BERTSCORE_MODELS.values() and not keys:
        keys.append(f"evaluate.protocol {config['evaluate']['protocol']}")
    return ", ".join(keys)


# ---------------------------------------------------------------- teacher

TEACHER_TOPK = config["teacher"]["top_logprobs"] > 0


def check_kl_has_teacher_topk():
    """distil_kl learns from the teacher's top-k log-probabilities, which only top_logprobs > 0 keeps."""
    if "distil_kl" in config["train"]["variants"] and not TEACHER_TOPK:
        raise WorkflowError(
            "config train.variants has distil_kl, which learns from the teacher's top-k log-probabilities,"
            " but teacher.top_logprobs is 0: set it above 0 (config/distil-kl.yaml sets 8)"
        )


check_kl_has_teacher_topk()


def teacher_settings():
    """What changes the teacher's output: its section (not how its jobs run) and the extraction prompt."""
    return {
        "teacher": without_job_keys(config["teacher"]),
        "prompts": {
            "extract": config["prompts"]["extract"],
            "role": config["prompts"]["role"],
        },
    }


def shard_of_scatteritem(wildcards):
    """Snakemake's scatter item `i-of-n` as the teacher's --shard-index i --shard-count n."""
    index, count = wildcards.scatteritem.split("-of-")
    return f"--shard-index {index} --shard-count {count}"


def teacher_shard_outputs():
    outputs = {"records": "results/teacher/{lang}/{scatteritem}.jsonl"}
    if TEACHER_TOPK:
        outputs["topk"] = "results/teacher/{lang}/{scatteritem}.topk.safetensors"
    return outputs


def teacher_topk_option(wildcards, output):
    return f"--topk-out {quoted([output.topk])}" if TEACHER_TOPK else ""


def gather_topk_options(wildcards, input, output):
    if not TEACHER_TOPK:
        return ""
    return f"--topk-inputs {quoted(input.topk)} --topk-out {quoted([output.topk])}"


def teacher_gather_inputs(wildcards):
    inputs = {
        "records": gather.teacher(
            "results/teacher/{lang}/{scatteritem}.jsonl", lang=wildcards.lang
        )
    }
    if TEACHER_TOPK:
        inputs["topk"] = gather.teacher(
            "results/teacher/{lang}/{scatteritem}.topk.safetensors",
            lang=wildcards.lang,
        )
    return inputs


def teacher_gather_outputs():
    outputs = {"records": "results/teacher/{lang}.jsonl"}
    if TEACHER_TOPK:
        outputs["topk"] = "results/teacher/{lang}.topk.safetensors"
    return outputs


def teacher_targets():
    """Teacher outputs for rule all (when a trained variant uses the teacher)."""
    return ["results/teacher/summary.json"] if uses_teacher() else []


# ---------------------------------------------------------------- train

TRAIN_VARIANTS = config["train"]["variants"]

TRAIN_GPU_MODEL = gpu_model_resource("train")


def train_settings(variant):
    """What changes a variant's model: standard ignores gamma and kl, distil ignores kl, and each reads its
    own documents_per_step, so changing them reruns only the variants that use them (Snakemake's params
    rerun trigger)."""
    unused = {"standard": ("gamma", "kl"), "distil": ("kl",), "distil_kl": ()}[variant]
    section = {
        key: value
        for key, value in config["train"].items()
        if key not in ("variants", "resources", "documents_per_step", *unused)
    }
    section["documents_per_step"] = {
        variant: config["train"]["documents_per_step"][variant]
    }
    return {"train": section}


def train_inputs(wildcards):
    inputs = {}
    if wildcards.variant == "distil_kl":
        inputs["topk"] = expand("results/teacher/{lang}.topk.safetensors", lang=LANGS)
        inputs["teacher"] = TEACHER
    return inputs


def train_kl_options(wildcards, input):
    """distil_kl: the teacher's top-k files, its tokenizer, and the answer budget its ids are cropped to."""
    if wildcards.variant != "distil_kl":
        return ""
    return (
        f"--teacher-topk {quoted(input.topk)} --teacher-model {quoted([input.teacher])}"
        f" --answer-tokens {config['crop']['answer_tokens']}"
    )


# ---------------------------------------------------------------- infer

# base: the untuned student; every trained variant after it
INFER_MODELS = ["base"] + config["train"]["variants"]


def prediction_targets():
    """Every predictions file: each model on each language's test split."""
    return expand(
        "results/predictions/{model}/{lang}.jsonl", model=INFER_MODELS, lang=LANGS
    )


def infer_model_dir(wildcards):
    if wildcards.model == "base":
        return STUDENT
    return f"results/models/{wildcards.model}"


def summarize_prompt(lang):
    prompts = config["prompts"]["summarize"]
    if lang not in prompts:
        raise WorkflowError(
            f"config prompts.summarize has no prompt for language {lang!r} (it has {sorted(prompts)})"
        )
    return prompts[lang]


def infer_settings():
    """What changes the predictions (not the resources a job asks for)."""
    return {"infer": without_job_keys(config["infer"])}


INFER_GPU_MODEL = gpu_model_resource("infer")


# ---------------------------------------------------------------- evaluate

from clinsum import protocols as clinsum_protocols

EVAL_MODELS = ["base"] + config["train"]["variants"]
EVALUATE_JOB_KEYS = ("bootstrap", "resources")


def evaluate_settings(lang):
    """What changes one language's scores (not the bootstrap, which only the report uses): the
    protocol's parts with the configuration's overrides, resolved for that language."""
    section = {
        key: value
        for key, value in config["evaluate"].items()
        if key not in EVALUATE_JOB_KEYS
    }
    try:
        return {"evaluate": clinsum_protocols.resolve(section, lang)}
    except ClinsumError as error:
        raise WorkflowError(f"config: {error}")


def bertscore_encoder(lang):
    """The BERTScore encoder's local directory for one language (a protocol may name one per language)."""
    return model_input(evaluate_settings(lang)["evaluate"]["bertscore"]["model"])


# Resolved for every language at start: a bad protocol part stops the run before any job.
BERTSCORE_MODELS = {lang: bertscore_encoder(lang) for lang in LANGS}


def bertscore_model_input(wildcards):
    return BERTSCORE_MODELS[wildcards.lang]


JUDGE = config["judge"]
JUDGE_ON = JUDGE["enabled"]
JUDGE_GPU_MODEL = gpu_model_resource("judge")


if JUDGE_ON:
    check_tensor_parallel_gpus("judge")


def judge_model_input(wildcards):
    return model_input(JUDGE["model"])


def judge_settings(unused_prompt):
    """What changes the judge's scores (not how its jobs run, nor the prompt of its other kind of job: `user` or
    `consistency`)."""
    section = without_job_keys(JUDGE, also=("enabled", "model"))
    prompts = {k: v for k, v in section["prompts"].items() if k != unused_prompt}
    return {"judge": {**section, "prompts": prompts}}


def judge_targets():
    """The judge's scores of every model and language, when the judge is on."""
    if not JUDGE_ON:
        return []
    return expand("results/judge/{model}/{lang}.json", model=EVAL_MODELS, lang=LANGS)


def consistency_targets():
    """The judge's consistency across languages of every model, when it is on and there are languages to pair."""
    if not JUDGE_ON or len(LANGS) < 2:
        return []
    return expand("results/judge/{model}/consistency.json", model=EVAL_MODELS)


def report_judge_inputs(wildcards):
    if not JUDGE_ON:
        return {}
    return {"judge": judge_targets(), "consistency": consistency_targets()}


def report_judge_option(wildcards, input):
    if "judge" not in input.keys():
        return ""
    options = f"--judge {quoted(input.judge)}"
    if input.consistency:
        options += f" --consistency {quoted(input.consistency)}"
    return options


def report_settings():
    """What the report reads: languages, variants, the bootstrap, and the keys that decide its paper fidelity
    mode (clinsum.fidelity), shaped as config.yaml."""
    settings = clinsum_settings.merge(
        clinsum_fidelity.config_subset(config),
        {
            "languages": LANGS,
            "train": {"variants": config["train"]["variants"]},
            "evaluate": {"bootstrap": config["evaluate"]["bootstrap"]},
        },
    )
    return settings


def report_train_logs(wildcards, input):
    """variant=results/models/{variant}/train_log.csv for each trained variant."""
    return quoted(
        f"{variant}={path}/train_log.csv"
        for variant, path in zip(config["train"]["variants"], input.models)
    )


def submission_predictions(wildcards, input):
    """lang=results/predictions/{model}/{lang}.jsonl for each language."""
    return quoted(f"{lang}={path}" for lang, path in zip(LANGS, input.predictions))


def submission_corpus(wildcards, input):
    """lang=results/corpus/{lang}.jsonl for each language (the organisers' results.jsonl needs the reports)."""
    return quoted(f"{lang}={path}" for lang, path in zip(LANGS, input.corpus))


SUBMISSION_FORMAT = clinsum_submission.resolve_format(
    config["submission"]["format"], config["evaluate"]["protocol"]
)
SUBMISSION_RUNS = config["submission"]["runs"]


def check_submission_runs():
    """submission.runs names models this configuration makes, in the format that has runs."""
    unknown = [model for model in SUBMISSION_RUNS if model not in EVAL_MODELS]
    if unknown:
        raise WorkflowError(
            f"config submission.runs: {', '.join(unknown)} is not one of the models ({', '.join(EVAL_MODELS)})"
        )
    if SUBMISSION_RUNS and SUBMISSION_FORMAT != "multiclinsum2026":
        raise WorkflowError(
            "config submission.runs: runs are MultiClinSum-2's (submission.format multiclinsum2026)"
        )


check_submission_runs()


def evaluation_targets():
    """The report and every model's submission, for rule all."""
    targets = [
        "results/report/index.html",
        *expand("results/submissions/{model}", model=EVAL_MODELS),
    ]
    if SUBMISSION_RUNS:
        targets.append(f"results/submissions/{config['submission']['team']}.zip")
    return targets


# ---------------------------------------------------------------- model directories


def check_model_dirs():
    """A model directory that exists when Snakemake starts (a local path, or one shipped in a package)
    has what its stage needs; a missing file stops here, naming the model's config key and the file.
    Models that rules build or download are checked by their build."""
    models = [("student.model", config["student"]["model"], "generate")]
    if uses_teacher():
        models.append(("teacher.model", config["teacher"]["model"], "generate"))
    if JUDGE_ON:
        models.append(("judge.model", JUDGE["model"], "generate"))
    # the encoders as the protocol resolves them per language (a null part is the protocol's own)
    encoders = {
        evaluate_settings(lang)["evaluate"]["bertscore"]["model"] for lang in LANGS
    }
    models += [("evaluate.bertscore.model", ref, "encode") for ref in sorted(encoders)]
    for key, ref, purpose in models:
        kind = clinsum_models.model_kind(ref, NAMED_MODELS)
        if kind == "hub" or (
            kind == "named" and NAMED_MODELS[ref]["build"] != "package"
        ):
            continue
        path = model_path(ref)
        if not Path(path).is_dir():
            raise WorkflowError(
                f"config {key}: the model directory {path} does not exist"
            )
        missing = clinsum_model_files.missing_model_files(path, purpose)
        if missing:
            raise WorkflowError(
                f"config {key}: the model directory {path} lacks {'; '.join(missing)}"
            )


check_model_dirs()
