# The reward-tuned variant (grpo in train.variants): GRPO with TRL from the trained variant reward.start on the
# training split's reports (clinsum.reward); its model is inferred, scored and reported like every variant.


rule reward:
    input:
        unpack(reward_bertscore_inputs),
        start=f"results/models/{config['reward']['start']}",
        corpus=expand("results/corpus/{lang}.jsonl", lang=LANGS),
        split=expand("results/split/{lang}.json", lang=LANGS),
        code=code("reward"),
    output:
        directory("results/models/{variant}"),
    log:
        "results/logs/reward/{variant}.log",
    wildcard_constraints:
        variant="|".join(map(re.escape, R.reward_variants)) or "(?!)",
    conda:
        "../../envs/clinsum.yaml"
    threads: R.threads("reward")
    resources:
        **R.job_resources("reward"),
    params:
        settings=lambda wildcards: as_json(R.reward_settings()),
        corpus=language_corpus,
        split=language_splits,
        bertscore=reward_bertscore_option,
        checkpoint_dir="results/checkpoints/{variant}",
    shell:
        "python -m clinsum reward --start {input.start:q} --corpus {params.corpus} --split {params.split}"
        " --settings {params.settings:q} {params.bertscore} --out {output:q}"
        " --checkpoint-dir {params.checkpoint_dir:q} --threads {threads} > {log:q} 2>&1"
