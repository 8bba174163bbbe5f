from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


scattergather:
    teacher=config["teacher"]["shards"],


include: "workflow/rules/common.smk"


wildcard_constraints:
    lang="|".join(LANGS),


include: "workflow/rules/models.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/judge.smk"


rule all:
    default_target: True
    input:
        all_targets(),
