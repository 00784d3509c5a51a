"""Shared helpers for the memgen tests: independent reference computations, the test
config's blocks, in-process CLI steps and scratch copies of the workflow."""

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import integrate

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_ITEMS = ("Snakefile", "workflow", "config", "profiles")  # what a workflow run needs


def copy_workflow(dest: Path) -> Path:
    """A scratch copy of the workflow (Snakefile, rules, configs, profiles) in ``dest``."""
    for name in WORKFLOW_ITEMS:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def config_block(family: str, **over) -> dict:
    """The ``family`` block of config/test.yaml, validated (defaults filled in), with
    overrides ``a__b=value`` for key ``a.b``."""
    from memgen import config

    with open(ROOT / "config" / "test.yaml") as fh:
        block = yaml.safe_load(fh)[family]
    for path, value in over.items():
        node = block
        *parents, last = path.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return config.validate({"families": [family], family: block})[family]


def step_params(step: str, block: dict, **wildcards) -> dict:
    """The params the workflow gives step ``step`` (memgen.declare.job_params) for the
    family ``block`` at ``wildcards`` (values formatted as in file names: floats ``:g``)."""
    from memgen.declare import job_params
    from memgen.families import step as declared

    wc = {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in wildcards.items()}
    return job_params(declared(step), block, wc)


def step_argv(step: str, inputs: dict, output, params: dict, *extra: str) -> list[str]:
    """The arguments of ``python -m memgen STEP`` (``output`` a path, or a dict NAME ->
    path for a step with several; an input may be a list of paths)."""
    args = [step]
    for name, path in inputs.items():
        args += ["--input", name, *map(str, path if isinstance(path, (list, tuple)) else [path])]
    outs = [f"{k}={v}" for k, v in output.items()] if isinstance(output, dict) else [str(output)]
    return args + ["--output", *outs, "--params", json.dumps(params), "--device", "cpu", *extra]


def run_step(step: str, inputs: dict, output, params: dict, *extra: str) -> int:
    """``python -m memgen STEP ...`` (:func:`step_argv`) in process; the CLI installs its
    SIGTERM handler (save a resume point): pytest's is restored afterwards."""
    from memgen.cli import main

    old = signal.getsignal(signal.SIGTERM)
    try:
        return main(step_argv(step, inputs, output, params, *extra))
    finally:
        signal.signal(signal.SIGTERM, old)


def gauss_expect(fn):
    """E[fn(z)], z ~ N(0, 1), by adaptive quadrature (split at the relu kink z = 0)."""
    dens = lambda z: float(fn(np.float64(z))) * np.exp(-z * z / 2) / np.sqrt(2 * np.pi)  # noqa: E731
    return sum(integrate.quad(dens, a, b, epsabs=1e-13, epsrel=1e-12)[0] for a, b in ((-np.inf, 0), (0, np.inf)))


def generic_ntk(model, x1, x2=None, block=256, **kw):
    """The generic (torch.func) NTK path of memgen.kernels with a given block size."""
    from memgen.kernels.generic import generic_gram_blocks

    xs, pairs = ([x1], [(0, 0)]) if x2 is None else ([x1, x2], [(0, 1)])
    return generic_gram_blocks(model, xs, pairs, block=block, **kw)[0]


def count_prepare(problem) -> dict:
    """Count the gradient evaluations (``problem.prepare`` calls) from now on: {"n": ...}."""
    calls = {"n": 0}
    prepare = problem.prepare

    def counted(state):
        calls["n"] += 1
        return prepare(state)

    problem.prepare = counted
    return calls


def random_spd(n, seed, low=1.0, high=8.0):
    """Random SPD matrix with eigenvalues spread in [low, high]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.linspace(low, high, n)) @ q.T


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny problems: intra-op threads only add contention on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_family(family: str, block: dict, workdir: Path) -> dict[str, dict]:
    """Every job the family's summary needs, run in process through the CLI in
    declaration order (a small stand-in for Snakemake, from the same declarations);
    returns step -> {wildcards tuple: output path(s)} under ``workdir``."""
    from memgen.declare import At, Each, input_paths, producer_of
    from memgen.families import registry

    fam = registry()[family]
    jobs: dict[str, set] = {}

    def need(step, wc):
        key = tuple(sorted((k, wc[k]) for k in step.wildcards))
        if key in jobs.setdefault(step.name, set()):
            return
        jobs[step.name].add(key)
        for source in step.inputs.values():
            if isinstance(source, Each):
                for p in source.points(block):
                    need(source.step, p)
            else:
                need(producer_of(source), source.wildcards(wc) if isinstance(source, At) else wc)

    need(fam.summary, {})
    out: dict[str, dict] = {}
    for step in fam.steps:
        for key in sorted(jobs.get(step.name, ())):
            wc = dict(key)
            ins = {k: ([workdir / p for p in v] if isinstance(v, list) else workdir / v)
                   for k, v in input_paths(step, block, wc).items()}
            outs = {k: workdir / step.path(wc, k) for k in step.outputs}
            target = outs[""] if isinstance(step.output, str) else outs
            assert run_step(step.name, ins, target, step_params(step.name, block, **wc)) == 0, (step.name, wc)
            out.setdefault(step.name, {})[key] = target
    return out
