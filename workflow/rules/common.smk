import json
from pathlib import Path

from snakemake.utils import Paramspace

CODE = Path(workflow.basedir) / "workflow" / "clinsum"
LANGS = config["languages"]
NAMED_MODELS = config.get("models", {})


wildcard_constraints:
    lang="|".join(LANGS),


def code(*modules):
    """The stage's own modules as inputs, so that changing a stage's code reruns it and what follows."""
    return [str(CODE / f"{module}.py") for module in modules]


def as_json(obj):
    """A params value that Snakemake compares across runs (its `params` rerun trigger)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def model_kind(ref):
    if ref in NAMED_MODELS:
        return "package" if NAMED_MODELS[ref]["build"] == "package" else "named"
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().is_dir():
        return "local"
    return "hub"


def model_path(ref):
    """The local directory of a model reference: built, downloaded, or used as it is."""
    kind = model_kind(ref)
    if kind == "named":
        return f"resources/models/{ref}"
    if kind == "package":
        return str(package_dir(NAMED_MODELS[ref]["package"]) / NAMED_MODELS[ref]["path"])
    if kind == "local":
        return str(Path(ref).expanduser())
    return f"resources/models/hub/{ref.replace('/', '--')}"


def package_dir(package):
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None:
        raise WorkflowError(f"config names package {package!r}, which is not installed (see README, Install)")
    return Path(list(spec.submodule_search_locations)[0])


def model_input(ref):
    """A model as a rule input: a path Snakemake can build, or an existing directory."""
    return model_path(ref)


def rule_resources(section, key, default):
    return config[section].get("resources", {}).get(key, default)


TEACHER = model_path(config["teacher"]["model"])
STUDENT = model_path(config["student"]["model"])


def all_targets():
    targets = expand("results/split/{lang}.json", lang=LANGS)
    targets += ["results/corpus/manifest.json", "results/data/stats.md"]
    return targets


def uses_teacher():
    """The teacher stage runs only when a trained variant learns from it."""
    return any(v in ("distil", "distil_kl") for v in config["train"]["variants"])


def crop_teacher_input(wildcards):
    return {"teacher": expand("results/teacher/{lang}.jsonl", lang=LANGS)} if uses_teacher() else {}


def crop_settings():
    return {
        **config["crop"],
        "role": config["prompts"].get("role", "system"),
        "extract": config["prompts"]["extract"],
        "summarize": config["prompts"]["summarize"],
        "train_summarize": config["prompts"].get("train_summarize"),
    }
