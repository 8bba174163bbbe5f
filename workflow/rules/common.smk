import shlex
import sys
from pathlib import Path

# workflow/clinsum, whether this file is read from the workflow's own Snakefile or from a module's
CODE = Path(workflow.current_basedir).parent / "clinsum"
sys.path.insert(0, str(CODE.parent))  # the checkout's own package, installed or not

from clinsum import model_files as clinsum_model_files
from clinsum import sources as clinsum_sources
from clinsum.codegraph import closure_files
from clinsum.io import ClinsumError
from clinsum.resolve import Resolved, as_json
from clinsum.variants import variant

# The configuration as the rules read it (clinsum.resolve, tested without Snakemake): a configuration the
# schema accepts but that cannot run stops here, naming its key.
try:
    R = Resolved(config)
except ClinsumError as error:
    raise WorkflowError(str(error))

LANGS = R.languages

# Rules run the stages as `python -m clinsum` with this checkout's code, in whichever environment runs
# the job: the one Snakemake runs in, or a rule's conda environment (`--sdm conda`).
shell.prefix(
    f"export PYTHONPATH={shlex.quote(str(CODE.parent))}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; "
)


def quoted(paths):
    """Paths as shell words (a path may hold spaces or any letter): the option strings built here."""
    return " ".join(shlex.quote(str(path)) for path in paths)


def code(module):
    """The package files a stage's jobs run: its module, every package module that imports (directly or
    not, clinsum.codegraph), and the command-line entry point. As inputs, editing any of them reruns exactly
    the jobs that use it and what follows."""
    return sorted(
        {str(path) for name in (module, "__main__") for path in closure_files(name)}
    )


def resolved(function, *args):
    """A value of the resolved configuration; its error stops the run naming the config key."""
    try:
        return function(*args)
    except ClinsumError as error:
        raise WorkflowError(str(error))


def python(section):
    return resolved(R.python, section)


# ---------------------------------------------------------------- corpus

try:
    CORPUS_LAYOUTS = clinsum_sources.layouts_from_config(config["corpus"]["layouts"])
except ClinsumError as error:
    raise WorkflowError(f"config {error}")


def used_layouts():
    """The layouts the sources use, as ingest's `--layouts`: editing an unused one reruns nothing."""
    names = {s["layout"] for s in config["corpus"]["sources"] if s["layout"] != "jsonl"}
    return {
        name: config["corpus"]["layouts"][name]
        for name in sorted(names & set(CORPUS_LAYOUTS))
    }


def read_sources():
    """The sources ingest reads as they are when Snakemake starts (fingerprinted here); a generated one
    (corpus.synthetic) is instead the output of the synthetic_corpus rule, an input of ingest.
    """
    return [
        source
        for source in config["corpus"]["sources"]
        if not R.synthetic or source["path"] != R.synthetic["path"]
    ]


def generated_source(wildcards):
    return {"synthetic": R.synthetic["path"]} if R.synthetic else {}


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


def crop_teacher_input(wildcards):
    if not R.uses_teacher:
        return {}
    return {"teacher": expand("results/teacher/{lang}.jsonl", lang=LANGS)}


def crop_teacher_option(wildcards, input):
    """--teacher-dir when the crop job also crops the teacher's key information."""
    return "--teacher-dir results/teacher" if "teacher" in input.keys() else ""


# ---------------------------------------------------------------- models


def model_source(wildcards):
    """The model a pruned or random model is made from (nothing for a GGUF build)."""
    spec = R.named_models[wildcards.model]
    return {"source": R.model_path(spec["from"])} if "from" in spec else {}


def model_source_option(wildcards, input):
    return f"--source {quoted([input.source])}" if "source" in input.keys() else ""


def model_spec(wildcards):
    return as_json(R.named_models[wildcards.model])


def hub_repo_id(wildcards):
    """resources/models/hub/{owner}--{name} is the hub's owner/name."""
    return wildcards.repo.replace("--", "/", 1)


def hub_model_users(wildcards):
    return R.hub_model_users(wildcards.repo)


# ---------------------------------------------------------------- teacher


def shard_of_scatteritem(wildcards):
    """Snakemake's scatter item `i-of-n` as the teacher's --shard-index i --shard-count n."""
    index, count = wildcards.scatteritem.split("-of-")
    return f"--shard-index {index} --shard-count {count}"


def teacher_shard_outputs():
    outputs = {"records": "results/teacher/{lang}/{scatteritem}.jsonl"}
    if R.teacher_topk:
        outputs["topk"] = "results/teacher/{lang}/{scatteritem}.topk.safetensors"
    return outputs


