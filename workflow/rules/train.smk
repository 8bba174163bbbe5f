# helpers (TRAIN_VARIANTS, TRAIN_GPU_MODEL, train_settings, train_inputs, train_kl_options) live in
# common.smk


rule train:
    input:
        unpack(train_inputs),
        train="results/data/train.jsonl",
        valid="results/data/valid.jsonl",
        student=STUDENT,
        code=code("train"),
    output:
        directory("results/models/{variant}"),
    log:
        "results/logs/train/{variant}.log",
    wildcard_constraints:
        variant="|".join(map(re.escape, TRAIN_VARIANTS)),
    conda:
        "../../envs/train.yaml"
    threads: rule_resources("train", "cpus", 2)
    resources:
        **TRAIN_GPU_MODEL,
        gpu=rule_resources("train", "gpu", 1),
        mem_mb=rule_resources("train", "mem_mb", 32000),
        runtime=rule_resources("train", "runtime", 720),
    params:
        settings=lambda wildcards: as_json(train_settings(wildcards.variant)),
        kl=train_kl_options,
        checkpoint_dir="results/checkpoints/{variant}",
    shell:
        "python -m clinsum train --train {input.train:q} --valid {input.valid:q} --model {input.student:q}"
        " --variant {wildcards.variant} --settings {params.settings:q} {params.kl}"
        " --out {output:q} --checkpoint-dir {params.checkpoint_dir:q} --threads {threads} > {log:q} 2>&1"
