# The LLM judge (off by default; config judge.enabled): the judge model scores each scored test summary
# against its report on faithfulness, CARE-item completeness and fluency, through the teacher's generation
# backends; judge_consistency scores one model's summaries of the same case across languages.


rule judge:
    input:
        predictions="results/predictions/{model}/{lang}.jsonl",
        corpus="results/corpus/{lang}.jsonl",
        model=judge_model_input,
        code=code("judge"),
    output:
        "results/judge/{model}/{lang}.json",
    log:
        "results/logs/judge/{model}/{lang}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, R.models)),
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("judge")
    resources:
        **R.job_resources("judge"),
    params:
        python=python("judge"),
        # a function: the prompts' {report}, {summary} and {error} are not wildcards
        settings=lambda wildcards: as_json(R.judge_settings("consistency")),
    shell:
        "{params.python:q} -m clinsum judge --predictions {input.predictions:q} --corpus {input.corpus:q}"
        " --model-dir {input.model:q} --model {wildcards.model} --lang {wildcards.lang}"
        " --settings {params.settings:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule judge_consistency:
    input:
        predictions=expand("results/predictions/{{model}}/{lang}.jsonl", lang=LANGS),
        corpus=expand("results/corpus/{lang}.jsonl", lang=LANGS),
        model=judge_model_input,
        code=code("judge"),
    output:
        "results/judge/{model}/consistency.json",
    log:
        "results/logs/judge/{model}/consistency.log",
    wildcard_constraints:
        model="|".join(map(re.escape, R.models)),
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("judge")
    resources:
        **R.job_resources("judge"),
    params:
        python=python("judge"),
        settings=lambda wildcards: as_json(R.judge_settings("user")),
        predictions=language_predictions,
        corpus=language_corpus,
    shell:
        "{params.python:q} -m clinsum judge-consistency --predictions {params.predictions} --corpus {params.corpus}"
        " --model-dir {input.model:q} --model {wildcards.model} --settings {params.settings:q}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"
