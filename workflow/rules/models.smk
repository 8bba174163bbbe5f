rule build_model:
    input:
        unpack(model_source),
        code=code("models"),
    output:
        directory("resources/models/{model}"),
    log:
        "results/logs/models/{model}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, R.built_models)) or "(?!)",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("build_model"),
    params:
        spec=model_spec,
        source=model_source_option,
    shell:
        "python -m clinsum models build --spec {params.spec:q} {params.source} --out {output:q} > {log:q} 2>&1"


rule download_model:
    output:
        directory("resources/models/hub/{repo}"),
    log:
        "results/logs/models/hub_{repo}.log",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("download_model"),
    params:
        repo_id=hub_repo_id,
        used_by=hub_model_users,
    shell:
        "python -m clinsum models download --repo-id {params.repo_id:q} --used-by {params.used_by:q}"
        " --out {output:q} > {log:q} 2>&1"
