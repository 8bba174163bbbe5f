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
        model="|".join(map(re.escape, INFER_MODELS)),
    conda:
        "../../envs/teacher.yaml"
    threads: rule_resources("infer", "cpus", 2)
    resources:
        **INFER_GPU_MODEL,
        gpu=rule_resources("infer", "gpu", 1),
        mem_mb=rule_resources("infer", "mem_mb", 16000),
        runtime=rule_resources("infer", "runtime", 240),
    params:
        python=stage_python("infer"),
        settings=as_json(infer_settings()),
        instruction=lambda wildcards: summarize_prompt(wildcards.lang),
        role=config["prompts"]["role"],
    shell:
        "{params.python:q} -m clinsum infer --model-dir {input.model:q} --corpus {input.corpus:q} --split {input.split:q}"
        " --lang {wildcards.lang} --settings {params.settings:q} --instruction {params.instruction:q}"
        " --role {params.role} --threads {threads} --out {output:q} > {log:q} 2>&1"
