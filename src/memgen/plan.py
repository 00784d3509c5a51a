"""What a config would run, before anything runs: jobs per rule and CPU / GPU hours.

``python -m memgen plan --configfile config/paper.yaml`` counts the jobs of every rule
from the family's sweep (``memgen.experiments.FAMILY.points``; no Snakemake needed; the
counts equal those of ``snakemake -n``) and estimates their cost with a simple model:

    seconds per job = OVERHEAD + UNIT[kind] * work(job)

- ``train``        work = steps * P * n_train   (forward + backward per step; P = weights)
- ``kernel_train`` work = steps * n_train^2     (K @ c per step)
- ``ntk``          work = n^2 * (L + 1) * h + n * P   (n = n_train + n_test; Gram of the
  layer features, see memgen.kernels)
- light steps (``dataset``, ``init``, ``summary``, ``figure``): OVERHEAD only.

``UNIT`` (seconds per unit of work, one CPU thread, float64) and ``OVERHEAD`` (process
start, imports, I/O) were measured on the 2-core x86 VM this project is developed on;
``--calibrate`` replaces them by fits to the benchmarks of a run that already happened
(``logs/benchmark/FAMILY/RULE/POINT.tsv`` paired with its output in ``data/``, which
gives the sizes and the steps taken). The number of gradient-flow steps is not known
before a run (it depends strongly on alpha): ``--steps`` (default 1e5, capped at
``flow.max_steps``) is an assumption, and ``max_wall`` gives an upper bound per run.
Heavy rules request ``resources.gpu`` GPUs each; their hours are reported as GPU hours
divided by ``--gpu-speedup`` (default 1: no GPU measurement yet; measure one train job
with ``--device cuda`` against ``--device cpu`` and pass the ratio).

Every family is counted. A family plugs in with ``plan_jobs(block) -> {rule: jobs}`` and
``HEAVY_RULES`` (the rules with ``resources: **heavy_resources()``) in its module
``memgen.experiments.FAMILY``, computed from the same point lists its ``.smk`` file
expands; such rules are costed per job from :data:`REF_SECONDS` (see there), light rules
without a reference at OVERHEAD. A family with a work model (time_scale: the sizes above)
has an entry in :data:`FAMILY_JOBS` instead, which takes precedence. Families with
neither are listed as "not counted".
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# seconds per job of a light step / start-up of any step (python + torch import, I/O)
OVERHEAD = 3.0
# seconds per unit of work on one CPU thread (float64), measured at paper sizes (d=30,
# L=3, 700/1400 points, h=100 and 300) on a shared 2-core x86 VM (torch 2.13 CPU, load
# ~2 per core, so an idle core is up to ~2x faster); train includes ~20% for rejected steps
UNIT = {"train": 1.2e-9, "kernel_train": 2.5e-9, "ntk": 3.0e-10}
DEFAULT_STEPS = 100_000


@dataclass
class Jobs:
    """The jobs of one rule: ``works`` has one entry per job (units of ``kind``)."""

    rule: str
    kind: str  # "train", "kernel_train", "ntk" or "light"
    heavy: bool
    works: list[float] = field(default_factory=list)
    max_wall: float = math.inf  # seconds a job may run at most (training's max_wall)

    @property
    def count(self) -> int:
        return len(self.works)


def n_weights(d: int, h: int, L: int, bias: bool) -> int:
    """Weights of FC(d, h, L) with one output: d*h + (L-1)*h^2 + h (+ L*h + 1 biases)."""
    return d * h + (L - 1) * h * h + h + ((L * h + 1) if bias else 0)


def time_scale_jobs(ts: dict, steps: int) -> list[Jobs]:
    from memgen.experiments import time_scale as TS

    ds, model, flow = ts["dataset"], ts["model"], ts["flow"]
    n_tr, n = ds["n_train"], ds["n_train"] + ds["n_test"]
    s = min(steps, flow["max_steps"])
    P = {h: n_weights(ds["d"], h, model["L"], model["bias"]) for h in ts["widths"]}
    pts = TS.points(ts)
    inits = [(h, seed) for h in ts["widths"] for seed in ts["seeds"]]
    ntk = lambda h: n * n * (model["L"] + 1) * h + n * P[h]  # noqa: E731
    jobs = [
        Jobs("ts_dataset", "light", False, [0.0]),
        Jobs("ts_init", "light", False, [0.0] * len(inits)),
        Jobs("ts_train", "train", True, [s * P[p["h"]] * n_tr for p in pts], flow["max_wall"]),
        Jobs("ts_ntk_init", "ntk", True, [ntk(h) for h, _ in inits]),
        Jobs("ts_ntk_final", "ntk", True, [ntk(p["h"]) for p in pts]),
    ]
    if ts["frozen_kernel"]:
        jobs.append(Jobs("ts_frozen", "kernel_train", True, [s * n_tr * n_tr] * len(pts), flow["max_wall"]))
    jobs += [Jobs("ts_summary", "light", False, [0.0]),
             Jobs("ts_figure", "light", False, [0.0] * len(TS.FIGURES))]
    return jobs


FAMILY_JOBS: dict[str, Callable[[dict, int], list[Jobs]]] = {"time_scale": time_scale_jobs}

# Seconds per job (wall, one job at a time, including OVERHEAD) of the rules of families
# without a work model, and where their benchmarks lie (under logs/benchmark/). Means
# over the jobs of earlier runs on the 2-core development VM (busy: ~2 jobs at once):
# kernels at config/config.yaml sizes (accuracy h=512, 1000 steps, n <= 256; convergence
# n_points=64, h <= 2048; linearized h <= 1024, 1000 steps), double_descent and
# curvature at config/test.yaml sizes. At paper sizes these rules take longer (more
# steps / draws / wider networks): treat their hours as a lower bound and refit with
# ``--calibrate`` on a pilot run at the target sizes. Rules not listed (theory, toy,
# dataset, summary, figure steps: no benchmark) cost OVERHEAD.
REF_SECONDS = {
    "kn_accuracy": 12.4, "kn_convergence": 3.2, "kn_linearized": 15.0,
    "dd_linear": 13.7, "dd_two_layer": 13.0, "dd_modelwise": 14.9,
    "cv_train": 7.4, "cv_influence": 6.9, "cv_loo": 15.4, "cv_solvers": 12.3,
}
REF_BENCH = {
    "kn_accuracy": "kernels/accuracy/*/*.tsv", "kn_convergence": "kernels/convergence/*.tsv",
    "kn_linearized": "kernels/linearized/*.tsv",
    "dd_linear": "double_descent/linear_*.tsv", "dd_two_layer": "double_descent/two_layer_*.tsv",
    "dd_modelwise": "double_descent/modelwise.tsv",
    **{f"cv_{s}": f"curvature/{s}/*.tsv" for s in ("train", "influence", "loo", "solvers")},
}
UNIT = {**UNIT, **REF_SECONDS}  # per-job rules: seconds per job, keyed by rule


def _module(family: str):
    import importlib

    try:
        return importlib.import_module(f"memgen.experiments.{family}")
    except ModuleNotFoundError:
        return None


def _counted_jobs(module) -> Callable[[dict, int], list[Jobs]]:
    """Jobs of a family from its module's ``plan_jobs`` (counts) and ``HEAVY_RULES``."""
    heavy = frozenset(getattr(module, "HEAVY_RULES", ()))

    def jobs(block: dict, steps: int) -> list[Jobs]:
        return [Jobs(rule, "per_job", rule in heavy, [1.0] * n) for rule, n in module.plan_jobs(block).items()]

    return jobs


