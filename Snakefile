# memgen workflow: `snakemake --cores 2` builds the default figures of config/config.yaml.
# The config is validated (defaults filled in) before any job is scheduled; rules are
# thin: one `python -m memgen STEP` call each, all logic in src/memgen.
from memgen import config as memgen_config
from memgen.report import CONFIG_KEY, TITLES, report_info

configfile: "config/config.yaml"

memgen_config.validate(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")

# `snakemake --report report.html`: one category per family, captions from memgen.report
# (through the config, so that editing a caption does not make figures stale).
config[CONFIG_KEY] = report_info(config, workflow.configfiles)


report: "workflow/report/workflow.rst"


include: "workflow/rules/locks.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/time_scale.smk"
include: "workflow/rules/double_descent.smk"
include: "workflow/rules/kernels.smk"
include: "workflow/rules/curvature.smk"


rule all:
    default_target: True
    input:
        [FAMILY_TARGETS[f] for f in config["families"]],
