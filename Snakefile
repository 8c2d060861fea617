from snakemake.utils import min_version

min_version("9.0")


# The demo's config, unless config files are given on the command line: a preset then replaces it whole.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


# common.smk checks the config (clipflow.config) and brings the shard plan up to date.
include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/download.smk"
include: "rules/embed.smk"
include: "rules/index.smk"
include: "rules/curate.smk"
include: "rules/near_duplicates.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_outputs(),
