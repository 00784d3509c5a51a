# Shared helpers for every family's rules. Nothing here computes anything.
import json
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


# Every heavy step: same command line shape.
STEP_CMD = (
    "{PYTHON} -m memgen {STEP} {INPUTS} --output {output[0]} --params {params.json:q} "
    "--device {DEVICE} --threads {threads}{EXTRA} > {log} 2>&1"
)


def step_shell(step, inputs, extra=""):
    """Shell command of a step rule; `inputs` are the names of the rule's inputs, `extra`
    more CLI options (e.g. "--resume-every-s 300")."""
    ins = " ".join(f"--input {name}={{input.{name}}}" for name in inputs)
    return STEP_CMD.replace("{PYTHON}", PYTHON).replace("{STEP}", step).replace("{INPUTS}", ins).replace(
        "{DEVICE}", DEVICE
    ).replace("{EXTRA}", f" {extra}" if extra else "")


wildcard_constraints:
    alpha=r"[0-9.eE+-]+",
    h=r"\d+",
    seed=r"\d+",
