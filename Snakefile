# memgen workflow: `snakemake --cores 2` builds the default figures of config/config.yaml.
# The config is validated (defaults filled in) before any job is scheduled. The rules
# are generated from each family's step declarations (memgen.families, see
# workflow/rules/common.smk): one `python -m memgen STEP` call each, all logic in src/memgen.
from memgen import config as memgen_config
from memgen.families import registry
from memgen.report import CONFIG_KEY, report_info

configfile: "config/config.yaml"

memgen_config.validate(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")

# `snakemake --report report.html`: one category per family, captions from the figure
# functions' docstrings (through the config, so that editing one does not make figures stale).
config[CONFIG_KEY] = report_info(config, workflow.configfiles)


report: "workflow/report/workflow.rst"


include: "workflow/rules/locks.smk"
include: "workflow/rules/common.smk"


for _family in registry():  # workflow/rules/FAMILY.smk for every family memgen declares
    include: f"workflow/rules/{_family}.smk"


_no_block = [f for f in config["families"] if f not in FAMILY_TARGETS]
if _no_block:
    raise ValueError(f"config: families lists {_no_block} but the config has no block for them")

# data/summary/claims.csv: the paper claims checked from the summaries (memgen.claims);
# `make figures` prints it, `snakemake --report` shows it first.
claims_rule(config["families"])


rule all:
    default_target: True
    input:
        [FAMILY_TARGETS[f] for f in config["families"]],
        memgen_claims.CSV,
