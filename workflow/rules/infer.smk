rule infer:
    input:
        corpus="results/corpus/{lang}.jsonl",
        split="results/split/{lang}.json",
        model=infer_model_dir,
        code=code("infer"),
    output:
        "results/predictions/{model}/{lang}.jsonl",
    log:
        "results/logs/infer/{model}/{lang}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, R.models)),
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("infer")
    resources:
        **R.job_resources("infer"),
    params:
        python=python("infer"),
        settings=as_json(R.infer_settings()),
        instruction=lambda wildcards: R.summarize_prompt(wildcards.lang),
        role=config["prompts"]["role"],
    shell:
        "{params.python:q} -m clinsum infer --model-dir {input.model:q} --corpus {input.corpus:q} --split {input.split:q}"
        " --lang {wildcards.lang} --settings {params.settings:q} --instruction {params.instruction:q}"
        " --role {params.role} --threads {threads} --out {output:q} > {log:q} 2>&1"
