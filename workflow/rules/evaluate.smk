rule evaluate:
    input:
        predictions="results/predictions/{model}/{lang}.jsonl",
        corpus="results/corpus/{lang}.jsonl",
        bertscore_model=bertscore_model_input,
        code=code("evaluate"),
    output:
        "results/eval/{model}/{lang}.json",
    log:
        "results/logs/evaluate/{model}/{lang}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, R.models)),
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("evaluate")
    resources:
        **R.job_resources("evaluate"),
    params:
        settings=lambda wildcards: as_json(R.evaluate_settings(wildcards.lang)),
    shell:
        "python -m clinsum evaluate --predictions {input.predictions:q} --corpus {input.corpus:q}"
        " --model {wildcards.model} --lang {wildcards.lang}"
        " --settings {params.settings:q} --bertscore-model {input.bertscore_model:q}"
        " --threads {threads} --out {output:q} > {log:q} 2>&1"


rule report:
    input:
        unpack(report_judge_inputs),
        evals=expand("results/eval/{model}/{lang}.json", model=R.models, lang=LANGS),
        manifest="results/corpus/manifest.json",
        models=expand("results/models/{variant}", variant=R.variants),
        code=code("report"),
    output:
        table_md=report(
            "results/report/table4.md",
            caption="../report/table4.rst",
            category="Table 4",
        ),
        table_csv=report(
            "results/report/table4.csv",
            caption="../report/table4.rst",
            category="Table 4",
        ),
        faithfulness_md=report(
            "results/report/faithfulness.md",
            caption="../report/faithfulness.rst",
            category="Clinical faithfulness",
        ),
        faithfulness_csv=report(
            "results/report/faithfulness.csv",
            caption="../report/faithfulness.rst",
            category="Clinical faithfulness",
        ),
        bootstrap_md=report(
            "results/report/bootstrap.md",
            caption="../report/bootstrap.rst",
            category="Paired bootstrap",
        ),
        bootstrap_csv=report(
            "results/report/bootstrap.csv",
            caption="../report/bootstrap.rst",
            category="Paired bootstrap",
        ),
        bars=report(
            directory("results/report/bars"),
            patterns=["{lang}.png"],
            caption="../report/bars.rst",
            category="Scores per language",
            labels={"language": "{lang}"},
        ),
        curves=report(
            "results/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
        index=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="Summary",
        ),
    log:
        "results/logs/report.log",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("report"),
    params:
        settings=as_json(R.report_settings()),
        train_logs=report_train_logs,
        out_dir=lambda wildcards, output: str(Path(output.index).parent),
        judge=report_judge_option,
    shell:
        "python -m clinsum report --eval {input.evals:q} {params.judge} --train-log {params.train_logs}"
        " --manifest {input.manifest:q} --settings {params.settings:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule submission:
    input:
        predictions=expand("results/predictions/{{model}}/{lang}.jsonl", lang=LANGS),
        corpus=expand("results/corpus/{lang}.jsonl", lang=LANGS),
        code=code("submission"),
    output:
        directory("results/submissions/{model}"),
    log:
        "results/logs/submission/{model}.log",
    wildcard_constraints:
        model="|".join(map(re.escape, R.models)),
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("submission"),
    params:
        predictions=language_predictions,
        corpus=language_corpus,
        format=R.submission_format,
        team=config["submission"]["team"],
    shell:
        "python -m clinsum submission --predictions {params.predictions} --corpus {params.corpus}"
        " --format {params.format} --team {params.team:q} --out {output:q} > {log:q} 2>&1"


# MultiClinSum-2 allows three runs a team: submission.runs names the models sent as run1, run2, run3.
rule submission_runs:
    input:
        models=expand("results/submissions/{model}", model=R.submission_runs),
        code=code("submission"),
    output:
        "results/submissions/{team}.zip",
    log:
        "results/logs/submission/{team}.log",
    wildcard_constraints:
        team=re.escape(config["submission"]["team"]),
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("submission_runs"),
    shell:
        "python -m clinsum submission-runs --runs {input.models:q} --team {wildcards.team:q}"
        " --out {output:q} > {log:q} 2>&1"
