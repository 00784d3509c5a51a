"""What a config would run, before anything runs: jobs per rule and CPU / GPU hours.

``python -m memgen plan --configfile config/paper.yaml`` asks Snakemake itself for the
jobs: a dry run of the whole DAG (``snakemake -n -p --forceall``; no output is written),
whose every job block gives its rule, resources and shell command, and so the exact
``--params`` the job would get. Each job is costed from its step's declaration
(memgen.declare.Cost) with a simple model:

    seconds per job = OVERHEAD + UNIT[kind] * work(params)     (or the step's seconds)

- ``train``        work = steps * P * n_train   (forward + backward per step; P = weights)
- ``kernel_train`` work = steps * n_train^2     (K @ c per step)
- ``ntk``          work = n^2 * (L + 1) * h + n * P   (n = n_train + n_test)
- steps with a measured ``seconds`` per job (on reference runs), and light steps
  (data sets, summaries, figures): OVERHEAD.

"steps" are a run's accepted steps, priced per step of its ``flow.method``: by
``UNIT["train:rkc"]`` where the method has its own unit (:func:`unit_key`; a Chebyshev
step takes several gradient evaluations, and its share of rejected trials and spectral
estimates), else by ``UNIT[kind]`` (euler: one gradient per step).

``UNIT`` (seconds per unit of work, one CPU thread, float64) and ``OVERHEAD`` (process
start, imports, I/O) were measured on the 2-core x86 VM this project is developed on;
``--calibrate DIR`` replaces them by fits to the benchmarks of a run that already
happened (``DIR/logs/benchmark/FAMILY/STEP/POINT.tsv`` paired with the step's output at
that point, which gives the params and the steps taken). The number of gradient-flow
steps is not known before a run (it depends strongly on alpha): ``DEFAULT_STEPS`` per
unit key (for rkc the medians of config/paper-lite.yaml's runs), the calibration run's medians with
``--calibrate``, or ``--steps N`` for every run, all capped at ``flow.max_steps``, is an
assumption; ``max_wall`` gives an upper bound per run. At the paper's size rkc's runs
take 190-1140 accepted steps (2600-3600 gradient evaluations at rtol 1e-3,
benchmarks/flow.py) against 4700-23700 Euler steps. Jobs that request GPUs (``gpu=`` in
their resources: only the steps that compute on the device) report GPU hours divided by
``--gpu-speedup`` (default 1: measure one train job with ``--device cuda`` against
``--device cpu`` and pass the ratio).
"""

from __future__ import annotations

import csv
import math
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from memgen import MemgenError
from memgen.claims import RULE as CLAIMS_RULE
from memgen.provenance import PACKAGE_DIR

ROOT = PACKAGE_DIR.parents[1]  # the repository: Snakefile, workflow/, config/
# seconds per job of a light step / start-up of any step (python + torch import, I/O)
OVERHEAD = 3.0
# seconds per unit of work on one CPU thread (float64), measured at paper sizes (d=30,
# L=3, 700/1400 points, h=100 and 300) on a shared 2-core x86 VM (torch 2.13 CPU, load
# ~2 per core, so an idle core is up to ~2x faster); train includes ~20% for rejected
# steps. rkc, per accepted step, and its DEFAULT_STEPS: --calibrate on a from-scratch run of
# config/paper-lite.yaml (2 jobs on 2 idle cores; rtol 1e-3; median steps per run)
UNIT = {"train": 1.2e-9, "kernel_train": 2.5e-9, "ntk": 3.0e-10, "train:rkc": 1.5e-9, "kernel_train:rkc": 2.5e-8}
# accepted steps per run assumed, per unit key (unit_key: kind, or kind:method)
DEFAULT_STEPS = {"train": 100_000, "kernel_train": 100_000, "train:rkc": 700, "kernel_train:rkc": 300}


@dataclass
class DryJob:
    """One job of a dry run."""

    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    resources: dict[str, str] = field(default_factory=dict)
    threads: int = 1
    params: dict | None = None  # the --params of its command (memgen steps)