def teacher_topk_option(wildcards, output):
    return f"--topk-out {quoted([output.topk])}" if R.teacher_topk else ""


def gather_topk_options(wildcards, input, output):
    if not R.teacher_topk:
        return ""
    return f"--topk-inputs {quoted(input.topk)} --topk-out {quoted([output.topk])}"


def teacher_gather_inputs(wildcards):
    inputs = {
        "records": gather.teacher(
            "results/teacher/{lang}/{scatteritem}.jsonl", lang=wildcards.lang
        )
    }
    if R.teacher_topk:
        inputs["topk"] = gather.teacher(
            "results/teacher/{lang}/{scatteritem}.topk.safetensors",
            lang=wildcards.lang,
        )
    return inputs


def teacher_gather_outputs():
    outputs = {"records": "results/teacher/{lang}.jsonl"}
    if R.teacher_topk:
        outputs["topk"] = "results/teacher/{lang}.topk.safetensors"
    return outputs


# ---------------------------------------------------------------- train


def train_inputs(wildcards):
    """A variant that learns from the teacher's top-k log-probabilities reads them and the teacher's tokenizer."""
    if not variant(wildcards.variant).teacher_topk:
        return {}
    return {
        "topk": expand("results/teacher/{lang}.topk.safetensors", lang=LANGS),
        "teacher": R.teacher_dir,
    }


def train_kl_options(wildcards, input):
    """The teacher's top-k files, its tokenizer, and the answer budget its ids are cropped to."""
    if "topk" not in input.keys():
        return ""
    return (
        f"--teacher-topk {quoted(input.topk)} --teacher-model {quoted([input.teacher])}"
        f" --answer-tokens {config['crop']['answer_tokens']}"
    )


# ---------------------------------------------------------------- infer, evaluate, judge, report


def infer_model_dir(wildcards):
    return R.model_dir(wildcards.model)


def bertscore_model_input(wildcards):
    return R.bertscore_encoder(wildcards.lang)


def judge_model_input(wildcards):
    return R.model_path(config["judge"]["model"])


def report_judge_inputs(wildcards):
    if not R.judge_on:
        return {}
    return {"judge": R.judge_targets(), "consistency": R.consistency_targets()}


def report_judge_option(wildcards, input):
    if "judge" not in input.keys():
        return ""
    options = f"--judge {quoted(input.judge)}"
    if input.consistency:
        options += f" --consistency {quoted(input.consistency)}"
    return options


def report_train_logs(wildcards, input):
    """variant=results/models/{variant}/train_log.csv for each trained variant."""
    return quoted(
        f"{variant}={path}/train_log.csv"
        for variant, path in zip(R.variants, input.models)
    )


def language_predictions(wildcards, input):
    """lang=results/predictions/{model}/{lang}.jsonl for each language."""
    return quoted(f"{lang}={path}" for lang, path in zip(LANGS, input.predictions))


def language_splits(wildcards, input):
    """lang=results/split/{lang}.json for each language."""
    return quoted(f"{lang}={path}" for lang, path in zip(LANGS, input.split))


def reward_bertscore_inputs(wildcards):
    """The evaluation's encoders, when the reward weighs BERTScore."""
    if not R.reward_bertscore():
        return {}
    return {"bertscore": [R.bertscore_encoder(lang) for lang in LANGS]}


def reward_bertscore_option(wildcards, input):
    if "bertscore" not in input.keys():
        return ""
    encoders = quoted(f"{lang}={path}" for lang, path in zip(LANGS, input.bertscore))
    settings = shlex.quote(as_json(R.reward_bertscore_settings()))
    return f"--bertscore-model {encoders} --bertscore-settings {settings}"


def language_corpus(wildcards, input):
    """lang=results/corpus/{lang}.jsonl for each language."""
    return quoted(f"{lang}={path}" for lang, path in zip(LANGS, input.corpus))


# ---------------------------------------------------------------- model directories


def check_model_dirs():
    """A model directory that exists when Snakemake starts (a local path, or one shipped in a package)
    has what its stage needs; a missing file stops here, naming the model's config key and the file.
    Models that rules build or download are checked by their build."""
    for check in resolved(R.model_checks):
        path = R.model_path(check.ref)
        if not Path(path).is_dir():
            raise WorkflowError(
                f"config {check.key}: the model directory {path} does not exist"
            )
        missing = clinsum_model_files.missing_model_files(path, check.purpose)
        if missing:
            raise WorkflowError(
                f"config {check.key}: the model directory {path} lacks {'; '.join(missing)}"
            )


check_model_dirs()
