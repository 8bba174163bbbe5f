# Stage 1: the teacher's key information for every train/valid report, in shards (scattergather).
# The Snakefile declares `scattergather: teacher=config["teacher"]["shards"]`; `--set-scatter teacher=N`
# changes the shard count. A killed shard resumes from results/teacher/{lang}/{shard}.partial.* files.


rule teacher:
    input:
        corpus="results/corpus/{lang}.jsonl",
        split="results/split/{lang}.json",
        model=R.teacher_dir,
        code=code("teacher"),
    output:
        **teacher_shard_outputs(),
    log:
        "results/logs/teacher/{lang}/{scatteritem}.log",
    wildcard_constraints:
        scatteritem=r"\d+-of-\d+",
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("teacher")
    resources:
        **R.job_resources("teacher"),
    params:
        python=python("teacher"),
        settings=as_json(R.teacher_settings()),
        shard=shard_of_scatteritem,
        topk=teacher_topk_option,
    shell:
        "{params.python:q} -m clinsum teacher run --corpus {input.corpus:q} --split {input.split:q} --model-dir {input.model:q}"
        " --settings {params.settings:q} {params.shard} --lang {wildcards.lang}"
        " --threads {threads} --out {output.records:q} {params.topk} > {log:q} 2>&1"


rule teacher_gather:
    input:
        unpack(teacher_gather_inputs),
        split="results/split/{lang}.json",
        code=code("teacher"),
    output:
        **teacher_gather_outputs(),
    log:
        "results/logs/teacher/{lang}.gather.log",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("teacher_gather"),
    params:
        topk=gather_topk_options,
    shell:
        "python -m clinsum teacher gather --split {input.split:q} --inputs {input.records:q}"
        " --out {output.records:q} {params.topk} > {log:q} 2>&1"


rule teacher_summary:
    input:
        records=expand("results/teacher/{lang}.jsonl", lang=LANGS),
        code=code("teacher"),
    output:
        "results/teacher/summary.json",
    log:
        "results/logs/teacher/summary.log",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("teacher_summary"),
    shell:
        "python -m clinsum teacher summary --inputs {input.records:q} --out {output:q} > {log:q} 2>&1"
