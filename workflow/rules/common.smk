# The rules of every family, generated from its step declarations (memgen.declare):
# one rule per step, one `python -m memgen STEP` call each, plus one figure rule per
# family. Nothing here computes anything, and nothing here is a second copy of a fact
# the declarations hold (inputs, outputs, params, GPU use, code hashes, figure names).
import shlex
import sys

from memgen import claims as memgen_claims
from memgen.declare import input_paths, job_params
from memgen.families import registry
from memgen.figures import specs as figure_specs
from memgen.provenance import canonical_json, figure_hash, step_hash
from memgen.report import CONFIG_KEY

# The interpreter running Snakemake has memgen installed: jobs use the same one.
PYTHON = sys.executable
DEVICE = config["device"]
RES = config["resources"]
FAMILY_TARGETS = {}  # family -> its figure files (the default target builds the config's families)


def memgen_shell(args):
    """Shell command `python -m memgen ARGS > {log} 2>&1`, with the interpreter running
    Snakemake (the path is written into the command, not read from a global by Snakemake)."""
    return f"{shlex.quote(PYTHON)} -m memgen {args} > {{log}} 2>&1"


def step_resources(step):
    """A device step asks for resources.gpu GPUs (none when 0: the same rules run on
    CPU-only machines; the SLURM executor plugin turns gpu/gpu_model into a GPU request);
    a compute step takes the cluster limits resources.runtime / mem_mb when set."""
    res = {}
    if step.device and RES["gpu"]:
        res["gpu"] = RES["gpu"]
        res["cpus_per_gpu"] = RES["cpus_per_gpu"]
        if RES["gpu_model"]:
            res["gpu_model"] = RES["gpu_model"]
    if step.heavy:
        for key in ("runtime", "mem_mb"):  # minutes, MB; None: the profile's default
            if RES.get(key):
                res[key] = RES[key]
    return res


def step_device(step):
    """--device of a step's jobs: a device step that was given GPUs must use one (cuda:
    it stops when there is none instead of computing on the CPU), else the config's
    device; a CPU-only step always computes on the CPU."""
    if not step.device:
        return "cpu"
    return "cuda" if RES["gpu"] else DEVICE


def step_shell(step):
    ins = "".join(f" --input {name} {{input.{name}}}" for name in step.inputs)
    if isinstance(step.output, str):
        outs = " --output {output}"
    else:
        outs = "".join(f" --output {name}={{output.{name}}}" for name in step.output)
    extra = f" --resume-every-s {RES['resume_every_s']:g}" if step.resumable else ""
    return memgen_shell(f"{step.name}{ins}{outs} --params {{params.json:q}} --device {step_device(step)} "
                        f"--threads {{threads}}{extra}")


def _job_path(family, step, kind, ext):
    """logs/[benchmark/]FAMILY/STEP/WILDCARDS.EXT (the same wildcards as the outputs)."""
    point = "_".join(f"{w}~{{{w}}}" for w in step.wildcards)
    return f"logs/{kind}{family}/{step.name}" + (f"/{point}" if point else "") + f".{ext}"


def _wildcards(wc):
    return dict(wc.items())


def family_rules(name):
    """Every rule of family `name` (if the config has its block)."""
    if name not in config:
        return
    fam = registry()[name]
    for step in fam.steps:
        _step_rule(fam, config[name], step)
    _figure_rule(fam, config[name])


# (One function per rule: Snakemake evaluates `shell:` when a job runs, so each rule
# needs its own binding of `step`, not a loop variable's last value.)
def _step_rule(fam, block, step):
    rule:
        name: step.name
        input:
            unpack(lambda wc: input_paths(step, block, _wildcards(wc))),
        output:
            **({"out": step.output} if isinstance(step.output, str) else dict(step.output)),
        wildcard_constraints:
            **fam.constraints,
        params:
            json=lambda wc: canonical_json(job_params(step, block, _wildcards(wc))),
            code=step_hash(step),
        threads: RES["threads"] if step.heavy else 1
        localrule: not step.heavy  # light steps run in the main Snakemake process, also on a cluster
        resources:
            **step_resources(step),
        log:
            _job_path(fam.name, step, "", "log"),
        benchmark:
            _job_path(fam.name, step, "benchmark/", "tsv")
        shell:
            step_shell(step)


def _figure_rule(fam, block):
    figures = figure_specs(fam)
    formats = block["figures"]["formats"]
    tables = lambda wc: {t: fam.summary.path({}, t) for t in figures[wc.name].tables}  # noqa: E731
    shown = "png" if "png" in formats else formats[0]  # the file `snakemake --report` shows
    paths = [f"figures/{fam.name}/{{name}}.{ext}" for ext in formats]

    rule:
        name: f"{fam.prefix}_figure"
        input:
            unpack(tables),
        output:
            [report(p, caption="../report/figure.rst", category=fam.title,
                    labels={"figure": "{name}", "config": config[CONFIG_KEY]["configfiles"]})
             if p.endswith(f".{shown}") else p for p in paths],
        wildcard_constraints:
            name="|".join(figures),
        params:
            options=canonical_json(block["figures"]),
            code=lambda wc: figure_hash(fam, wc.name),
            inputs=lambda wc: " ".join(f"--input {t}={path}" for t, path in tables(wc).items()),
        localrule: True
        log:
            f"logs/{fam.name}/figure/{{name}}.log",
        shell:
            memgen_shell(f"figure {fam.name} {{wildcards.name}} {{params.inputs}} --output {{output}}"
                         " --options {params.options:q}")
    FAMILY_TARGETS[fam.name] = expand(f"figures/{fam.name}/{{name}}.{{ext}}", name=list(figures), ext=formats)


def claims_rule(families):
    """The reproduction scorecard data/summary/claims.csv: every claim the families
    declare (memgen.claims) checked from the summary tables they read. A light local
    job; a claim that is not reproduced (or fails) is a row of the table, never a
    failed job. Its code hash covers the claim functions."""
    rule:
        name: memgen_claims.RULE
        input:
            **memgen_claims.rule_inputs(families),
        output:
            memgen_claims.CSV,
        params:
            families=" ".join(families),
            code=memgen_claims.code_hash(families),
        localrule: True
        log:
            "logs/claims.log",
        shell:
            memgen_shell("claims --families {params.families} --output {output}")
