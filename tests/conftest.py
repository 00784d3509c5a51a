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


def run_step(step: str, inputs: dict, output: Path, params: dict) -> int:
    """``python -m memgen STEP --input NAME=PATH ... --output OUT --params JSON`` in
    process; the CLI installs its SIGTERM handler (save a resume point): pytest's is
    restored afterwards."""
    from memgen.cli import main

    args = [step]
    for name, path in inputs.items():
        args += ["--input", f"{name}={path}"]
    old = signal.getsignal(signal.SIGTERM)
    try:
        return main(args + ["--output", str(output), "--params", json.dumps(params), "--device", "cpu"])
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
