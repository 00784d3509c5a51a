# Shared helpers for every family's rules. Nothing here computes anything.
import shlex
import sys

from memgen.provenance import canonical_json, code_hash

# The interpreter running Snakemake has memgen installed: jobs use the same one.
PYTHON = sys.executable
DEVICE = config["device"]
RES = config["resources"]
FAMILY_TARGETS = {}


def pjson(params):
    """Step params as canonical JSON for `--params` (quoted in shell with :q)."""
    return canonical_json(params)


def heavy_resources():
    """Resources of rules that profit from a GPU (training, Gram matrices, inverse HVPs).

    gpu=0 (the default) requests none, so the same rules run on CPU-only machines; the
    SLURM executor plugin turns gpu/gpu_model into a GPU request.
    """
    res = {"gpu": RES["gpu"]}
    if RES["gpu"]:
        res["cpus_per_gpu"] = RES["cpus_per_gpu"]
        if RES["gpu_model"]:
            res["gpu_model"] = RES["gpu_model"]
    for key in ("runtime", "mem_mb"):  # cluster limits (minutes, MB); None: the profile's default
        if RES.get(key):
            res[key] = RES[key]
    return res


def memgen_shell(args):
    """Shell command `python -m memgen ARGS > {log} 2>&1`, with the interpreter running
    Snakemake (the path is written into the command, not read from a global by Snakemake)."""
    return f"{shlex.quote(PYTHON)} -m memgen {args} > {{log}} 2>&1"


def step_shell(step, inputs, extra=""):
    """Shell command of a step rule (one output file); `inputs` are the names of the rule's
    inputs, `extra` more CLI options (e.g. "--resume-every-s 300")."""
    ins = "".join(f" --input {name}={{input.{name}}}" for name in inputs)
    return memgen_shell(f"{step}{ins} --output {{output}} --params {{params.json:q}} --device {DEVICE} "
                        f"--threads {{threads}}" + (f" {extra}" if extra else ""))


def figure_outputs(family, formats):
    """figures/FAMILY/{name}.EXT for each format; the PNG (else the first format) goes into
    `snakemake --report`, under the family's title, captioned by workflow/report/figure.rst."""
    shown = "png" if "png" in formats else formats[0]
    paths = [f"figures/{family}/{{name}}.{ext}" for ext in formats]
    return [report(p, caption="../report/figure.rst", category=TITLES[family],
                   labels={"figure": "{name}", "config": config[CONFIG_KEY]["configfiles"]})
            if p.endswith(f".{shown}") else p for p in paths]


wildcard_constraints:
    alpha=r"[0-9.eE+-]+",
    h=r"\d+",
    seed=r"\d+",
