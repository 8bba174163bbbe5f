# The workflow lives in workflow/Snakefile, the Snakemake workflow catalog's layout; this file keeps `snakemake`
# at the checkout's root running it, with its rule `all` as the default target (an include alone keeps none).
include: "workflow/Snakefile"


workflow.default_target = "all"