def _job_model(family: str):
    if family in FAMILY_JOBS:
        return FAMILY_JOBS[family]
    module = _module(family)
    return _counted_jobs(module) if getattr(module, "plan_jobs", None) else None


def unmodelled(config: dict) -> list[str]:
    """Families the config builds that have no job model."""
    return [f for f in config["families"] if _job_model(f) is None]


def jobs_of(config: dict, steps: int = DEFAULT_STEPS) -> list[Jobs]:
    """Every rule's jobs for the families a validated ``config`` builds (those with a
    job model, see :func:`unmodelled`)."""
    out = []
    for family in config["families"]:
        model = _job_model(family)
        if model is not None:
            out += model(config[family], steps)
    return out


def seconds(jobs: Jobs, unit: dict[str, float] = UNIT, overhead: float = OVERHEAD) -> list[float]:
    """Estimated seconds of each job (one CPU thread), capped by the rule's max_wall.
    ``per_job`` rules: ``unit[rule]`` seconds per job (OVERHEAD when not listed)."""
    if jobs.kind == "per_job":
        return [min(unit.get(jobs.rule, overhead), overhead + jobs.max_wall)] * jobs.count
    u = unit.get(jobs.kind, 0.0)
    return [min(overhead + u * w, overhead + jobs.max_wall) for w in jobs.works]


