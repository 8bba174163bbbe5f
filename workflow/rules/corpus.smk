if R.synthetic:

    rule synthetic_corpus:
        input:
            sentences=R.synthetic["sentences"],
            code=code("synthetic"),
        output:
            directory(R.synthetic["path"]),
        log:
            "results/logs/synthetic_corpus.log",
        conda:
            "../../envs/clinsum.yaml"
        resources:
            **R.job_resources("synthetic_corpus"),
        params:
            languages=" ".join(LANGS),
            gold=R.synthetic["gold"],
            test=R.synthetic["test"],
            large_scale=R.synthetic["large_scale"],
            seed=R.synthetic["seed"],
        shell:
            "python -m clinsum synthetic --sentences {input.sentences:q} --out {output:q} --languages {params.languages}"
            " --gold {params.gold} --test {params.test} --large-scale {params.large_scale} --seed {params.seed}"
            " > {log:q} 2>&1"


# The sources are not inputs (Snakemake would compare a folder's own modification time, which
# misses edits inside it): their content fingerprint is a param, computed at start (common.smk).
rule ingest:
    input:
        unpack(generated_source),
        code=code("ingest"),
    output:
        corpus=expand("results/corpus/{lang}.jsonl", lang=LANGS),
        manifest="results/corpus/manifest.json",
    log:
        "results/logs/ingest.log",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("ingest"),
    params:
        sources=as_json(config["corpus"]["sources"]),
        # a function: the patterns' braces ({2}, {stem}) are not wildcards
        layouts=lambda wildcards: as_json(used_layouts()),
        fingerprint=CORPUS_FINGERPRINT,
        languages=" ".join(LANGS),
        on_bad_input=config["corpus"]["on_bad_input"],
    shell:
        "python -m clinsum ingest --sources {params.sources:q} --layouts {params.layouts:q}"
        " --languages {params.languages} --on-bad-input {params.on_bad_input}"
        " --out-dir results/corpus > {log:q} 2>&1"


rule split:
    input:
        corpus="results/corpus/{lang}.jsonl",
        code=code("split"),
    output:
        "results/split/{lang}.json",
    log:
        "results/logs/split/{lang}.log",
    conda:
        "../../envs/clinsum.yaml"
    resources:
        **R.job_resources("split"),
    params:
        train=config["split"]["train"],
        valid=config["split"]["valid"],
        test=config["split"]["test"],
        seed=config["split"]["seed"],
        method=config["split"]["method"],
        order=config["split"]["order"],
    shell:
        "python -m clinsum split --corpus {input.corpus:q} --lang {wildcards.lang} --train {params.train}"
        " --valid {params.valid} --test {params.test} --seed {params.seed} --method {params.method}"
        " --order {params.order} --out {output:q} > {log:q} 2>&1"


rule crop:
    input:
        unpack(crop_teacher_input),
        corpus=expand("results/corpus/{lang}.jsonl", lang=LANGS),
        split=expand("results/split/{lang}.json", lang=LANGS),
        tokenizer=R.student_dir,
        code=code("crop"),
    output:
        train="results/data/train.jsonl",
        valid="results/data/valid.jsonl",
        stats=report(
            "results/data/stats.md", caption="../report/stats.rst", category="Corpus"
        ),
    log:
        "results/logs/crop.log",
    conda:
        "../../envs/clinsum.yaml"
    # worker processes (crop.resources.cpus, capped by --cores): they also render the chat template, which
    # the tokenizer's own threads do not; the output does not depend on them
    threads: R.threads("crop")
    resources:
        **R.job_resources("crop"),
    params:
        settings=as_json(R.crop_settings()),
        languages=" ".join(LANGS),
        teacher=crop_teacher_option,
    shell:
        "python -m clinsum crop --corpus-dir results/corpus --split-dir results/split {params.teacher}"
        " --languages {params.languages} --tokenizer {input.tokenizer:q} --settings {params.settings:q}"
        " --workers {threads} --out-dir results/data > {log:q} 2>&1"
