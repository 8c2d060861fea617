from snakemake.utils import min_version, validate

from clipflow.config import SCHEMA

min_version("9.0")


configfile: "config/config.yaml"


validate(config, str(SCHEMA))


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/download.smk"
include: "rules/embed.smk"
include: "rules/index.smk"
include: "rules/curate.smk"


rule all:
    input:
        get_final_outputs(),