# ---------------------------------------------------------------- calibration

_TS_BENCH = {  # benchmark folder -> (kind, output path template)
    "train": ("train", "data/runs/time_scale/{}.h5"),
    "frozen": ("kernel_train", "data/runs/time_scale_frozen/{}.h5"),
    "ntk_init": ("ntk", "data/kernels/time_scale/init/{}.h5"),
    "ntk_final": ("ntk", "data/kernels/time_scale/final/{}.h5"),
}


def _bench_seconds(tsv: Path) -> float:
    with open(tsv) as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return float(rows[-1]["s"])


def _work_of_output(kind: str, path: Path) -> float:
    from memgen import h5io

    attrs = h5io.attrs_of(path)
    import json

    p = json.loads(attrs["params"])
    if kind == "ntk":
        init = p["init"]
        ds, m = init["dataset"], init["model"]
        n = ds["n_train"] + ds["n_test"]
        return n * n * (m["L"] + 1) * m["h"] + n * n_weights(ds["d"], m["h"], m["L"], m["bias"])
    import h5py

    with h5py.File(path) as f:
        steps = int(f["trajectory/step"][-1])
    init = p["init"] if kind == "train" else p["ntk"]["init"]
    ds, m = init["dataset"], init["model"]
    if kind == "train":
        return steps * n_weights(ds["d"], m["h"], m["L"], m["bias"]) * ds["n_train"]
    return steps * ds["n_train"] ** 2


