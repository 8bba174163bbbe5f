import re

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
    return {key: value for key, value in config["infer"].items() if key != "resources"}


# a GPU model for SLURM (`--gpus=<model>:<n>`), e.g. tesla_t4, only when config names one
INFER_GPU_MODEL = (
    {"gpu_model": rule_resources("infer", "gpu_model", None)}
    if rule_resources("infer", "gpu_model", None)
    else {}
)


rule infer:
    input:
        corpus="results/corpus/{lang}.jsonl",
        split="results/split/{lang}.json",
        model=infer_model_dir,
        code=code("infer", "generation", "chat", "crop", "io"),
    output:
        "results/predictions/{model}/{lang}.jsonl",
    log:
        "results/logs/infer/{model}/{lang}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, INFER_MODELS)),
    threads: rule_resources("infer", "cpus", 2)
    resources:
        **INFER_GPU_MODEL,
        gpu=rule_resources("infer", "gpu", 1),
        mem_mb=rule_resources("infer", "mem_mb", 16000),
        runtime=rule_resources("infer", "runtime", 240),
    params:
        settings=as_json(infer_settings()),
        instruction=lambda wildcards: summarize_prompt(wildcards.lang),
        role=config["prompts"].get("role", "system"),
    shell:
        "clinsum infer --model-dir {input.model:q} --corpus {input.corpus} --split {input.split}"
        " --lang {wildcards.lang} --settings {params.settings:q} --instruction {params.instruction:q}"
        " --role {params.role} --threads {threads} --out {output} > {log} 2>&1"
