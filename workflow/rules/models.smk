import re

BUILT_MODELS = [name for name, spec in NAMED_MODELS.items() if spec["build"] != "package"]


def model_source(wildcards):
    """The model a pruned or random model is made from (nothing for a GGUF build)."""
    spec = NAMED_MODELS[wildcards.model]
    return {"source": model_input(spec["from"])} if "from" in spec else {}


rule build_model:
    input:
        unpack(model_source),
        code=code("models"),
    output:
        directory("resources/models/{model}"),
    wildcard_constraints:
        model="|".join(map(re.escape, BUILT_MODELS)) or "(?!)",
    params:
        spec=lambda wildcards: as_json(NAMED_MODELS[wildcards.model]),
        source=lambda wildcards, input: (
            f"--source {input.source}" if "source" in input.keys() else ""
        ),
    log:
        "results/logs/models/{model}.log",
    resources:
        mem_mb=4000,
    shell:
        "clinsum models build --spec {params.spec:q} {params.source} --out {output} > {log} 2>&1"


rule download_model:
    output:
        directory("resources/models/hub/{repo}"),
    params:
        repo_id=lambda wildcards: wildcards.repo.replace("--", "/", 1),
    log:
        "results/logs/models/hub_{repo}.log",
    resources:
        mem_mb=2000,
    shell:
        "clinsum models download --repo-id {params.repo_id} --out {output} > {log} 2>&1"