def dry_run(configfiles: list[str], root: Path = ROOT) -> str:
    """The text of ``snakemake -n -p --forceall`` for these config files."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--nolock", "--cores", "1",
           "--configfile", *[str(Path(c).resolve()) for c in configfiles]]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MemgenError(f"the dry run of {' '.join(configfiles)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout + proc.stderr


def _pairs(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in re.split(r",\s*", text.strip()) if "=" in item)


def parse_dry_run(text: str) -> list[DryJob]:
    """Every job block (``rule NAME:`` / ``localrule NAME:``) of a dry run."""
    jobs = []
    for block in re.split(r"^(?=[ \t]*(?:local)?rule \w+:)", text, flags=re.M):
        m = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not m:
            continue
        job = DryJob(m.group(1))
        for key, value in re.findall(r"^\s+(wildcards|resources|threads): (.*)$", block, re.M):
            if key == "threads":
                job.threads = int(value)
            else:
                setattr(job, key, _pairs(value))
        cmd = re.search(r"^\s*Shell command: (.*)$", block, re.M)
        if cmd:
            words = shlex.split(cmd.group(1))
            if "--params" in words:
                import json

                job.params = json.loads(words[words.index("--params") + 1])
        jobs.append(job)
    return jobs


@dataclass
class RuleCost:
    rule: str
    family: str
    seconds: list[float] = field(default_factory=list)
    gpus: int = 0
    threads: int = 1
    bound: float = 0.0  # seconds if every job ran to its max_wall

    @property
    def count(self) -> int:
        return len(self.seconds)


def _max_wall(params: dict | None) -> float:
    return float((params or {}).get("flow", {}).get("max_wall", math.inf))


def _method(params: dict | None) -> str:
    from memgen.training import FlowConfig

    return (params or {}).get("flow", {}).get("method", FlowConfig.method)


def unit_key(kind: str, params: dict | None, unit: dict[str, float]) -> str:
    """The key of ``unit`` that prices a job of this kind: its method's own where there is one."""
    own = f"{kind}:{_method(params)}"
    return own if own in unit else kind


def assumed_steps(steps: int | dict[str, int] | None) -> int | dict[str, int]:
    """``--steps N`` (every run), else ``DEFAULT_STEPS`` updated by ``steps`` (e.g. calibrated medians)."""
    return steps if isinstance(steps, int) else {**DEFAULT_STEPS, **(steps or {})}


def steps_for(steps: int | dict[str, int] | None, key: str) -> int:
    """The steps assumed for a run priced by unit ``key`` (0 for a kind whose work does not
    count steps: the NTK)."""
    s = assumed_steps(steps)
    return s if isinstance(s, int) else s.get(key, 0)


def job_seconds(job: DryJob, steps: int | dict[str, int] | None = None, unit: dict[str, float] = UNIT,
                overhead: float = OVERHEAD) -> float:
    """Estimated seconds of one job on one CPU thread (module doc), capped by max_wall.
    ``steps``: per run, or per :func:`unit_key` (default ``DEFAULT_STEPS``)."""
    from memgen.families import steps as declared

    step = declared().get(job.rule)
    if step is None or job.params is None:  # figures, the default target
        return overhead
    cost = step.cost
    if cost.work is not None:
        key = unit_key(cost.kind, job.params, unit)
        secs = overhead + unit.get(key, 0.0) * cost.work(job.params, steps_for(steps, key))
    else:
        secs = unit.get(job.rule, cost.seconds if cost.seconds is not None else overhead)
    return min(secs, overhead + _max_wall(job.params))


def costs(jobs: list[DryJob], steps: int | dict[str, int] | None = None, unit: dict[str, float] = UNIT,
          overhead: float = OVERHEAD) -> list[RuleCost]:
    """Per rule: each job's seconds, its GPUs and threads, the max_wall bound."""
    from memgen.families import registry

    family_of = {s.name: f for f, fam in registry().items() for s in fam.steps}
    family_of.update({f"{fam.prefix}_figure": f for f, fam in registry().items()})
    family_of[CLAIMS_RULE] = "scorecard"  # (memgen.claims: one job over every family)
    out: dict[str, RuleCost] = {}
    for job in jobs:
        if job.rule == "all":
            continue
        rc = out.setdefault(job.rule, RuleCost(job.rule, family_of.get(job.rule, "?"),
                                               gpus=int(job.resources.get("gpu", 0)), threads=job.threads))
        secs = job_seconds(job, steps, unit, overhead)
        rc.seconds.append(secs)
        wall = _max_wall(job.params)
        rc.bound += overhead + wall if math.isfinite(wall) else secs
    return list(out.values())


# ---------------------------------------------------------------- calibration


def _bench_seconds(tsv: Path) -> float:
    with open(tsv) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"])


def _steps_taken(path: Path) -> int | None:
    import h5py

    with h5py.File(path) as f:
        return int(f["trajectory/step"][-1]) if "trajectory/step" in f else None


