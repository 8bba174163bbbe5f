# Stage 2: one job per training variant (clinsum.variants); its settings, inputs and resources come from the
# resolved configuration (clinsum.resolve, through common.smk)


rule train:
    input:
        unpack(train_inputs),
        train="results/data/train.jsonl",
        valid="results/data/valid.jsonl",
        student=R.student_dir,
        code=code("train"),
    output:
        directory("results/models/{variant}"),
    log:
        "results/logs/train/{variant}.log",
    wildcard_constraints:
        variant="|".join(map(re.escape, R.train_variants)),
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("train")
    resources:
        **R.job_resources("train"),
    params:
        settings=lambda wildcards: as_json(R.train_settings(wildcards.variant)),
        kl=train_kl_options,
        checkpoint_dir="results/checkpoints/{variant}",
    shell:
        "python -m clinsum train --train {input.train:q} --valid {input.valid:q} --model {input.student:q}"
        " --variant {wildcards.variant} --settings {params.settings:q} {params.kl}"
        " --out {output:q} --checkpoint-dir {params.checkpoint_dir:q} --threads {threads} > {log:q} 2>&1"