def calibrate(root: Path = Path(".")) -> tuple[dict[str, float], float, dict[str, int]]:
    """(UNIT, OVERHEAD, samples per kind) fitted to the benchmarks under ``root``.

    OVERHEAD: the median time of the lightest jobs; UNIT[kind]: the median over that
    kind's jobs of (seconds - OVERHEAD) / work, over jobs that took > 2 OVERHEAD.
    Per-job rules (:data:`REF_BENCH`): the mean seconds of their benchmarks.
    Kinds and rules without usable samples keep the reference value.
    """
    samples: dict[str, list[tuple[float, float]]] = {}
    for folder, (kind, template) in _TS_BENCH.items():
        for tsv in sorted((root / "logs/benchmark/time_scale" / folder).glob("*.tsv")):
            out = root / template.format(tsv.stem)
            if out.exists():
                try:
                    samples.setdefault(kind, []).append((_bench_seconds(tsv), _work_of_output(kind, out)))
                except Exception:  # a file of another layout: skip it
                    continue
    everything = sorted(s for pairs in samples.values() for s, _ in pairs)
    overhead = statistics.median(everything[: max(1, len(everything) // 4)]) if everything else OVERHEAD
    unit, used = dict(UNIT), {}
    for kind, pairs in samples.items():
        fits = [(s - overhead) / w for s, w in pairs if w > 0 and s > 2 * overhead]
        if fits:
            unit[kind], used[kind] = statistics.median(fits), len(fits)
    for rule, pattern in REF_BENCH.items():
        secs = []
        for tsv in sorted((root / "logs/benchmark").glob(pattern)):
            try:
                secs.append(_bench_seconds(tsv))
            except Exception:  # empty or foreign file: skip it
                continue
        if secs:
            unit[rule], used[rule] = statistics.mean(secs), len(secs)
    return unit, overhead, used


# ---------------------------------------------------------------- report


def report(config: dict, *, name: str = "", steps: int = DEFAULT_STEPS, gpu_speedup: float = 1.0,
           unit: dict[str, float] = UNIT, overhead: float = OVERHEAD) -> str:
    gpus = config["resources"]["gpu"]
    threads = config["resources"]["threads"]
    all_jobs = jobs_of(config, steps)
    lines = [f"{name or 'config'}: families {', '.join(config['families'])}; "
             f"{sum(j.count for j in all_jobs)} jobs; assumed {steps:g} gradient-flow steps per run"
             + (" (capped at flow.max_steps)" if any(j.kind == "train" for j in all_jobs) else "")]
    w = max([16] + [len(j.rule) + 2 for j in all_jobs])
    head = f"{'rule':<{w}}{'jobs':>7}  {'runs on':<10}{'s/job (mean)':>14}{'hours':>12}{'max hours':>12}"
    lines += [head, "-" * len(head)]
    cpu_h = gpu_h = bound_h = 0.0
    family_of = {j.rule: f for f in config["families"] if _job_model(f) is not None
                 for j in _job_model(f)(config[f], steps)}
    per_family: dict[str, list[float]] = {}  # family -> [jobs, hours]
    for j in all_jobs:
        secs = seconds(j, unit, overhead)
        on_gpu = j.heavy and gpus > 0
        hours = sum(secs) / 3600 / (gpu_speedup if on_gpu else 1.0)
        bound = (j.count * (overhead + j.max_wall) / 3600) if math.isfinite(j.max_wall) else hours
        where = f"{gpus} GPU" if on_gpu else (f"{threads} CPU" if j.heavy else "1 CPU")
        lines.append(f"{j.rule:<{w}}{j.count:>7}  {where:<10}{sum(secs) / max(j.count, 1):>14.3g}"
                     f"{hours:>12.3g}{bound:>12.3g}")
        if on_gpu:
            gpu_h += hours * gpus
        else:
            cpu_h += hours * (threads if j.heavy else 1)
        bound_h += bound
        tot = per_family.setdefault(family_of[j.rule], [0, 0.0])
        tot[0] += j.count
        tot[1] += hours
    lines.append("-" * len(head))
    lines.append("per family: " + "; ".join(f"{f} {n} jobs, {h:.3g} h" for f, (n, h) in per_family.items()))
    lines.append(f"estimate: {cpu_h:.3g} CPU core-hours, {gpu_h:.3g} GPU hours"
                 + (f" (GPU speedup over one CPU thread assumed x{gpu_speedup:g})" if gpus else ""))
    lines.append(f"upper bound (every run hitting max_wall): {bound_h:.3g} job-hours")
    per_job = [f for f in per_family if any(j.kind == "per_job" and j.rule in unit and family_of[j.rule] == f
                                            for j in all_jobs)]
    if per_job:
        lines.append(f"{', '.join(per_job)}: seconds per job from small reference runs (memgen.plan.REF_SECONDS, "
                     f"or --calibrate): a lower bound at larger sizes")
    missing = unmodelled(config)
    if missing:
        lines.append(f"not counted (no job model in memgen.plan): {', '.join(missing)}")
    return "\n".join(lines)