def calibrate(root: Path = Path(".")) -> tuple[dict[str, float], float, dict[str, int], dict[str, int]]:
    """(UNIT, OVERHEAD, samples used per unit key / rule, median steps per unit key)
    fitted to the benchmarks under ``root`` (module doc). OVERHEAD: the median time of the
    quickest quarter of the jobs; UNIT[key] (:func:`unit_key`: kind, or kind:method): the
    median of (seconds - OVERHEAD) / work over its jobs that took more than 2 OVERHEAD;
    steps with a fixed cost: the mean seconds of their jobs. Keys and steps without usable
    samples keep the reference value."""
    import json

    from memgen import h5io
    from memgen.families import steps as declared

    samples: dict[str, list[tuple[float, float]]] = {}
    fixed: dict[str, list[float]] = {}
    taken: dict[str, list[int]] = {}
    for step in declared().values():
        folder = root / "logs" / "benchmark" / step.family / step.name
        tsvs = sorted(folder.glob("*.tsv")) if step.wildcards else [folder.with_suffix(".tsv")]
        for tsv in (t for t in tsvs if t.is_file()):
            wc = dict(item.split("~", 1) for item in tsv.stem.split("_") if "~" in item) if step.wildcards else {}
            try:
                secs = _bench_seconds(tsv)
                if step.cost.work is None:
                    fixed.setdefault(step.name, []).append(secs)
                    continue
                out = root / step.path(wc)
                params = json.loads(h5io.attrs_of(out)["params"])
                key, n = unit_key(step.cost.kind, params, UNIT), _steps_taken(out)
                if n is not None:
                    taken.setdefault(key, []).append(n)
                work = step.cost.work(params, n if n is not None else steps_for(None, key))
                samples.setdefault(key, []).append((secs, work))
            except Exception:  # a file of another layout, or no output: skip it
                continue
    everything = sorted([s for pairs in samples.values() for s, _ in pairs] + [s for v in fixed.values() for s in v])
    overhead = statistics.median(everything[: max(1, len(everything) // 4)]) if everything else OVERHEAD
    unit, used = dict(UNIT), {}
    for kind, pairs in samples.items():
        fits = [(s - overhead) / w for s, w in pairs if w > 0 and s > 2 * overhead]
        if fits:
            unit[kind], used[kind] = statistics.median(fits), len(fits)
    for rule, secs in fixed.items():
        unit[rule], used[rule] = statistics.mean(secs), len(secs)
    return unit, overhead, used, {m: int(statistics.median(v)) for m, v in taken.items()}


# ---------------------------------------------------------------- report


def report(rules: list[RuleCost], *, name: str = "", steps: int | dict[str, int] | None = None,
           gpu_speedup: float = 1.0) -> str:
    total = sum(r.count for r in rules)
    steps = assumed_steps(steps)
    assumed = f"{steps:g}" if isinstance(steps, int) else ", ".join(f"{m} {n:g}" for m, n in steps.items())
    lines = [f"{name or 'config'}: {total} jobs (Snakemake's dry run); assumed accepted gradient-flow steps "
             f"per run: {assumed} (capped at flow.max_steps)"]
    w = max([16] + [len(r.rule) + 2 for r in rules])
    head = f"{'rule':<{w}}{'jobs':>7}  {'runs on':<10}{'s/job (mean)':>14}{'hours':>12}{'max hours':>12}"
    lines += [head, "-" * len(head)]
    cpu_h = gpu_h = bound_h = 0.0
    per_family: dict[str, list[float]] = {}
    for r in sorted(rules, key=lambda r: (r.family, r.rule)):
        hours = sum(r.seconds) / 3600 / (gpu_speedup if r.gpus else 1.0)
        where = f"{r.gpus} GPU" if r.gpus else f"{r.threads} CPU"
        lines.append(f"{r.rule:<{w}}{r.count:>7}  {where:<10}{sum(r.seconds) / max(r.count, 1):>14.3g}"
                     f"{hours:>12.3g}{r.bound / 3600:>12.3g}")
        if r.gpus:
            gpu_h += hours * r.gpus
        else:
            cpu_h += hours * r.threads
        bound_h += r.bound / 3600
        tot = per_family.setdefault(r.family, [0, 0.0])
        tot[0] += r.count
        tot[1] += hours
    lines.append("-" * len(head))
    lines.append("per family: " + "; ".join(f"{f} {n} jobs, {h:.3g} h" for f, (n, h) in per_family.items()))
    lines.append(f"estimate: {cpu_h:.3g} CPU core-hours, {gpu_h:.3g} GPU hours"
                 + (f" (GPU speedup over one CPU thread assumed x{gpu_speedup:g})" if gpu_h else ""))
    lines.append(f"upper bound (every run hitting max_wall): {bound_h:.3g} job-hours")
    lines.append("steps with a fixed seconds per job were measured on small reference runs (memgen.declare.Cost, "
                 "or --calibrate): a lower bound at larger sizes")
    return "\n".join(lines)


def main(args) -> str:
    """The ``plan`` command (memgen.cli)."""
    unit, overhead, steps = UNIT, OVERHEAD, args.steps
    lines = []
    if args.calibrate:
        unit, overhead, used, taken = calibrate(Path(args.calibrate))
        lines.append(f"calibrated from {args.calibrate}: overhead {overhead:.3g} s, samples {used or 'none'}, "
                     f"median steps per run {taken or 'none'}")
        steps = taken if steps is None else steps
    jobs = parse_dry_run(dry_run([args.configfile]))
    rules = costs(jobs, steps, unit, overhead)
    lines.append(report(rules, name=args.configfile, steps=steps, gpu_speedup=args.gpu_speedup))
    return "\n".join(lines)
